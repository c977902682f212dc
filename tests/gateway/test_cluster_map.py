"""The cluster slot map's parsing: redirections and ``CLUSTER SLOTS`` replies (the behaviour
on a real cluster is in tests/cluster)."""

from __future__ import annotations

import hiredis

from ingest_gateway.ingest.cluster import parse_redirect, parse_slots, slot_of


def test_moved_and_ask_name_the_slot_and_the_node():
    assert parse_redirect(hiredis.ReplyError("MOVED 3999 127.0.0.1:6381")) == (
        "MOVED", 3999, ("127.0.0.1", 6381))
    assert parse_redirect(hiredis.ReplyError("ASK 12 10.0.0.5:7000")) == (
        "ASK", 12, ("10.0.0.5", 7000))


def test_other_errors_are_not_redirections():
    for text in ("CLUSTERDOWN The cluster is down", "ERR wrong number of arguments",
                 "TRYAGAIN Multiple keys request during rehashing of slot"):
        assert parse_redirect(hiredis.ReplyError(text)) is None


def test_slots_reply_gives_every_slot_its_master_and_every_node():
    reply = [[0, 5460, [b"127.0.0.1", 7000, b"id-a"], [b"127.0.0.1", 7003, b"id-d"]],
             [5461, 10922, [b"127.0.0.1", 7001, b"id-b"]],
             [10923, 16383, [b"127.0.0.1", 7002, b"id-c"], [b"127.0.0.1", 7005, b"id-f"]]]
    owners, nodes = parse_slots(reply)
    assert len(owners) == 16384
    assert owners[0] == owners[5460] == ("127.0.0.1", 7000)
    assert owners[slot_of("procfleet:samples:{0}")] in {("127.0.0.1", p) for p in (7000, 7001,
                                                                                    7002)}
    assert nodes == {("127.0.0.1", p) for p in (7000, 7001, 7002, 7003, 7005)}


def test_a_shard_and_its_dead_letter_stream_share_a_slot():
    for shard in range(16):
        assert slot_of(f"procfleet:samples:{{{shard}}}") == slot_of(f"procfleet:dead:{{{shard}}}")
        assert slot_of(f"procfleet:samples:{{{shard}}}") == slot_of(
            f"procfleet:aof_barrier:{{{shard}}}")
