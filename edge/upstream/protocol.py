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


def decode(frames: list[bytes] | list[bytes | memoryview]) -> tuple[Message, bytes | memoryview | None]:
    """Parse frames into a message and its payload; raises RemoteProtocolError on anything malformed."""
    if not frames or len(frames) > 2:
        raise RemoteProtocolError(f"message has {len(frames)} frames; expected 1 or 2")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise RemoteProtocolError(f"header of {len(frames[0])} bytes; at most {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frames[0]))
    except (ValueError, UnicodeDecodeError) as error:
        raise RemoteProtocolError(f"header is not JSON: {error}") from None
    except RecursionError:  # arrays or objects nested thousands deep: no header of ours is
        raise RemoteProtocolError("header is not JSON this end reads: nested too deep") from None
    if not isinstance(header, dict):
        raise RemoteProtocolError("header is not a JSON object")
    version = header.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
        raise RemoteProtocolError(f"protocol version {version!r}; this end speaks {VERSION}")
    cls = MESSAGES.get(header.get("type", ""))
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {header.get('type')!r}")
    names = {f.name: f.type for f in fields(cls)}
    values: dict[str, Any] = {}
    for name in names:
        if name not in header:
            raise RemoteProtocolError(f"{cls.type} lacks field {name!r}")
        value = header[name]
        expected = int if names[name] in ("int", int) else str
        if not isinstance(value, expected) or isinstance(value, bool):
            raise RemoteProtocolError(f"{cls.type}.{name} = {value!r} is not {expected.__name__}")
        values[name] = value
    payload = frames[1] if len(frames) == 2 else None
    return cls(**values), payload
