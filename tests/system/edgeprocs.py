"""Starting and stopping the real ``edge`` processes on 127.0.0.1 for system tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config import Settings, load_settings
from edge.demo import free_port  # below the ephemeral range: no outgoing connection takes it meanwhile

__all__ = ["free_port", "in_process_appliance", "in_process_settings"]


def in_process_settings(tmp_path: Path, shape: tuple[int, int], *extra: str) -> tuple[str, Settings]:
    """(stream endpoint, settings) for an `Appliance` run in the test's own process: its store under
    ``tmp_path``, frames of ``shape`` pushed by the test to the endpoint, the NumPy backend, 16 bins,
    a small ring; ``extra`` overrides after those."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    settings = load_settings(
        overrides=[
            f'store.path="{tmp_path / "store"}"',
            'upstream.endpoint="tcp://127.0.0.1:0"',
            f'stream.endpoint="{endpoint}"',
            f"detector.height={shape[0]}",
            f"detector.width={shape[1]}",
            "ring.slots=4",
            'reduction.backend="numpy"',
            "reduction.bins=16",
            *extra,
        ]
    )
    return endpoint, settings


@contextlib.contextmanager
def in_process_appliance(
    tmp_path: Path, shape: tuple[int, int], *extra: str
) -> Iterator[tuple[Any, Any, Settings]]:
    """(appliance, push socket, settings): an `Appliance` of ``in_process_settings`` started in this
    process, and the bound PUSH socket the test sends its detector messages on; both stopped at the end."""
    import zmq

    from edge.appliance import Appliance

    endpoint, settings = in_process_settings(tmp_path, shape, *extra)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 1000
    push.bind(endpoint)
    appliance = Appliance(settings, context)
    appliance.start()
    try:
        yield appliance, push, settings
    finally:
        appliance.stop()
        push.close()
        context.term()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError, ValueError, KeyError) as error:
            last_error = error
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:  # (a 404 while a run is not recorded yet) its socket closed
        error.close()  # now, not when a kept traceback is collected (a ResourceWarning in another test)
        raise


def loopback_overrides() -> list[str]:
    """Settings that put a demo's sockets on fresh loopback ports."""
    stream, upstream, api, udp = (free_port() for _ in range(4))
    return [
        f'sim.endpoint="tcp://127.0.0.1:{stream}"',
        f'upstream.endpoint="tcp://127.0.0.1:{upstream}"',
        f"api.port={api}",
        f"udp.port={udp}",
    ]


def run_bounded_demo(
    workdir: Path, frames: int, flags: list[str], overrides: list[str], timeout: float = 400
) -> dict[str, Any]:
    """Run ``edge demo --frames N --json`` to the end; return its summary (fail with its log otherwise)."""
    argv = [
        sys.executable,
        "-m",
        "edge",
        "demo",
        "--frames",
        str(frames),
        "--json",
        "--workdir",
        str(workdir),
    ]
    argv += flags
    for item in overrides:
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@dataclass
class EdgeStack:
    """Ports, paths and processes of one appliance + simulator + pull client, all on loopback."""

    root: Path
    overrides: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stream_port = free_port()
        self.upstream_port = free_port()
        self.api_port = free_port()
        self.store = self.root / "store"
        self.upstream = self.root / "upstream"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def settings_args(self) -> list[str]:
        items = [
            f'sim.endpoint="tcp://127.0.0.1:{self.stream_port}"',
            f'stream.endpoint="tcp://127.0.0.1:{self.stream_port}"',
            f'upstream.endpoint="tcp://127.0.0.1:{self.upstream_port}"',
            f'pull.endpoint="tcp://127.0.0.1:{self.upstream_port}"',
            f"api.port={self.api_port}",
            f'store.path="{self.store}"',
            f'pull.output="{self.upstream}"',
            *self.overrides,
        ]
        args = ["--log-level", "WARNING"]
        for item in items:
            args += ["--set", item]
        return args

    def start(
        self,
        command: str,
        *extra: str,
        stdout: int | None = None,
        stderr: Any = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", command, *self.settings_args(), *extra],
            stdout=stdout,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.procs.append(proc)
        return proc

    def start_daemon(
        self, *extra: str, stderr: Any = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        proc = self.start("run", *extra, stderr=stderr, env=env)

        def ready() -> Any:
            if proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {proc.returncode} before its API came up")
            return get_json(self.url + "/api/status")

        wait_for(ready, 120, "the daemon's API")
        return proc

    def status(self) -> dict[str, Any]:
        return get_json(self.url + "/api/status")

    def run(self, run_uid: str) -> dict[str, Any]:
        return get_json(f"{self.url}/api/runs/{run_uid}")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:  # a pipe nobody read must still be closed
                proc.stdout.close()


def fill_up(ballast: Path) -> None:
    """Take every free block of the disk holding ``ballast``, while the daemon writes there too."""
    with open(ballast, "ab") as handle:
        step = 1 << 20
        while step >= 4096:
            try:
                os.posix_fallocate(handle.fileno(), os.fstat(handle.fileno()).st_size, step)
            except OSError:
                step //= 2
