"""A customer's browser: headless Chromium opens the bank's page through HAProxy, submits the
transfer form with a real click, and sees the new balances on the page it is sent back to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from bknrctl.main import app as cli
from typer.testing import CliRunner

from tests.cluster.harness import LocalCluster
from tests.support import free_ports, wait_until
from tests.web.browser import CHROMIUM, Page, start_chromium
from tests.web.test_haproxy import HAPROXY, start_haproxy
from tests.web.test_hosted_app import http

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(HAPROXY).exists()),
                                reason="needs chromium and haproxy (scripts/install-deps.sh)")


def test_browser_transfer_through_haproxy(tmp_path: Path, procs) -> None:
    cluster = LocalCluster(tmp_path, procs, 3, app={"asgi": "examples.bank.web:app"},
                           election_timeout_ms=300, heartbeat_ms=30)
    (write,) = free_ports(1)
    conf = tmp_path / "haproxy.cfg"
    r = CliRunner().invoke(cli, ["-c", str(cluster.config_path), "lb", "haproxy", "-o", str(conf),
                                 "--write-port", str(write), "--read-port", "0"])
    assert r.exit_code == 0, r.output
    cluster.init()
    cluster.start_all()
    leader = cluster.wait_leader()
    start_haproxy(procs, conf, write)
    front = f"http://127.0.0.1:{write}"
    wait_until(lambda: http(front + "/accounts", {"owner": "ann", "balance": 100})[0] == 200, 10,
               "the bank through haproxy")
    assert http(front + "/accounts", {"owner": "bob", "balance": 50})[0] == 200
    port = start_chromium(procs, tmp_path / "chromium")

    async def customer() -> dict:
        async with aiohttp.ClientSession() as session:
            page = await Page.open(session, port)
            await page.goto(front + "/")
            before = await page.js("document.querySelector('#node').textContent + ' ' + "
                                   "document.querySelector('#role').textContent")
            await page.js("document.querySelector('select[name=from]').value = 'ann';"
                          "document.querySelector('select[name=to]').value = 'bob'")
            await page.type_into("input[name=amount]", "30")
            await page.click("#transfer button")
            await page.wait_event("Page.loadEventFired")   # POST, 303, the page again
            return {
                "before": before,
                "url": await page.js("location.href"),
                "message": await page.js("document.querySelector('#message').textContent"),
                "balances": await page.js(
                    "Object.fromEntries([...document.querySelectorAll('td.balance')]"
                    ".map(td => [td.dataset.owner, Number(td.textContent)]))"),
                "served": await page.js("document.querySelector('#node').textContent"),
            }
    seen = asyncio.run(customer())
    assert seen["before"] == f"{leader} leader"
    assert seen["message"] == "transferred 30" and seen["url"].startswith(front + "/?msg=")
    assert seen["balances"] == {"ann": 70, "bob": 80} and seen["served"] == leader
    cluster.wait_converged()
    for name in cluster.names:   # every replica applied it, once
        assert cluster.client(name).query("account", "ann")["result"]["balance"] == 70
