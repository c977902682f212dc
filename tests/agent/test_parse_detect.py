"""Format detection, ``parse_output`` dispatch and decoding of saved outputs."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ParseError
from agent.parsers import decode_output, detect_format, parse_output
from agent.parsers.ps import looks_like_ps
from agent.parsers.tasklist import looks_like_tasklist, parse_tasklist

FIXTURES = Path(__file__).parent.parent / "fixtures"
TASKLIST_FIXTURES = sorted((FIXTURES / "tasklist").iterdir())
PS_FIXTURES = ["procps_aux.txt", "procps_ef.txt", "bsd_macos_aux.txt", "bsd_freebsd_aux.txt",
               "busybox_default.txt", "busybox_long.txt"]

PS_AUX = """\
USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND
root           1  0.0  0.1 168940 13100 ?        Ss   Jan01   0:12 /sbin/init splash
root           2  0.0  0.0      0     0 ?        S    Jan01   0:00 [kthreadd]
alice       4242  1.5  2.0 987654 65432 pts/0    Sl+  09:41   1:02 python3 -m http.server
"""
BUSYBOX_PS = """\
PID   USER     TIME  COMMAND
    1 root      0:01 /sbin/init
   42 root      0:00 /bin/sh
"""


@pytest.mark.parametrize("path", TASKLIST_FIXTURES, ids=lambda path: path.name)
def test_every_tasklist_form_is_detected(path):
    text = path.read_text(encoding="utf-8")
    assert detect_format(text) == "tasklist"
    assert not looks_like_ps(text)


@pytest.mark.parametrize("name", PS_FIXTURES)
def test_ps_fixtures_are_never_taken_for_tasklist(name):
    text = (FIXTURES / "ps" / name).read_text(encoding="utf-8")
    assert not looks_like_tasklist(text)
    assert detect_format(text) == "ps"


@pytest.mark.parametrize("text", [PS_AUX, BUSYBOX_PS], ids=["procps", "busybox"])
def test_ps_outputs_are_detected(text):
    assert detect_format(text) == "ps"


def test_this_machines_own_ps_output_is_detected():
    text = subprocess.run(["ps", "aux"], capture_output=True, text=True, check=True).stdout
    assert detect_format(text) == "ps"
    result = parse_output(text)
    assert result.format == "ps-procps"
    assert result.unparsed_lines == 0, result.errors
    assert len(result.processes) == len(text.splitlines()) - 1


def test_empty_text_cannot_be_detected():
    with pytest.raises(ParseError, match="empty"):
        detect_format(" \n\n")


def test_undetectable_text_names_what_was_seen():
    with pytest.raises(ParseError, match="first line: 'Dear operator, here is my output'"):
        detect_format("\n  Dear operator, here is my output  \nthanks\n")


def test_parse_output_auto_dispatches_to_tasklist():
    text = TASKLIST_FIXTURES[0].read_text(encoding="utf-8")
    assert parse_output(text) == parse_tasklist(text)


def test_parse_output_auto_dispatches_to_ps():
    result = parse_output(PS_AUX)
    assert result.format == "ps-procps"
    assert [p.pid for p in result.processes] == [1, 2, 4242]


def test_explicit_format_counts_lines_instead_of_raising():
    result = parse_output("Dear operator\nhere is my output\n", "tasklist")
    assert (result.processes, result.unparsed_lines) == ([], 2)


def test_unknown_format_is_a_parse_error_naming_it():
    with pytest.raises(ParseError, match="'xml'"):
        parse_output(PS_AUX, "xml")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_raises_at_most_parse_error(text):
    for fmt in ("ps", "tasklist"):
        result = parse_output(text, fmt)
        assert result.unparsed_lines >= len(result.errors)
    with contextlib.suppress(ParseError):
        parse_output(text)


def test_decode_utf16_with_bom_as_powershell_writes_it():
    text = '"Image Name","PID"\r\n"Système.exe","4"\r\n'
    assert decode_output(text.encode("utf-16")) == text
    assert decode_output(b"\xef\xbb\xbf" + text.encode()) == text
    assert decode_output(text.encode("utf-16-le")) == text


def test_decode_windows_code_pages():
    assert decode_output("Wird ausgeführt 4\u00a0912 Ko".encode("cp850")) == (
        "Wird ausgeführt 4\u00a0912 Ko"
    )
    assert decode_output("Système".encode("cp1252")) == "Système"
    assert decode_output("naïve ✓".encode()) == "naïve ✓"
