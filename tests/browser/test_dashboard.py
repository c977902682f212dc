"""The dashboard in headless Chromium against a seeded database: it loads with a token from
the URL fragment, switches metric and time range, shows the rows the API returns, and leaves
screenshots in tests/artifacts/ (gitignored).

Needs the Debian packages chromium and chromium-driver (installed by .ci/run); Selenium is
pointed at /usr/bin/chromedriver so that Selenium Manager never downloads anything.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from digest_worker.rollup import refresh_rollups
from ingest_gateway.app import create_app
from ingest_gateway.auth import TokenStore
from ingest_gateway.settings import GatewaySettings

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--window-size=1440,900")
SERVERS = (("web-01", 1.0), ("web-02", 0.7), ("db-01", 1.3), ("batch-01", 0.4))
# name, cores, memory MiB, processes
GROUPS = (("postgres", 1.6, 3072, 14), ("nginx", 0.9, 220, 5), ("java", 1.2, 4600, 2),
          ("node", 0.5, 780, 4), ("redis-server", 0.35, 1500, 1), ("sshd", 0.02, 12, 3),
          ("cron", 0.01, 6, 1), ("prometheus", 0.25, 900, 1), ("fluent-bit", 0.12, 95, 1),
          ("kworker", 0.06, 0, 9), ("containerd", 0.18, 140, 1), ("dockerd", 0.08, 160, 1))
# Straight into the identity and point tables (migrations/0003): the process_group_samples
# view takes inserts too, but one row at a time.
SEED_SQL = """
WITH samples AS MATERIALIZED (
SELECT s.id AS server_id, t AS ts, g.name, g.procs AS num_procs,
       0.8 * g.cores * s.scale * c.cpu AS cpu_user, 0.2 * g.cores * s.scale * c.cpu AS cpu_system,
       (g.mem * s.scale * (1 + 0.15 * sin(c.phase)) * 1048576)::bigint AS memory
FROM unnest($3::text[], $4::float8[]) AS s(id, scale),
     unnest($5::text[], $6::float8[], $7::float8[], $8::int[]) AS g(name, cores, mem, procs),
     generate_series($1::timestamptz, $2::timestamptz, interval '30 seconds') AS t,
     LATERAL (SELECT extract(epoch FROM t - $1::timestamptz) AS x) AS e,
     -- a daily wave: the counter is the integral of cores * (1 + 0.5 sin(2 pi x / day))
     LATERAL (SELECT e.x + 0.5 * 86400 / (2 * pi()) * (1 - cos(2 * pi() * e.x / 86400)) AS cpu,
                     2 * pi() * e.x / 86400 + length(g.name) AS phase) AS c
), series AS (
    INSERT INTO process_groups (key, server_id, first_seen, last_seen, name)
    SELECT group_key(server_id, name), server_id, min(ts), max(ts), name
    FROM samples GROUP BY server_id, name
)
INSERT INTO process_group_points (key, ts, num_procs, cpu_user_seconds_total,
                                  cpu_system_seconds_total, memory_resident_bytes)
