"""The scrubber against a corpus of realistic command lines: every leaking one is scrubbed,
every ordinary one comes through unchanged (tests/agent/scrub_corpus.py)."""

from __future__ import annotations

import pytest

from agent.scrub import MASK, Scrubber
from tests.agent.scrub_corpus import LEAKS, ORDINARY


@pytest.fixture(scope="module")
def scrub() -> Scrubber:
    return Scrubber()


def test_the_corpus_is_big_enough_to_mean_something():
    assert len(LEAKS) >= 50 and len(ORDINARY) >= 50
    assert len({line for line, _ in LEAKS}) == len(LEAKS)


@pytest.mark.parametrize(("command", "secret"), LEAKS, ids=[c[:48] for c, _ in LEAKS])
def test_every_leaking_command_line_is_scrubbed(scrub, command, secret):
    out = scrub(command)
    assert secret not in out and MASK in out
    assert scrub(out) == out  # idempotent


@pytest.mark.parametrize("command", ORDINARY, ids=[c[:48] for c in ORDINARY])
def test_ordinary_command_lines_come_through_unchanged(scrub, command):
    assert scrub(command) == command


@pytest.mark.parametrize(("command", "expected"), [
    ("java -jar app.jar --secretKey=K1 --port 8080",
     f"java -jar app.jar --secretKey={MASK} --port 8080"),
    ("aws configure set aws_secret_access_key V1 --profile p",
     f"aws configure set aws_secret_access_key {MASK} --profile p"),
    ("rabbitmqctl add_user U1 V1", f"rabbitmqctl add_user U1 {MASK}"),
    ("htpasswd -b F U1 V1", f"htpasswd -b F U1 {MASK}"),
    ("smbclient //s/x -U u1%V1 -c ls", f"smbclient //s/x -U u1%{MASK} -c ls"),
    ("net use Z: \\\\s\\x /user:U1 V1", f"net use Z: \\\\s\\x /user:U1 {MASK}"),
    ("schtasks /create /ru U1 /rp V1 /tn t", f"schtasks /create /ru U1 /rp {MASK} /tn t"),
    ("deploy AKIAIOSFODNN7EXAMPLE eu-west-1", f"deploy {MASK} eu-west-1"),
])
def test_only_the_secret_is_masked_and_the_rest_is_kept(scrub, command, expected):
    assert scrub(command) == expected


def test_words_added_by_the_user_stay_whole_words():
    scrub = Scrubber(["license"])
    assert scrub("app --license L1 --licensed-to acme") == f"app --license {MASK} " \
        "--licensed-to acme"
