"""``edge demo``: the simulator, the daemon, an upstream pull client and the dashboard, on 127.0.0.1.

Each component runs as its own process, exactly as it would on a beamline, configured from the same
settings, and logs to its own file under ``<workdir>/logs/``. The terminal shows one status line for the
whole demo (rates, stored, delivered, lost, backlog). With ``--frames N`` the demo sends one bounded
series, waits until every frame is delivered upstream (or accounted for as lost) and prints a summary;
otherwise it streams until Ctrl-C, which stops the simulator first, lets the daemon drain and the pull
client deliver, and then prints the same summary. When a component dies the demo names it, with its
exit status and the last lines of its log, stops the others and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from edge import early_signals
from edge.config import Settings
from edge.errors import ConfigError

STOP_ORDER = ("sim", "pull", "daemon")  # the source first, then the consumer, the daemon last
TAIL_LINES = 15
LINE_SECONDS = 0.5  # status line refresh on a terminal
PLAIN_LINE_SECONDS = 5.0  # ...and how often a line is written when stderr is a file or a pipe
RATE_WINDOW = 10.0  # the status line's rates: over the last 10 s
#: seconds the daemon may take to answer its API: it compiles the mode's kernels first (30-60 s on a
#: fresh install of a small machine; an outside probe on a machine loaded 5x over saw 120 s run out).
#: A daemon that exits meanwhile ends the wait at once, saying why
DAEMON_START_SECONDS = 600.0
# the simulator's own start (its imports, its first frames drawn) on top of --timeout, which is the wait for
# delivery: on a loaded 2-core machine it took more than a 3 s --timeout, and the demo ended with no account
SIM_START_SECONDS = 60.0


_PORTS_GIVEN: set[int] = set()  # never the same port twice from one process
_LOWEST_PORT = 10000


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary ``--json`` prints, as ``key: value`` lines: strings as they are, every other value as
    JSON (``null``, ``true``, ``["gpu"]``), as the JSON summary has it."""
    return [f"{key:>18}: {v if isinstance(v, str) else json.dumps(v)}" for key, v in summary.items()]


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections and ``bind(port 0)``."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _port_is_free(port: int) -> bool:
    """Nothing holds ``port`` on 127.0.0.1, for TCP nor for UDP (bound without SO_REUSEADDR)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


#: ports from 1024 up that browsers refuse to open (Chromium and Firefox: ERR_UNSAFE_PORT): a dashboard
#: there cannot be shown (a browser test picked 10080 and failed)
BROWSER_UNSAFE_PORTS = frozenset(
    {1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669}
    | {6679, 6697, 10080}
)


def _port_range() -> tuple[int, int]:
    """Where `free_port` picks from: ``EDGE_PORT_RANGE``, else from 10000 up to the ephemeral range."""
    low, _high = _ephemeral_range()
    given = os.environ.get("EDGE_PORT_RANGE", "").strip()
    if not given:
        return _LOWEST_PORT, low - 1
    try:
        first, last = (int(part) for part in given.split("-"))
    except ValueError:
        raise ConfigError(f"EDGE_PORT_RANGE={given!r}: expected LOW-HIGH, e.g. 10000-20999") from None
    if not 1024 <= first <= last - 999 or last >= low:
        raise ConfigError(
            f"EDGE_PORT_RANGE={given!r}: needs 1000 or more ports from 1024 up, below the kernel's "
            f"ephemeral range (from {low})"
        )
    return first, last


def exit_on_sigterm() -> None:
    """``kill`` (SIGTERM) raises SystemExit in the main thread, as Ctrl-C raises KeyboardInterrupt, so
    the ``finally`` blocks of a script that started processes stop them (Python's default ends at once
    and leaves them running: the benchmarks' daemons did)."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))


def free_port() -> int:
    """A loopback port free now for TCP and UDP, chosen below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(port 0)`` lies in the range it also takes the source ports of
    outgoing connections from, so between choosing it and a process binding it, any connection (the pull
    client's, a browser's) can take it: "Address already in use". Ports below that range are never taken
    that way. Where the range starts too low to leave room, the kernel's choice is used.

    ``EDGE_PORT_RANGE=LOW-HIGH`` (inclusive) narrows the choice, so that several demos or test workers
    started at once, each with its own range, never pick the same port between choosing and binding it.
    """
    first, last = _port_range()
    pick = secrets.SystemRandom()
    for _ in range(200):
        if last - first >= 999:
            port = pick.randint(first, last)
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
        if port not in _PORTS_GIVEN and port not in BROWSER_UNSAFE_PORTS and _port_is_free(port):
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def _port_or_free(port: int, setting: str = "") -> int:
    """``port``, or a free one when it is taken (said on stderr, naming ``setting``) or 0 (any)."""
    if port == 0:  # (0 is "any free port": the demo must know which, to reach the daemon there)
        return free_port()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            chosen = free_port()
            print(f"edge demo: {setting or 'port'} {port} is taken: port {chosen} instead", file=sys.stderr)
            return chosen
    return port


def _endpoint_port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` as JSON; a reply cut short (the daemon died mid-answer) is an OSError like a refusal."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except http.client.HTTPException as exc:
        raise OSError(f"{url}: {exc!r}") from exc


def exit_text(code: int) -> str:
    """``status 3``, or ``killed by SIGKILL`` for a negative status."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"status {code}"


class ComponentDied(Exception):
    """A component ended while the demo still needed it."""

    def __init__(self, name: str, code: int, log: Path, tail: list[str]) -> None:
        super().__init__(f"{name} exited ({exit_text(code)})")
        self.name, self.code, self.log, self.tail = name, code, log, tail

    def why(self) -> str:
        """One line for the JSON account: how it exited and, for a component that refused to start,
        its own reason (a second demo on a workdir in use said only "status 2")."""
        said = next((line for line in reversed(self.tail) if "cannot start:" in line), None)
        how = f"{self.name} exited unexpectedly ({exit_text(self.code)})"
        return how if said is None else f"{how}: {said[said.index('cannot start:') :][:300]}"

    def report(self) -> str:
        lines = [
            f"edge demo: {self.name} exited unexpectedly ({exit_text(self.code)}); last lines of {self.log}:"
        ]
        lines += [f"  | {line}" for line in self.tail] or ["  | (empty)"]
        lines.append("edge demo: stopping the other components")
        return "\n".join(lines)


class Components:
    """The demo's child processes, each logging to ``<logs>/<name>.log``; stops them all, in order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._files: list[IO[str]] = []
        self._starts: dict[str, int] = {}
        self.expected_exit = {"sim"}  # components that may end with status 0 (the sim, after its series)

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: list[str], stdout_file: Path | None = None) -> subprocess.Popen[str]:
        # appended to, never truncated: an earlier demo's log stays, and a second demo refused while
        # another holds the workdir no longer cut the running one's log short (an outside probe)
        log = open(self.log_path(name), "a")  # noqa: SIM115 - closed in close()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- edge demo (pid {os.getpid()}) starts edge {argv[0]} at {stamp} ---\n")
        log.flush()
        self._starts[name] = log.tell()  # (the tail shown when it dies is this demo's)
        self._files.append(log)
        out: IO[str] = log
        if stdout_file is not None:  # the simulator's summary (--json), apart from its log
            out = open(stdout_file, "w")  # noqa: SIM115 - closed in close()
            self._files.append(out)
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the demo only, which stops children in order
        )
        self.procs[name] = proc
        return proc

    def tail(self, name: str, lines: int = TAIL_LINES) -> list[str]:
        try:
            with open(self.log_path(name), "rb") as handle:
                handle.seek(self._starts.get(name, 0))
                text = handle.read().decode(errors="replace")
        except OSError:
            return []
        return [line.rstrip("\r") for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]

    def check(self) -> None:
        """Raise ComponentDied for the first component that ended when it should not have."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None and not (name in self.expected_exit and code == 0):
                raise ComponentDied(name, code, self.log_path(name), self.tail(name))

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for name in STOP_ORDER:
            self.stop(name)
        self.procs.clear()
        for handle in self._files:
            handle.close()
        self._files.clear()


class StatusLine:
    """One line for the whole demo: rates, stored, delivered, lost, backlog (from the daemon's API)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        # (time, received, delivered) over the last RATE_WINDOW seconds: frames are delivered a whole file
        # at a time, so a rate between two consecutive samples reads 0 between files and a burst at one
        self._samples: deque[tuple[float, int, int]] = deque()
        self._printed_at = 0.0
        self._width = 0

    @staticmethod
    def _frames(status: dict[str, Any]) -> dict[str, Any]:
        """This daemon's counts (``counts.daemon``): a demo on a kept demo-data would otherwise show this
        daemon's received beside every earlier demo's stored and delivered."""
        daemon = (status.get("counts") or {}).get("daemon")
        if not daemon:
            return dict(status["frames"])
        return {key: daemon.get(f"frames_{key}", 0) for key in ("received", "stored", "delivered", "lost")}

    @staticmethod
    def text(status: dict[str, Any], rates: tuple[float, float] | None) -> str:
        frames = StatusLine._frames(status)
        stored, delivered = int(frames["stored"]), int(frames["delivered"])
        backlog = int(status["ring"].get("fill", 0)) + max(0, stored - delivered)
        received_rate, delivered_rate = rates or (0.0, 0.0)
        return (
            f"edge demo: received {frames['received']} ({received_rate:.1f}/s)  stored {stored}  "
            f"delivered {delivered} ({delivered_rate:.1f}/s)  lost {frames['lost']}  backlog {backlog}"
        )

    def update(self, status: dict[str, Any], now: float, note: str = "") -> None:
        frames = self._frames(status)
        received, delivered = int(frames["received"]), int(frames["delivered"])
        rates = None
        while len(self._samples) > 1 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()  # the oldest kept is the last one at least RATE_WINDOW old
        if self._samples and now > self._samples[0][0]:
            then, received_then, delivered_then = self._samples[0]
            rates = ((received - received_then) / (now - then), (delivered - delivered_then) / (now - then))
        self._samples.append((now, received, delivered))
        line = self.text(status, rates) + (f"  [{note}]" if note else "")
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif now - self._printed_at >= PLAIN_LINE_SECONDS:
            self.stream.write(line + "\n")
            self._printed_at = now
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class Interrupted:
    """Ctrl-C (or SIGTERM) as a flag the demo's loops look at: the first asks for an orderly stop, a
    second one gives up waiting for the drain."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1


def _watch(
    procs: Components,
    line: StatusLine,
    url: str,
    until: Callable[[], Any],
    timeout: float,
    what: str,
    note: str,
    interrupted: Interrupted,
    give_up_after: int,
) -> Any:
    """Poll ``until`` while refreshing the status line and watching every component.

    Returns its first truthy value, or None once ``interrupted`` reaches ``give_up_after``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        if interrupted.count >= give_up_after:
            return None
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            value = until()
            if value:
                return value
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            line.update(get_json(url + "/api/status"), time.monotonic(), note)
        time.sleep(LINE_SECONDS)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stopped(as_json: bool, known: dict[str, Any], when: str, line: StatusLine) -> int:
    """A demo stopped by a second Ctrl-C (or one while it starts): said, and with --json one JSON object
    (an outside probe's Ctrl-C while kernels loaded ended with nothing on stdout), exit 130."""
    line.end()
    error = f"stopped (Ctrl-C) {when}"
    print(f"edge demo: {error}; logs in {known['logs']}", file=sys.stderr, flush=True)
    _failed(as_json, known, error)
    return 130


def _failed(as_json: bool, known: dict[str, Any], error: str) -> int:
    """A demo that failed: with --json, still one JSON object, naming why, with what was known by then."""
    if as_json:
        print(json.dumps({"error": error, **known}), flush=True)
    return 1


def _product_figures(url: str) -> dict[str, Any]:
    """The mode's own figures for the summary: hit rate (serial), slices reconstructed (tomo)."""
    try:
        product = get_json(url + "/api/product")
    except (OSError, ValueError):
        return {"hit_rate": None, "slices_reconstructed": 0}
    serial = product.get("serial") or {}
    tomo = product.get("tomo") or {}
    return {"hit_rate": serial.get("hit_rate"), "slices_reconstructed": int(tomo.get("slices_done") or 0)}


def run_demo(args: argparse.Namespace, settings: Settings, flags: list[str] | None = None) -> int:
    """Run the demo; ``flags`` are the settings its own flags set (transport, faults), for every child."""
    from edge.cli import sim_refusal

    problem = sim_refusal(settings, demo=True)
    if problem:  # before anything starts: it would run to the end and reconstruct nothing
        print(f"edge demo: {problem}", file=sys.stderr)
        if args.json:  # (a script reading the last line finds why, as for any demo that did not finish)
            print(json.dumps({"error": problem, "frames_sent": None, "run_uid": None}), flush=True)
        return 2
    workdir: Path = args.workdir.resolve()
    logs = workdir / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # (a file, no permission: one line, not a traceback; an outside probe)
        problem = f"--workdir {str(args.workdir)!r} cannot hold the demo's files: {error.strerror or error}"
        print(f"edge demo: {problem}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": problem, "frames_sent": None, "run_uid": None}), flush=True)
        return 2
    # the frames' port: the simulator's (sim.endpoint), or the daemon's (stream.endpoint) when only that
    # was moved (an outside probe's `--set stream.endpoint=...:64560` left the simulator on 5560 and the
    # daemon waiting on 64560: the demo hung, nothing received)
    moved = "endpoint" in settings.stream.model_fields_set and "endpoint" not in settings.sim.model_fields_set
    stream_port = _port_or_free(
        _endpoint_port(settings.stream.endpoint if moved else settings.sim.endpoint),
        "stream.endpoint" if moved else "sim.endpoint",
    )
    upstream_port = _port_or_free(_endpoint_port(settings.upstream.endpoint), "upstream.endpoint")
    api_port = _port_or_free(settings.api.port, "api.port")
    udp_port = _port_or_free(settings.udp.port, "udp.port")
    udp = settings.stream.transport == "udp"
    base = [
        f'sim.endpoint="tcp://127.0.0.1:{stream_port}"',
        f'stream.endpoint="tcp://127.0.0.1:{stream_port}"',
        f'upstream.endpoint="tcp://127.0.0.1:{upstream_port}"',
        f'pull.endpoint="tcp://127.0.0.1:{upstream_port}"',
        f"api.port={api_port}",
        f"udp.port={udp_port}",
        f'store.path="{workdir / "store"}"',
        f'pull.output="{workdir / "upstream"}"',
    ]
    stall = settings.sim.stall_seconds
    chosen = "idle_seconds" in settings.udp.model_fields_set  # (set by --set or the settings file: theirs)
    if udp and stall >= settings.udp.idle_seconds and not chosen:
        # UDP carries no series: a silence longer than udp.idle_seconds ends the run, and the frames
        # after it open a second one, the first's untaken frames recorded lost. The demo's own stall
        # is an injected pause, not the end of a run: the daemon waits it out
        idle = stall + 2.0
        base.append(f"udp.idle_seconds={idle}")
        print(
            f"edge demo: udp.idle_seconds = {idle:g} for this demo (the injected --stall of {stall:g} s"
            f" would otherwise end the run: UDP carries no series)",
            file=sys.stderr,
        )
    token = settings.api.token or secrets.token_urlsafe(18)  # the demo's writes (mode switch, acks) work
    base.append(f'api.token="{token}"')
    common: list[str] = []
    if args.config is not None:
        common += ["--config", str(args.config)]
    # (the endpoints and ports the demo chose, from those settings, win over a --set of them: a taken
    # api.port given by --set was given again after the free one, and the daemon could not start; an
    # api.port of 0 was chosen by the daemon, where the demo never found it: an outside probe)
    chosen_ports = (
        "stream.endpoint",
        "sim.endpoint",
        "upstream.endpoint",
        "pull.endpoint",
        "api.port",
        "udp.port",
    )
    given = [item for item in args.overrides if item.partition("=")[0].strip() not in chosen_ports]
    for item in [*base, *given, *(flags or [])]:
        common += ["--set", item]
    if udp and args.frames:  # the control system arms the detector for N frames
        common += ["--set", f"udp.frames_per_run={args.frames}"]
    url = f"http://127.0.0.1:{api_port}"
    run_uid = str(uuid.uuid4())
    procs = Components(logs)
    line = StatusLine(sys.stderr)
    started = time.monotonic()
    started_at = time.time()  # (the runs the demo made: a store reused from an earlier demo has others)
    # what a failed demo's --json account says (a script reading the last line always finds one)
    known: dict[str, Any] = {"frames_sent": None, "run_uid": None, "logs": str(logs)}
    sim_out = logs / "sim.json"
    interrupted = Interrupted()
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)  # `kill` stops the demo as Ctrl-C does
    for signum in early_signals.NOTED:  # a Ctrl-C while the demo itself started (`edge.early_signals`)
        if signum in (signal.SIGINT, signal.SIGTERM):
            interrupted(signum, None)

    def watch(until: Callable[[], Any], timeout: float, what: str, note: str, give_up_after: int) -> Any:
        return _watch(procs, line, url, until, timeout, what, note, interrupted, give_up_after)

    try:
        procs.start("daemon", ["run", *common])
        # the daemon answers while its mode's kernels load (a first use compiles them: a minute and more);
        # the simulator starts once they have, so the demo's rates are the appliance's, not the load's
        if (
            watch(
                lambda: (status := get_json(url + "/api/status")) and not status["pipeline"].get("warming"),
                DAEMON_START_SECONDS,
                "the daemon's API and kernels",
                "starting",
                1,
            )
            is None
        ):
            return _stopped(args.json, known, "while the daemon started and loaded its kernels", line)
        procs.start("pull", ["pull", *common])
        # (UDP packets carry no run uid: the appliance makes one, found below from the ledger)
        named = [] if udp else ["--run-uid", run_uid]
        sim_argv = ["sim", *common, "--frames", str(args.frames), *named, "--json"]
        sim = procs.start("sim", sim_argv, stdout_file=sim_out)
        if not udp:  # named from now on: a component that dies later leaves it to be found (edge where)
            known["run_uid"] = run_uid
        line.end()  # on a line of its own, not after the status line's "[starting]"
        print(
            f"edge demo: dashboard {url}/#token={token}  (data in {workdir}, logs in {logs})",
            file=sys.stderr if args.json else sys.stdout,
            flush=True,
        )
        note = "Ctrl-C stops" if args.frames == 0 else f"sending {args.frames} frames"
        sending = args.timeout + SIM_START_SECONDS if args.frames else 1e9
        watch(lambda: sim.poll() is not None, sending, "the simulator", note, 1)
        if sim.poll() is None:  # Ctrl-C: the source stops first; the daemon and the client keep going
            line.end()
            print(
                "edge demo: stopping the simulator; delivering what was stored", file=sys.stderr, flush=True
            )
            procs.stop("sim")
        procs.check()
        sent = json.loads(sim_out.read_text().strip().splitlines()[-1])
        frames_sent = int(sent["frames_sent"])
        known.update(frames_sent=frames_sent, sim=sent, run_uid=None if udp else run_uid)
        if not udp and frames_sent == 0 and not sent.get("end_sent") and interrupted.count:
            # stopped before its series began (a Ctrl-C as the simulator started): no run to wait for (an
            # outside probe's demo called it the simulator's crash; then it waited 600 s for a run)
            known["run_uid"] = None
            return _stopped(args.json, known, "before the simulator sent its series", line)

        def opened() -> list[dict[str, Any]]:  # this demo's: a kept store holds earlier demos' runs
            return [r for r in get_json(url + "/api/runs") if float(r["started_at"]) >= started_at]

        if udp:  # UDP carries no run uid: the daemon names the run it opened
            # a run opens with its first packet: none came if every one was lost (--loss 1, a firewall)
            wait = min(args.timeout, settings.udp.idle_seconds + 30.0)

            try:
                runs = watch(opened, wait, "the UDP run to open", "draining", 2)
            except TimeoutError:
                runs = []
                received = int(
                    (get_json(url + "/api/status").get("receiver") or {}).get("packets_received", 0)
                )
                line.end()
                print(
                    f"edge demo: no run opened in {wait:.0f} s: the appliance received {received} packets"
                    f" of the {frames_sent} frames sent; every frame is lost (no run records them)",
                    file=sys.stderr,
                )
                if args.json:
                    summary = {
                        "frames_sent": frames_sent,
                        "frames_received": 0,
                        "frames_stored": 0,
                        "frames_delivered": 0,
                        "frames_lost": frames_sent,
                        "frames_vetoed": 0,
                        "run_uid": None,
                        "lost_because": "no packet reached the appliance, so no run opened",
                        "error": f"no run opened in {wait:.0f} s",
                        "transport": "udp",
                        "packets_received": received,
                        "sim": sent,
                    }
                    print(json.dumps(summary), flush=True)
                return 1
            if runs is None:
                return _stopped(args.json, known, "while waiting for the UDP run to open", line)
            run_uid = runs[-1]["run_uid"]
        known["run_uid"] = run_uid

        def demo_runs() -> list[str]:
            # every run the demo's series made (UDP: a stall longer than udp.idle_seconds splits it into
            # runs, linked as "continued after a pause": an outside probe's summary named one of two, and
            # a demo waiting on the newest alone for every frame never ended)
            return [str(r["run_uid"]) for r in opened()] if udp else [run_uid]

        def settled() -> dict[str, Any] | None:
            runs = [get_json(f"{url}/api/runs/{uid}") for uid in demo_runs()]
            if not runs or any(run.get("ended_at") is None for run in runs):
                return None
            # the ledger's accounting (Ledger.run_totals), read, not recounted: summed over the runs
            sums = {
                key: sum(int(run["totals"][key]) for run in runs)
                for key in (
                    "frames_stored",
                    "frames_delivered",
                    "frames_lost",
                    "frames_vetoed",
                    "frames_incomplete",
                    "loss_records",
                    "bytes_upstream",
                )
            }
            stored, lost, vetoed = sums["frames_stored"], sums["frames_lost"], sums["frames_vetoed"]
            # settled: every frame has its disposition and every file that goes upstream is verified
            if stored + vetoed + lost < frames_sent or any(run["where"]["bytes_pending"] for run in runs):
                return None
            return {
                "stored": stored,
                "delivered": sums["frames_delivered"],
                "lost": lost,
                "vetoed": vetoed,
                "incomplete": sums["frames_incomplete"],
                "records": sums["loss_records"],
                "bytes_upstream": sums["bytes_upstream"],
                "mode": runs[-1].get("mode"),
                "run_uids": [str(run["run_uid"]) for run in runs],
            }

        result = watch(settled, args.timeout, "every frame to be delivered upstream", "delivering", 2)
        line.end()
        if result is None:
            return _stopped(args.json, known, "before every stored frame was delivered", line)
        status = get_json(url + "/api/status")
        run_uids = result["run_uids"]
        run_uid = run_uids[-1]
        summary = {
            "frames_sent": frames_sent,
            "frames_received": int(status["receiver"].get("frames_received", 0)),
            "frames_stored": result["stored"],
            "frames_delivered": result["delivered"],
            "frames_lost": result["lost"],
            "frames_vetoed": result["vetoed"],
            "frames_incomplete": result["incomplete"],
            # announced (--frames) and never sent, the simulator stopped by Ctrl-C: in frames_lost too
            "frames_not_sent": max(0, args.frames - frames_sent) if sent.get("stopped_early") else 0,
            # a Ctrl-C (or SIGTERM) stopped the demo before its --frames were sent: said (an outside probe
            # read a cut run's summary with nothing saying it was cut)
            "stopped": "Ctrl-C" if interrupted.count else None,
            "mode": result["mode"],
            "bytes_upstream": result["bytes_upstream"],
            **_product_figures(url),
            "loss_records": result["records"],
            "seconds": round(time.monotonic() - started, 3),
            "run_uid": run_uid,
            "run_uids": run_uids,
            "transport": settings.stream.transport,
            # (UDP has its own packets: no stream format; it said "json", an outside probe)
            "format": None if settings.stream.transport == "udp" else settings.stream.format,
            # the kernels the daemon ran (after any logged fallback) and the GPU feed's page-locked ring
            "backend": status["pipeline"].get("backend"),
            "backend_degraded_from": status["pipeline"].get("backend_degraded_from", []),
            "ring_pinned_bytes": int(status["pipeline"].get("ring_pinned_bytes", 0)),
            "sim": sent,
            "dashboard": f"{url}/#token={token}",
            "store": str(workdir / "store"),
            "upstream": str(workdir / "upstream"),
            "logs": str(logs),
        }
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            for line in summary_lines(summary):
                print(line)
        accounted = summary["frames_stored"] + summary["frames_vetoed"] + summary["frames_lost"]
        # stopped by Ctrl-C before the --frames announced were sent: the appliance recorded the rest lost
        # (missing at the series' end); they are accounted for, and the stop is no failure
        return 0 if accounted in (frames_sent, frames_sent + summary["frames_not_sent"]) else 1
    except ComponentDied as died:
        line.end()
        print(died.report(), file=sys.stderr, flush=True)
        if died.name != "sim" and known["frames_sent"] is None and "sim" in procs.procs:
            # what the simulator sent by then, from its own account (an outside probe's daemon killed
            # mid-run: the JSON said frames_sent null, the run with 300 frames stored unnamed)
            procs.stop("sim")
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                sent = json.loads(sim_out.read_text().strip().splitlines()[-1])
                known.update(frames_sent=int(sent["frames_sent"]), sim=sent)
        return _failed(args.json, known, died.why())
    except TimeoutError as error:
        line.end()
        print(f"edge demo: {error}; logs in {logs}", file=sys.stderr, flush=True)
        return _failed(args.json, known, str(error))
    finally:
        procs.stop_all()
