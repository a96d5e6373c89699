"""The wire form of ``cosmo.v1.Chunk`` (Download), encoded and decoded by hand, in one place for both ends.

A Download moves the registry's largest files; building a protobuf message around each chunk copies
the data into the message and again when (de)serializing. ``encode_chunk`` writes the exact bytes
``Chunk.SerializeToString`` would (one copy of the data), ``encode_chunk_into`` the same with the data
read straight into the message (the read is its only copy), ``decode_chunk`` returns the data as a
zero-copy ``memoryview`` of the received message. Tests check both against the protobuf runtime.

Chunk: ``offset = 1`` (int64), ``data = 2`` (bytes), ``size = 3`` (int64), ``sha256 = 4`` (string).
"""
import io
from typing import Callable, List, Tuple

_MASK64 = (1 << 64) - 1


def _varint(n: int) -> bytes:
    n &= _MASK64  # int64 on the wire: two's complement, 10 bytes for negatives
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("Chunk: truncated or overlong varint at byte {}".format(pos))
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result >= 1 << 63:
                result -= 1 << 64
            return result, pos
        shift += 7


def encode_chunk(offset: int, data: bytes, size: int, sha256: str) -> bytes:
    """``Chunk(offset, data, size, sha256).SerializeToString()``, with one copy of ``data``."""
    parts: List[bytes] = []
    if offset:
        parts += [b"\x08", _varint(offset)]
    if data:
        parts += [b"\x12", _varint(len(data)), data]
    parts.append(_tail(size, sha256))
    return b"".join(parts)


def encode_chunk_into(offset: int, length: int, size: int, sha256: str,
                      fill: Callable[[memoryview], int]) -> bytes:
    """``Chunk(offset, data, size, sha256).SerializeToString()`` where ``data`` is what ``fill(view)``
    writes into the ``length``-byte ``view`` of the message itself (e.g. a file's ``readinto``); it returns
    how many bytes it wrote, and a short fill gives a message of just those. Saves the copy ``encode_chunk``
    makes: on CPython a ``BytesIO`` built from a ``bytes`` it alone holds lends that very buffer to
    ``getbuffer`` and gives it back from ``getvalue`` (elsewhere this is a copy, still correct)."""
    if length <= 0:  # proto3 leaves an empty field out
        return encode_chunk(offset, b"", size, sha256)
    head = (b"\x08" + _varint(offset) if offset else b"") + b"\x12" + _varint(length)
    tail = _tail(size, sha256)
    start, end = len(head), len(head) + length
    out = io.BytesIO(bytes(end + len(tail)))
    with out.getbuffer() as view:
        view[:start] = head
        with view[start:end] as data:
            n = fill(data)
        if n == length:
            view[end:] = tail
        else:
            short = bytes(view[start:start + n])
    if n != length:
        return encode_chunk(offset, short, size, sha256)
    return out.getvalue()


def _tail(size: int, sha256: str) -> bytes:
    parts: List[bytes] = []
    if size:
        parts += [b"\x18", _varint(size)]
    if sha256:
        raw = sha256.encode()
        parts += [b"\x22", _varint(len(raw)), raw]
    return b"".join(parts)


def decode_chunk(message: bytes) -> Tuple[int, memoryview, int, str]:
    """``(offset, data, size, sha256)`` of a serialized Chunk; ``data`` is a view into ``message``.
    Unknown fields are skipped (a newer server may add some); malformed input raises ``ValueError``."""
    buf = memoryview(message)
    pos, offset, size, sha = 0, 0, 0, ""
    data = buf[0:0]
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if field == 1:
                offset = value
            elif field == 3:
                size = value
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if n < 0 or pos + n > len(buf):
                raise ValueError("Chunk: field {} runs past the end of the message".format(field))
            if field == 2:
                data = buf[pos:pos + n]
            elif field == 4:
                sha = bytes(buf[pos:pos + n]).decode()
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError("Chunk: unsupported wire type {} of field {}".format(wire, field))
    if pos != len(buf):
        raise ValueError("Chunk: truncated message")
    return offset, data, size, sha
