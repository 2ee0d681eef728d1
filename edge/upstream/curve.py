"""Optional CurveZMQ encryption and authentication for the upstream link.

Keys are ZeroMQ certificate files (``edge keys DIR NAME`` writes ``NAME.key`` and
``NAME.key_secret``). The appliance serves with its secret key and admits only consumers whose public
keys sit in ``upstream.curve_clients_dir``; a consumer connects with its own key pair and the
appliance's public key. Each admitted key speaks for one consumer name, its file's: ``hpc.key`` admits
a client that says ``hello`` as ``hpc`` and as nothing else (`KeyRing`). The directory is read again
when it changes, so keys are added and removed without a restart. Without keys the link is plain TCP
(it only ever binds 127.0.0.1 by default).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from edge.errors import ConfigError
from edge.upstream.protocol import CONSUMER_NAME

log = logging.getLogger(__name__)


def create_keys(directory: Path, name: str, *, replace: bool = False) -> tuple[Path, Path]:
    """Write a key pair; returns (public file, secret file). ``name`` is the consumer name the public
    key will speak for (``NAME.key`` in the appliance's ``curve_clients_dir``): the protocol's rule. A
    pair NAME already has in ``directory`` is kept unless ``replace`` (an outside probe: a second `edge
    keys` silently replaced the appliance's key every consumer had been given, locking them all out)."""
    if not CONSUMER_NAME.fullmatch(name):
        raise ConfigError(
            f"key name {name[:80]!r}: 1 to 64 letters, digits, '_', '.' or '-' (it names the consumer)"
        )
    existing = [
        path for path in (directory / f"{name}.key", directory / f"{name}.key_secret") if path.exists()
    ]
    if existing and not replace:
        raise ConfigError(
            f"{existing[0]} exists: its pair is kept (every peer given the public key would be locked out);"
            " --force replaces it"
        )
    if directory.exists() and not directory.is_dir():  # ("[Errno 17] File exists" said nothing useful)
        raise ConfigError(f"{directory} is not a directory: give the directory the keys go into")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)  # the secret key: its owner only (pyzmq writes it with the umask's mode)
    return Path(public), Path(secret)


def _whole_key(key: bytes) -> bool:
    """Whether ``key`` is a whole CurveZMQ key: 40 Z85 characters that decode to 32 bytes."""
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError):
        return False


def load_keys(path: Path, setting: str, *, secret: bool, warn: bool = True) -> tuple[bytes, bytes | None]:
    """(public, secret) keys of the certificate file ``path``, given as ``setting``; a ConfigError naming
    both, in one line, when it is no key file, or holds no secret key where one is ``secret``ly needed
    (an outside probe: a public key given as the secret one stopped the start with a TypeError's
    traceback). A secret key file others can read is logged (``edge keys`` writes it 0600) when ``warn``
    (the check at start; the sockets' own loads after it say nothing again)."""
    if not path.exists():  # (pyzmq said "not a CurveZMQ key file" of a file that is not there)
        raise ConfigError(f"{setting} = {path}: no such file; `edge keys DIR NAME` writes a pair")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(
            f"{setting} = {path}: not a CurveZMQ key file ({reason}); `edge keys DIR NAME` writes a pair"
        ) from None
    damaged = [
        which
        for which, key in (("public", public), ("secret", secret_key))
        if key is not None and not _whole_key(key)
    ]
    if damaged:  # (cut short: libzmq refused it at setsockopt, a traceback and exit 1, an outside probe)
        raise ConfigError(
            f"{setting} = {path}: its {' and '.join(damaged)} key is damaged (not 40 Z85 characters: the file"
            " cut short?); `edge keys DIR NAME` writes a pair"
        )
    if secret and secret_key is None:
        raise ConfigError(
            f"{setting} = {path}: a public key only; this setting takes the secret one (NAME.key_secret)"
        )
    if secret and warn:
        info = path.stat()
        mode = info.st_mode & 0o777
        # readable by every user, or by a group this process is not in: others can speak as this end.
        # Its own group (root:edge 0640, the service's group) is what a unit running as edge needs
        # when root made the key (an outside probe was told "by others" for that)
        if mode & 0o007 or (mode & 0o070 and info.st_gid != os.getegid()):
            who = "every user" if mode & 0o007 else "its group (which this process is not in)"
            log.warning(
                "%s = %s: the secret key is readable by %s (mode %04o): chmod 600 it, or 640 with the"
                " service's group",
                setting,
                path,
                who,
                mode,
            )
    return public, secret_key


def check_client_keys(secret_file: Path, server_public_file: Path) -> None:
    """``edge pull``'s key files, checked before it connects (`load_keys`)."""
    load_keys(secret_file, "pull.curve_secret_file", secret=True)
    _public, secret_key = load_keys(server_public_file, "pull.curve_server_file", secret=False)
    if secret_key is not None:  # it works (the public half is read), but a secret key left its host
        log.warning(
            "pull.curve_server_file = %s holds a secret key: this setting takes the appliance's public key"
            " (NAME.key); its secret key (NAME.key_secret) belongs on the appliance only",
            server_public_file,
        )


