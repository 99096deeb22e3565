"""Drive Debian's headless chromium through the Chrome DevTools Protocol, for tests.

    with HeadlessChromium(profile_dir) as browser:
        page = browser.open_page("file:///.../report.html")   # waits for the load event
        browser.evaluate(page, "document.title")
        png = browser.screenshot(page)

The protocol runs over `--remote-debugging-pipe`: chromium reads NUL-terminated JSON commands
from its file descriptor 3 and writes replies and events to descriptor 4, so no port, no
websocket library and no browser download are needed. `make test` installs chromium
(`scripts/install-test-services.sh`).
"""

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

CHROMIUM = "chromium"
TIMEOUT_S = 30.0


def chromium_path() -> str | None:
    return shutil.which(CHROMIUM)


class ProtocolError(RuntimeError):
    pass


class HeadlessChromium:
    """One headless chromium process with a throwaway profile, spoken to over the pipe."""

    def __init__(self, profile_dir: Path, width: int = 1280, height: int = 900) -> None:
        executable = chromium_path()
        if executable is None:
            raise FileNotFoundError("chromium is not installed")
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._buffer = b""
        self.size = (width, height)
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Copies above 4, so that the child's dup2 onto 3 and 4 never meets its own source.
        child_in = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 5)
        child_out = fcntl.fcntl(replies_write, fcntl.F_DUPFD_CLOEXEC, 5)
        os.close(commands_read)
        os.close(replies_write)
        arguments = [
            executable,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile_dir}",
            f"--window-size={width},{height}",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "about:blank",
        ]
        if os.geteuid() == 0:
            arguments.insert(1, "--no-sandbox")  # chromium refuses to run its sandbox as root
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            self._pid = os.posix_spawn(
                executable,
                arguments,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, devnull, 1),
                    (os.POSIX_SPAWN_DUP2, devnull, 2),
                    (os.POSIX_SPAWN_DUP2, child_in, 3),
                    (os.POSIX_SPAWN_DUP2, child_out, 4),
                ],
                setsid=True,  # its own process group, so closing kills the helpers too
            )
        finally:
            for fd in (devnull, child_in, child_out):
                os.close(fd)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply; raises `ProtocolError` on an error reply."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id, f"reply to {method}")
        if "error" in reply:
            raise ProtocolError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str) -> dict:
        def matches(m: dict) -> bool:
            return m.get("method") == method and m.get("sessionId") == session

        for i, event in enumerate(self._events):
            if matches(event):
                return self._events.pop(i)
        return self._wait(matches, f"event {method}")

    def _wait(self, matches, what: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if matches(message):
                    return message
                if "method" in message:
                    self._events.append(message)
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            if not ready:
                raise TimeoutError(f"chromium sent no {what} within {TIMEOUT_S:.0f} s")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise ProtocolError(f"chromium exited while waiting for the {what}")
            self._buffer += chunk

    def open_page(self, url: str, offline: bool = False) -> str:
        """A new tab showing `url`, after its load event; returns the page's session id.

        `offline`: the tab has no network at all, so a page that needs one fails to load parts.
        """
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = attached["sessionId"]
        self.send("Page.enable", session=session)
        width, height = self.size
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics, session)
        if offline:
            self.send("Network.enable", session=session)
            conditions = {"offline": True, "latency": 0, "downloadThroughput": -1}
            self.send(
                "Network.emulateNetworkConditions", {**conditions, "uploadThroughput": -1}, session
            )
        navigation = self.send("Page.navigate", {"url": url}, session)
        if navigation.get("errorText"):
            raise ProtocolError(f"navigating to {url}: {navigation['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (awaiting a promise)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session,
        )
        if "exceptionDetails" in result:
            raise ProtocolError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str) -> bytes:
        """A PNG of the whole page, not only the window."""
        return base64.b64decode(
            self.send(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True},
                session,
            )["data"]
        )

    def close(self) -> None:
        # It may exit before it replies; the wait below makes sure it is gone either way.
        with contextlib.suppress(ProtocolError, TimeoutError, OSError):
            self.send("Browser.close")
        deadline = time.monotonic() + TIMEOUT_S
        while os.waitpid(self._pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.killpg(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
                break
            time.sleep(0.05)
        os.close(self._commands)
        os.close(self._replies)

    def __enter__(self) -> "HeadlessChromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
