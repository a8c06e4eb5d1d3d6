"""Headless Chromium driven through the DevTools protocol (a websocket; no browser download, no Playwright):
open a page, wait for a condition, evaluate JavaScript, take a screenshot.

    with Chromium(tmp_path) as browser:
        browser.open("http://127.0.0.1:4200/...")
        browser.wait_for("document.body.innerText.includes('Sparse parity')", timeout=60)
        info = browser.evaluate("...")
        browser.screenshot(path)
"""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx

# flags for a headless, offline, throwaway browser (no sync, no updates, no first-run UI)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--window-size=1400,1800"]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    def __init__(self, workdir: Path, port: int | None = None):
        from tests.cluster_fixture import free_port

        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self._ids = itertools.count(1)

    def __enter__(self) -> "Chromium":
        from websockets.sync.client import connect

        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed (make e2e installs Debian's `chromium`)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "chromium.log", "wb")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--remote-debugging-port={self.port}",
                                      "--remote-debugging-address=127.0.0.1",
                                      f"--user-data-dir={self.workdir / 'profile'}", "about:blank"],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                         if t.get("type") == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {(self.workdir / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.3)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 << 20, open_timeout=30)
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def __exit__(self, *exc) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events arriving meanwhile are skipped)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited)."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JavaScript error: {res['exceptionDetails'].get('text')} in {expression[:200]}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, every: float = 0.5):
        """Poll a JavaScript expression until it is truthy; return its value (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout}s: {expression}")
            time.sleep(every)

    def screenshot(self, path: Path, full_page: bool = True) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png",
                                         captureBeyondViewport=full_page)["data"])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(png)
        return png
