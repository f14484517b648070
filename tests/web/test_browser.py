"""A customer's browser: headless Chromium opens the bank's page through HAProxy, submits the
transfer form with a real click, and sees the new balances on the page it is sent back to. The
cluster is a secure one (``bknrctl init``): HAProxy reaches the applications over HTTPS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bknr_cluster.cluster.client import ApiClient
from bknr_cluster.cluster.config import ClusterConfig
from bknr_cluster.cluster.tls_config import client_ssl_context
from tests.support import Processes, free_ports, wait_until
from tests.web.browser import CHROMIUM, Page, start_chromium
from tests.web.secure import secure_app_cluster
from tests.web.test_haproxy import HAPROXY, lb_haproxy, start_haproxy
from tests.web.test_hosted_app import http

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(HAPROXY).exists()),
                                reason="needs chromium and haproxy (scripts/install-deps.sh)")


def test_browser_transfer_through_haproxy(tmp_path: Path, procs) -> None:
    with secure_app_cluster(tmp_path) as cfg:
        _browser_transfer(tmp_path, procs, cfg)


def _browser_transfer(tmp_path: Path, procs: Processes, cfg: ClusterConfig) -> None:
    (write,) = free_ports(1)
    conf = tmp_path / "haproxy.cfg"
    assert "check-ssl ssl verify required" in lb_haproxy(cfg.path, conf, write)
    clients = {n.name: ApiClient(n.api_url, cfg.token(), ssl_context=client_ssl_context(cfg))
               for n in cfg.nodes}
    start_haproxy(procs, conf, write)
    front = f"http://127.0.0.1:{write}"
    wait_until(lambda: http(front + "/accounts", {"owner": "ann", "balance": 100})[0] == 200, 10,
               "the bank through haproxy")
    assert http(front + "/accounts", {"owner": "bob", "balance": 50})[0] == 200
    leader = cfg.node_by_id(clients["n1"].status(False)["leader_id"]).name
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
    for c in clients.values():   # every replica applied it, once
        wait_until(lambda c=c: c.query("account", "ann")["result"]["balance"] == 70, 10,
                   "the transfer on every replica")
