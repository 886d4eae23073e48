"""A minimal DevTools-protocol driver for the system chromium (Debian package) over
--remote-debugging-pipe: no websocket, no Playwright (its browser download cannot be reached here).
Used by the report browser tests and benchmarks/bench_report.py.

    with Chromium() as page:
        page.open(f"file://{path}")
        page.eval("document.title")

It records console messages, uncaught exceptions, log entries and every network request the page
makes, so a test can assert there were none.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import IO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _dig(d: object, *keys: str) -> object:
    """d[k1][k2]... of decoded JSON, None where a level is absent or not an object."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _stderr() -> int | IO[bytes]:
    """The browser's stderr: $TRUSTMH_CDP_STDERR (a file) when set, to debug a failing start."""
    path = os.environ.get("TRUSTMH_CDP_STDERR")
    return open(path, "ab") if path else subprocess.DEVNULL  # the child process owns it


class CDPError(RuntimeError):
    pass


class Chromium:
    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 60.0) -> None:
        if CHROMIUM is None:
            raise CDPError("chromium is not on PATH (Debian: apt-get install -y chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="cdp-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()

        def fds() -> None:  # the browser reads commands on fd 3 and writes replies on fd 4
            # Copies first: a pipe end may itself be fd 3 or 4 (and dup2 onto itself keeps it non-inheritable).
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--window-size={width},{height}",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=_stderr(),
            # Python's own fds are not inheritable (PEP 446): only the two dup2 copies reach the browser.
            preexec_fn=fds, close_fds=False)  # fds set between fork and exec, nothing else
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, object]] = []
        self.console: list[str] = []
        self.requests: list[str] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = str(self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    # ------------------------------------------------------------------ protocol

    def _read(self, deadline: float) -> dict[str, object]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise CDPError("no reply from chromium in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise CDPError("chromium closed the pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        out = json.loads(msg)
        assert isinstance(out, dict)
        return out

    def _event(self, msg: dict[str, object]) -> None:
        method, params = msg.get("method", ""), msg.get("params")
        self.events.append(msg)
        if method == "Runtime.consoleAPICalled":
            args = _dig(params, "args")
            self.console.append(f"console.{_dig(params, 'type')}: " + " ".join(
                str(_dig(a, "value") or _dig(a, "description") or "") for a in (args if isinstance(args, list) else [])))
        elif method == "Runtime.exceptionThrown":
            self.console.append(f"exception: {_dig(params, 'exceptionDetails', 'text')} "
                                f"{_dig(params, 'exceptionDetails', 'exception', 'description') or ''}")
        elif method == "Log.entryAdded":
            self.console.append(f"log.{_dig(params, 'entry', 'level')}: {_dig(params, 'entry', 'text')} "
                                f"{_dig(params, 'entry', 'url') or ''}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(str(_dig(params, "request", "url") or ""))

    def call(self, method: str, session: bool = False, **params: object) -> dict[str, object]:
        self._id += 1
        msg: dict[str, object] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                result = reply.get("result")
                return result if isinstance(result, dict) else {}
            self._event(reply)

    def send(self, method: str, **params: object) -> dict[str, object]:
        return self.call(method, session=True, **params)

    # ------------------------------------------------------------------ page helpers

    def open(self, url: str) -> None:
        """Navigates and waits for the load event."""
        seen = len(self.events)
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]):
            self._event(self._read(deadline))

    def eval(self, expression: str) -> object:
        """The value of a JS expression (a promise is awaited), as JSON decodes it."""
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise CDPError(f"{expression[:80]}: {_dig(res, 'exceptionDetails', 'exception', 'description')}")
        return _dig(res, "result", "value")

    def wait(self, expression: str, timeout: float | None = None) -> object:
        """Polls until the expression is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            v = self.eval(expression)
            if v:
                return v
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {expression}")
            time.sleep(0.05)

    def screenshot(self, full: bool = False) -> bytes:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=full)["data"]
        assert isinstance(data, str)
        return base64.b64decode(data)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (CDPError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
