"""A batch in hand: the entries read, their decoded messages, and the entries that already
failed (undecodable, or delivered too many times)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from digest_worker.streams import Entry
from ingest_gateway import stream

# Why an entry went to the dead-letter stream (the metric's ``reason`` label).
MAX_DELIVERIES = "max_deliveries"
UNDECODABLE = "undecodable"
INSERT_FAILED = "insert_failed"


@dataclass(eq=False)  # batches are compared by identity (Worker._in_hand)
class Batch:
    """``messages[i]`` was decoded from ``sources[i]``; ``dead`` holds
    ``(entry, reason label, reason text)``; ``handed_back`` the entries the writer did not
    resolve in time (left unacknowledged, delivered again later)."""

    entries: list[Entry] = field(default_factory=list)
    messages: list[tuple[str, list[Any]]] = field(default_factory=list)
    sources: list[Entry] = field(default_factory=list)
    dead: list[tuple[Entry, str, str]] = field(default_factory=list)
    handed_back: list[Entry] = field(default_factory=list)

    def entries_to_ack(self) -> list[Entry]:
        """Every entry but those handed back."""
        if not self.handed_back:
            return self.entries
        kept = {id(entry) for entry in self.handed_back}
        return [entry for entry in self.entries if id(entry) not in kept]

    def __len__(self) -> int:
        return len(self.entries)


def decode_batch(entries: list[Entry], max_deliveries: int) -> Batch:
    """Decode ``entries`` with the stream contract; set aside those that cannot be used."""
    batch = Batch(entries)
    messages, sources, dead = batch.messages, batch.sources, batch.dead
    decode = stream.decode
    for entry in entries:
        fields = entry.fields
        if fields is None:  # deleted while pending: nothing to write, only to acknowledge
            continue
        if entry.deliveries > max_deliveries:
            dead.append((entry, MAX_DELIVERIES, f"delivered {entry.deliveries} times "
                                                f"(max_deliveries={max_deliveries})"))
            continue
        try:
            messages.append(decode(fields))
        except stream.StreamDecodeError as exc:
            dead.append((entry, UNDECODABLE, f"cannot decode: {exc}"))
            continue
        sources.append(entry)
    return batch
