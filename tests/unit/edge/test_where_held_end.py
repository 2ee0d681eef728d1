"""`edge where` on a run whose end a full disk holds back in the daemon: the ledger alone says the run is
open, so the CLI asks the running daemon's API (a real HTTP server on loopback here) for the held end,
as `GET /api/runs/{id}` reports it, and says nothing more when the API does not answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edge.cli import held_end_from_daemon
from edge.config import Settings


class _Api(BaseHTTPRequestHandler):
    answers: dict[str, Any] = {}

    def do_GET(self) -> None:
        body = self.answers.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _settings(port: int) -> Settings:
    return Settings.model_validate({"api": {"port": port}})


def test_the_held_end_comes_from_the_daemons_run_view(api: ThreadingHTTPServer) -> None:
    settings = _settings(api.server_address[1])
    ours = str(settings.ledger_path.resolve())
    _Api.answers = {
        "/api/runs/held-run": {"where": {"held_end": "abort", "state": "abort (ended; ...)"}, "ledger": ours},
        "/api/runs/open-run": {"where": {"held_end": None, "state": "running"}, "ledger": ours},
        # another appliance on the configured port, holding a run of the same uid (an outside probe:
        # its consumers and stall were printed for this ledger's run)
        "/api/runs/other-run": {"where": {"held_end": "abort"}, "ledger": "/elsewhere/ledger.sqlite"},
    }
    assert held_end_from_daemon(settings, "held-run") == "abort"
    assert held_end_from_daemon(settings, "open-run") is None
    assert held_end_from_daemon(settings, "unknown-run") is None  # 404: nothing more is known
    assert held_end_from_daemon(settings, "other-run") is None


def test_no_answer_from_the_api_leaves_the_report_as_the_ledger_has_it() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    assert held_end_from_daemon(_settings(port), "held-run", timeout=0.5) is None


def test_edge_where_says_when_the_required_consumers_are_the_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An outside probe: without the daemon's settings file, `edge where` printed "needs hpc" (the
    default) for a daemon requiring hpc and tape, beside "confirmed by some, not yet all"."""
    import subprocess
    import sys

    from edge.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc", "tape"))
    ledger.run_started("run-1", 1, None, "{}")
    ledger.close()

    def where(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edge", "where", "run-1", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    store = f"store.path={json.dumps(str(tmp_path))}"
    assert "needs hpc (the default: give edge where the daemon's settings file)" in where("--set", store)
    out = where("--set", store, "--set", 'upstream.required_consumers=["hpc", "tape"]')
    assert "needs hpc, tape;" in out and "the default" not in out
    # a settings file that does not set them: the daemon runs on the default too, no note
    config = tmp_path / "edge.toml"
    config.write_text(f"[store]\npath = {json.dumps(str(tmp_path))}\n")
    out = where("--config", str(config))
    assert "needs hpc;" in out and "the default" not in out


def test_edge_where_reads_the_files_by_the_consumers_the_running_daemon_requires(
    tmp_path, api: ThreadingHTTPServer
) -> None:  # type: ignore[no-untyped-def]
    """An outside probe: `edge where` given settings naming hpc and tape, for a daemon requiring mirror
    too, said "needs hpc, tape" and "confirmed by some required consumers, not yet all" beside the
    daemon's "stalled: ... mirror must pull". With a daemon running, its list is the one read by."""
    import subprocess
    import sys

    from edge.daemon_lock import DaemonLock
    from edge.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc", "tape"))
    ledger.run_started("run-1", 1, None, "{}")
    ledger.close()
    _Api.answers = {
        "/api/runs/run-1": {
            "where": {
                "required_consumers": ["hpc", "tape", "mirror"],
                "upstream_stalled": "mirror must pull",
            },
            "ledger": str((tmp_path / "ledger.sqlite").resolve()),  # the daemon serving this ledger
        }
    }
    lock = DaemonLock(tmp_path / "ledger.sqlite")  # as a running daemon holds it
    assert lock.acquire()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge",
                "where",
                "run-1",
                "--set",
                f"store.path={json.dumps(str(tmp_path))}",
                "--set",
                'upstream.required_consumers=["hpc", "tape"]',
                "--set",
                f"api.port={api.server_address[1]}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        lock.release()
    assert done.returncode == 0, done.stderr
    assert "needs hpc, tape, mirror (as the running daemon requires)" in done.stdout, done.stdout


def test_edge_where_says_when_a_whole_uid_also_begins_other_runs_uids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An outside probe: `edge where b0d1` showed run b0d1 (its whole uid) with no word that it also
    begins run b0d10e64-...: a prefix typed for the long one showed the short one."""
    import subprocess
    import sys

    from edge.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.run_started("b0d10e64-aaaa", 1, None, "{}")
    ledger.run_started("b0d1", 2, None, "{}")
    ledger.close()
    done = subprocess.run(
        [sys.executable, "-m", "edge", "where", "b0d1", "--set", f"store.path={json.dumps(str(tmp_path))}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "run b0d1" in done.stdout or "b0d1" in done.stdout.splitlines()[0]
    assert "it also begins 1 other run uid(s) (b0d10e64-aaaa)" in done.stderr, done.stderr