class KeyRing:
    """The admitted public keys and the consumer name each speaks for (its file's name, ``NAME.key``).

    Read again whenever a ``.key`` file in the directory is added, removed or rewritten (checked at each
    CURVE handshake: a few ``stat`` calls). A file that is not a certificate, a name the protocol does
    not allow, or one key in two files (which name would it be?) is logged and admits no one. A
    directory that cannot be read admits no one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._names: dict[bytes, str] = {}  # z85 public key -> consumer name
        self._twice: set[bytes] = set()  # keys in two files: admitting no one (said in each refusal)
        self.unreadable: str | None = None  # why the directory cannot be read now (said in each refusal)
        self.refused = 0  # CURVE handshakes of a key not admitted (``curve_handshakes_refused``)
        with self._lock:  # read at the start: a directory that is not there is said then (it said "CURVE
            # clients: none", and each refusal named a directory that did not exist; an outside probe)
            self._refresh()

    def _listing(self) -> tuple[tuple[str, int, int], ...]:
        if not self.directory.is_dir():  # (glob finds nothing in a directory that is not there)
            raise FileNotFoundError(f"{self.directory} is not a directory (missing?)")
        entries = []
        for path in sorted(self.directory.glob("*.key")):
            info = path.stat()
            entries.append((path.name, info.st_mtime_ns, info.st_size))
        return tuple(entries)

    def _refresh(self) -> None:
        try:
            listing = self._listing()
        except OSError as error:
            if self._seen != ():
                log.error(
                    "cannot read upstream.curve_clients_dir %s: %s (no consumer admitted)",
                    self.directory,
                    error,
                )
            self._seen, self._names, self._twice = (), {}, set()
            self.unreadable = str(error)
            return
        self.unreadable = None
        if listing == self._seen:
            return
        names: dict[bytes, str] = {}
        twice: set[bytes] = set()
        files: dict[bytes, list[str]] = {}  # key -> the files holding it (a duplicate's log names them)
        for file_name, _mtime, _size in listing:
            name = file_name[: -len(".key")]
            try:
                public, _secret = zmq.auth.load_certificate(str(self.directory / file_name))
            except (OSError, ValueError) as error:
                log.error("CURVE client key %s is not a certificate (%s): ignored", file_name, error)
                continue
            if not _whole_key(public):
                log.error("CURVE client key %s is damaged (not 40 Z85 characters): ignored", file_name)
                continue
            if not CONSUMER_NAME.fullmatch(name):
                log.error("CURVE client key %s: %r is not a consumer name: ignored", file_name, name)
                continue
            if public in names:
                twice.add(public)
            names[public] = name
            files.setdefault(public, []).append(file_name)
        for public in twice:
            log.error(
                "one CURVE key is in %d files of %s (%s): it admits no one",
                len(files[public]),
                self.directory,
                ", ".join(sorted(files[public])),
            )
            del names[public]
        self._seen, self._names, self._twice = listing, names, twice
        log.info("CURVE clients: %s", ", ".join(sorted(names.values())) or "none")

    def name_of(self, z85_key: bytes) -> str | None:
        """The consumer name ``z85_key`` speaks for, or None when it is not admitted."""
        with self._lock:
            self._refresh()
            return self._names.get(z85_key)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials provider: admit the keys on the ring. A key that is not is counted and
        logged (the client sees only silence; an outside probe found no record of it on the appliance)."""
        if self.name_of(key) is not None:
            return True
        with self._lock:
            self.refused += 1
            if self.unreadable is not None:
                why = f"upstream.curve_clients_dir cannot be read: {self.unreadable}"
            elif key in self._twice:
                why = f"it is in more than one .key file of {self.directory}, so it admits no one"
            else:
                why = f"it is in no .key file of {self.directory}"
        log.warning(
            "CURVE handshake refused: public key %s...: %s (%d refused so far)",
            key[:8].decode("ascii", "replace"),
            why,
            self.refused,
        )
        return False


class _NamedAuthenticator(ThreadAuthenticator):
    """The ZAP handler: a client's User-Id (on every message it sends) is its key's consumer name."""

    keyring: KeyRing

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.keyring.name_of(z85.encode(client_public_key)) or ""


def serve_securely(
    context: zmq.Context, sock: zmq.Socket, secret_file: Path, clients_dir: Path
) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server admitting only the public keys in ``clients_dir``; each message it
    receives carries the consumer name its sender's key speaks for, as the frame's ``User-Id``."""
    public, secret = load_keys(secret_file, "upstream.curve_secret_file", secret=True, warn=False)
    auth = _NamedAuthenticator(context)
    auth.keyring = KeyRing(clients_dir)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=auth.keyring)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def connect_securely(sock: zmq.Socket, secret_file: Path, server_public_file: Path) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is in ``server_public_file``."""
    public, secret = load_keys(secret_file, "pull.curve_secret_file", secret=True, warn=False)
    server_public, _ = load_keys(server_public_file, "pull.curve_server_file", secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def curve_paths(
    first: Path | None,
    second: Path | None,
    names: tuple[str, str] = ("the key pair file", "the peer's key(s)"),
) -> tuple[Path, Path] | None:
    """Both CurveZMQ paths, or neither; one without the other is a configuration error naming the
    setting left unset (``names``: the two settings)."""
    if first is None and second is None:
        return None
    if first is None or second is None:
        given, unset = (names[1], names[0]) if first is None else (names[0], names[1])
        raise ConfigError(f"CurveZMQ needs both {names[0]} and {names[1]}: {given} is set, {unset} is not")
    return (first, second)
