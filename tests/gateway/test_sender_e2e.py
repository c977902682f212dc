"""The agent's Sender posting to a real gateway on a real port, with a real Redis behind it."""

from __future__ import annotations

import httpx
import orjson
import pytest

from agent.contract import Report
from agent.errors import DeliveryError
from agent.report import new_report_id
from agent.sender import GatewayAuthError, Sender
from ingest_gateway import stream
from ingest_gateway.app_state import STATE
from ingest_gateway.auth import TokenStore
from tests.support.reports import report_doc, total_messages

pytestmark = pytest.mark.integration


def agent_report(server_id: str = "agent-host", processes: int = 25) -> bytes:
    """A report as the agent serialises it (pydantic's model_dump_json)."""
    doc = report_doc(server_id=server_id, processes=processes, groups=3,
                     report_id=new_report_id())
    return Report.model_validate_json(orjson.dumps(doc)).model_dump_json().encode()


def sender_for(gateway, client: httpx.AsyncClient, token: str | None = None, **kwargs) -> Sender:
    url = str(gateway.client.make_url("/")).rstrip("/")
    return Sender(client, url, token or gateway.ingest_token, **kwargs)


async def test_sender_delivers_a_report_and_a_replay_is_a_duplicate(gateway, redis):
    body = agent_report()
    report_id = orjson.loads(body)["report_id"]
    async with httpx.AsyncClient() as client:
        sender = sender_for(gateway, client)
        first = await sender.send(body, report_id=report_id)
        replay = await sender.send(body, report_id=report_id)

    assert (first.status, first.duplicate) == (202, False)
    assert (replay.status, replay.duplicate) == (200, True)
    assert await total_messages(redis, 4) == 1 + 3 + 25
    (messages,) = [await redis.xrange(stream.sample_stream(s)) for s in range(4)
                   if await redis.xlen(stream.sample_stream(s))]
    kind, row = stream.decode(messages[0][1])
    assert kind == "h" and row[2] == report_id


async def test_sender_honours_retry_after_on_backpressure_then_gives_up(make_gateway, redis):
    gateway = await make_gateway(backlog_high_water=5, retry_after_s=2)
    async with httpx.AsyncClient() as client:
        await sender_for(gateway, client).send(agent_report("busy"))
        monitor = gateway.app[STATE].monitor
        await monitor.refresh()
        slept: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)

        sender = sender_for(gateway, client, max_attempts=3, sleep=fake_sleep)
        with pytest.raises(DeliveryError, match="HTTP 503"):
            await sender.send(agent_report("busy"))

    assert slept == [2.0, 2.0]  # the gateway's Retry-After, not the sender's own backoff
    assert await total_messages(redis, 4) == 1 + 3 + 25


async def test_sender_gets_an_auth_error_for_a_revoked_token(gateway, redis):
    await TokenStore(redis).revoke(gateway.ingest_token.split("_", 2)[1])
    await gateway.refresh_tokens()
    async with httpx.AsyncClient() as client:
        with pytest.raises(GatewayAuthError) as raised:
            await sender_for(gateway, client).send(agent_report())
    assert raised.value.status == 401
    assert await total_messages(redis, 4) == 0
