"""Drive headless Chromium from a test over the DevTools protocol, with the standard library only.

Chromium started with ``--remote-debugging-pipe`` reads DevTools commands (JSON, each ended by a
NUL byte) from file descriptor 3 and writes replies and events to descriptor 4: no websocket, no
port, no Playwright or Selenium. ``Browser.open(url)`` loads a page and records every console
error, uncaught exception and failed load (``page.errors``); ``page.evaluate(js)`` returns a
value; ``page.screenshot(path)`` writes a PNG of the whole page.

Chromium is Debian's ``chromium`` package (``find_chromium``); as root it needs ``--no-sandbox``.
The machine has no network, so every background fetch is switched off (otherwise they fill the
log with errors) and each browser gets a fresh profile folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome executable on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, executable: str, window=(1400, 1000), timeout_s: float = 60.0):
        self._profile = tempfile.mkdtemp(prefix="spiral-chromium-")
        self._timeout_s = timeout_s
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def connect_pipes():  # in the child: our pipe ends on descriptors 3 and 4
            read_end, write_end = os.dup(to_child), os.dup(from_child)  # inheritable copies
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._log = open(os.path.join(self._profile, "chromium.log"), "w+b")
        self._process = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
            [executable, *FLAGS, f"--user-data-dir={self._profile}",
             f"--window-size={window[0]},{window[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            preexec_fn=connect_pipes, close_fds=False)
        os.close(to_child)
        os.close(from_child)

    # ---- protocol
    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._write, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"Chromium exited: {self.log_tail()}") from None
        return self._next_id

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError("no reply from Chromium in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the pipe: {self.log_tail()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its reply; events that arrive meanwhile are kept."""
        request = self._send(method, params, session)
        deadline = time.monotonic() + self._timeout_s
        while True:
            message = self._receive(deadline)
            if message.get("id") == request:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self._timeout_s
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            message = self._receive(deadline)
            self.events.append(message)
            if message.get("method") == method and message.get("sessionId") == session:
                return message

    def log_tail(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    # ---- pages
    def open(self, url: str) -> "Page":
        """A new tab with ``url`` loaded (its load event fired)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        page = Page(self, session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return page

    def close(self):
        try:
            self._send("Browser.close")
            self._process.wait(timeout=10)
        except (BrowserError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        os.close(self._write)
        os.close(self._read)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page (raises on a JS exception)."""
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, self.session)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads) of this page."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        return found

    def screenshot(self, path: str, full_page: bool = True) -> str:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            metrics = self.browser.call("Page.getLayoutMetrics", session=self.session)
            size = metrics["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.browser.call("Page.captureScreenshot", params, self.session)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path