SELECT group_key(server_id, name), ts, num_procs, cpu_user, cpu_system, memory
FROM samples ORDER BY ts
"""


@pytest_asyncio.fixture
async def dashboard(redis_url, redis, migrated_database):
    """A gateway on a local port over a database with 3 days of samples, and a read token."""
    url = migrated_database
    conn = await asyncpg.connect(url)
    now = await conn.fetchval("SELECT now()")
    # Samples run 10 minutes into the future so a sliding "last hour" stays full.
    await conn.execute(SEED_SQL, now - timedelta(days=3), now + timedelta(minutes=10),
                       [s for s, _ in SERVERS], [k for _, k in SERVERS],
                       [g[0] for g in GROUPS], [g[1] for g in GROUPS],
                       [float(g[2]) for g in GROUPS], [g[3] for g in GROUPS])
    await conn.executemany(
        "INSERT INTO servers (server_id, hostname, os_type, agent_version, first_seen_at, "
        "last_seen_at) VALUES ($1, $1 || '.example', 'linux', '0.1.0', $2, $3)",
        [(s, now - timedelta(days=3), now - timedelta(hours=2) if s == "batch-01" else now)
         for s, _ in SERVERS])
    await conn.execute("ANALYZE")
    await refresh_rollups(conn, now=now, retention_days=4, max_chunks=200)
    await conn.close()
    _, token = await TokenStore(redis).create("read", "browser-test")
    settings = GatewaySettings(redis_url=redis_url, database_url=url, token_refresh_s=0.2)
    server = TestServer(create_app(settings))
    await server.start_server()
    yield server, token
    await server.close()


def new_browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_for(browser: webdriver.Chrome, state: str, query: str | None = None) -> None:
    def ready(driver) -> bool:
        body = driver.find_element(By.TAG_NAME, "body")
        return (body.get_attribute("data-state") == state
                and (query is None or body.get_attribute("data-query") == query))
    WebDriverWait(browser, 30).until(ready)


def shown_rows(browser: webdriver.Chrome) -> list[dict]:
    rows = []
    for tr in browser.find_elements(By.CSS_SELECTOR, "#top-rows tr"):
        row = {"name": tr.get_attribute("data-name")}
        for td in tr.find_elements(By.CSS_SELECTOR, "td[data-field]"):
            row[td.get_attribute("data-field")] = float(td.get_attribute("data-value"))
        rows.append(row)
    return rows


async def api_rows(server: TestServer, token: str, metric: str, hours: int) -> list[dict]:
    from aiohttp import ClientSession

    async with ClientSession() as session:
        response = await session.get(server.make_url("/api/processes/top"), params={
            "metric": metric, "hours": str(hours), "limit": "10"},
            headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200, await response.text()
        return (await response.json())["processes"]


def assert_rows_match(shown: list[dict], expected: list[dict]) -> None:
    assert [r["name"] for r in shown] == [p["name"] for p in expected]
    for row, want in zip(shown, expected, strict=True):
        for field in ("avg_cpu_percent", "peak_cpu_percent", "avg_memory_mb",
                      "peak_memory_mb", "avg_num_procs", "servers"):
            # The page and this check ask a few seconds apart over a sliding window.
            assert row[field] == pytest.approx(want[field], rel=0.02, abs=0.05), (row, want)


async def test_dashboard_shows_what_the_api_returns(dashboard):
    server, token = dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    browser = await asyncio.to_thread(new_browser)
    try:
        await asyncio.to_thread(browser.get, str(server.make_url("/")) + f"#token={token}")
        await asyncio.to_thread(wait_for, browser, "ready", "cpu:1")
        assert "token=" not in browser.current_url  # the fragment is dropped at once
        assert browser.execute_script(
            "return localStorage.getItem('procfleet.token')") == token
        assert_rows_match(shown_rows(browser), await api_rows(server, token, "cpu", 1))
        assert browser.find_elements(By.CSS_SELECTOR, "#chart-svg path.series-line")
        assert browser.find_element(By.ID, "chart-title").text == "postgres"
        await asyncio.to_thread(browser.save_screenshot, str(ARTIFACTS / "dashboard-cpu-1h.png"))

        browser.find_element(By.CSS_SELECTOR, "#metric button[data-metric=memory]").click()
        await asyncio.to_thread(wait_for, browser, "ready", "memory:1")
        assert_rows_match(shown_rows(browser), await api_rows(server, token, "memory", 1))
        assert shown_rows(browser)[0]["name"] == "java"
        await asyncio.to_thread(browser.save_screenshot,
                                str(ARTIFACTS / "dashboard-memory-1h.png"))

        for hours in (24, 168):
            browser.find_element(By.CSS_SELECTOR, f"#range button[data-hours='{hours}']").click()
            await asyncio.to_thread(wait_for, browser, "ready", f"memory:{hours}")
            assert_rows_match(shown_rows(browser), await api_rows(server, token, "memory",
                                                                  hours))
        browser.find_element(By.CSS_SELECTOR, "#metric button[data-metric=cpu]").click()
        await asyncio.to_thread(wait_for, browser, "ready", "cpu:168")
        assert_rows_match(shown_rows(browser), await api_rows(server, token, "cpu", 168))
        browser.find_element(By.CSS_SELECTOR, "#top-rows tr[data-name=nginx]").click()
        WebDriverWait(browser, 10).until(
            lambda d: d.find_element(By.ID, "chart-title").text == "nginx")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(browser.save_screenshot, str(ARTIFACTS / "dashboard-cpu-7d.png"))
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        await asyncio.to_thread(browser.quit)


async def test_dashboard_asks_for_a_token_when_it_is_rejected(dashboard):
    server, _ = dashboard
    browser = await asyncio.to_thread(new_browser)
    try:
        await asyncio.to_thread(browser.get, str(server.make_url("/")) + "#token=pf_bad_token")
        await asyncio.to_thread(wait_for, browser, "token")
        assert browser.find_element(By.ID, "token-card").is_displayed()
        assert "rejected" in browser.find_element(By.ID, "token-error").text
    finally:
        await asyncio.to_thread(browser.quit)


async def test_another_site_cannot_frame_the_dashboard(dashboard):
    server, _ = dashboard
    target = str(server.make_url("/"))

    async def framing_page(request):
        from aiohttp import web

        return web.Response(text=f'<html><body><iframe id="victim" src="{target}" '
                                 f'width="800" height="600"></iframe></body></html>',
                            content_type="text/html")

    from aiohttp import web

    other = web.Application()
    other.router.add_get("/", framing_page)
    attacker = TestServer(other)  # another port: another origin
    await attacker.start_server()
    browser = await asyncio.to_thread(new_browser)
    try:
        await asyncio.to_thread(browser.get, str(attacker.make_url("/")))
        frame = browser.find_element(By.ID, "victim")
        # Chromium has refused the frame once the CSP violation is in the log.
        WebDriverWait(browser, 30).until(lambda d: any(
            "frame-ancestors" in e["message"] for e in d.get_log("browser")))
        browser.switch_to.frame(frame)
        assert browser.find_elements(By.ID, "token-card") == []  # nothing of ours rendered
    finally:
        await asyncio.to_thread(browser.quit)
        await attacker.close()


@pytest_asyncio.fixture
async def young_dashboard(redis_url, redis, migrated_database):
    """A deployment two minutes old: one process group burning a core since its first sample."""
    conn = await asyncpg.connect(migrated_database)
    now = await conn.fetchval("SELECT now()")
    first = now - timedelta(minutes=2)
    await conn.execute(
        "INSERT INTO process_group_samples (server_id, ts, name, num_procs, "
        "cpu_user_seconds_total, cpu_system_seconds_total, memory_resident_bytes) "
        "SELECT 'new-01', $1::timestamptz + i * interval '15 seconds', 'burner', 1, "
        "15.0 * i, 0, 104857600 FROM generate_series(0, 8) AS i", first)
    await conn.execute(
        "INSERT INTO servers (server_id, hostname, os_type, agent_version, first_seen_at, "
        "last_seen_at) VALUES ('new-01', 'new-01.example', 'linux', '0.1.0', $1, $2)",
        first, now)
    await conn.close()
    _, token = await TokenStore(redis).create("read", "browser-test")
    settings = GatewaySettings(redis_url=redis_url, database_url=migrated_database,
                               token_refresh_s=0.2)
    server = TestServer(create_app(settings))
    await server.start_server()
    yield server, token
    await server.close()


async def test_a_young_deployment_shows_its_minutes_not_an_empty_hour(young_dashboard):
    server, token = young_dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    browser = await asyncio.to_thread(new_browser)
    try:
        await asyncio.to_thread(browser.get, str(server.make_url("/")) + f"#token={token}")
        await asyncio.to_thread(wait_for, browser, "ready", "cpu:1")
        (burner,) = shown_rows(browser)
        assert burner["avg_cpu_percent"] > 50  # was ~3 % with the hour as the divisor
        assert "data since" in browser.find_element(By.ID, "table-meta").text
        WebDriverWait(browser, 10).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-svg path.series-line"))
        line = browser.find_element(By.CSS_SELECTOR, "#chart-svg path.series-line")
        first_x = float(line.get_attribute("d")[1:].split(",")[0])
        width = float(browser.find_element(By.ID, "chart-svg").size["width"])
        # the chart starts where the data starts: the line begins in its left part, not in
        # the last few pixels of an hour of nothing
        assert first_x < width / 3, (first_x, width)
        await asyncio.to_thread(browser.save_screenshot,
                                str(ARTIFACTS / "dashboard-young-deployment.png"))
    finally:
        await asyncio.to_thread(browser.quit)
