"""CurveZMQ keys bound to consumer names, on real ZeroMQ sockets over 127.0.0.1.

A key in ``upstream.curve_clients_dir`` admits one consumer name, its file's (``hpc.key``: ``hpc``):
each message its client sends carries that name (the frame's ``User-Id``), and the session refuses a
``hello`` under any other name, so a mirror's key cannot confirm files as the required consumer (whose
confirmation lets the appliance delete them). Keys added to or removed from the directory count from
the next handshake, without a restart.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from edge.ledger import Ledger
from edge.upstream import protocol as p
from edge.upstream.curve import connect_securely, create_keys, serve_securely
from edge.upstream.session import ForwarderSession


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("appliance", "hpc", "mirror"):
        create_keys(tmp_path / name, name)
    (tmp_path / "clients").mkdir()
    shutil.copy(tmp_path / "hpc" / "hpc.key", tmp_path / "clients" / "hpc.key")
    return tmp_path


@pytest.fixture
def server(keys: Path) -> Iterator[tuple[zmq.Socket, str]]:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.linger = 0
    auth = serve_securely(context, sock, keys / "appliance" / "appliance.key_secret", keys / "clients")
    sock.bind("tcp://127.0.0.1:*")
    try:
        yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        sock.close(0)
        auth.stop()
        context.term()


def _name_seen(server: tuple[zmq.Socket, str], keys: Path, client: str, timeout_ms: int = 3000) -> str | None:
    """The User-Id the server sees on a message from ``client``'s key pair (None: never admitted)."""
    sock, endpoint = server
    dealer = sock.context.socket(zmq.DEALER)
    dealer.linger = 0
    connect_securely(dealer, keys / client / f"{client}.key_secret", keys / "appliance" / "appliance.key")
    dealer.connect(endpoint)
    try:
        try:  # a refused handshake takes the connection away for good: a plain send would block for ever
            dealer.send(b"hello", zmq.NOBLOCK)
        except zmq.Again:
            return None
        if not sock.poll(timeout_ms):
            return None
        parts = sock.recv_multipart(copy=False)
        return str(parts[-1].get("User-Id"))
    finally:
        dealer.close(0)


def test_each_admitted_key_speaks_for_its_files_name_only(server: tuple[zmq.Socket, str], keys: Path) -> None:
    assert _name_seen(server, keys, "hpc") == "hpc"
    assert _name_seen(server, keys, "mirror", timeout_ms=1000) is None  # not in the directory


def test_keys_added_and_removed_count_without_a_restart(server: tuple[zmq.Socket, str], keys: Path) -> None:
    assert _name_seen(server, keys, "mirror", timeout_ms=1000) is None
    shutil.copy(keys / "mirror" / "mirror.key", keys / "clients" / "mirror.key")
    assert _name_seen(server, keys, "mirror") == "mirror"
    (keys / "clients" / "mirror.key").unlink()
    assert _name_seen(server, keys, "mirror", timeout_ms=1000) is None
    assert _name_seen(server, keys, "hpc") == "hpc"


