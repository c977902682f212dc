"""Cells of a Windows ``tasklist`` row -> one ``ProcessSample``, shared by the table, CSV and list
forms.

tasklist prints the same columns in every form and language, always in this order::

    Image Name, PID, Session Name, Session#, Mem Usage            (default)
    ... , Status, User Name, CPU Time, Window Title                (/v)

Headers and labels are translated (and truncated to the column width in the table form), so a
header maps by name when every cell is a name we know and by position otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from agent.rows import ProcessSample, RowInvalid

# Positional layout of tasklist columns: 5 without /v, 9 with /v.
FIELDS_DEFAULT = ("name", "pid", "session_name", "session_id", "memory")
FIELDS_VERBOSE = FIELDS_DEFAULT + ("state", "user", "cpu_time", "window_title")
_POSITIONAL = {len(FIELDS_DEFAULT): FIELDS_DEFAULT, len(FIELDS_VERBOSE): FIELDS_VERBOSE}

# Header / label text (normalized by _normalize) -> field. English, German, French, Spanish.
_HEADER_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        ["image name", "abbildname", "nom de l'image", "nombre de imagen"], "name"
    ),
    "pid": "pid",
    **dict.fromkeys(
        ["session name", "sitzungsname", "nom de la session", "nombre de sesión"],
        "session_name",
    ),
    **dict.fromkeys(
        ["session#", "sitz.-nr.", "numéro de session", "núm. de sesión", "n.º de sesión"],
        "session_id",
    ),
    **dict.fromkeys(
        ["mem usage", "speichernutzung", "utilisation de la mémoire", "uso de memoria"],
        "memory",
    ),
    **dict.fromkeys(["status", "état", "statut", "estado"], "state"),
    **dict.fromkeys(
        ["user name", "benutzername", "nom d'utilisateur", "nombre de usuario"], "user"
    ),
    **dict.fromkeys(
        ["cpu time", "cpu-zeit", "temps processeur", "temps uc", "tiempo de cpu"], "cpu_time"
    ),
    **dict.fromkeys(
        ["window title", "fenstertitel", "titre de la fenêtre", "título de ventana"],
        "window_title",
    ),
}

# Localized Status values -> one English spelling, so a fleet of mixed locales reads the same.
_STATES: dict[str, str] = {
    **dict.fromkeys(
        ["running", "wird ausgeführt", "en cours d'exécution", "en ejecución"], "Running"
    ),
    **dict.fromkeys(
        ["not responding", "keine rückmeldung", "ne répond pas", "no responde"],
        "Not Responding",
    ),
    **dict.fromkeys(["unknown", "unbekannt", "inconnu", "desconocido"], "Unknown"),
    **dict.fromkeys(
        ["suspended", "angehalten", "unterbrochen", "suspendu", "suspendido"], "Suspended"
    ),
}
_STATE_MAX_CHARS = 16  # contract bound

# "Not available" as the localized tasklist prints it (memory, user name, CPU time).
_NOT_AVAILABLE = frozenset(
    ["n/a", "n/d", "n/v", "nicht zutreffend", "non disponible", "no disponible", "-"]
)

# Memory in KiB with a thousands separator (one kind per value: ',' '.' ''' ' ' or the
# (narrow) no-break space French and Swiss locales use) and the localized unit.
_MEMORY_RE = re.compile(
    r"^(?P<number>[0-9]{1,3}(?:(?P<sep>[,.'’ \u00a0\u202f])[0-9]{3})?(?:(?P=sep)[0-9]{3})*"
    r"|[0-9]+)\s*(?:K|KB|Ko|k|kB|KiB)$"
)
_CPU_TIME_RE = re.compile(r"^([0-9]+):([0-5][0-9]):([0-5][0-9])$")
_NON_DIGITS_RE = re.compile(r"[^0-9]")


class RowError(ValueError):
    """A row that cannot become a process; the message says which cell and why."""


def _normalize(text: str) -> str:
    text = text.replace("\u00a0", " ").replace("\u202f", " ").replace("’", "'")
    return " ".join(text.split()).rstrip(":").strip().casefold()


def columns_for_header(cells: Sequence[str]) -> tuple[str, ...] | None:
    """Fields of the header's columns: by name when every cell is known, by position when the
    header is translated or truncated (5 or 9 columns), ``None`` for any other layout."""
    names = [_HEADER_FIELDS.get(_normalize(cell)) for cell in cells]
    if all(names) and "name" in names and "pid" in names and len(set(names)) == len(names):
        return tuple(names)  # type: ignore[arg-type]
    return positional_columns(len(cells))


def positional_columns(count: int) -> tuple[str, ...] | None:
    """Fields for a row of ``count`` cells without a usable header (``/nh``)."""
    return _POSITIONAL.get(count)


def field_for_label(label: str) -> str | None:
    """The field of a ``/fo list`` label such as ``Mem Usage`` or ``Speichernutzung``."""
    return _HEADER_FIELDS.get(_normalize(label))


def is_not_available(text: str) -> bool:
    """Whether a cell says "not available" (``N/A``, ``Nicht zutreffend``, ...)."""
    return text == "N/A" or text.strip().casefold() in _NOT_AVAILABLE


def parse_memory_bytes(text: str) -> int | None:
    """``4,912 K`` / ``5.024 K`` / ``4 912 Ko`` -> bytes; ``N/A`` -> None."""
    text = text.strip()
    if is_not_available(text):
        return None
    match = _MEMORY_RE.match(text)
    if match is None:
        raise RowError(f"memory is not a KiB figure: {text!r}")
    return int(_NON_DIGITS_RE.sub("", match["number"])) * 1024


def parse_cpu_seconds(text: str) -> float | None:
    """``H:MM:SS`` (hours unbounded) -> seconds; ``N/A`` -> None."""
    text = text.strip()
    if not text or is_not_available(text):
        return None
    match = _CPU_TIME_RE.match(text)
    if match is None:
        raise RowError(f"CPU time is not H:MM:SS: {text!r}")
    hours, minutes, seconds = match.groups()
    return float(int(hours) * 3600 + int(minutes) * 60 + int(seconds))


def normalize_state(text: str) -> str | None:
    """Localized Status -> English (``Wird ausgeführt`` -> ``Running``); unknown kept as is."""
    state = _STATES.get(text.casefold())
    if state is not None:
        return state
    text = " ".join(text.split())
    if not text or is_not_available(text):
        return None
    return _STATES.get(text.casefold(), text[:_STATE_MAX_CHARS])


def _int_cell(cells: Mapping[str, str], field: str, label: str) -> int | None:
    text = cells.get(field, "").strip()
    if not text:
        return None
    if not (text.isdigit() and text.isascii()):
        raise RowError(f"{label} is not a number: {text!r}")
    return int(text)


def _text_cell(cells: Mapping[str, str], field: str) -> str | None:
    text = cells.get(field, "").strip()
    return None if not text or is_not_available(text) else text


def build_sample(cells: Mapping[str, str]) -> ProcessSample:
    """One process from the cells of a row (keyed by field). Raises ``RowError``."""
    name = cells.get("name", "").strip()
    if not name:
        raise RowError("no image name")
    pid = _int_cell(cells, "pid", "PID")
    if pid is None:
        raise RowError("no PID")
    try:
        return ProcessSample(
            pid=pid,
            name=name,
            command=name,  # tasklist has no command line
            session_name=_text_cell(cells, "session_name"),
            session_id=_int_cell(cells, "session_id", "session number"),
            rss_bytes=parse_memory_bytes(cells.get("memory", "N/A")),
            state=normalize_state(cells.get("state", "")),
            user=_text_cell(cells, "user"),
            cpu_seconds_total=parse_cpu_seconds(cells.get("cpu_time", "")),
        )
    except RowInvalid as exc:
        raise RowError(str(exc)) from None
