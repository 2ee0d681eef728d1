"""The upstream pull protocol: typed messages shared by the appliance (ROUTER) and ``edge pull`` (DEALER).

Every message is a ZeroMQ multipart ``[JSON header, optional payload]``; the header carries the message
``type`` and the protocol version ``v``. Flow: the client says :class:`Hello` with its consumer name and
initial credit; the appliance sends :class:`Chunk` messages (one credit each) that the client writes,
fsyncs and answers with :class:`Ack` (which returns the credit) or :class:`Nack` (checksum mismatch:
send again). When a file's chunks are all acknowledged the appliance sends :class:`FileComplete`; the
client checks the whole file and answers :class:`FileVerified`. Cursors live in the appliance's ledger,
so a client that reconnects resumes after its last acknowledgement. Both ends send :class:`Heartbeat`.
The whole protocol, for a client written in another language: ``docs/upstream.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from edge.errors import RemoteProtocolError

#: 2: FileVerified carries ``stored_path``, where the consumer keeps the file (shown by ``edge where``).
VERSION = 2
#: what a consumer may be called (it names the consumer's cursor in the ledger and its directory)
CONSUMER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: an upstream message's JSON header is small; a client's messages are headers only
MAX_HEADER_BYTES = 64 << 10
#: the largest chunk payload an appliance sends (``store.chunk_bytes`` is bounded by it)
MAX_CHUNK_BYTES = 256 << 20
#: the most digits a JSON integer in a header may have: Python's own default limit on converting digits
#: to an int (``sys.get_int_max_str_digits``), checked here so that a peer is told in protocol terms
MAX_INT_DIGITS = 4300
#: the longest ``file_verified.stored_path`` the appliance records (Linux's PATH_MAX is 4096 bytes)
MAX_STORED_PATH = 4096
#: C0 controls, DEL and C1 controls: a stored path holding one would be printed raw by ``edge where``
#: (a newline forging a line, an ANSI escape rewriting the terminal)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: half of a UTF-16 surrogate pair, which a JSON string may spell (\ud800) but UTF-8 cannot carry
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters with its control characters escaped (``\\x1b``): the words of
    a peer, safe to log and to show (a newline cannot forge a log line, an ANSI escape not rewrite a
    terminal)."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text[:limit])


@dataclass(frozen=True)
class Message:
    type: ClassVar[str] = ""


@dataclass(frozen=True)
class Hello(Message):
    type: ClassVar[str] = "hello"
    consumer: str
    credit: int


@dataclass(frozen=True)
class Welcome(Message):
    type: ClassVar[str] = "welcome"
    appliance: str
    checksum: str


@dataclass(frozen=True)
class Credit(Message):
    type: ClassVar[str] = "credit"
    n: int


@dataclass(frozen=True)
class Chunk(Message):
    type: ClassVar[str] = "chunk"
    chunk_id: int
    file_id: int
    run_uid: str
    file_name: str
    file_size: int
    index: int
    file_chunks: int
    offset: int
    length: int
    checksum: str


@dataclass(frozen=True)
class Ack(Message):
    type: ClassVar[str] = "ack"
    chunk_id: int
    checksum: str


@dataclass(frozen=True)
class Nack(Message):
    type: ClassVar[str] = "nack"
    chunk_id: int
    reason: str


@dataclass(frozen=True)
class FileComplete(Message):
    type: ClassVar[str] = "file_complete"
    file_id: int
    run_uid: str
    file_name: str
    size: int
    checksum: str


@dataclass(frozen=True)
class FileVerified(Message):
    type: ClassVar[str] = "file_verified"
    file_id: int
    size: int
    checksum: str
    stored_path: str = ""  # the consumer's own path for the file ("" when it holds none)


@dataclass(frozen=True)
class Heartbeat(Message):
    type: ClassVar[str] = "heartbeat"


@dataclass(frozen=True)
class Error(Message):
    type: ClassVar[str] = "error"
    reason: str


#: the end of the ``error`` reason the appliance sends a connection whose consumer name another
#: connection took over ("consumer NAME taken over by another connection"): ``edge pull`` stops on it
TAKEN_OVER = "taken over by another connection"


MESSAGES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (Hello, Welcome, Credit, Chunk, Ack, Nack, FileComplete, FileVerified, Heartbeat, Error)
}


def encode(message: Message, payload: bytes | memoryview | None = None) -> list[bytes | memoryview]:
    """Frames for one message."""
    header = json.dumps(
        {"v": VERSION, "type": message.type, **asdict(message)}, separators=(",", ":")
    ).encode()
    return [header] if payload is None else [header, payload]


class _NumberTooLong(Exception):
    """Raised by :func:`_parse_int` from inside ``json.loads`` (not a ValueError: caught apart)."""


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _NumberTooLong
    return int(digits)


def stored_path_problem(stored_path: object) -> str | None:
    """Why ``stored_path`` of a ``file_verified`` cannot be recorded, or None when it can.

    It comes from the network and is shown by ``edge where`` and the dashboard: ``""`` (the consumer
    holds no copy) or an absolute POSIX path without control characters, at most MAX_STORED_PATH long.
    """
    if not isinstance(stored_path, str):
        return "file_verified.stored_path is not a string"
    if stored_path == "":
        return None
    if len(stored_path) > MAX_STORED_PATH:
        return f"file_verified.stored_path of {len(stored_path)} characters; at most {MAX_STORED_PATH}"
    if _CONTROL.search(stored_path):
        return "file_verified.stored_path holds control characters"
    if not stored_path.startswith("/"):
        return "file_verified.stored_path is not an absolute path (it must start with /)"
    return None


def _as_json(value: Any, limit: int = 80) -> str:
    """A peer's value as the JSON it sent (``true``, ``null``, ``"x"``), cut to ``limit`` characters: an
    error answered to the peer speaks the protocol's terms, not Python's (``True``, ``None``, ``'x'``)."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def decode(frames: list[bytes] | list[bytes | memoryview]) -> tuple[Message, bytes | memoryview | None]:
    """Parse frames into a message and its payload; raises RemoteProtocolError on anything malformed."""
    if not frames or len(frames) > 2:
        raise RemoteProtocolError(f"message has {len(frames)} frames; expected 1 or 2")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise RemoteProtocolError(f"header of {len(frames[0])} bytes; at most {MAX_HEADER_BYTES}")
    raw = bytes(frames[0])
    # decoded here, not by json.loads, which would take UTF-16 and UTF-32 too (it guesses the encoding)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RemoteProtocolError(f"header is not UTF-8 (invalid byte at offset {error.start})") from None
    if "\x00" in text:  # valid UTF-8, never JSON: UTF-16 or UTF-32 without a byte order mark
        raise RemoteProtocolError("header is not UTF-8 (it holds NUL bytes: UTF-16 or UTF-32?)")
    try:
        header = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as error:  # its text says where and what, in JSON's terms
        raise RemoteProtocolError(f"header is not JSON: {error}") from None
    except _NumberTooLong:
        raise RemoteProtocolError(
            f"header holds a number too long (more than {MAX_INT_DIGITS} digits)"
        ) from None
    except RecursionError:  # arrays or objects nested thousands deep: no header of ours is
        raise RemoteProtocolError("header is not JSON: nested too deep") from None
    except ValueError:  # anything else json or int() refuses: its text is Python's, not the protocol's
        raise RemoteProtocolError("header is not JSON: a value this end cannot read") from None
    if not isinstance(header, dict):
        raise RemoteProtocolError("header is not a JSON object")
    version = header.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
        raise RemoteProtocolError(f"protocol version {_as_json(version)}; this end speaks {VERSION}")
    kind = header.get("type", "")
    # a list or an object as the type is unhashable: a TypeError from the lookup would crash the caller
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {_as_json(header.get('type'))}")
    names = {f.name: f.type for f in fields(cls)}
    values: dict[str, Any] = {}
    for name in names:
        if name not in header:
            raise RemoteProtocolError(f'{cls.type} lacks field "{name}"')
        value = header[name]
        expected = int if names[name] in ("int", int) else str
        if not isinstance(value, expected) or isinstance(value, bool):
            kind = "an integer" if expected is int else "a string"
            raise RemoteProtocolError(f"{cls.type}.{name} = {_as_json(value)} is not {kind}")
        if isinstance(value, str) and _SURROGATE.search(value):
            # JSON's \ud800 escape decodes to half a UTF-16 pair: no text, and nothing this end can
            # store (SQLite), print or answer in UTF-8 (an outside probe crashed the forwarder with it)
            raise RemoteProtocolError(f"{cls.type}.{name} holds a lone UTF-16 surrogate: not text")
        values[name] = value
    payload = frames[1] if len(frames) == 2 else None
    return cls(**values), payload
