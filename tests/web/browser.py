"""A real headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

No extra Python dependency: the protocol is JSON over a WebSocket, and aiohttp (already a
dependency) speaks WebSocket. Chromium picks a free loopback port itself
(``--remote-debugging-port=0``) and writes it to ``DevToolsActivePort`` in its profile folder.
The caller starts the process through ``tests.support.Processes`` so it is stopped by PID.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import Processes, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def start_chromium(procs: Processes, profile: Path) -> int:
    """Start headless Chromium; returns its DevTools port."""
    profile.mkdir(parents=True, exist_ok=True)
    p = procs.start([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                     "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                     f"--user-data-dir={profile}", "about:blank"], log=profile / "chromium.log")
    port_file = profile / "DevToolsActivePort"

    def ready() -> int | None:
        if p.poll() is not None:
            raise AssertionError(f"chromium exited: {(profile / 'chromium.log').read_text()[-2000:]}")
        text = port_file.read_text() if port_file.exists() else ""
        return int(text.split()[0]) if text.strip() else None
    return wait_until(ready, 30, "chromium's DevTools port")


class Page:
    """One browser tab: navigate, evaluate JavaScript, type, click, wait for page loads."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict] = []

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, port: int) -> Page:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        page = cls(await session.ws_connect(url, max_msg_size=0))
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        return page

    async def call(self, method: str, **params: Any) -> dict:
        mid = next(self._ids)
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._events.append(msg)

    async def wait_event(self, method: str, timeout: float = 30) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method:
                    return self._events.pop(i)
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no {method} within {timeout} s")
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), left)).data)
            self._events.append(msg)

    async def goto(self, url: str) -> None:
        self._events.clear()
        await self.call("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def js(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (press and release)."""
        box = await self.js(f"JSON.stringify(document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect())")
        rect = json.loads(box)
        x, y = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                            clickCount=1)

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the field, select what it holds, and type ``text`` as keyboard input."""
        await self.js(f"(e => {{ e.focus(); e.select(); }})(document.querySelector({json.dumps(selector)}))")
        await self.call("Input.insertText", text=text)
