"""Scrubber speed: µs per command line, on ordinary command lines (the common case: every
process, every interval) and on leaking ones, side by side with another ``scrub.py``.

    python bench/bench_scrub.py [--baseline-scrub FILE] [--repeat 7] [--number 200]

The lines are the corpus of tests/agent/scrub_corpus.py (68 ordinary, 54 leaking; the
ordinary ones hold many of the programs the scrubber knows, so they are a harsh case) and
every line of the ps outputs under tests/fixtures/ps (what a real process table looks like,
the agent scrubs each line of the raw output too). Best of
``--repeat`` timeit runs of ``--number`` passes over each list, alternating the scrubbers;
``--baseline-scrub`` loads another scrub.py, e.g. the one of an older commit
(``git show e8ce413:agent/scrub.py > .procfleet/old_scrub.py``, gitignored). Also prints how
many leaking lines still show their secret and how many ordinary lines each scrubber changes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import scrub as current_scrub  # noqa: E402
from tests.agent.scrub_corpus import LEAKS, ORDINARY  # noqa: E402

PS_FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ps"


def load(path: str):
    spec = importlib.util.spec_from_file_location("baseline_scrub", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def us_per_line(scrubbers: list, lines: list[str], repeat: int, number: int) -> list[float]:
    """Best µs per line of each scrubber, the scrubbers alternating run by run (the box is
    noisy: a slow moment then costs both alike)."""
    best_s = [float("inf")] * len(scrubbers)
    for _ in range(repeat):
        for i, scrubber in enumerate(scrubbers):
            def run(scrubber=scrubber) -> None:
                for line in lines:
                    scrubber(line)

            best_s[i] = min(best_s[i], timeit.timeit(run, number=number))
    return [s / number / len(lines) * 1e6 for s in best_s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-scrub", help="path of another scrub.py to compare")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()
    modules = [("this tree", current_scrub)]
    if args.baseline_scrub:
        modules.insert(0, ("baseline", load(args.baseline_scrub)))
    leak_lines = [line for line, _ in LEAKS]
    ps_lines = [line for path in sorted(PS_FIXTURES.glob("*.txt"))
                for line in path.read_text().splitlines()]
    print(f"{'scrubber':<10} {'ps lines us/line':>16} {'ordinary us/line':>16} "
          f"{'leaking us/line':>15} {'leaks shown':>11} {'ordinary changed':>16}")
    scrubbers = [module.Scrubber() for _, module in modules]
    figures = [us_per_line(scrubbers, lines, args.repeat, args.number)
               for lines in (ps_lines, ORDINARY, leak_lines)]
    for i, (name, _) in enumerate(modules):
        scrubber = scrubbers[i]
        shown = sum(secret in scrubber(line) for line, secret in LEAKS)
        changed = sum(scrubber(line) != line for line in ORDINARY)
        print(f"{name:<10} {figures[0][i]:>16.2f} {figures[1][i]:>16.2f} "
              f"{figures[2][i]:>15.2f} {shown:>5} / {len(LEAKS):<3} "
              f"{changed:>8} / {len(ORDINARY):<3}")


if __name__ == "__main__":
    main()
