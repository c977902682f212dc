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
- per-program arguments, only after that program's name (``_PROGRAM_RULES``): ``-pSECRET``
  (attached value only) for the mysql/mariadb family, where ``-p`` alone prompts and ``-p db``
  names a database; ``-a PASS`` for redis-cli and friends; ``-p PASS`` for sshpass and the
  mongo tools; ``-u user:PASS`` for curl; ``-w PASS`` for the OpenLDAP clients; ``-P PASS``
  for sqlcmd/bcp/osql; ``-U user%PASS`` for smbclient and friends; ``net use … /user:U PASS``
  (and the password before ``/user:``, and ``net user NAME PASS``); ``schtasks /RP PASS`` and
  ``/P PASS``; ``aws configure set <a *secret*/*token*/*key* name> VALUE``;
  ``rabbitmqctl add_user|change_password USER PASS``; ``htpasswd -b [FILE] USER PASS``.
  Elsewhere ``-p`` is a port (ssh, psql, docker) and is kept;
- well-known token shapes with no keyword at all (``_TOKEN_SHAPES``): JWTs (``eyJ….….…``),
  GitHub (``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``, ``github_pat_``), GitLab ``glpat-``,
  AWS access key ids (``AKIA``/``ASIA`` + 16), Stripe ``sk_live_``/``rk_live_``/``_test_``,
  Slack ``xox?-``, Google ``AIza``, npm ``npm_``; and the secret path of Slack and Discord
  webhook URLs.

When is a key sensitive? When one of the words occurs in it (case-insensitive). The strong
words (``SUBSTRING_WORDS``: password, passwd, secret, credential, api_key, access_key, …) match
anywhere, as Datadog's ``*secret*``: ``--secretKey``, ``APP_SECRETS``, ``--passwordFile``. The
others (pass, pwd, token, auth, cookie, signature, and every word added with ``scrub_words``)
must not be followed by another letter: ``--db-pass``, ``MYSQL_PWD``, ``--auth-type`` match;
``--tokenizer-model``, ``--max-tokens``, ``--author`` and ``--passive`` do not. An ``_``
inside a word matches ``_``, ``-``, ``.`` or nothing, so ``api_key`` also covers ``api-key``,
``apiKey`` and ``apikey``. Erring towards masking is the intent: a masked harmless value costs
little, a leaked password costs a lot (so ``--authorization-mode=RBAC`` loses its value).

Limits (ps prints argv joined by spaces, so quoting is lost): an unquoted value ends at
whitespace, so ``--password my secret`` leaks ``secret``; in bare ``key=value`` forms the value
also ends at ``&``, ``,`` or ``;`` (query strings, mount options, connection strings). A
secret given as a plain argument to a program not listed above (``myapp deploy S3cr3t``), a
random token of no known shape, or a password in an environment variable (which ``ps`` does
not show) are not found. ``tests/agent/scrub_corpus.py`` lists what is and is not scrubbed.
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
# Words matched anywhere inside a longer word, as Datadog's ``*secret*``: ``--secretKey``,
# ``APP_SECRETS``, ``--passwordFile``. The others must not be followed by a letter, because
# ordinary words continue them (``--max-tokens``, ``--author``, ``--passive``).
SUBSTRING_WORDS: frozenset[str] = frozenset({
    "password", "passwd", "pass_phrase", "secret", "api_key", "apikey", "access_key",
    "private_key", "credential", "credentials",
})

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
# (Unrolled: a per-character alternation costs ~5x more in Python's re.)
_PROGRAM_STARTS = frozenset(" \t\n/\\'\"")  # what may precede a program's name
_PROGRAM_ARGS = r"[^;|&]*(?:(?<!\s)&(?![&\s])[^;|&]*)*"

_URL_USERPASS = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s:/?#@'\"]*:)(?P<v>[^\s/?#'\"]+)(?=@)", re.IGNORECASE
)
_URL_TOKEN_USER = re.compile(
    r"(?P<head>\b(?:git\+)?https?://)(?P<v>[^\s:/?#@'\"]+)(?=@)", re.IGNORECASE
)

