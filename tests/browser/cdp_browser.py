"""Headless Chromium driven over the DevTools protocol on a pipe, with the standard library only.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from its fd 3 and writes
replies and events to its fd 4, each a JSON text ended by a NUL byte; no WebSocket, no driver binary,
no extra package. :class:`Browser` sends commands to one page (attached in "flat" mode, so every page
command carries the page's ``sessionId``), evaluates JavaScript, clicks like a mouse and takes
screenshots. Every wait is a condition polled until a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """The Chromium executable: ``$EDGE_CHROMIUM``, else ``chromium`` (Debian) or ``chromium-browser``."""
    configured = os.environ.get("EDGE_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _above(fd: int, lowest: int) -> int:
    """``fd`` moved to a descriptor number >= ``lowest``."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return moved


class CDPError(RuntimeError):
    """Chromium answered a command with an error."""


class Browser:
    """One headless Chromium process with one page, at ``width`` x ``height`` CSS pixels."""

    def __init__(self, executable: str, profile_dir: Path, width: int = 1280, height: int = 800) -> None:
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        self.log_path = profile_dir.parent / f"{profile_dir.name}.chromium.log"
        commands_r, self._commands_w = os.pipe()  # we write, Chromium reads as fd 3
        self._replies_r, replies_w = os.pipe()  # Chromium writes as fd 4, we read
        # the ends Chromium gets must not sit on fds 3 or 4 themselves, or the moves below would close them
        commands_r, replies_w = (_above(fd, 10) for fd in (commands_r, replies_w))
        # bash moves the pipe ends onto fds 3 and 4 and execs Chromium (no preexec_fn in a threaded test)
        script = f'exec "$0" "$@" 3<&{commands_r} 4>&{replies_w} {commands_r}<&- {replies_w}>&-'
        argv = [
            "/bin/bash",
            "-c",
            script,
            executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile_dir}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=(commands_r, replies_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its renderer and helper processes share this group; see close()
            )
        os.close(commands_r)
        os.close(replies_w)
        try:
            self.session = self._attach_page(width, height)
        except Exception:
            self.close()
            raise

    # -- protocol -------------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._replies_r], [], [], left)
            if not ready:
                continue
            data = os.read(self._replies_r, 1 << 20)
            if not data:
                raise CDPError(f"Chromium closed its DevTools pipe; see {self.log_path}")
            self._buffer += data
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 15.0,
    ) -> Any:
        """Send one command (to the browser, or to the target ``session`` names) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)
                del self.events[:-200]  # keep the tail; nothing here needs more

    def page(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        """Send one command to the page."""
        return self.send(method, params, self.session, timeout)

    def _attach_page(self, width: int, height: int) -> str:
        targets = self.send("Target.getTargets")["targetInfos"]
        pages = [t["targetId"] for t in targets if t["type"] == "page"]
        target = pages[0] if pages else self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        sid = str(session["sessionId"])
        self.send("Page.enable", session=sid)
        self.send("Runtime.enable", session=sid)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        return sid

    # -- what a test does ---------------------------------------------------------------------------------
    def goto(self, url: str, timeout: float = 15.0) -> None:
        result = self.page("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"cannot open {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout, f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.page(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"JavaScript error in {expression!r}: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str, interval: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy and return its value; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {value!r})")

    def click(self, selector: str) -> None:
        """Scroll ``selector`` into view and click its centre with the mouse, as a person would."""
        point = self.evaluate(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el) return null;
                el.scrollIntoView({{block: "center"}});
                const r = el.getBoundingClientRect();
                return [r.x + r.width / 2, r.y + r.height / 2];
            }})()"""
        )
        if point is None:
            raise AssertionError(f"nothing on the page matches {selector!r}")
        x, y = point
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1},
            )

    def press(self, key: str) -> None:
        """Press and release ``key`` ("Enter", " ", "Tab", "Escape") on the focused element, as a keyboard does."""
        codes = {
            "Enter": ("Enter", 13, "\r"),
            " ": ("Space", 32, " "),
            "Tab": ("Tab", 9, ""),
            "Escape": ("Escape", 27, ""),
        }
        code, vk, text = codes[key]
        down: dict[str, Any] = {"type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk}
        if text:
            down["text"] = text
        self.page("Input.dispatchKeyEvent", down)
        self.page(
            "Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk}
        )

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            # the whole window's width: capturing beyond the viewport drops the scrollbar, and a clip
            # at scrollWidth would then cut the page's right edge off
            size = self.evaluate(
                "[Math.max(document.documentElement.scrollWidth, innerWidth),"
                " document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", params)["data"]))
        return path

    def close(self) -> None:
        """Ask Chromium to quit; kill its process group if it has not within a few seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, CDPError, TimeoutError):
                self.send("Browser.close", timeout=3)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        # the group Chromium leads (start_new_session): its zygote and renderers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(5)
        for fd in (self._commands_w, self._replies_r):
            with contextlib.suppress(OSError):
                os.close(fd)
