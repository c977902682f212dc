"""Delivery of one report to the gateway: ``POST /v1/reports`` with retries.

    Sender.send / send_gzip
    ├── 200 / 202                  -> SendResult (200 with ``duplicate: true`` = already had it)
    ├── transport error, 408, 429, 5xx (503 = backpressure)
    │                              -> retried with full-jitter exponential backoff, honouring
    │                                 Retry-After, within max_attempts and retry_budget_s;
    │                                 then DeliveryError (the caller spools the report)
    ├── 401 / 403                  -> GatewayAuthError (a DeliveryError: the caller spools, the
    │                                 reports survive until the token is fixed)
    └── any other 4xx / 3xx        -> ReportRejected, not retried (a bug: logged with the body)

The body is gzip-compressed JSON; the same bytes go out on every attempt and every replay.
tenacity is imported on the first retry only: a gateway that takes reports (every tick, normally)
never loads it, which keeps 0.2-0.4 MB out of the agent's resident memory.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client import Counter

from agent.errors import DeliveryError, ReportRejected

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger(__name__)

REPORTS_PATH = "/v1/reports"
MAX_LOGGED_BODY_CHARS = 500
MAX_RETRY_AFTER_S = 600.0  # a gateway asking for longer is treated as down: spool and move on

SEND_ATTEMPTS = Counter(
    "procfleet_agent_send_attempts_total",
    "HTTP attempts to deliver a report, by outcome",
    ["outcome"],  # accepted | duplicate | retryable | rejected | unauthorized | transport
)


class GatewayAuthError(DeliveryError):
    """The gateway refused the token (401/403). Not retried now; reports are kept."""

    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body
        super().__init__(f"gateway refused the token: HTTP {status}: {body[:200]}")


class _Retryable(Exception):
    """One failed attempt worth retrying; carries the server's Retry-After, if any."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        self.reason, self.retry_after_s = reason, retry_after_s
        super().__init__(reason)


@dataclass(frozen=True)
class SendResult:
    """A report the gateway took."""

    status: int
    duplicate: bool
    attempts: int
    body: bytes = b""  # the gateway's answer (enrollment reads its token from it)


def gzip_body(report_json: bytes) -> bytes:
    """Compress a report body the way the gateway expects (mtime 0: same input, same bytes)."""
    return gzip.compress(report_json, compresslevel=6, mtime=0)


