"""The dashboard's inventory cards in headless Chromium: the search box shows what
/api/processes/search returns (host, pid, started, command), and the "new since" panel what
/api/processes/new returns, on identities seeded straight into process_identities."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ingest_gateway.app import create_app
from ingest_gateway.auth import TokenStore
from ingest_gateway.settings import GatewaySettings
from tests.browser.test_dashboard import ARTIFACTS, new_browser

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# server, pid, name, command, started this long ago, last seen this long ago
PROCESSES = (
    ("web-01", 812, "nginx", "nginx: master process /usr/sbin/nginx", timedelta(days=3),
     timedelta(seconds=30)),
    ("web-02", 913, "nginx", "nginx: worker <b>process</b>", timedelta(hours=2),
     timedelta(seconds=30)),
    ("web-01", 77, "sshd", "sshd: /usr/sbin/sshd -D", timedelta(days=3), timedelta(days=2)),
    ("web-02", 4242, "newagent", "/opt/newagent --fleet", timedelta(hours=1),
     timedelta(seconds=30)),
    ("web-01", 4243, "newagent", "/opt/newagent --fleet", timedelta(hours=3),
     timedelta(seconds=30)),
)


@pytest_asyncio.fixture
async def inventory_dashboard(redis_url, redis, migrated_database):
    conn = await asyncpg.connect(migrated_database)
    now = await conn.fetchval("SELECT now()")
    await conn.executemany(
        "INSERT INTO servers (server_id, hostname, os_type, first_seen_at, last_seen_at) "
        "VALUES ($1, $1 || '.example', 'linux', $2, $3)",
        [(s, now - timedelta(days=3), now) for s in ("web-01", "web-02")])
    await conn.executemany(
        "INSERT INTO process_identities (key, server_id, pid, start_time, first_seen, "
        "last_seen, username, name, command) VALUES (process_key($1, $2, $3), $1, $2, $3, $3, "
        "$4, 'root', $5, $6)",
        [(s, pid, now - started, now - last, name, command)
         for s, pid, name, command, started, last in PROCESSES])
    await conn.close()
    _, token = await TokenStore(redis).create("read", "browser-test")
    settings = GatewaySettings(redis_url=redis_url, database_url=migrated_database,
                               token_refresh_s=0.2)
    server = TestServer(create_app(settings))
    await server.start_server()
    yield server, token
    await server.close()


def wait_card(browser, card: str, state: str) -> None:
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, card).get_attribute("data-state") == state)


def table(browser, tbody: str) -> list[dict[str, str]]:
    return [{td.get_attribute("data-field"): td.text
             for td in tr.find_elements(By.TAG_NAME, "td")}
            for tr in browser.find_elements(By.CSS_SELECTOR, f"#{tbody} tr")]


async def api(server: TestServer, token: str, path: str, params: dict[str, str]) -> dict:
    async with ClientSession() as session:
        response = await session.get(server.make_url(path), params=params,
                                     headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
        return await response.json()


async def test_search_box_and_new_since_panel_show_the_api(inventory_dashboard):
    server, token = inventory_dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    browser = await asyncio.to_thread(new_browser)
    try:
        await asyncio.to_thread(browser.get, str(server.make_url("/")) + f"#token={token}")
        await asyncio.to_thread(wait_card, browser, "new-card", "ready")
        # new in the last 24 h: newagent on both servers; nginx only on web-02, which is new
        # there (web-01 ran it before); sshd is not new anywhere
        shown = table(browser, "new-rows")
        assert [(r["name"], r["servers"]) for r in shown] == [("newagent", "2"),
                                                               ("nginx", "1")]
        assert shown[0]["command"] == "/opt/newagent --fleet"

        browser.find_element(By.ID, "inv-q").send_keys("NGINX")
        browser.find_element(By.CSS_SELECTOR, "#inv-form button[type=submit]").click()
        await asyncio.to_thread(wait_card, browser, "inv-card", "ready")
        expected = (await api(server, token, "/api/processes/search",
                              {"q": "NGINX", "hours": "24"}))["processes"]
        shown = table(browser, "inv-rows")
        assert [(r["host"], r["pid"]) for r in shown] == [
            (p["hostname"], str(p["pid"])) for p in expected]
        assert {r["host"] for r in shown} == {"web-01.example", "web-02.example"}
        # markup in a command line is shown as text, never parsed
        assert "nginx: worker <b>process</b>" in [r["command"] for r in shown]
        assert not browser.find_elements(By.CSS_SELECTOR, "#inv-rows b")

        browser.find_element(By.ID, "inv-q").clear()
        browser.find_element(By.ID, "inv-q").send_keys("sshd")
        browser.find_element(By.CSS_SELECTOR, "#inv-form button[type=submit]").click()
        await asyncio.to_thread(wait_card, browser, "inv-card", "empty")  # last seen 2 d ago
        await asyncio.to_thread(browser.save_screenshot, str(ARTIFACTS / "dashboard-inventory.png"))
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        await asyncio.to_thread(browser.quit)
