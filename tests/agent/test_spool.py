"""The on-disk spool: atomic, bounded (oldest dropped), ordered oldest-first, restart-safe."""

from __future__ import annotations

import gzip
import itertools
import logging

import pytest
from prometheus_client import REGISTRY

from agent.spool import Spool, SpoolError, check_writable, spooled_files


def body(n: int, size: int = 0) -> bytes:
    return gzip.compress(b'{"n": %d, "pad": "%s"}' % (n, b"x" * size), mtime=0)


def ticking_clock(start: int = 1_700_000_000_000_000_000):
    counter = itertools.count(start, 1_000)
    return lambda: next(counter)


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value(
        "procfleet_agent_reports_dropped_total", {"reason": reason}
    ) or 0.0


def rid(n: int) -> str:
    return f"report{n:04d}"


def test_put_writes_sortable_names_and_iterates_oldest_first(tmp_path):
    spool = Spool(tmp_path, 10_000, clock_ns=ticking_clock())
    for n in (3, 1, 2):  # insertion order, not id order, is the replay order
        spool.put(rid(n), body(n))
    assert [e.report_id for e in spool] == [rid(3), rid(1), rid(2)]
    assert spool.oldest().report_id == rid(3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [e.name for e in spool]
    for name, entry in zip(names, spool, strict=True):
        assert name.endswith(f"-{entry.report_id}.json.gz")
    assert spool.read(spool.oldest()) == body(3)


def test_spooled_files_lists_the_replay_order_without_reports_being_written(tmp_path):
    spool = Spool(tmp_path, 10_000, clock_ns=ticking_clock())
    for n in (3, 1):
        spool.put(rid(n), body(n))
    (tmp_path / ".tmp-09999999999999999999-report0002.json.gz").write_bytes(body(2))
    (tmp_path / "notes.txt").write_text("not ours")
    assert [p.name for p in spooled_files(tmp_path)] == [e.name for e in spool]
    assert (tmp_path / ".tmp-09999999999999999999-report0002.json.gz").exists()  # reads only


def test_order_holds_when_the_clock_stalls_or_steps_back(tmp_path):
    stamps = iter([500, 500, 100])
    spool = Spool(tmp_path, 10_000, clock_ns=lambda: next(stamps))
    for n in range(3):
        spool.put(rid(n), body(n))
    assert [e.report_id for e in spool] == [rid(0), rid(1), rid(2)]


def test_remove_deletes_the_file(tmp_path):
    spool = Spool(tmp_path, 10_000)
    entry = spool.put(rid(1), body(1))
    spool.remove(entry)
    assert len(spool) == 0 and list(tmp_path.iterdir()) == []


def test_cap_drops_oldest_with_warning_and_counter(tmp_path, caplog):
    size = len(body(0, 400))
    spool = Spool(tmp_path, max_bytes=3 * size, clock_ns=ticking_clock())
    before = dropped("spool_full")
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        for n in range(5):
            spool.put(rid(n), body(n, 400))
    assert [e.report_id for e in spool] == [rid(2), rid(3), rid(4)]
    assert spool.total_bytes <= 3 * size
    assert len(list(tmp_path.iterdir())) == 3
    assert dropped("spool_full") - before == 2
    warnings = [r for r in caplog.records if r.msg == "spool full: oldest report dropped"]
    assert [r.kv["report_id"] for r in warnings] == [rid(0), rid(1)]


def test_a_report_bigger_than_the_spool_is_dropped_not_stored(tmp_path):
    spool = Spool(tmp_path, max_bytes=10)
    spool.put(rid(0), b"")  # an empty body fits
    before = dropped("spool_full")
    assert spool.put(rid(1), body(1, 1000)) is None
    assert dropped("spool_full") - before == 1
    assert [e.report_id for e in spool] == [rid(0)]


def test_survives_restart_and_keeps_order(tmp_path):
    first = Spool(tmp_path, 10_000, clock_ns=ticking_clock())
    for n in range(3):
        first.put(rid(n), body(n))
    second = Spool(tmp_path, 10_000)  # real clock: later than the fake stamps
    assert [e.report_id for e in second] == [rid(0), rid(1), rid(2)]
    assert second.read(second.oldest()) == body(0)
    second.put(rid(9), body(9))
    assert [e.report_id for e in second][-1] == rid(9)


def test_restart_with_an_older_clock_still_appends_at_the_end(tmp_path):
    first = Spool(tmp_path, 10_000, clock_ns=ticking_clock(2_000_000_000_000_000_000))
    first.put(rid(0), body(0))
    second = Spool(tmp_path, 10_000, clock_ns=ticking_clock(1))
    second.put(rid(1), body(1))
    assert [e.report_id for e in second] == [rid(0), rid(1)]


def test_restart_removes_leftover_temp_files_and_ignores_foreign_files(tmp_path):
    (tmp_path / ".tmp-00000000000000000001-reportxxxx.json.gz").write_bytes(b"half")
    (tmp_path / "README.txt").write_text("not ours")
    spool = Spool(tmp_path, 10_000)
    assert len(spool) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt"]


def test_corrupted_file_is_deleted_with_a_warning_not_replayed(tmp_path, caplog):
    spool = Spool(tmp_path, 10_000, clock_ns=ticking_clock())
    bad = spool.put(rid(0), body(0))
    good = spool.put(rid(1), body(1))
    (tmp_path / bad.name).write_bytes(body(0)[:-6])  # truncated gzip: CRC/length missing
    before = dropped("spool_corrupt")
    restarted = Spool(tmp_path, 10_000)
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        assert restarted.read(restarted.oldest()) is None
    assert "corrupted spool file deleted" in caplog.text
    assert dropped("spool_corrupt") - before == 1
    assert [e.report_id for e in restarted] == [rid(1)]
    assert restarted.read(restarted.oldest()) == body(1)
    assert not (tmp_path / bad.name).exists() and (tmp_path / good.name).exists()


def test_entry_deleted_behind_our_back_reads_as_none(tmp_path):
    spool = Spool(tmp_path, 10_000)
    entry = spool.put(rid(0), body(0))
    (tmp_path / entry.name).unlink()
    assert spool.read(entry) is None
    assert len(spool) == 0


def test_unusable_directory_is_a_spool_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="file"):
        Spool(blocker / "spool", 10_000)
    with pytest.raises(SpoolError, match="not writable"):
        check_writable(blocker / "spool")
    check_writable(tmp_path / "fresh")
    assert list((tmp_path / "fresh").iterdir()) == []
