"""Headless Chromium for the page tests (report, predict gallery), driven through the DevTools
protocol over ``--remote-debugging-pipe`` (JSON messages ending in NUL on file descriptors 3
and 4), so no Python package is needed and the phone width is a real mobile emulation: a plain
``--window-size=390,...`` is widened to 500 px by headless Chromium. A page's own
``#selfcheck`` script reports what the test asserts (images, broken ones, overflow)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
VIEWPORTS = {
    "laptop": {"width": 1366, "height": 900, "mobile": False, "deviceScaleFactor": 1},
    "phone": {"width": 390, "height": 844, "mobile": True, "deviceScaleFactor": 2},
}
TIMEOUT_S = 60.0


def chromium_binary() -> str:
    """The Chromium executable, or skip with how to install it."""
    env = os.environ.get("FERLAB_CHROMIUM")
    for candidate in ((env,) if env else ()) + CHROMIUM_CANDIDATES:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    pytest.skip(
        "headless Chromium not found (looked at /usr/bin/chromium and $FERLAB_CHROMIUM); "
        "install it with `apt-get install -y chromium` to run the page checks in a browser"
    )


class DevTools:
    """A minimal Chrome DevTools protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds() -> None:  # chromium reads commands on fd 3 and writes replies on fd 4
            # Move both ends above 4 first, so that placing one cannot overwrite the other.
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)  # dup2 leaves the new descriptors inheritable across exec
            os.dup2(high_w, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            close_fds=False,  # Python's own descriptors are close-on-exec (PEP 446)
            preexec_fn=child_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone is fine
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer on the DevTools pipe in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError(
                        f"Chromium closed the DevTools pipe (exit {self.proc.poll()})"
                    )
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one command and return its result; events seen meanwhile are kept in ``events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))


def open_page(tools: DevTools, url: str, viewport: dict[str, Any]) -> str:
    """A fresh tab with the viewport emulated and the page loaded; returns its session id."""
    target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    tools.send("Emulation.setDeviceMetricsOverride", viewport, session)
    tools.send("Page.enable", session=session)
    tools.send("Page.navigate", {"url": url}, session)
    tools.wait_event("Page.loadEventFired", session)
    return session


def selfcheck(tools: DevTools, session: str) -> dict[str, str]:
    """The attributes the page's ``#selfcheck`` script wrote once the page had loaded."""
    expression = """(() => {
        const el = document.getElementById('selfcheck-result');
        if (!el) return null;
        const out = {};
        for (const a of el.attributes) out[a.name] = a.value;
        return out;
    })()"""
    for _ in range(50):
        result = tools.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
        )
        value = result.get("result", {}).get("value")
        if value:
            return dict(value)
        time.sleep(0.1)
    raise AssertionError("the page's #selfcheck script wrote no result")


def screenshot(tools: DevTools, session: str, path: Path, full_page: bool = False) -> Path:
    params: dict[str, Any] = {"format": "png"}
    if full_page:
        size = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        params["clip"] = {
            "x": 0,
            "y": 0,
            "width": size["width"],
            "height": size["height"],
            "scale": 1,
        }
        params["captureBeyondViewport"] = True
    data = tools.send("Page.captureScreenshot", params, session)["data"]
    path.write_bytes(base64.b64decode(data))
    return path
