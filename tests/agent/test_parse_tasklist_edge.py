"""tasklist cells, odd layouts and arbitrary text: counted as unparsed, never a crash or a guess."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.parsers.tasklist import looks_like_tasklist, parse_tasklist
from agent.parsers.tasklist_fields import (
    RowError,
    normalize_state,
    parse_cpu_seconds,
    parse_memory_bytes,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tasklist"
SEPARATOR = "========================= ======== ================ =========== ============"
HEADER = "Image Name                     PID Session Name        Session#    Mem Usage"


@pytest.mark.parametrize(
    ("text", "kib"),
    [
        ("8 K", 8),
        ("4,912 K", 4912),
        ("5.024 K", 5024),
        ("4 912 Ko", 4912),
        ("4\u00a0912 Ko", 4912),
        ("4\u202f912 Ko", 4912),
        ("12'345 K", 12345),
        ("1.234.567 KB", 1234567),
        ("123456 K", 123456),
        ("  9,876 K  ", 9876),
    ],
)
def test_memory_in_kib_with_any_thousands_separator(text, kib):
    assert parse_memory_bytes(text) == kib * 1024


@pytest.mark.parametrize("text", ["N/A", "n/a", "N/D"])
def test_memory_not_available_is_none(text):
    assert parse_memory_bytes(text) is None


@pytest.mark.parametrize("text", ["4,91 K", "1,234.567 K", "12 MB", "-5 K", "K", "4,912", ""])
def test_memory_that_is_not_a_kib_figure_is_an_error(text):
    with pytest.raises(RowError, match="memory"):
        parse_memory_bytes(text)


def test_cpu_time_hours_are_unbounded_and_minutes_are_not():
    assert parse_cpu_seconds("245:12:33") == 245 * 3600 + 12 * 60 + 33
    assert parse_cpu_seconds("N/A") is None
    with pytest.raises(RowError, match="CPU time"):
        parse_cpu_seconds("1:60:00")


def test_status_is_normalized_to_english_and_unknown_values_kept_within_bounds():
    assert normalize_state("Wird ausgeführt") == "Running"
    assert normalize_state("En cours d'exécution") == "Running"
    assert normalize_state("No responde") == "Not Responding"
    assert normalize_state("Выполняется") == "Выполняется"
    assert normalize_state("Un statut vraiment très long") == "Un statut vraime"


def test_row_wider_than_its_columns_is_read_by_the_row_pattern():
    row = "AVeryLongImageNameFromAHandEditedFile.exe 4242 Console 1 1,000 K"
    result = parse_tasklist("\n".join([HEADER, SEPARATOR, row]))
    assert result.unparsed_lines == 0
    [process] = result.processes
    assert (process.name, process.pid, process.session_id, process.rss_bytes) == (
        "AVeryLongImageNameFromAHandEditedFile.exe", 4242, 1, 1000 * 1024
    )


def test_pid_out_of_contract_bounds_is_rejected_with_the_field():
    result = parse_tasklist('"huge.exe","99999999999","Console","1","1,000 K"\n')
    assert result.processes == []
    assert result.unparsed_lines == 1
    assert "pid" in result.errors[0]


def test_bom_and_crlf_are_ignored():
    text = "\ufeff" + (FIXTURES / "en_csv.txt").read_bytes().decode()
    assert "\r\n" in text  # as tasklist writes it
    result = parse_tasklist(text)
    assert (len(result.processes), result.unparsed_lines) == (15, 0)


def test_concatenated_outputs_repeat_their_header():
    for name in ("en_table.txt", "en_csv_v.txt"):
        text = (FIXTURES / name).read_text(encoding="utf-8")
        single = parse_tasklist(text)
        double = parse_tasklist(text + text)
        assert len(double.processes) == 2 * len(single.processes)
        assert double.unparsed_lines == 2 * single.unparsed_lines


def test_list_records_without_blank_lines_between_them():
    text = (FIXTURES / "en_list_v.txt").read_text(encoding="utf-8")
    packed = "\n".join(line for line in text.splitlines() if line.strip())
    result = parse_tasklist(packed)
    assert (len(result.processes), result.unparsed_lines) == (15, 0)
    assert result.processes[-1].name == "tasklist.exe"


def test_list_record_missing_its_pid_is_rejected_whole():
    text = "Image Name:   a.exe\nPID:          7\n\nImage Name:   b.exe\nSession Name: Console\n"
    result = parse_tasklist(text)
    assert [p.pid for p in result.processes] == [7]
    assert result.unparsed_lines == 2  # both lines of the broken record
    assert result.errors[0].startswith("line 4: record: no PID")


def test_csv_header_in_another_order_maps_by_name():
    text = '"PID","Image Name","Mem Usage"\n"77","My App.exe","1,024 K"\n'
    [process] = parse_tasklist(text).processes
    assert (process.pid, process.name, process.rss_bytes) == (77, "My App.exe", 1024 * 1024)


def test_csv_resaved_with_semicolons():
    text = 'Image Name;PID;Session Name;Session#;Mem Usage\nfoo bar.exe;12;Console;1;"5.024 K"\n'
    [process] = parse_tasklist(text).processes
    assert (process.name, process.pid, process.rss_bytes) == ("foo bar.exe", 12, 5024 * 1024)


def test_table_with_unsupported_columns_rejects_its_rows():
    text = "\n".join([
        "Image Name                     PID Services",
        "========================= ======== ============================================",
        "svchost.exe                   1196 DcomLaunch, PlugPlay, Power",
    ])
    result = parse_tasklist(text)
    assert result.processes == []
    assert result.unparsed_lines == 1
    assert "unsupported tasklist columns" in result.errors[0]


def test_headerless_row_never_takes_a_session_number_for_a_session_name():
    # Empty session name: "0" must be the session number and "4 912 Ko" the memory.
    result = parse_tasklist("foo.exe      123       0     4 912 Ko\n")
    [process] = result.processes
    assert (process.session_name, process.session_id, process.rss_bytes) == (
        None, 0, 4912 * 1024
    )


def test_ps_output_is_not_tasklist():
    text = (
        "USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND\n"
        "root           1  0.0  0.1 168940 13100 ?        Ss   Jan01   0:12 /sbin/init\n"
    )
    assert not looks_like_tasklist(text)


TASKLISH = st.text(
    alphabet=st.sampled_from(list('0123456789 ,."=:KkoN/A\n\r\t\u00a0ab#\\-')), max_size=400
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_arbitrary_text_never_crashes(text):
    result = parse_tasklist(text)
    assert result.unparsed_lines >= len(result.errors)
    looks_like_tasklist(text)


@settings(max_examples=300, deadline=None)
@given(TASKLISH)
def test_tasklist_like_noise_never_crashes(text):
    for prefix in ("", HEADER + "\n" + SEPARATOR + "\n", '"Image Name","PID"\n', "Image Name: x\n"):
        result = parse_tasklist(prefix + text)
        assert result.unparsed_lines >= len(result.errors)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(p.name for p in FIXTURES.iterdir())), st.text(max_size=200))
def test_fixture_with_noise_appended_keeps_its_processes(name, noise):
    text = (FIXTURES / name).read_text(encoding="utf-8")
    clean = parse_tasklist(text)
    noisy = parse_tasklist(text + "\n" + noise)
    pids = [p.pid for p in noisy.processes]
    assert pids[: len(clean.processes)] == [p.pid for p in clean.processes]


def test_console_prompts_copied_with_the_output_are_counted_not_fatal():
    body = (FIXTURES / "en_csv.txt").read_text(encoding="utf-8")
    text = "C:\\Users\\alice>tasklist /fo csv\n" + body + "\nC:\\Users\\alice>\n"
    assert looks_like_tasklist(text)
    result = parse_tasklist(text)
    assert (len(result.processes), result.unparsed_lines) == (15, 2)