# Programs whose arguments carry a secret in a form only they define, and how to find it in
# their arguments: (program names, ((pattern with groups "head" and "v", regex flags), ...)).
# Names match the basename, optionally with ``.exe``. Flags are case-sensitive unless marked
# (mysql -P is the port, -p the password); Windows programs' are not.
_ANY = r"(?P<v>[^\s-]\S*)"  # a separate or attached value that is not the next flag


def _flag(flag: str, style: str = "any") -> tuple[str, int]:
    if style == "attached":  # -pVALUE only: -p alone prompts, -p db names a database
        return rf"(?P<head>(?<=\s)-{flag})(?P<v>\S+)", 0
    if style == "userpass":  # -u user:VALUE
        return rf"(?P<head>(?<=\s)(?:-{flag}\s*|--(?:proxy-)?user\s+)[^\s:]*:)(?P<v>\S+)", 0
    return rf"(?P<head>(?<=\s)-{flag}\s*){_ANY}", 0


_PROGRAM_RULES: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    (r"mysql[\w-]*|mariadb[\w-]*", (_flag("p", "attached"),)),
    (r"(?:redis|valkey|keydb)-(?:cli|benchmark)", (_flag("a"),)),
    (r"sshpass|mongo|mongosh|mongodump|mongorestore|mongoexport|mongoimport|mongostat"
     r"|mongotop", (_flag("p"),)),
    (r"curl", (_flag("u", "userpass"), _flag("U", "userpass"))),
    # OpenLDAP clients: -w PASSWORD (-W prompts)
    (r"ldap(?:search|add|modify|delete|whoami|passwd|compare|modrdn|exop|url)", (_flag("w"),)),
    # SQL Server tools: -P PASSWORD
    (r"sqlcmd|bcp|osql|isql", (_flag("P"),)),
    # Samba: -U user%PASSWORD, --user=user%PASSWORD
    (r"smbclient|rpcclient|smbmap|smbget|smbcacls|smbtree",
     ((r"(?P<head>(?<=\s)(?:-U\s*|--user(?:name)?[=\s]\s*)['\"]?[^\s%'\"]*%)"
       r"(?P<v>[^\s'\"]+)", 0),)),
    # Windows net: net use [\\srv\share] [PASSWORD] /user:U [PASSWORD]; net user NAME PASSWORD
    (r"net", ((r"(?P<head>(?<=\s)/user:\S+\s+)(?P<v>[^\s/*]\S*)", re.IGNORECASE),
              (r"(?P<head>(?<=\s)\\\\\S+\s+)(?P<v>[^\s/*]\S*)", 0),
              (r"(?P<head>(?<=\s)user\s+[^\s/]\S*\s+)(?P<v>[^\s/*]\S*)", re.IGNORECASE))),
    # schtasks /RP PASSWORD (run-as), /P PASSWORD (of /U)
    (r"schtasks", ((r"(?P<head>(?<=\s)/r?p\s+)(?P<v>[^\s/]\S*)", re.IGNORECASE),)),
    # aws configure set aws_secret_access_key VALUE (any key naming a secret)
    (r"aws", ((r"(?P<head>(?<=\s)configure\s+set\s+\S*(?:secret|token|password|key)\S*\s+)"
               r"(?P<v>\S+)", re.IGNORECASE),)),
    # rabbitmqctl add_user USER PASSWORD (and change_password, authenticate_user)
    (r"rabbitmqctl(?:\.bat)?",
     ((r"(?P<head>(?<=\s)(?:add_user|change_password|authenticate_user)\s+\S+\s+)"
       r"(?P<v>\S+)", 0),)),
    # htpasswd -b[c|n…] [FILE] USER PASSWORD: the password is the last argument
    (r"htpasswd", ((r"(?P<head>(?<=\s)-[A-Za-z]*b[A-Za-z]*\s+(?:-\S+\s+)*(?:\S+\s+){1,2})"
                    r"(?P<v>[^\s-]\S*)(?=\s*\Z)", 0),)),
)

