"""The ``edge`` command: ``run`` (the daemon), ``sim`` (the simulator), ``pull`` (the HPC client), ``demo``.

Every subcommand reads the same settings: ``--config FILE`` (TOML), then ``EDGE_*`` environment
variables, then ``--set KEY=VALUE`` flags and the subcommand's own flags, later ones winning.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from edge import early_signals
from edge.allocator import tune_malloc
from edge.config import Settings, SimSettings, load_settings
from edge.errors import ConfigError
from edge.logs import LogSetup
from edge.logs import configure as configure_logging

log = logging.getLogger("edge")


class _Once(argparse.Action):
    """An option that may be given once: a second ``--config`` used to replace the first without a word
    (settings the first file set silently back to their defaults)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        given = getattr(namespace, self.dest, None)
        if given is not None:
            parser.error(
                f"{option} given twice ({given}, {values}): give one settings file, and --set KEY=VALUE"
                " for single settings on top of it"
            )
        setattr(namespace, self.dest, values)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, action=_Once, help="TOML settings file (once)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set ring.slots=128 (repeatable)",
    )
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="sets log.level (default INFO)"
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="sets log.format: text, or JSON lines for journald/ELK"
    )


FAULT_FLAGS = {
    "transport": ("stream.transport", str, "zmq (frame stream) or udp (packets)"),
    "format": ("stream.format", str, "json (DECTRIS stream v1 style) or stream2 (DECTRIS Stream V2, CBOR)"),
    "mode": ("sim.mode", str, "rings (powder), spots (serial crystallography) or tomo (projections)"),
    "modules": ("udp.grid_cols", int, "UDP detector modules side by side"),
    "loss": ("sim.loss", float, "probability a packet (udp) or frame (zmq) is dropped"),
    "reorder": ("sim.reorder", float, "probability a udp packet arrives late (reordered)"),
    "duplicate": ("sim.duplicate", float, "probability a packet/frame is sent twice"),
    "corrupt": (
        "sim.corrupt",
        float,
        "probability a packet/message is damaged: json, an image's data part one byte short"
        " (stream_bad_size); stream2, an undecodable LZ4 block (stream2_bad_chunk); udp, a packet"
        " header fault",
    ),
    "stall": ("sim.stall_seconds", float, "pause this many seconds half-way through"),
    "burst": ("sim.burst", int, "send frames in bursts of this many"),
}


#: ``edge demo --mode`` takes the reduction mode and picks the simulated frames that suit it
DEMO_SIM_MODES = {"raw": "rings", "powder": "rings", "serial": "spots", "tomo": "tomo"}


