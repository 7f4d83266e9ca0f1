"""Headless Chromium driven over the Chrome DevTools protocol, for the browser tests.

Debian's /usr/bin/chromium, a throwaway profile, no network beyond what a page asks of 127.0.0.1. The
protocol (a websocket; aiohttp, already installed with Ray) lets a test click, wait for React to render
and take screenshots, which `--dump-dom` alone cannot do.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from services import descendants, kill_pids, wait_until

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    # keep iframes in the page's process, so that Page.getFrameTree lists them and evaluate(frame=) reaches them
    "--disable-site-isolation-trials", "--disable-features=IsolateOrigins,site-per-process",
]


class Browser:
    """One Chromium process with one page; stop() ends every process it started, by PID."""

    def __init__(self, log_dir: Path):
        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"{CHROMIUM} not found: apt-get install chromium (scripts/test does)")
        self.profile = Path(tempfile.mkdtemp(prefix="etrm-chromium-"))
        self.log = Path(log_dir) / "chromium.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.loop = asyncio.new_event_loop()
        self._ids = 0
        try:
            port_file = self.profile / "DevToolsActivePort"
            wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 60, "chromium devtools",
                       self.proc, self.log)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            self.loop.run_until_complete(self._connect(page["webSocketDebuggerUrl"]))
        except BaseException:
            self.stop()
            raise

    async def _connect(self, url: str) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        self._ids += 1
        await self.ws.send_json({"id": self._ids, "method": method, "params": params})
        while True:  # events arrive in between; this client needs none of them
            raw = await self.ws.receive(timeout=60)
            if raw.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"{method}: devtools connection ended ({raw.type.name}); see {self.log}")
            msg = json.loads(raw.data)
            if msg.get("id") == self._ids:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._call(method, params))

    def evaluate(self, expression: str, frame: str | None = None):
        """The JSON value of a JavaScript expression in the page, or in the child frame whose URL starts
        with `frame` (an iframe's document, even a sandboxed one's, is readable through the protocol)."""
        params = {"expression": expression, "returnByValue": True}
        if frame is not None:
            params["contextId"] = self._frame_context(frame)
        result = self.call("Runtime.evaluate", **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _frame_context(self, url_prefix: str) -> int:
        children = self.call("Page.getFrameTree")["frameTree"].get("childFrames", [])
        ids = [c["frame"]["id"] for c in children if c["frame"].get("url", "").startswith(url_prefix)]
        if not ids:
            raise RuntimeError(f"no child frame at {url_prefix}*")
        return self.call("Page.createIsolatedWorld", frameId=ids[0])["executionContextId"]

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60, what: str = "", frame: str | None = None) -> None:
        """Poll a JavaScript expression until it is truthy (React renders after the data arrives)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(f"!!({expression})", frame):
                    return
            except RuntimeError:  # page or frame still loading
                pass
            time.sleep(0.25)
        raise AssertionError(f"not seen in {timeout}s: {what or expression}\npage text:\n{self.text()[:3000]}")

    def text(self, frame: str | None = None) -> str:
        """What the page (or frame) shows, as rendered text."""
        return self.evaluate("document.body ? document.body.innerText : ''", frame)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def stop(self) -> None:
        if getattr(self, "session", None) is not None:
            self.loop.run_until_complete(self.session.close())
        self.loop.close()
        kill_pids(descendants(self.proc.pid))
        self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)
