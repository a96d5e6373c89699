"""The wire form of ``cosmo.v1.Chunk`` (Download), encoded and decoded by hand, in one place for both ends.

A Download moves the registry's largest files; building a protobuf message around each chunk copies
the data into the message and again when (de)serializing. ``encode_chunk`` writes the exact bytes
``Chunk.SerializeToString`` would (one copy of the data), ``decode_chunk`` returns the data as a
zero-copy ``memoryview`` of the received message. Tests check both against the protobuf runtime.

Chunk: ``offset = 1`` (int64), ``data = 2`` (bytes), ``size = 3`` (int64), ``sha256 = 4`` (string).
"""
from typing import List, Tuple

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
