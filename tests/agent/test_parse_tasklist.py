"""tasklist fixtures of every form and language parse to the same, exact processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.parsers.tasklist import looks_like_tasklist, parse_tasklist

FIXTURES = Path(__file__).parent.parent / "fixtures" / "tasklist"

# What every fixture holds: (name, pid, session_name, session_id, Mem Usage in KiB or None).
PROCESSES = [
    ("System Idle Process", 0, "Services", 0, 8),
    ("System", 4, "Services", 0, 5_024),
    ("Secure System", 140, "Services", 0, 40_388),
    ("Registry", 184, "Services", 0, 74_912),
    ("smss.exe", 612, "Services", 0, 1_108),
    ("csrss.exe", 844, "Services", 0, 5_656),
    ("services.exe", 1020, "Services", 0, 11_232),
    ("svchost.exe", 1196, "Services", 0, 29_876),
    ("Memory Compression", 2384, "Services", 0, 1_234_567),
    ("MsMpEng.exe", 3552, "Services", 0, None),
    ("explorer.exe", 6120, "Console", 1, 145_320),
    ("Creative Cloud Helper.exe", 7304, "Console", 1, 23_100),
    ("chrome.exe", 9876, "Console", 1, 312_004),
    ("notepad.exe", 10232, "RDP-Tcp#3", 2, 14_228),
    ("tasklist.exe", 10444, "Console", 1, 8_932),
]
# /v columns of the same processes: (state, user, CPU seconds); "SYSTEM" is the localized account.
VERBOSE = [
    ("Unknown", "SYSTEM", 412 * 3600 + 33 * 60 + 2),
    ("Unknown", None, 3 * 3600 + 12 * 60 + 45),
    ("Unknown", None, 0),
    ("Unknown", None, 41),
    ("Unknown", None, 0),
    ("Unknown", None, 7),
    ("Unknown", None, 75),
    ("Unknown", "SYSTEM", 179),
    ("Unknown", None, 25 * 60 + 10),
    ("Unknown", None, None),
    ("Running", "WS-042\\alice", 271),
    ("Running", "WS-042\\alice", 12),
    ("Running", "WS-042\\alice", 3723),
    ("Not Responding", "WS-042\\bob", 1),
    ("Running", "WS-042\\alice", 0),
]

DEFAULT_FORMS = ["en_table.txt", "en_table_nh.txt", "de_table.txt", "fr_table.txt",
                 "en_csv.txt", "en_csv_nh.txt", "fr_csv.txt", "en_list.txt"]
VERBOSE_FORMS = {
    "en_table_v.txt": "NT AUTHORITY\\SYSTEM",
    "en_table_v_nh.txt": "NT AUTHORITY\\SYSTEM",
    "de_table_v.txt": "NT-AUTORITÄT\\SYSTEM",
    "en_csv_v.txt": "NT AUTHORITY\\SYSTEM",
    "en_csv_v_nh.txt": "NT AUTHORITY\\SYSTEM",
    "de_csv_v.txt": "NT-AUTORITÄT\\SYSTEM",
    "es_csv_v.txt": "NT AUTHORITY\\SYSTEM",
    "en_list_v.txt": "NT AUTHORITY\\SYSTEM",
    "fr_list_v.txt": "AUTORITE NT\\Système",
}
# Fixtures with deliberately broken lines: file -> number of unparsed lines.
BROKEN_LINES = {"en_table.txt": 2, "en_csv_v_nh.txt": 1}


def _parse(name: str):
    text = (FIXTURES / name).read_bytes().decode("utf-8")  # keeps tasklist's CRLF line ends
    assert looks_like_tasklist(text)
    return parse_tasklist(text)


@pytest.mark.parametrize("name", DEFAULT_FORMS + list(VERBOSE_FORMS))
def test_every_form_yields_the_same_processes(name):
    result = _parse(name)
    assert result.format == "tasklist-" + name.removesuffix(".txt").split("_")[1]
    assert result.unparsed_lines == BROKEN_LINES.get(name, 0), result.errors
    got = [(p.name, p.pid, p.session_name, p.session_id, p.rss_bytes) for p in result.processes]
    expected = [(n, pid, s, sid, None if kib is None else kib * 1024)
                for n, pid, s, sid, kib in PROCESSES]
    assert got == expected
    for process in result.processes:
        assert process.command == process.name  # tasklist prints no command line
        assert process.start_time is None
        assert process.ppid is None


@pytest.mark.parametrize("name", DEFAULT_FORMS)
def test_default_forms_have_no_verbose_fields(name):
    for process in _parse(name).processes:
        assert (process.state, process.user, process.cpu_seconds_total) == (None, None, None)


@pytest.mark.parametrize(("name", "system_account"), VERBOSE_FORMS.items())
def test_verbose_forms_carry_status_user_and_cpu_time(name, system_account):
    got = [(p.state, p.user, p.cpu_seconds_total) for p in _parse(name).processes]
    expected = [
        (state, system_account if user == "SYSTEM" else user,
         None if cpu is None else float(cpu))
        for state, user, cpu in VERBOSE
    ]
    assert got == expected


def test_thousands_separators_of_each_locale():
    # 1,234,567 K / 1.234.567 K / 1 234 567 Ko (no-break space) / 1 234 567 Ko (narrow nbsp)
    for name in ("en_table.txt", "de_table.txt", "fr_table.txt", "fr_csv.txt", "es_csv_v.txt"):
        by_name = {p.name: p for p in _parse(name).processes}
        assert by_name["Memory Compression"].rss_bytes == 1_234_567 * 1024, name
        assert by_name["System"].rss_bytes == 5_024 * 1024, name


def test_image_names_with_spaces_are_cut_at_the_separator_widths():
    by_pid = {p.pid: p for p in _parse("en_table.txt").processes}
    assert by_pid[0].name == "System Idle Process"
    assert by_pid[7304].name == "Creative Cloud Helper.exe"  # fills its 25-character column
    assert by_pid[2384].name == "Memory Compression"


def test_garbage_lines_are_counted_with_line_numbers_not_guessed():
    result = _parse("en_table.txt")
    assert result.unparsed_lines == 2
    assert result.errors[0].startswith("line 19: PID is not a number: '1x96'")
    assert result.errors[1].startswith("line 20: ")
    assert "The RPC server is unavailable" in result.errors[1]
    assert 1196 in {p.pid for p in result.processes}  # the real svchost row is still there


def test_truncated_csv_row_is_rejected():
    result = _parse("en_csv_v_nh.txt")
    assert result.unparsed_lines == 1
    assert result.errors[0].startswith("line 16: not a CSV row")
    assert 9912 not in {p.pid for p in result.processes}


def test_no_tasks_message_is_an_empty_table():
    result = _parse("en_no_tasks.txt")
    assert (result.processes, result.unparsed_lines) == ([], 0)