def build_client(
    *, timeout_s: float, ca_file: Path | None = None, urls: tuple[str | None, ...] = ()
) -> httpx.AsyncClient:
    """The agent's HTTP client for ``urls``: TLS verified (against ``ca_file`` when given),
    bounded timeouts, no redirects (a redirected POST is a misconfiguration to see, not to
    follow). When none of ``urls`` is https the CA bundle is not loaded (~1.4 MB of RSS): the
    client never talks TLS then, since it only ever requests those URLs.

    The SSL context is built once here and shared: given ``verify=True`` httpx builds one per
    transport, i.e. one more (and one more CA bundle, ~0.7 MB) per proxy variable in the
    environment. ``httpx.create_ssl_context`` keeps httpx's defaults (certifi, or
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set)."""
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=str(ca_file))
    else:
        https = any(u and u.startswith("https:") for u in urls)
        verify = httpx.create_ssl_context(verify=https, trust_env=True)
    return httpx.AsyncClient(
        verify=verify,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        headers={"User-Agent": "procfleet-agent"},
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class Sender:
    """Posts gzip report bodies to ``<gateway_url>/v1/reports`` with bounded retries.

    ``sleep`` and ``rng`` are injectable so tests run without waiting. ``retry_budget_s``
    bounds the total time spent sleeping between attempts: a gateway that stays down makes
    ``send`` fail quickly enough for the caller to spool the report and keep its schedule.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        token: str,
        *,
        path: str = REPORTS_PATH,
        max_attempts: int = 5,
        retry_budget_s: float = 30.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._url = url.rstrip("/") + path
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        self.max_attempts = max_attempts
        self.retry_budget_s = retry_budget_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rng = rng or random.Random()

    def __repr__(self) -> str:  # the token stays out of any repr
        return f"Sender(url={self._url!r})"

    async def send(self, report_json: bytes, *, report_id: str = "") -> SendResult:
        """Gzip and deliver one report body (see ``send_gzip``)."""
        return await self.send_gzip(gzip_body(report_json), report_id=report_id)

    async def send_gzip(
        self, body: bytes, *, report_id: str = "", max_attempts: int | None = None
    ) -> SendResult:
        """Deliver one gzip body. Raises ``ReportRejected`` (do not retry, drop) or another
        ``DeliveryError`` (the gateway cannot take it now: spool it)."""
        started = time.monotonic()
        try:
            status, duplicate, answer = await self._attempt(body, report_id)
        except _Retryable as first:
            return await self._retry(body, report_id, max_attempts or self.max_attempts,
                                     first, started)
        return SendResult(status, duplicate, 1, answer)

    async def _retry(
        self, body: bytes, report_id: str, attempts: int, first: _Retryable, started: float
    ) -> SendResult:
        """Attempts 2..n under tenacity. Its first attempt replays the failure of attempt 1
        (already made by ``send_gzip``), so numbering, waits, stops and logs are as if tenacity
        had made it; the time budget counts from ``started``, before attempt 1."""
        from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt

        pending = [first]

        async def attempt_once() -> tuple[int, bool, bytes]:
            if pending:
                raise pending.pop()
            return await self._attempt(body, report_id)

        def out_of_time(state: RetryCallState) -> bool:
            # tenacity's stop_before_delay, with the clock started before attempt 1
            return time.monotonic() - started + (state.upcoming_sleep or 0.0) >= self.retry_budget_s

        retrying = AsyncRetrying(
            sleep=self._sleep,
            retry=retry_if_exception_type(_Retryable),
            wait=self._wait,
            stop=stop_after_attempt(attempts) | self._budget_spent | out_of_time,
            before_sleep=lambda state: self._log_retry(state, report_id),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    status, duplicate, answer = await attempt_once()
                    return SendResult(status, duplicate, attempt.retry_state.attempt_number,
                                      answer)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise DeliveryError(
                f"gateway did not take report {report_id or '?'} after "
                f"{exc.last_attempt.attempt_number} attempt(s): {last}"
            ) from last
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, body: bytes, report_id: str) -> tuple[int, bool, bytes]:
        try:
            response = await self._client.post(self._url, content=body, headers=self._headers)
        except httpx.RequestError as exc:  # transport and decoding trouble: worth a retry
            SEND_ATTEMPTS.labels("transport").inc()
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status in (200, 201, 202):
            duplicate = status == 200 and _json_flag(response, "duplicate")
            SEND_ATTEMPTS.labels("duplicate" if duplicate else "accepted").inc()
            return status, duplicate, response.content
        if status in (408, 429) or status >= 500:
            SEND_ATTEMPTS.labels("retryable").inc()
            raise _Retryable(
                f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After"))
            )
        text = response.text[:MAX_LOGGED_BODY_CHARS]
        if status in (401, 403):
            SEND_ATTEMPTS.labels("unauthorized").inc()
            log.error(
                "gateway refused the token",
                extra={"kv": {"report_id": report_id, "status": status, "body": text}},
            )
            raise GatewayAuthError(status, text)
        SEND_ATTEMPTS.labels("rejected").inc()
        log.error(
            "gateway rejected report",
            extra={"kv": {"report_id": report_id, "status": status, "body": text}},
        )
        raise ReportRejected(status, text)

    def _backoff_s(self, attempt_number: int) -> float:
        # Full jitter (uniform over [0, cap]) spreads a fleet that failed together.
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt_number - 1))
        return self._rng.uniform(0.0, cap)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            return retry_after
        return self._backoff_s(state.attempt_number)

    def _budget_spent(self, state: RetryCallState) -> bool:
        # tenacity computes the next wait before asking stop: don't sleep past the budget.
        return state.idle_for + state.upcoming_sleep > self.retry_budget_s

    def _log_retry(self, state: RetryCallState, report_id: str) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "send failed, retrying",
            extra={"kv": {"report_id": report_id, "attempt": state.attempt_number,
                          "error": str(exc), "next_delay_s": round(state.upcoming_sleep, 3)}},
        )


def _json_flag(response: httpx.Response, key: str) -> bool:
    try:
        doc = json.loads(response.content or b"{}")
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get(key) is True
