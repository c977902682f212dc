"""`procfleet parse FILE [--format ...]`: JSON on stdout, a summary on stderr, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.contract import ProcessSample
from procfleet.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tasklist"


def test_prints_processes_as_json_with_the_contract_field_names(capsys):
    assert main(["parse", str(FIXTURES / "en_table_v.txt")]) == 0
    out, err = capsys.readouterr()
    processes = json.loads(out)
    assert len(processes) == 15
    assert set(processes[0]) == set(ProcessSample.model_fields)
    assert processes[0] == ProcessSample(
        pid=0, name="System Idle Process", command="System Idle Process",
        session_name="Services", session_id=0, rss_bytes=8192, state="Unknown",
        user="NT AUTHORITY\\SYSTEM", cpu_seconds_total=1485182.0,
    ).model_dump(mode="json")
    assert "format=tasklist-table processes=15 unparsed_lines=0" in err


def test_unparsed_lines_are_counted_and_shown_on_stderr(capsys):
    assert main(["parse", "--format", "tasklist", str(FIXTURES / "en_table.txt")]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 15
    assert "unparsed_lines=2" in err
    assert "line 19: PID is not a number: '1x96'" in err
    assert "The RPC server is unavailable" in err


def test_missing_file_exits_1_naming_the_path(capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    assert main(["parse", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"cannot read {missing}" in err


def test_undetectable_file_exits_1_with_what_was_seen(capsys, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Shopping list\neggs\n")
    assert main(["parse", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err
    assert "'Shopping list'" in err


def test_nothing_parsable_with_an_explicit_format_exits_1(capsys, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Shopping list\neggs\n")
    assert main(["parse", "--format", "tasklist", str(path)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == []
    assert "unparsed_lines=2" in err


def test_reads_cmd_redirected_output_in_the_oem_code_page(capsys, tmp_path):
    path = tmp_path / "tasklist_de.txt"
    text = (FIXTURES / "de_table_v.txt").read_text(encoding="utf-8")
    path.write_bytes(text.encode("cp850"))
    assert main(["parse", str(path)]) == 0
    processes = json.loads(capsys.readouterr().out)
    assert processes[0]["user"] == "NT-AUTORITÄT\\SYSTEM"
    assert processes[-1]["state"] == "Running"  # "Wird ausgeführt"


def test_stdin_with_a_powershell_utf16_file():
    raw = (FIXTURES / "fr_csv.txt").read_text(encoding="utf-8").encode("utf-16")
    done = subprocess.run(
        [sys.executable, "-m", "procfleet", "parse", "-"],
        input=raw, capture_output=True, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    processes = json.loads(done.stdout)
    assert [p["rss_bytes"] for p in processes][:3] == [8 * 1024, 5024 * 1024, 40388 * 1024]
    assert b"unparsed_lines=0" in done.stderr
