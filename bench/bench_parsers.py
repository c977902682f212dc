"""Parse throughput (lines/s) of each parser and format, on large synthetic inputs.

Each input keeps a fixture's header once and repeats its data rows (tasklist /fo list: whole
records) up to ``--rows`` processes. Side by side, in the same run, the baseline is
``line.split()`` over the same lines -- the least work any parser must do -- and the ratio says
how many times that a parser costs. Each figure is the best of ``--repeat``
interleaved runs.

    .venv/bin/python bench/bench_parsers.py [--rows 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.parsers.ps import parse_ps  # noqa: E402
from agent.parsers.result import ParseResult  # noqa: E402
from agent.parsers.tasklist import parse_tasklist  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"

# label, parser, fixture, how many leading lines are the header (None: up to the ==== line)
CASES: list[tuple[str, Callable[[str], ParseResult], str, int | None]] = [
    ("ps procps aux", parse_ps, "ps/procps_aux.txt", 1),
    ("ps macOS aux", parse_ps, "ps/bsd_macos_aux.txt", 1),
    ("ps BusyBox", parse_ps, "ps/busybox_default.txt", 1),
    ("tasklist table", parse_tasklist, "tasklist/en_table.txt", None),
    ("tasklist table /v", parse_tasklist, "tasklist/en_table_v.txt", None),
    ("tasklist csv /v", parse_tasklist, "tasklist/en_csv_v.txt", 1),
    ("tasklist list /v", parse_tasklist, "tasklist/en_list_v.txt", 0),
]


def synthetic_input(fixture: Path, head_lines: int | None, rows: int) -> tuple[str, int]:
    """The fixture's header plus its parsable data lines repeated to about ``rows`` processes.
    Returns the text and its number of non-blank lines."""
    lines = fixture.read_text(encoding="utf-8").splitlines()
    if head_lines is None:
        head_lines = next(i for i, line in enumerate(lines) if line.startswith("=")) + 1
    head, body = lines[:head_lines], lines[head_lines:]
    # Keep only lines the parser accepts on their own, so the figure is for clean input.
    body = [line for line in body if _clean(fixture, head, line)] if head_lines else body
    copies = max(1, rows // max(1, _count(fixture, head, body)))
    all_lines = head + body * copies
    return "\n".join(all_lines) + "\n", sum(1 for line in all_lines if line.strip())


def _parser_for(fixture: Path) -> Callable[[str], ParseResult]:
    return parse_tasklist if fixture.parent.name == "tasklist" else parse_ps


def _clean(fixture: Path, head: list[str], line: str) -> bool:
    if not line.strip():
        return True
    result = _parser_for(fixture)("\n".join([*head, line]))
    return result.unparsed_lines == 0 and len(result.processes) == 1


def _count(fixture: Path, head: list[str], body: list[str]) -> int:
    return len(_parser_for(fixture)("\n".join(head + body)).processes)


def best_seconds(funcs: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best wall time of each function; runs are interleaved so a noisy moment on a shared
    box hits the parser and its baseline alike."""
    best = [float("inf")] * len(funcs)
    for _ in range(repeat):
        for index, func in enumerate(funcs):
            start = time.perf_counter()
            func()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def split_baseline(text: str) -> None:
    for line in text.splitlines():
        line.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="processes per input")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best kept)")
    args = parser.parse_args()

    print(f"{'format':<18} {'lines':>7} {'procs':>7} {'unparsed':>8} {'lines/s':>10} "
          f"{'us/proc':>8} {'split() lines/s':>16} {'ratio':>6}")
    for label, parse, name, head_lines in CASES:
        fixture = FIXTURES / name
        text, line_count = synthetic_input(fixture, head_lines, args.rows)
        result = parse(text)
        parse_s, split_s = best_seconds(
            [lambda parse=parse, text=text: parse(text), lambda text=text: split_baseline(text)],
            args.repeat,
        )
        print(
            f"{label:<18} {line_count:>7} {len(result.processes):>7} "
            f"{result.unparsed_lines:>8} {line_count / parse_s:>10,.0f} "
            f"{parse_s / max(1, len(result.processes)) * 1e6:>8.1f} "
            f"{line_count / split_s:>16,.0f} {parse_s / split_s:>5.0f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
