"""The write path: a report in, one stream message per process out, in the order data flows.

    enroll.py           ``POST /v1/enroll``: an ``enroll`` token buys one host token
    routes.py           ``POST /v1/reports`` and ``POST /v1/commands`` (``ingest`` or ``host``
                        scope; a host token writes its own server only)
    body.py             a bounded, safely inflated request body
    commands_format.py  the raw ps / tasklist format of ``/v1/commands``
    fast_contract.py    the report contract compiled to msgspec (pydantic decides the rest)
    messages.py         a validated report → its stream messages (``ingest_gateway.stream``)
    enqueue.py          every message of a report into its shard's stream, all-or-nothing
    resp.py             raw RESP2 connections for the enqueue fast path
    durability.py       group commit for ``WAITAOF`` (2xx means on disk)
    backpressure.py     each shard's backlog, checked per request (503 + Retry-After)
    topology.py         the shard count, the consumer groups, what the server supports

Imports of our code: ``agent`` (the report contract, the parsers, the scrubber), the stream
contract and the gateway's shared plumbing; nothing of ``query/`` (``.importlinter`` checks it).
"""