# Substrings (lowercase) one of which every program name above contains; a line with none of
# them skips the program patterns.
_PROGRAM_HINTS = ("mysql", "mariadb", "redis-", "valkey-", "keydb-", "sshpass", "mongo", "curl",
                  "ldap", "sqlcmd", "bcp", "osql", "isql", "smb", "rpcclient", "net ", "net.exe",
                  "schtasks", "aws", "rabbitmqctl", "htpasswd")

# Well-known token shapes, masked wherever they appear, with no keyword needed: JSON Web Tokens,
# GitHub, GitLab, AWS access key ids, Stripe, Slack, Google API keys, npm. Case-sensitive: the
# prefixes are. A hint (lowercase) of each gates the pattern.
_TOKEN_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{10,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AIza[A-Za-z0-9_-]{35}"
    r"|npm_[A-Za-z0-9]{36}"
    r")(?![A-Za-z0-9_])"
)
_TOKEN_HINTS = ("eyj", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "akia",
                "asia", "k_live_", "k_test_", "xox", "aiza", "npm_")
# Webhook URLs whose path is the secret (Slack, Discord).
_WEBHOOK_PATH = re.compile(
    r"(?P<head>hooks\.slack\.com/(?:services|workflows|triggers)/"
    r"|discord(?:app)?\.com/api/webhooks/)(?P<v>[A-Za-z0-9/_-]+)",
    re.IGNORECASE,
)


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
    ``replace_defaults=True``). URL credentials, the per-program rules and the token shapes
    are always scrubbed.
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
            # Longest first so "credentials" wins over "credential" in the alternation; one
            # flat alternation (nested groups cost Python's re its quick first-letter check).
            word = "|".join(
                _word_pattern(w) + ("" if w in SUBSTRING_WORDS else "(?![A-Za-z])")
                for w in sorted(self.words, key=len, reverse=True))
            key = (
                rf"[\w.\-]{{0,{_MAX_KEY_CHARS}}}?(?:{word})"
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
        # One pass finds every listed program (the name tells which rules apply), rather than
        # one pass per program.
        # The pattern starts with the names, not with a look-behind for the character before
        # them: that lets re skip to the positions where a name can start (~4x faster); the
        # character before is checked in ``_mask_program_args``.
        self._program = re.compile(
            r"(?P<name>"
            + "|".join(f"(?:{names})" for names, _ in _PROGRAM_RULES)
            + rf")(?:\.exe)?(?=\s)(?P<args>{_PROGRAM_ARGS})",
            re.IGNORECASE,
        )
        self._program_args = [
            (re.compile(names, re.IGNORECASE),
             [re.compile(pattern, flags) for pattern, flags in args])
            for names, args in _PROGRAM_RULES
        ]

    def __call__(self, command: str) -> str:
        """Return ``command`` with every recognised secret value replaced by ``MASK``."""
        if not command:
            return command
        text, lowered = command, command.lower()
        if any(hint in lowered for hint in _TOKEN_HINTS):
            text = _TOKEN_SHAPES.sub(MASK, text)
        if "/" in text and ("hooks.slack" in lowered or "/webhooks/" in lowered):
            text = _WEBHOOK_PATH.sub(_mask_group_v, text)
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
        return self._program.sub(self._mask_program_args, text)

    def _mask_program_args(self, match: re.Match[str]) -> str:
        """A program's match with each of its secret arguments masked."""
        start = match.start()
        if start and match.string[start - 1] not in _PROGRAM_STARTS:
            return match.group(0)  # a longer word ending in a name ("xmysql"): not the program
        name, args = match.group("name"), match.group("args")
        for names, patterns in self._program_args:
            if names.fullmatch(name):
                for pattern in patterns:
                    args = pattern.sub(_mask_group_v, args)
        return match.group(0)[: match.start("args") - match.start()] + args

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




def _mask_group_v(match: re.Match[str]) -> str:
    return match.group("head") + MASK
