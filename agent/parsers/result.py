"""What every parser returns: the processes it could read and an account of what it could not."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.rows import ProcessSample

MAX_KEPT_ERRORS = 20  # enough to diagnose a format; a 10k-line garbage file must not blow up


@dataclass
class ParseResult:
    """Processes parsed from one text. A line that cannot be parsed is counted in
    ``unparsed_lines`` (and the first few described in ``errors``), never guessed at."""

    format: str
    processes: list[ProcessSample] = field(default_factory=list)
    unparsed_lines: int = 0
    errors: list[str] = field(default_factory=list)

    def reject(self, line_no: int, line: str, reason: str) -> None:
        """Count a line that could not be parsed, keeping a short description of it."""
        self.unparsed_lines += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(f"line {line_no}: {reason}: {line[:120]!r}")
