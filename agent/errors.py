"""The error tree of procfleet. Every error we raise on purpose derives from one root.

    ProcfleetError
    ├── ConfigError          a setting is missing or invalid (carries the key and the bad value)
    ├── ParseError           a ps / tasklist / exposition text cannot be read at all
    ├── CollectError         a collector could not produce data (exporter down, command failed)
    └── DeliveryError        a report could not be handed to the gateway
        ├── ReportRejected   the gateway answered a 4xx that retrying cannot fix
        └── EnrollError      the host has no host token yet (reports are spooled meanwhile)
            └── HostAlreadyEnrolled   409: the server_id has a host token; an operator resets it

The gateway and the workers add their own subclasses of ``ProcfleetError``.
"""

from __future__ import annotations


class ProcfleetError(Exception):
    """Root of every error procfleet raises on purpose."""


class ConfigError(ProcfleetError):
    """A setting is missing or invalid."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"invalid setting {key}={value!r}: {reason}")


class ParseError(ProcfleetError):
    """A whole text could not be parsed (single bad lines are counted, not raised)."""


class CollectError(ProcfleetError):
    """A collector could not produce data."""


class DeliveryError(ProcfleetError):
    """A report could not be delivered to the gateway."""


class ReportRejected(DeliveryError):
    """The gateway refused the report with a 4xx that a retry cannot fix."""

    def __init__(self, status: int, body: str) -> None:
        self.status, self.body = status, body
        super().__init__(f"gateway rejected report: HTTP {status}: {body[:500]}")


class EnrollError(DeliveryError):
    """The agent could not obtain its host token; its reports wait in the spool."""


class HostAlreadyEnrolled(EnrollError):
    """The gateway already holds a host token for ``server_id`` (409)."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        super().__init__(
            f"server_id {server_id!r} is already enrolled with the gateway and this host has no "
            f"host token for it: an operator must run `procfleet host reset {server_id}` "
            f"(if this machine is meant to be {server_id}); the agent enrolls again by itself "
            f"at its next tick and keeps its reports in the spool meanwhile")