def _fault_flags(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    if demo:
        parser.add_argument(
            "--mode",
            choices=list(DEMO_SIM_MODES),
            help="reduction mode (raw, powder, serial, tomo); the simulated frames follow (serial: spots,"
            " tomo: projections, otherwise rings) unless --sim-mode says otherwise",
        )
        parser.add_argument("--sim-mode", choices=["rings", "spots", "tomo"], help="the simulated frames")
    for name, (_key, kind, text) in FAULT_FLAGS.items():
        if demo and name == "mode":
            continue
        choices = {
            "transport": ["zmq", "udp"],
            "format": ["json", "stream2"],
            "mode": ["rings", "spots", "tomo"],
        }.get(name)
        parser.add_argument(f"--{name}", type=kind, choices=choices, help=text)


def _fault_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if args.command == "demo":
        mode, sim_mode = getattr(args, "mode", None), getattr(args, "sim_mode", None)
        if mode is not None:
            out.append(f'reduction.mode="{mode}"')
        if sim_mode or mode:
            out.append(f'sim.mode="{sim_mode or DEMO_SIM_MODES[mode]}"')
    for name, (key, kind, _text) in FAULT_FLAGS.items():
        if args.command == "demo" and name == "mode":
            continue
        value = getattr(args, name, None)
        if value is not None:
            out.append(f'{key}="{value}"' if kind is str else f"{key}={value}")
    return out


#: settings that a command's own flag sets, beside ``FAULT_FLAGS``
_OWN_FLAGS = {
    "sim.frames": "frames",
    "sim.rate_hz": "rate",
    "sim.encoding": "encoding",
    "pull.endpoint": "endpoint",
    "pull.consumer": "consumer",
    "pull.output": "output",
}


def _named_flags(message: str, args: argparse.Namespace) -> str:
    """A configuration error's lines about settings that this command line's flags set, with the flag
    named: ``udp.grid_cols = 0 (--modules): ...``, where the user typed ``--modules 0``."""
    flags = {key: name for name, (key, _kind, _text) in FAULT_FLAGS.items()} | _OWN_FLAGS
    if args.command == "demo":
        flags["reduction.mode"] = "mode"
        flags["sim.mode"] = "sim-mode" if getattr(args, "sim_mode", None) else "mode"
    lines = message.splitlines()
    for i, line in enumerate(lines):
        key, sep, rest = line.strip().partition(" = ")
        name = flags.get(key)
        if sep and name and getattr(args, name.replace("-", "_"), None) is not None:
            value, colon, why = rest.partition(": ")
            why = why.removesuffix(f" (from --set {key})")  # (the flag set it: said above, not a --set)
            lines[i] = line.replace(line.strip(), f"{key} = {value} (--{name}){colon}{why}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse's parser; with ``--json`` on the command line, a flag it refuses (``--frames -5``) also
    prints one JSON object with ``error``, as every other refusal does (an outside probe's script read
    nothing on stdout)."""

    json_wanted = False

    def error(self, message: str) -> NoReturn:
        if self.json_wanted:
            import json

            print(json.dumps({"error": f"{self.prog}: {message}", "run_uid": None}), flush=True)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the appliance daemon")
    _common(run)
    sim = sub.add_parser("sim", help="run the detector simulator")
    _common(sim)
    sim.add_argument("--frames", type=int, help="frames to send (0 = until stopped)")
    sim.add_argument("--rate", type=float, help="frames per second")
    sim.add_argument("--encoding", choices=["<", "bs16-lz4<"], help="raw or bitshuffle-LZ4 images")
    sim.add_argument("--run-uid", help="run uid to announce (default: a new UUID)")
    sim.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _fault_flags(sim)
    sim.add_argument(
        "--ioc",
        action="store_true",
        help="serve the camera IOC (epics.detector_prefix); Acquire drives frames",
    )
    pull = sub.add_parser("pull", help="pull reduced data from an appliance (HPC side)")
    _common(pull)
    pull.add_argument("--endpoint", help="appliance upstream endpoint, e.g. tcp://127.0.0.1:5570")
    pull.add_argument("--consumer", help="this consumer's name")
    pull.add_argument("--output", type=Path, help="where pulled files go")
    demo = sub.add_parser("demo", help="simulator, daemon, pull client and dashboard on 127.0.0.1")
    _common(demo)
    demo.add_argument("--frames", type=_count, default=0, help="frames to send (0 = until Ctrl-C)")
    demo.add_argument("--rate", type=float, help="frames per second")
    demo.add_argument("--workdir", type=Path, default=Path("demo-data"), help="where the demo keeps its data")
    demo.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    _fault_flags(demo, demo=True)
    demo.add_argument("--timeout", type=_seconds, default=600.0, help="seconds to wait for delivery (> 0)")
    keys = sub.add_parser("keys", help="write a CurveZMQ key pair (NAME.key, NAME.key_secret) into DIR")
    keys.add_argument("directory", type=Path)
    keys.add_argument("name")
    keys.add_argument(
        "--force",
        action="store_true",
        help="replace a key pair NAME already has in DIR (each peer given its public key needs the new one)",
    )
    where = sub.add_parser("where", help="where is my data: one run's files, states, confirmations, losses")
    _common(where)
    where.add_argument(
        "run",
        help="run uid, a unique prefix of one, or the uid the detector gave a run recorded under a fresh one",
    )
    where.add_argument("--json", action="store_true", help="print the report as JSON")
    bench = sub.add_parser("bench", help="run the benchmarks (benchmarks/kernels.py) and print the table")
    bench.add_argument(
        "bench_args",
        nargs=argparse.REMAINDER,
        help="passed on to benchmarks/kernels.py, e.g. --json, --quick, --only GROUP,... (groups: integrate,"
        " correct, compress, fbp, peaks, e2e, preview, modes, ingest; `edge bench --quick --help` lists"
        " every flag)",
    )
    pvdocs = sub.add_parser("pvdocs", help="print the appliance's PV reference (docs/pvs.md)")
    _common(pvdocs)
    settingsdocs = sub.add_parser("settingsdocs", help="print the settings reference (docs/settings.md)")
    _common(settingsdocs)
    return parser


def _log_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    if getattr(args, "log_level", None):
        out.append(f'log.level="{args.log_level}"')
    if getattr(args, "log_format", None):
        out.append(f'log.format="{args.log_format}"')
    return out


def _settings(args: argparse.Namespace, extra: list[str]) -> Settings:
    return load_settings(args.config, [*args.overrides, *extra])


def _reload_settings(args: argparse.Namespace, extra: list[str]) -> Settings:
    """The settings a SIGHUP reload takes: as at start, except that a ``--config`` file holding no setting
    at all (empty, or comments only) is refused: it is most likely being written (an editor writing in
    place, a tool truncating it first), and taken as it read, every reloadable setting went back to its
    default (an outside probe: the retention quota became the whole disk, the JSON log plain text)."""
    import tomllib

    if args.config is not None:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
            empty = not tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            empty = False  # (the load below says what is wrong with it)
        if empty:
            raise ConfigError(
                f"--config {args.config} holds no settings (empty, or being written?): write the new file"
                " beside it and rename it over this one, then reload"
            )
    return _settings(args, extra)


#: signals ``edge run`` received before it could act on them (`catch_early_signals`), oldest first
EARLY_SIGNALS = early_signals.NOTED
#: from ``edge run``'s first moment (`edge.early_signals`, the command's entry point; again in `main`
#: for a caller of it): SIGTERM, SIGINT and SIGHUP are noted, and done once the daemon's handlers are in
#: place
catch_early_signals = early_signals.catch


def _port_taken(settings: Settings) -> str | None:
    """Whether a port the daemon listens on is taken now (the API's, the upstream server's tcp endpoint,
    the UDP receiver's): said as the refusal's one line, naming the setting and the reason; None when
    each can be bound. Looked at before the store is touched (a daemon refused for a port had made its
    ledger, its reserve and its lock files there: an outside probe's typo'd store.path); the real binds
    follow, and a port taken in between still fails the start there."""
    import socket

    api = settings.api
    wanted = [
        (f"the API cannot listen on {api.host}:{api.port} (api.host, api.port)", api.host, api.port, True)
    ]
    endpoint = settings.upstream.endpoint
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        if port.isdigit() and host not in ("", "*"):
            said = f"cannot serve upstream on {endpoint} (upstream.endpoint)"
            wanted.append((said, host.strip("[]"), int(port), True))
    if settings.stream.transport == "udp":
        udp = settings.udp
        wanted.append(
            (f"udp.host, udp.port = {udp.host}, {udp.port}: cannot receive there", udp.host, udp.port, False)
        )
    for what, host, port, stream in wanted:
        if not port:
            continue
        kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
            with socket.socket(family, kind) as probe:
                if stream:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
                probe.bind(address)
        except OSError as error:
            return f"{what}: {error.strerror or error}"
    return None


def _run_daemon(
    settings: Settings, reload: Callable[[], Settings] | None = None, log_setup: LogSetup | None = None
) -> int:
    """The appliance and its API until SIGTERM/SIGINT (then it stops acquiring, persists what is in the
    ring, records what never arrived, closes files and the ledger and exits 0); SIGHUP reloads."""
    import uvicorn

    from edge.appliance import Appliance
    from edge.http_guard import guarded_protocol
    from edge.service import Notifier, ServiceReporter, watchdog_interval
    from webui import create_app

    stop_requested = threading.Event()
    server: uvicorn.Server | None = None

    def _request_stop(signum: int, frame: object) -> None:
        stop_requested.set()
        if server is not None:
            server.should_exit = True

    # from the first moment: a SIGTERM while starting still ends in an orderly stop with status 0
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    if {signal.SIGTERM, signal.SIGINT} & set(EARLY_SIGNALS):
        log.info("stop requested while starting: stopping once started")
        stop_requested.set()
    from edge.daemon_lock import DaemonLock, FileHold, StoreLock

    lock = DaemonLock(settings.ledger_path)  # held until the process ends: `edge where` sees it running
    # and one daemon per store, whatever ledger each names: a second one's recovery moved the first's
    # open file to quarantine (its frames lost), and both would write the store's reduction.json
    store_lock = StoreLock(settings.store.path)
    # and the ledger file itself: a hard link to a running daemon's ledger has a lock file of its own
    ledger_hold = FileHold(settings.ledger_path)

    def refused(held: Any) -> int:
        if held is ledger_hold:
            log.error(
                "cannot start: another process holds the ledger file %s (another daemon serves it under"
                " another name, a hard link?); stop it first",
                settings.ledger_path,
            )
        elif held is lock:  # its recovery would end the other's open runs and move its open files
            log.error(
                "cannot start: another daemon (pid %s) serves the ledger %s; stop it first (%s holds the"
                " lock)",
                lock.holder(),
                settings.ledger_path,
                lock.path,
            )
        else:
            log.error(
                "cannot start: another daemon (pid %s) uses the store %s, with another ledger; stop it"
                " first (%s holds the lock)",
                store_lock.holder(),
                settings.store.path,
                store_lock.path,
            )
        return 2

    for held in (
        lock,
        store_lock,
        ledger_hold,
    ):  # all looked at before any is made: a refusal touches nothing
        if held.held_elsewhere():
            return refused(held)
    taken = _port_taken(settings)  # and the ports: a daemon refused for one had made its store already
    if taken is not None:  # (a ledger, its reserve, lock files: an outside probe's typo'd store.path)
        log.error("cannot start: %s", taken)
        return 2
    ledger_setting = "ledger.path" if settings.ledger.path is not None else "store.path"
    for held, what in (  # each named by its setting (an outside probe read of "the ledger's directory")
        (lock, f"the ledger's directory ({ledger_setting})"),
        (store_lock, "the store (store.path)"),
        (ledger_hold, f"the ledger ({ledger_setting})"),
    ):
        try:
            acquired = held.acquire()
        except OSError as error:  # the store's directory is a file, unwritable, on a missing mount, ...
            log.error("cannot start: %s %s cannot be used: %s", what, held.path.parent, error)
            return 2
        if not acquired:  # (taken between the look and now)
            return refused(held)
    try:
        appliance = Appliance(settings)
    except (ConfigError, OSError) as error:  # bad keys, an unwritable store, a damaged ledger: say so, exit
        log.error("cannot start: %s", error)  # a line in the log's format (journald/ELK read JSON)
        return 2
    app = create_app(settings, appliance.view, reduction=appliance.reduction, trends_until=stop_requested)
    config = uvicorn.Config(  # log_config=None: uvicorn's lines go through our handler (text or JSON)
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_level="warning",
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=2,  # the dashboard's live streams (/api/events) never end on their own
        http=guarded_protocol(settings.api.max_connections, settings.api.header_seconds),
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SIGTERM/SIGINT: the status says "stopping" at once, so the live streams still open while
            # uvicorn winds down (up to 2 s) carry it, before the data plane is stopped
            appliance.stopping = True
            super().handle_exit(sig, frame)

    server = _Server(config)
    # bound before the data plane starts, so a taken port is a failed start (2, not uvicorn's exit
    # status 3) that has touched nothing: a daemon that connected to the detector's stream first took
    # frames from the one already running (ZeroMQ shares a PUSH stream among its readers)
    try:
        api_socket = config.bind_socket()
        # listening now, not when uvicorn starts serving: a port the data plane's own sockets would take
        # next (upstream.endpoint on the same port) then fails them, at start, not uvicorn after "ready"
        api_socket.listen(config.backlog)
    except (SystemExit, OSError):  # uvicorn logged why (the address is in use, say)
        log.error("cannot start: the API cannot listen on %s:%s", settings.api.host, settings.api.port)
        appliance.stop()
        return 2
    api_port = api_socket.getsockname()[1]  # api.port 0: the port the system chose
    try:
        appliance.start()
    except (ConfigError, OSError) as error:  # a busy port: say so, and let go of the ring and the ledger
        log.error("cannot start: %s", error)
        api_socket.close()
        appliance.stop()
        return 2
    if settings.api.host in ("0.0.0.0", "::"):
        log.warning(
            "api.host = %s: the API and dashboard listen on every network interface; anyone who can reach"
            " this machine reads everything (and writes, with the token)",
            settings.api.host,
        )
    log.info(
        "ready: dashboard http://%s:%s/ upstream %s",
        settings.api.host,
        api_port,
        appliance.forwarder.bound_endpoint,
    )
    reporter = ServiceReporter(
        Notifier.from_environment(),
        liveness=appliance.liveness,
        status=appliance.view.status,
        ready=lambda: bool(server is not None and server.started),
        interval=watchdog_interval(),
    )
    reporter.start()

    def _watch_fatal() -> None:  # a data-plane thread out of restarts: stop, and exit non-zero below
        appliance.fatal_event.wait()
        log.critical("stopping: %s", appliance.fatal)
        _request_stop(signal.SIGTERM, None)

    threading.Thread(target=_watch_fatal, name="fatal-watch", daemon=True).start()
    if reload is not None and log_setup is not None:
        _on_sighup(appliance, reload, log_setup, reporter)

    async def serve() -> None:
        ioc = None
        pva: Any = None
        if settings.epics.enabled:
            from edge.ioc import ApplianceIOC
            from edge.setpoint_autosave import AUTOSAVE_NAME as SETPOINTS_AUTOSAVE_NAME

            ioc = ApplianceIOC(
                appliance.view,
                settings.epics,
                loop=asyncio.get_running_loop(),
                end_open_series=appliance.end_open_series,
                reduction=appliance.reduction,
                refusal=appliance.refusal,
                capture=appliance.sink,
                autosave=settings.store.path / SETPOINTS_AUTOSAVE_NAME,  # kept across a restart
            )
            ioc.start()
            if settings.epics.pva_image:
                from edge.pva import PvaImageServer

                pva = PvaImageServer(
                    appliance.view,
                    settings.epics.prefix + "Pva1:Image",
                    settings.epics.pva_rate_hz,
                    loop=asyncio.get_running_loop(),
                )
                try:
                    pva.start()
                except Exception as error:  # the live image is a view: the daemon runs without it
                    log.warning("pvAccess live image not served: %s", error)
                    pva = None
        try:
            if not stop_requested.is_set():
                await server.serve(sockets=[api_socket])
        finally:
            if pva is not None:
                pva.stop()
            if ioc is not None:
                ioc.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    finally:
        reporter.stopping()
        appliance.stop()
        log.info("stopped")
        # from here on a further SIGTERM/SIGINT (a second Ctrl-C, a script signalling again) is ignored:
        # Python puts the default action back while it tears down, and one arriving then ended a clean
        # stop with status 143 after "stopped" (an outside probe); everything is persisted by now
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = 0
    if appliance.fatal is not None:
        print(f"edge: exiting with status 3: {appliance.fatal}", file=sys.stderr, flush=True)
        status = 3
    from edge.store import HDF5_UNCLOSED

    if HDF5_UNCLOSED.is_set():
        # a file HDF5 could not close (a full disk under its flush) stays half-open inside the library,
        # whose own clean-up at exit then crashes (SIGSEGV); everything of ours is closed and synced
        log.warning("HDF5 kept a file it could not close (disk full): exiting without its clean-up")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _on_sighup(appliance: Any, reload: Callable[[], Settings], log_setup: LogSetup, reporter: Any) -> None:
    """SIGHUP re-reads the settings and applies what can change while running (see edge.service.reload)."""
    from edge.service import apply_reload

    def _reload() -> None:
        reporter.reloading()
        try:
            new = reload()
        except ConfigError as error:
            log.error("reload refused, settings unchanged: %s", error)
            # kept until a reload succeeds (the dashboard's alarm): a restart would refuse the same file
            appliance.reload_refused = {"at": time.time(), "error": str(error)[:500]}
            reporter.reloaded("refused (bad settings)")
            return
        appliance.reload_refused = None
        applied = apply_reload(appliance, new, log_setup)
        reporter.reloaded(", ".join(applied) or "nothing changed")

    def _handler(signum: int, frame: object) -> None:  # not in the handler: it may interrupt a log call
        threading.Thread(target=_reload, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, _handler)
    if signal.SIGHUP in EARLY_SIGNALS:  # asked for while starting (the settings may have changed since read)
        EARLY_SIGNALS.remove(signal.SIGHUP)
        log.info("reload requested while starting: reloading now")
        _handler(signal.SIGHUP, None)


#: the lock ``edge pull`` holds in its output directory while it runs
PULL_LOCK = ".edge-pull.lock"


#: what makes ``pull.output`` unusable for now (a mount not ready or read-only, a full disk, no permission
#: yet, a stale network mount): ``edge pull`` waits for it; any other error is a refusal (exit 2)
OUTPUT_NOT_READY_YET = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.ESTALE,
        errno.ENOTCONN,
    }
)
OUTPUT_RETRY_SECONDS = 5.0
OUTPUT_WAIT_LOG_SECONDS = 60.0


def _run_pull(settings: Settings) -> int:
    import zmq

    from edge.upstream.pull import PullClient, main_loop

    pull = settings.pull
    context = zmq.Context()
    # (nothing of the appliance: numba and the kernels are no part of the HPC side, and a unit with
    # MemoryDenyWriteExecute could not load them, an outside probe)
    from edge.upstream.curve import check_client_keys, curve_paths

    try:
        curve = curve_paths(
            pull.curve_secret_file,
            pull.curve_server_file,
            ("pull.curve_secret_file", "pull.curve_server_file"),
        )
        if curve is not None:
            check_client_keys(*curve)
    except ConfigError as error:
        print(f"edge: {error}", file=sys.stderr)
        return 2
    from edge.daemon_lock import PidLock

    # one client to a directory: two would write each other's .part files, rename them from under each
    # other and confirm files the other was still writing
    lock = PidLock(pull.output / PULL_LOCK)
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    waiting_since: float | None = None
    while True:  # an output that cannot be used is a clear refusal, before anything is asked of the appliance
        try:
            pull.output.mkdir(parents=True, exist_ok=True)
            if not os.access(pull.output, os.W_OK | os.X_OK):
                if os.statvfs(pull.output).f_flag & os.ST_RDONLY:  # (said as such: a read-only mount)
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(pull.output))
                raise PermissionError(errno.EACCES, "not writable", str(pull.output))
            held = lock.acquire()
            break
        except OSError as error:
            if error.errno not in OUTPUT_NOT_READY_YET:
                print(f"edge pull: cannot use pull.output = {str(pull.output)!r}: {error}", file=sys.stderr)
                return 2
            # a mount not ready yet, read-only or full (at boot, or remounted): wait for it, as for a write
            # that fails later on (under systemd an exit here stopped the unit for good)
            now = time.monotonic()
            if waiting_since is None or now - waiting_since >= OUTPUT_WAIT_LOG_SECONDS:
                waited = "" if waiting_since is None else " still"
                waiting_since = now
                print(
                    f"edge pull: cannot use pull.output = {str(pull.output)!r} yet: {error}; waiting{waited}"
                    f" for it (tried again every {OUTPUT_RETRY_SECONDS:g} s; SIGINT or SIGTERM stops)",
                    file=sys.stderr,
                    flush=True,
                )
        if stopping.wait(OUTPUT_RETRY_SECONDS):
            return 0
    if not held:
        print(
            f"edge pull: pull.output = {str(pull.output)!r} is in use by another edge pull (pid"
            f" {lock.holder()}); give each consumer a directory of its own",
            file=sys.stderr,
        )
        return 2
    client = PullClient(
        pull.endpoint, pull.consumer, pull.output, pull.credit, context, curve, pull.part_expiry_seconds
    )

    def _stop(signum: int, frame: object) -> None:
        client.stop_event.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print(
        f"pull: consumer {pull.consumer} from {pull.endpoint} into {pull.output}", file=sys.stderr, flush=True
    )
    main_loop(client)
    context.term()
    if client.fatal is not None:
        print(f"edge pull: {client.fatal}", file=sys.stderr)
        return 2
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number >= 0 (else argparse's one-line error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (0 means until stopped)")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds above 0")
    return value


#: the faults each carrier of simulated frames injects (``sim.*``; README.md, ``edge sim``); any other set
#: to a non-default value is refused rather than silently left out
SIM_FAULTS = {
    "udp": ("loss", "reorder", "duplicate", "corrupt", "stall_seconds", "burst"),
    "json": ("loss", "duplicate", "corrupt", "stall_seconds", "burst"),
    "stream2": ("loss", "duplicate", "corrupt", "truncate", "wrong_tag", "missing_end", "stall_seconds"),
    "ioc": (),  # the camera IOC starts each series when Acquire is put, fault-free
}


def _carrier(settings: Settings, ioc: bool) -> tuple[str, str]:
    """(the key of ``SIM_FAULTS``, its name in a message) for what carries the simulated frames."""
    if ioc:
        return "ioc", "edge sim --ioc"
    if settings.stream.transport == "udp":
        return "udp", "UDP"
    return settings.stream.format, f"stream.format = {settings.stream.format!r}"


def _json_refusal(args: argparse.Namespace, message: str) -> None:
    """With ``--json``, a command refused before it ran still prints one JSON object on stdout, saying
    why (a script reading it found nothing: an outside probe's ``edge sim --reorder ... --json``)."""
    if not getattr(args, "json", False):
        return
    import json

    answer: dict[str, Any] = {"error": message, "run_uid": None}
    if args.command == "where":
        answer["asked"] = args.run
    elif args.command in ("sim", "demo"):
        answer["frames_sent"] = None
    print(json.dumps(answer), flush=True)


def sim_refusal(settings: Settings, ioc: bool = False, demo: bool = False) -> str | None:
    """Why the simulator cannot send what the settings ask for, or None.

    Tomography frames carry their image key and rotation angle only in the json stream's image header
    (docs/wire-formats.md); over UDP or Stream V2 a tomo scan would arrive as projections without angles,
    and nothing reconstructs. A fault the carrier does not inject (``sim.reorder`` on a ZeroMQ stream,
    ``sim.burst`` on Stream V2, any fault with ``--ioc``) would be left out without a word: the run would
    test nothing the technician asked for."""
    if demo and settings.sim.missing_end:
        return (
            "sim.missing_end never ends the series, and the demo waits for its run to end: run `edge sim`"
            " and `edge run` for this fault (the run ends at the next series or when the daemon stops)"
        )
    if settings.stream.transport == "udp" and settings.stream.format != "json":
        return (
            f"stream.format = {settings.stream.format!r} is a format of the ZeroMQ stream: UDP has its own"
            " packets (docs/wire-formats.md); use one or the other"
        )
    if settings.sim.mode == "tomo" and (
        settings.stream.transport == "udp" or settings.stream.format != "json"
    ):
        return (
            "sim.mode = 'tomo' needs stream.transport = 'zmq' and stream.format = 'json': over"
            f" {_carrier(settings, False)[1]}"
            " frames carry no image key or rotation angle (docs/wire-formats.md), so nothing would be"
            " reconstructed (reduction.tomo.angle_start and angle_step give a real detector's projections"
            " their angles, not the image keys: the simulator's darks and flats would be projections)"
        )
    sim = settings.sim
    carrier, name = _carrier(settings, ioc)
    foreign = [
        key for key in _ALL_FAULTS if getattr(sim, key) != _NO_FAULT[key] and key not in SIM_FAULTS[carrier]
    ]
    if foreign:
        offered = ", ".join(f"sim.{key}" for key in SIM_FAULTS[carrier]) or "none"
        asked = ", ".join(f"sim.{key}" for key in foreign)
        return f"{asked}: not a fault {name} can inject (it injects: {offered}; README.md, edge sim)"
    return None


_ALL_FAULTS = sorted({key for keys in SIM_FAULTS.values() for key in keys})
_NO_FAULT = {key: SimSettings.model_fields[key].default for key in _ALL_FAULTS}


def _sim_mode_options(settings: Settings) -> dict[str, Any]:
    """The simulated frames' own options for the chosen sim mode (hit fraction, tomography scan)."""
    sim = settings.sim
    if sim.mode == "spots":
        return {"hit_fraction": sim.hit_fraction}
    if sim.mode == "tomo":
        return {
            "n_angles": sim.tomo_angles,
            "n_darks": sim.tomo_darks,
            "n_flats": sim.tomo_flats,
            "n_flats_end": sim.tomo_flats_end,
            "start_deg": sim.tomo_start_deg,
            "range_deg": sim.tomo_range_deg,
            "turns": sim.tomo_turns,
            "axis_offset_px": sim.tomo_axis_offset_px,
        }
    return {}


def _run_sim(settings: Settings, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edge.poni import settings_geometry
    from hw_sim.cli import Stream2Faults, StreamFaults, run_sim, run_sim_ioc, run_sim_udp

    sim = settings.sim

    def stopped_before() -> bool:  # a SIGINT or SIGTERM while it started (`edge.early_signals`)
        return bool({signal.SIGINT, signal.SIGTERM} & set(EARLY_SIGNALS))

    frames_from = {  # what the simulated frames look like, whatever carries them
        "geometry": asdict(settings_geometry(settings)),  # a PONI file's, as the daemon's
        "mode": sim.mode,
        "seed": sim.seed,
        "pool": sim.pool,
    }
    if args.ioc:
        # the camera IOC takes SIGINT/SIGTERM once its loop runs: one noted before (`edge.early_signals`)
        # or while it sets up ends it here (it was noted and never acted on: the IOC ran on, an outside
        # probe's stop in its first second ignored)
        if stopped_before():
            print("sim: stopped before the detector IOC started", file=sys.stderr)
            return 0
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.default_int_handler)
        try:
            run_sim_ioc(
                prefix=settings.epics.detector_prefix,
                endpoint=sim.endpoint,
                shape=settings.detector.shape,
                dtype=settings.detector.dtype,
                encoding=sim.encoding,
                series=sim.series,
                stream_format=settings.stream.format,
                stopped_state=sim.stopped_state,
                options=_sim_mode_options(settings),
                **frames_from,
            )
        except KeyboardInterrupt:
            print("sim: stopped before the detector IOC started", file=sys.stderr)
        return 0
    if settings.stream.transport == "udp":
        from edge.frame_format import udp_geometry

        if getattr(args, "run_uid", None):
            # UDP packets carry no run uid: the appliance makes one when the run opens (its --json had
            # none, and the flag was taken without a word)
            print(
                "edge sim: --run-uid is for the ZeroMQ stream; UDP packets carry no run uid (the appliance"
                " makes one when the run opens: GET /api/runs, or edge where)",
                file=sys.stderr,
            )
            return 2
        run_sim_udp(
            port=settings.udp.port,
            detector=asdict(udp_geometry(settings)),
            frames=sim.frames,
            rate_hz=sim.rate_hz,
            faults={
                "loss": sim.loss,
                "reorder": sim.reorder,
                "duplicate": sim.duplicate,
                "corrupt": sim.corrupt,
            },
            fault_seed=sim.fault_seed,
            stall_seconds=sim.stall_seconds,
            burst=sim.burst,
            as_json=args.json,
            options=_sim_mode_options(settings),
            stopped_before=stopped_before,
            **frames_from,
        )
        return 0
    run_sim(
        endpoint=sim.endpoint,
        shape=settings.detector.shape,
        dtype=settings.detector.dtype,
        frames=sim.frames,
        rate_hz=sim.rate_hz,
        encoding=sim.encoding,
        series=sim.series,
        as_json=args.json,
        run_uid=args.run_uid,
        faults=StreamFaults(
            sim.loss, sim.duplicate, sim.corrupt, sim.stall_seconds, sim.burst, sim.fault_seed
        ),
        stream_format=settings.stream.format,
        options=_sim_mode_options(settings),
        stream2_faults=Stream2Faults(  # in stream2, "corrupt" is a compressed block that cannot decode
            loss=sim.loss,
            duplicate=sim.duplicate,
            bad_block=sim.corrupt,
            truncate=sim.truncate,
            wrong_tag=sim.wrong_tag,
            missing_end=sim.missing_end,
            stall_seconds=sim.stall_seconds,
            seed=sim.fault_seed,
        ),
        stopped_before=stopped_before,
        **frames_from,
    )
    return 0


def _run_where(settings: Settings, run: str, as_json: bool, given_file: bool = False) -> int:
    import json

    from edge.daemon_lock import daemon_running
    from edge.errors import NotFound
    from edge.ledger import Ledger
    from edge.upstream.outlook import RATE_WINDOW_SECONDS
    from edge.where import render, resolve_run, runs_beginning, where_report

    def refused(message: str, status: int) -> int:  # said; with --json, one JSON object too
        print(f"edge: {message}", file=sys.stderr)
        if as_json:
            print(json.dumps({"error": message, "run_uid": None, "asked": run}))
        return status

    if not settings.ledger_path.exists():
        above = next((p for p in settings.ledger_path.parents if p.exists()), None)
        if above is not None and not above.is_dir():  # (an outside probe read "no ledger at a/file/...")
            return refused(f"no ledger at {settings.ledger_path}: {above} is a file, not a directory", 2)
        return refused(f"no ledger at {settings.ledger_path} (set store.path)", 2)
    try:  # read without writing: opened to write, the last connection's close folded a crashed daemon's
        # write-ahead log into the ledger file (an outside probe saw the file change under `edge where`)
        ledger = Ledger(settings.ledger_path, settings.upstream.required_consumers, read_only=True)
    except ConfigError as reading:  # an older schema (bringing it up to date is a write), or unreadable
        try:
            ledger = Ledger(settings.ledger_path, settings.upstream.required_consumers)
        except ConfigError as error:  # a damaged ledger, not one, or one this user may not write
            return refused(f"{error} (read-only: {reading})", 2)
    try:
        run_uid = resolve_run(ledger, run)
        running = daemon_running(settings.ledger_path)
        held = stalled = None
        unreadable: dict[str, str] = {}
        window = RATE_WINDOW_SECONDS
        from_daemon = False
        if running:  # what only the daemon knows: a held run end, a stalled upstream link
            served = daemon_where(settings, run_uid)
            held = (
                _text_or_none(served.get("held_end")) if ledger.run(run_uid)["exit_status"] is None else None
            )
            stalled = _text_or_none(served.get("upstream_stalled"))
            # the files it found it cannot send as they are on the disk (changed with the same size: only
            # its read of them tells)
            for row in served.get("files") or ():
                if isinstance(row, dict) and _text_or_none(row.get("changed_locally")):
                    unreadable[str(row.get("path"))] = row["changed_locally"]
            # the daemon's rate window (shorter just after its consumers reconnected): its ETA, not another
            served_window = served.get("rate_window_seconds")
            if isinstance(served_window, int | float) and 0 < served_window <= RATE_WINDOW_SECONDS:
                window = float(served_window)
            # and the consumers it requires: these settings may name others (an outside probe: "needs
            # hpc, tape" beside "stalled: ... mirror must pull", the counts by the one list, the stall by
            # the other). Only the reading changes: the ledger's states are the daemon's to set.
            daemons = served.get("required_consumers")
            if isinstance(daemons, list) and daemons and all(isinstance(c, str) and c for c in daemons):
                from_daemon = True
                ledger.required_consumers = tuple(dict.fromkeys(daemons))
        report = where_report(
            ledger,
            run_uid,
            daemon_running=running,
            store=settings.store.path,
            held_end=held,
            stalled=stalled,
            window=window,
            unreadable=unreadable,
        )
        # an exact uid that also begins others: said, as `edge where` takes a prefix too (an outside
        # probe typed the start of one run's uid and was shown another run, the one named so exactly)
        longer = runs_beginning(ledger, run_uid) if run == run_uid else []
        if longer:
            shown = ", ".join(longer[:5]) + (f", ... ({len(longer) - 5} more)" if len(longer) > 5 else "")
            print(
                f"edge: {run!r} is this run's whole uid; it also begins {len(longer)} other run uid(s)"
                f" ({shown}): give more of the uid for those",
                file=sys.stderr,
            )
        # the consumers the files wait for come from the settings: unset, the default stands in for what
        # the daemon requires (an outside probe: "needs hpc" beside "confirmed by some, not yet all")
        # (a settings file that does not set them runs the daemon on the default too: then no note)
        report["consumers_default"] = (
            "required_consumers" not in settings.upstream.model_fields_set
            and not given_file
            and not from_daemon
        )
        report["consumers_from_daemon"] = from_daemon
    except NotFound as error:
        return refused(str(error), 1)
    finally:
        ledger.close()
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def daemon_where(settings: Settings, run_uid: str, timeout: float = 2.0) -> dict[str, Any]:
    """The running daemon's where report of ``run_uid`` (``GET /api/runs/{id}``, ``where``): what the
    ledger alone does not say (a run end a full disk holds back, ``held_end``; a stalled upstream link,
    ``upstream_stalled``); empty when its API does not answer (the report is then the ledger's)."""
    import json
    import urllib.parse
    import urllib.request

    from edge.config import LOCALHOST

    host = settings.api.host if settings.api.host not in ("0.0.0.0", "::") else LOCALHOST
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.api.port}/api/runs/{urllib.parse.quote(run_uid, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            run = json.loads(answer.read())
            where, served = run.get("where", {}), run.get("ledger")
    except (OSError, ValueError, AttributeError):
        return {}
    if served != str(settings.ledger_path.resolve()):  # another appliance (or none of ours) answered
        if served is not None:
            print(
                f"edge where: the API at {host}:{settings.api.port} serves another ledger ({served}); its"
                " answer is not used (set api.port to this daemon's)",
                file=sys.stderr,
            )
        return {}
    return where if isinstance(where, dict) else {}


def held_end_from_daemon(settings: Settings, run_uid: str, timeout: float = 2.0) -> str | None:
    """The exit status of ``run_uid``'s end when the running daemon holds its record back (a full disk:
    the ledger says nothing yet); None when it holds none, or its API does not answer."""
    return _text_or_none(daemon_where(settings, run_uid, timeout).get("held_end"))


def _run_bench(bench_args: list[str]) -> int:
    """Run ``benchmarks/kernels.py`` from the source checkout this package is installed from."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"
    if not script.exists():
        print(f"edge: {script} not found; `edge bench` runs from a source checkout", file=sys.stderr)
        return 2
    sys.argv = [str(script), *bench_args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["run"], ["sim"], ["demo"]):
        catch_early_signals()
    if argv[:1] == ["bench"] and not {"-h", "--help"} & set(argv[1:2]):
        return _run_bench(argv[1:])  # every flag after "bench" is the benchmark script's
    _Parser.json_wanted = "--json" in argv
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        from edge.upstream.curve import create_keys

        try:
            public, secret = create_keys(args.directory, args.name, replace=args.force)
        except (ConfigError, OSError) as error:
            print(f"edge keys: {error}", file=sys.stderr)
            return 2
        print(f"public key {public} (give this to the peer); secret key {secret} (keep it here)")
        return 0
    # The OpenMP runtimes under numba's thread pool and bitshuffle spin for a while after every
    # parallel region by default. In these long-running processes many threads share few cores, and a
    # spinning idle worker starves the thread that has work: idle workers sleep instead (children
    # inherit this). Set before numba or bitshuffle load; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.command in ("run", "pull", "sim"):
        # received frames and chunks keep their pages from one message to the next (edge/allocator.py)
        tune_malloc()
    if args.command == "run":
        # bitshuffle compresses each frame on one thread; the pipeline compresses store.compress_threads
        # frames at once instead (numba sizes its own pool and ignores this)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    extra: list[str] = _fault_overrides(args) if args.command in ("sim", "demo") else []
    extra += _log_overrides(args)
    if args.command == "sim":
        if args.frames is not None:
            extra.append(f"sim.frames={args.frames}")
        if args.rate is not None:
            extra.append(f"sim.rate_hz={args.rate}")
        if args.encoding is not None:
            extra.append(f'sim.encoding="{args.encoding}"')
    elif args.command == "pull":
        if args.endpoint:
            extra.append(f'pull.endpoint="{args.endpoint}"')
        if args.consumer:
            extra.append(f'pull.consumer="{args.consumer}"')
        if args.output:
            extra.append(f'pull.output="{args.output}"')
    elif args.command == "demo" and args.rate is not None:
        extra.append(f"sim.rate_hz={args.rate}")
    try:
        settings = _settings(args, extra)
    except ConfigError as error:
        print(f"edge: {_named_flags(str(error), args)}", file=sys.stderr)
        _json_refusal(args, _named_flags(str(error), args))
        return 2
    if getattr(args, "modules", None) is not None and settings.stream.transport != "udp":
        # (it sets udp.grid_cols: the ZeroMQ stream's frames are detector.height x width whatever it says;
        # an outside probe's --modules 2 over zmq was taken without a word)
        problem = (
            f"--modules {args.modules} lays out the UDP detector's modules (udp.grid_cols); over"
            f" stream.transport = {settings.stream.transport!r} it changes nothing: add --transport udp,"
            " or leave it out"
        )
        print(f"edge {args.command}: {problem}", file=sys.stderr)
        _json_refusal(args, problem)
        return 2
    log_setup = configure_logging(settings.log.level, settings.log.format)
    if args.command == "run":
        return _run_daemon(settings, lambda: _reload_settings(args, extra), log_setup)
    if args.command == "where":
        try:
            return _run_where(settings, args.run, args.json, given_file=args.config is not None)
        except BrokenPipeError:  # `edge where RUN | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
            return 0
    if args.command == "sim":
        import errno

        import zmq

        problem = sim_refusal(settings, ioc=args.ioc)
        if problem:
            print(f"edge sim: {problem}", file=sys.stderr)
            _json_refusal(args, problem)
            return 2
        try:
            return _run_sim(settings, args)
        except ConfigError as error:  # a calibration file it reads (the PONI's geometry draws the rings)
            print(f"edge sim: {error}", file=sys.stderr)  # (a traceback, and no JSON: an outside probe)
            _json_refusal(args, str(error))
            return 2
        except (zmq.ZMQError, OSError) as error:  # a taken endpoint or port: one line, exit 2
            hint = "; another simulator or sender has it" if error.errno == errno.EADDRINUSE else ""
            print(f"edge sim: cannot send: {error}{hint}", file=sys.stderr)
            _json_refusal(args, f"cannot send: {error}{hint}")
            return 2
    if args.command == "pull":
        return _run_pull(settings)
    if args.command == "pvdocs":
        from edge.pvdocs import render

        sys.stdout.write(render(settings.epics.prefix))
        return 0
    if args.command == "settingsdocs":
        from edge.settingsdocs import render as render_settings

        sys.stdout.write(render_settings())
        return 0
    from edge.demo import run_demo

    return run_demo(args, settings, extra)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