def test_a_key_in_two_files_or_under_a_bad_name_admits_no_one(
    server: tuple[zmq.Socket, str],
    keys: Path,
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    shutil.copy(keys / "hpc" / "hpc.key", keys / "clients" / "tape.key")  # which name would it be?
    with caplog.at_level("ERROR", logger="edge.upstream.curve"):
        assert _name_seen(server, keys, "hpc", timeout_ms=1000) is None
    # the log names both files (an outside probe had to compare every file by hand)
    assert "(hpc.key, tape.key): it admits no one" in caplog.text
    (keys / "clients" / "tape.key").unlink()
    shutil.copy(keys / "mirror" / "mirror.key", keys / "clients" / "no way.key")  # not a consumer name
    (keys / "clients" / "junk.key").write_text("not a certificate\n")
    assert _name_seen(server, keys, "mirror", timeout_ms=1000) is None
    assert _name_seen(server, keys, "hpc") == "hpc"  # the others still work


def test_a_hello_under_another_name_than_the_keys_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", required_consumers=("hpc",))
    session = ForwarderSession(ledger, resend_seconds=10.0)
    hello = [bytes(f) for f in p.encode(p.Hello("hpc", 4))]
    (refusal,) = session.receive(b"peer", hello, 0.0, key_name="mirror")
    assert isinstance(refusal.message, p.Error) and "speaks for 'mirror' only" in refusal.message.reason
    assert session.stats["names_refused_by_key"] == 1 and "hpc" not in session.consumers
    (welcome,) = session.receive(b"peer", hello, 1.0, key_name="hpc")
    assert isinstance(welcome.message, p.Welcome) and session.consumers["hpc"].identity == b"peer"
    # the connection keeps the name it has when it then tries another
    other = [bytes(f) for f in p.encode(p.Hello("tape", 4))]
    (refusal,) = session.receive(b"peer", other, 2.0, key_name="hpc")
    assert isinstance(refusal.message, p.Error) and session.consumers["hpc"].identity == b"peer"
    ledger.close()


def test_a_second_edge_keys_keeps_the_pair_unless_forced(tmp_path: Path) -> None:
    """An outside probe: `edge keys DIR appliance` run again silently replaced the appliance's secret
    key, locking out every consumer given the old public key."""
    from edge.errors import ConfigError

    _public, secret = create_keys(tmp_path, "appliance")
    before = secret.read_bytes()
    with pytest.raises(ConfigError, match=r"appliance\.key exists: its pair is kept.*--force"):
        create_keys(tmp_path, "appliance")
    assert secret.read_bytes() == before
    create_keys(tmp_path, "appliance", replace=True)
    assert secret.read_bytes() != before


def test_a_bad_key_file_is_one_line_naming_the_setting(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """An outside probe: a public key given as the secret one, a file of garbage, a directory or a
    missing file stopped `edge pull` and `edge run` with a traceback (TypeError, ValueError, OSError)."""
    from edge.errors import ConfigError
    from edge.upstream.curve import check_client_keys, load_keys

    public, secret = create_keys(tmp_path, "hpc")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("garbage\n")
    # cut short inside a key line (an outside probe: libzmq refused it at setsockopt, a traceback, exit 1)
    cut_secret = tmp_path / "cut.key_secret"
    cut_secret.write_bytes(secret.read_bytes()[:300])
    cut_public = tmp_path / "cut.key"
    cut_public.write_bytes(public.read_bytes()[:340])
    cases = [
        (cut_secret, True, "key is damaged (not 40 Z85 characters: the file cut short?)"),
        (cut_public, False, "its public key is damaged"),
        (public, True, "a public key only; this setting takes the secret one"),
        (garbage, True, "not a CurveZMQ key file"),
        (tmp_path, False, "not a CurveZMQ key file"),
        (tmp_path / "missing.key_secret", True, "no such file"),
    ]
    for path, needs_secret, words in cases:
        with pytest.raises(ConfigError) as error:
            load_keys(path, "pull.curve_secret_file", secret=needs_secret)
        message = str(error.value)
        assert message.startswith(f"pull.curve_secret_file = {path}: ") and words in message, message
        assert "\n" not in message
    with pytest.raises(
        ConfigError, match=r"pull\.curve_server_file = .*garbage\.key: not a CurveZMQ key file"
    ):
        check_client_keys(secret, garbage)
    secret.chmod(0o644)
    with caplog.at_level("WARNING"):
        load_keys(secret, "pull.curve_secret_file", secret=True)
    assert "readable by every user (mode 0644)" in caplog.text
    caplog.clear()
    secret.chmod(0o640)  # root:edge 0640 for a unit running as edge: its own group, no warning
    with caplog.at_level("WARNING"):
        load_keys(secret, "pull.curve_secret_file", secret=True)
    assert "readable" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the peer's secret key given for its public one: it works, said
        check_client_keys(secret, secret)
    assert "holds a secret key: this setting takes the appliance's public key" in caplog.text


def test_a_refused_handshake_is_counted_and_logged(keys: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """An outside probe: a client whose key was not admitted saw silence, and the appliance had no
    record of it either."""
    import zmq.auth

    from edge.upstream.curve import KeyRing

    ring = KeyRing(keys / "clients")
    hpc, _ = zmq.auth.load_certificate(str(keys / "hpc" / "hpc.key"))
    mirror, _ = zmq.auth.load_certificate(str(keys / "mirror" / "mirror.key"))
    with caplog.at_level("WARNING"):
        assert ring.callback("*", hpc) and not ring.callback("*", mirror)
    assert ring.refused == 1
    assert f"CURVE handshake refused: public key {mirror[:8].decode()}..." in caplog.text


def test_one_curve_setting_without_the_other_names_the_one_unset() -> None:
    """An outside probe: "one of them is unset" did not say which."""
    from edge.errors import ConfigError
    from edge.upstream.curve import curve_paths

    names = ("pull.curve_secret_file", "pull.curve_server_file")
    assert curve_paths(None, None, names) is None
    with pytest.raises(ConfigError, match=r"pull\.curve_secret_file is set, pull\.curve_server_file is not"):
        curve_paths(Path("a.key_secret"), None, names)
    with pytest.raises(ConfigError, match=r"pull\.curve_server_file is set, pull\.curve_secret_file is not"):
        curve_paths(None, Path("b.key"), names)


def test_a_client_without_curve_is_logged_as_such_whatever_else_failed_first(
    server: tuple[zmq.Socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    """An outside IT probe: a keyless client's connections fail twice each (the mechanism, then the
    connection closing); the close took the once-a-minute line ("protocol error 32") and the documented
    "does not speak CurveZMQ" never appeared. Each kind has its own minute, and a close reads as one."""
    import time
    from collections import Counter
    from types import SimpleNamespace

    from edge.upstream.forwarder import Forwarder

    sock, endpoint = server
    monitor = sock.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )
    fake = SimpleNamespace(
        _monitor=monitor,
        session=SimpleNamespace(stats=Counter()),
        _clock=time.monotonic,
        _handshake_logged={},
    )
    plain = sock.context.socket(zmq.DEALER)
    plain.linger = 0
    plain.connect(endpoint)
    try:
        plain.send(b"hello", zmq.NOBLOCK)
        deadline = time.monotonic() + 10
        with caplog.at_level("WARNING"):
            while time.monotonic() < deadline and not fake.session.stats["curve_handshakes_without_curve"]:
                Forwarder._handshakes_failed(fake)  # type: ignore[arg-type]
                time.sleep(0.05)
    finally:
        plain.close(0)
        monitor.close(0)
    assert fake.session.stats["curve_handshakes_without_curve"] >= 1
    assert "the client does not speak CurveZMQ" in caplog.text
    assert "protocol error 32" not in caplog.text


def test_a_key_file_made_bad_while_the_client_runs_is_said_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: ``edge pull`` reads its key files again at each connection (a rotation takes
    effect), and one emptied while it ran (a partial write) killed it with a traceback at the next
    reconnect. It is said and counted, and tried again."""
    import edge.upstream.pull as pull

    _client_public, client_secret = create_keys(tmp_path, "hpc")
    server_public, _server_secret = create_keys(tmp_path, "appliance")
    server_public.write_text("")  # emptied while the client runs
    monkeypatch.setattr(pull, "KEY_RETRY_SECONDS", 0.01)
    context = zmq.Context()
    try:
        client = pull.PullClient(
            "tcp://127.0.0.1:9", "hpc", tmp_path / "out", 8, context, curve=(client_secret, server_public)
        )
        with caplog.at_level("ERROR"):
            client._session(None)  # returns: no traceback
    finally:
        context.term()
    assert client.stats["key_files_unreadable"] == 1 and client.stats["sessions"] == 0
    assert "not a CurveZMQ key file" in caplog.text and "trying again" in caplog.text


def test_a_client_with_keys_unanswered_asks_whether_the_appliance_uses_curve_at_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: a CURVE client against an appliance without CurveZMQ (no answer ever) was told
    to check the server key and its own, not that the appliance might not use CurveZMQ at all."""
    import edge.upstream.pull as pull
    from edge.demo import free_port

    _public, secret = create_keys(tmp_path, "hpc")
    server_public, _server_secret = create_keys(tmp_path, "appliance")
    monkeypatch.setattr(pull, "SILENCE_SECONDS", 0.3)
    context = zmq.Context()
    plain = context.socket(zmq.ROUTER)  # an appliance without keys: the handshake never completes
    port = free_port()
    plain.bind(f"tcp://127.0.0.1:{port}")
    try:
        client = pull.PullClient(
            f"tcp://127.0.0.1:{port}", "hpc", tmp_path / "out", 8, context, curve=(secret, server_public)
        )
        with caplog.at_level("WARNING"):
            client._session(None)
    finally:
        plain.close(0)
        context.term()
    assert client.stats["sessions_unanswered"] == 1
    assert "does it use CurveZMQ at all" in caplog.text, caplog.text


def test_a_clients_directory_that_is_not_there_or_a_key_in_two_files_is_said_as_such(  # type: ignore[no-untyped-def]
    keys: Path, tmp_path: Path, caplog
) -> None:
    """An outside probe: ``upstream.curve_clients_dir`` naming no directory started with "CURVE clients:
    none" and each refusal said the key "is in no .key file of" it; a key in two files was refused with
    the same words. The start says the directory cannot be read, and each refusal says why."""
    import zmq.auth

    from edge.upstream.curve import KeyRing

    hpc, _ = zmq.auth.load_certificate(str(keys / "hpc" / "hpc.key"))
    with caplog.at_level("WARNING", logger="edge.upstream.curve"):
        missing = KeyRing(tmp_path / "nodir")
        assert "cannot read upstream.curve_clients_dir" in caplog.text and "nodir" in caplog.text
        assert not missing.callback("*", hpc)
    assert "upstream.curve_clients_dir cannot be read" in caplog.text.splitlines()[-1]
    shutil.copy(keys / "hpc" / "hpc.key", keys / "clients" / "tape.key")
    caplog.clear()
    with caplog.at_level("WARNING", logger="edge.upstream.curve"):
        assert not KeyRing(keys / "clients").callback("*", hpc)
    assert "in more than one .key file" in caplog.text
