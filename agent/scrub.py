"""Command-line scrubbing: secrets in process command lines never leave the host.

``Scrubber(words)`` compiles its patterns once; calling it on a command line returns the same
text with every recognised secret value replaced by ``MASK``. What it recognises:

- ``scheme://user:PASS@host`` (any scheme); for http(s) also a bare ``https://TOKEN@host``,
  which is how tokens are handed to git;
- ``KEY=VALUE`` and ``KEY:VALUE`` / ``KEY: VALUE`` where KEY holds a sensitive word: flags
  (``--password=x``, ``-Dpassword=x``), environment and config forms (``PGPASSWORD=x``,
  ``"password": "x"``), query strings (``?api_key=x&b=1``), headers
  (``Authorization: Bearer x`` keeps the scheme and masks the credential);
- ``-KEY VALUE`` / ``--KEY VALUE``: a flag holding a sensitive word followed by a separate value
  (a value that starts with ``-`` is taken to be the next flag and is left alone);
- per-program short flags, only after that program's name: ``-pSECRET`` (attached value only)
  for the mysql/mariadb family, where ``-p`` alone prompts and ``-p db`` names a database;
  ``-a PASS`` for redis-cli and friends; ``-p PASS`` for sshpass and the mongo tools;
  ``-u user:PASS`` for curl. Elsewhere ``-p`` is a port (ssh, psql, docker) and is kept.

When is a key sensitive? When one of the words occurs in it (case-insensitive) and is not
followed by another letter: ``--db-password``, ``keyStorePassword``, ``MYSQL_PWD``,
``password2`` and ``--auth-type`` match; ``--tokenizer-model``, ``--max-tokens`` and
``--author`` do not. An ``_`` inside a word matches ``_``, ``-``, ``.`` or nothing, so
``api_key`` also covers ``api-key``, ``apiKey`` and ``apikey``. Erring towards masking is the
intent: a masked harmless value costs little, a leaked password costs a lot.

Limits (ps prints argv joined by spaces, so quoting is lost): an unquoted value ends at
whitespace, so ``--password my secret`` leaks ``secret``; in bare ``key=value`` forms the value
also ends at ``&``, ``,`` or ``;`` (query strings, mount options, connection strings).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agent.errors import ConfigError

MASK = "********"

DEFAULT_SCRUB_WORDS: tuple[str, ...] = (
    "password",
    "passwd",
    "pass",
    "pass_phrase",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "cookie",
    "signature",
)

_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_KEY_CHARS = 64  # bounds the key pattern so a huge token cannot make matching quadratic
_AUTH_SCHEMES = r"bearer|basic|token|digest|negotiate|ntlm|bot|apikey"
# A value: a quoted string (quotes kept) or a run of non-space, non-quote characters.
# After a colon (a header) an auth scheme is kept and the credential after it is masked.
_VALUE = (
    rf"(?(colon)(?:(?P<scheme>(?:{_AUTH_SCHEMES})[ \t]+)(?=[^\s\-;|&\"']))?)"
    r"""(?:(?P<q>["'])(?P<qv>[^"']*)(?P=q)|(?P<v>[^\s"']+))"""
)
_ASSIGN_SEP = r"(?P<sep>[\"']?(?:=|(?P<colon>[ \t]*:[ \t]*)))"
# The flag form never has a colon; the group exists (and never matches) for the conditional.
_FLAG_SEP = r"(?P<sep>\s+)(?P<colon>(?!))?(?=[^\s\-])"
_BARE_VALUE_END = re.compile(r"[&,;]")
# A program's arguments run to the end of its shell command: ``;``, ``|``, ``&&`` or a
# background ``&`` (an ``&`` inside a word, as in a URL, does not end them).
_PROGRAM_ARGS = r"(?:[^;|&]|(?<!\s)&(?![&\s]))*"

_URL_USERPASS = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s:/?#@'\"]*:)(?P<v>[^\s/?#'\"]+)(?=@)", re.IGNORECASE
)
_URL_TOKEN_USER = re.compile(
    r"(?P<head>\b(?:git\+)?https?://)(?P<v>[^\s:/?#@'\"]+)(?=@)", re.IGNORECASE
)

# (program names, flag, value style); names match the basename, optionally with ``.exe``.
# "attached": -pVALUE only; "any": -p VALUE or -pVALUE; "userpass": -u user:VALUE.
_PROGRAM_FLAGS: tuple[tuple[str, str, str], ...] = (
    (r"mysql[\w-]*|mariadb[\w-]*", "p", "attached"),
    (r"(?:redis|valkey|keydb)-(?:cli|benchmark)", "a", "any"),
    (
        r"sshpass|mongo|mongosh|mongodump|mongorestore|mongoexport|mongoimport|mongostat|mongotop",
        "p",
        "any",
    ),
    (r"curl", "u", "userpass"),
    (r"curl", "U", "userpass"),
)

# Substrings every name in _PROGRAM_FLAGS contains (lowercase).
_PROGRAM_HINTS = ("mysql", "mariadb", "redis-", "valkey-", "keydb-", "sshpass", "mongo", "curl")


def _minimal_hints(parts: Iterable[str]) -> tuple[str, ...]:
    """The fewest lowercase substrings such that every word contains one of them."""
    unique = sorted({p.lower() for p in parts}, key=len)
    kept: list[str] = []
    for part in unique:
        if not any(k in part for k in kept):
            kept.append(part)
    return tuple(kept)


def _word_pattern(word: str) -> str:
    parts = [re.escape(part) for part in word.split("_")]
    return r"[-_.]?".join(parts)


def _build_words(words: Iterable[str] | None, replace_defaults: bool) -> tuple[str, ...]:
    chosen: list[str] = [] if replace_defaults else list(DEFAULT_SCRUB_WORDS)
    for word in words or ():
        if not isinstance(word, str) or not _WORD_RE.fullmatch(word):
            raise ConfigError(
                "scrub_words", word, "each word must be 1-64 letters, digits, '_', '.' or '-'"
            )
        if word.lower() not in chosen:
            chosen.append(word.lower())
    return tuple(chosen)


class Scrubber:
    """Masks secret values in command lines; build once, call per command.

    ``words`` extends ``DEFAULT_SCRUB_WORDS`` (or replaces them with
    ``replace_defaults=True``). URL credentials and the per-program flags are always scrubbed.
    Raises ``ConfigError`` for a word that is not a plain identifier.
    """

    def __init__(
        self, words: Iterable[str] | None = None, *, replace_defaults: bool = False
    ) -> None:
        self.words = _build_words(words, replace_defaults)
        # Most command lines hold no sensitive word and run no listed program: plain substring
        # checks on the lowercased text (~1 us) skip the regexes (~50 us) for them.
        self._word_hints = _minimal_hints(w.split("_")[0] for w in self.words)
        self._key_value: re.Pattern[str] | None = None
        self._flag_value: re.Pattern[str] | None = None
        if self.words:
            # Longest first so "credentials" wins over "credential" in the alternation.
            alternation = "|".join(
                _word_pattern(w) for w in sorted(self.words, key=len, reverse=True)
            )
            key = (
                rf"[\w.\-]{{0,{_MAX_KEY_CHARS}}}?(?:{alternation})(?![A-Za-z])"
                rf"[\w.\-]{{0,{_MAX_KEY_CHARS}}}"
            )
            self._key_value = re.compile(
                # Not right after "://": that is a URL's user name, handled above.
                rf"(?<![\w.\-])(?<!://)(?P<key>{key}){_ASSIGN_SEP}{_VALUE}",
                re.IGNORECASE,
            )
            self._flag_value = re.compile(
                rf"(?<![\w.\-])(?P<key>-{{1,2}}{key}){_FLAG_SEP}{_VALUE}",
                re.IGNORECASE,
            )
        self._programs = [
            (
                re.compile(
                    rf"(?:^|(?<=[\s/\\'\"]))(?:{names})(?:\.exe)?(?=\s)(?P<args>{_PROGRAM_ARGS})",
                    re.IGNORECASE,
                ),
                _program_flag_pattern(flag, style),
            )
            for names, flag, style in _PROGRAM_FLAGS
        ]

    def __call__(self, command: str) -> str:
        """Return ``command`` with every recognised secret value replaced by ``MASK``."""
        if not command:
            return command
        text, lowered = command, command.lower()
        if "@" in text:
            text = _URL_USERPASS.sub(_mask_group_v, text)
            text = _URL_TOKEN_USER.sub(_mask_group_v, text)
        if (
            self._key_value is not None
            and self._flag_value is not None
            and any(hint in lowered for hint in self._word_hints)
        ):
            text = self._key_value.sub(self._mask_key_value, text)
            text = self._flag_value.sub(self._mask_key_value, text)
        if not any(hint in lowered for hint in _PROGRAM_HINTS):
            return text
        for program, flag_value in self._programs:
            text = program.sub(
                lambda m, fv=flag_value: (
                    m.group(0)[: m.start("args") - m.start()]
                    + fv.sub(_mask_group_v, m.group("args"))
                ),
                text,
            )
        return text

    def _mask_key_value(self, match: re.Match[str]) -> str:
        start = match.start()
        keep = match.group(0)[: match.start("sep") - start + len(match.group("sep"))]
        scheme = match.group("scheme") or ""
        if match.group("q") is not None:
            quote = match.group("q")
            return f"{keep}{scheme}{quote}{MASK}{quote}"
        value, rest = match.group("v"), ""
        if not match.group("key").startswith("-"):
            # A bare key=value sits in a query string, an option list or a connection
            # string: the value ends at the separator and the rest is scanned again.
            end = _BARE_VALUE_END.search(value)
            if end is not None:
                value, rest = value[: end.start()], value[end.start() :]
                rest = match.re.sub(self._mask_key_value, rest)
        if not value:
            return keep + scheme + rest
        return f"{keep}{scheme}{MASK}{rest}"


def _program_flag_pattern(flag: str, style: str) -> re.Pattern[str]:
    # Case-sensitive on purpose: mysql -P is the port, -p the password.
    if style == "attached":
        return re.compile(rf"(?P<head>(?<=\s)-{flag})(?P<v>\S+)")
    if style == "any":
        return re.compile(rf"(?P<head>(?<=\s)-{flag}\s*)(?P<v>[^\s-]\S*)")
    return re.compile(rf"(?P<head>(?<=\s)(?:-{flag}\s*|--(?:proxy-)?user\s+)[^\s:]*:)(?P<v>\S+)")


def _mask_group_v(match: re.Match[str]) -> str:
    return match.group("head") + MASK
