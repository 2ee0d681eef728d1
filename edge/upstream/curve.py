"""Optional CurveZMQ encryption and authentication for the upstream link.

Keys are ZeroMQ certificate files (``edge keys DIR NAME`` writes ``NAME.key`` and
``NAME.key_secret``). The appliance serves with its secret key and admits only consumers whose public
keys sit in ``upstream.curve_clients_dir``; a consumer connects with its own key pair and the
appliance's public key. Without keys the link is plain TCP (it only ever binds 127.0.0.1 by default).
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def create_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a key pair; returns (public file, secret file)."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)  # the secret key: its owner only (pyzmq writes it with the umask's mode)
    return Path(public), Path(secret)


def serve_securely(
    context: zmq.Context, sock: zmq.Socket, secret_file: Path, clients_dir: Path
) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server admitting only the public keys in ``clients_dir``."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(clients_dir))
    public, secret = zmq.auth.load_certificate(str(secret_file))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def connect_securely(sock: zmq.Socket, secret_file: Path, server_public_file: Path) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is in ``server_public_file``."""
    public, secret = zmq.auth.load_certificate(str(secret_file))
    server_public, _ = zmq.auth.load_certificate(str(server_public_file))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
