"""Log line formats: logfmt for people tailing logs (default), JSON for machines.

Library modules only call ``logging.getLogger(__name__)``; handlers are installed here, once,
by the ``procfleet`` command. Structured values go in ``extra={"kv": {...}}`` and are rendered
as ``key=value`` pairs after the message.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

LOG_FORMATS = ("logfmt", "json")


def _logfmt_value(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}" if abs(value) < 1e15 else repr(value)
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' ="\\') or any(ord(c) < 32 for c in text):
        return json.dumps(text)
    return text


def _record_fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, object]:
    """The keys every line has, then the record's structured pairs, then the traceback."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    fields: dict[str, object] = {
        "ts": f"{stamp}.{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update(getattr(record, "kv", None) or {})
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=... msg="batch" rows=1000 inserted=998``."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = _record_fields(self, record)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in pairs.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the logfmt format."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(self, record), default=str)


def setup_logging(log_format: str | None = None, level: str = "INFO") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    log_format = log_format or os.environ.get("PROCFLEET_LOG_FORMAT", "logfmt")
    if log_format not in LOG_FORMATS:
        raise SystemExit(f"invalid log format {log_format!r}: choose one of {LOG_FORMATS}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party request chatter would drown our one-line-per-unit-of-work logs.
    for noisy in ("httpx", "httpcore", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
