"""The wire format of a bundle (JSON metadata plus typed numpy arrays), in pure numpy.

A bundle is a header message, then, unless the header holds them, each array's bytes in chunks of
at most chunk_bytes, all from one source with one tag. The header: int64 MAGIC and the byte length
of a UTF-8 JSON object {version, chunk_bytes, meta, arrays: [[dtype, shape], ...]}; when the whole
bundle fits one chunk the arrays follow it at 64-byte aligned offsets (one message; the receiver's
arrays are views of it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = 0x53504E5442554E32  # "SPNTBUN2"
VERSION = 2
PREFIX = 16  # bytes before the JSON: MAGIC and the JSON's length, int64
ALIGN = 64  # byte alignment of each array inside a header message
MAX_NDIM = 4
DEFAULT_CHUNK_BYTES = 1 << 30
MIN_CHUNK_BYTES = 1024
CHUNK_LIMIT = 1 << 31  # chunk_bytes must stay below this: MPI counts are C ints
MAX_JSON_BYTES = 1 << 30
DTYPES = tuple(np.dtype(name) for name in (
    "bool", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "float32", "float64"))
_BY_NAME = {dt.name: dt for dt in DTYPES}


class TransportError(RuntimeError):
    """A received message is not a well-formed bundle (wrong magic, version, dtype or size)."""


@dataclass
class Bundle:
    """One received message: sender rank, tag, metadata, arrays and its total size in bytes."""

    source: int
    tag: int
    meta: dict
    arrays: list[np.ndarray] = field(default_factory=list)
    nbytes: int = 0


def validate_chunk_bytes(chunk_bytes: int) -> int:
    """chunk_bytes (bytes per MPI message) if 1024 <= chunk_bytes < 2**31, else ValueError."""
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, (int, np.integer)):
        raise ValueError(f"chunk_bytes must be an integer, got {chunk_bytes!r}")
    if not MIN_CHUNK_BYTES <= chunk_bytes < CHUNK_LIMIT:
        raise ValueError(f"chunk_bytes must satisfy {MIN_CHUNK_BYTES} <= chunk_bytes < 2**31 "
                         f"(MPI counts are 32-bit), got {chunk_bytes}")
    return int(chunk_bytes)


def chunks(arrays: Sequence[np.ndarray], chunk_bytes: int) -> Iterator[np.ndarray]:
    """The bytes of `arrays` (C-contiguous) as consecutive uint8 views of at most chunk_bytes."""
    for array in arrays:
        flat = byte_view(array)
        for start in range(0, flat.size, chunk_bytes):
            yield flat[start:start + chunk_bytes]


def byte_view(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


def prepare(array: Any) -> np.ndarray:
    """A native-endian, C-contiguous array of a supported dtype; copies only when needed."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in DTYPES:
        raise TypeError(f"unsupported dtype {array.dtype} (supported: {', '.join(dt.name for dt in DTYPES)})")
    if array.ndim > MAX_NDIM:
        raise ValueError(f"arrays may have at most {MAX_NDIM} dimensions, got shape {array.shape}")
    return array if array.flags.c_contiguous else np.array(array, order="C")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def aligned_layout(start: int, sizes: list[int]) -> tuple[list[int], int]:
    """Offsets of arrays of `sizes` bytes aligned after `start` bytes, and the end of the last."""
    offsets, end = [], start
    for size in sizes:
        offsets.append(-(-end // ALIGN) * ALIGN)
        end = offsets[-1] + size
    return offsets, -(-end // ALIGN) * ALIGN if sizes else end


def encode(meta: Mapping[str, Any], arrays: Sequence[np.ndarray], chunk_bytes: int) -> tuple[np.ndarray, bool]:
    """The header message (uint8) of a bundle of prepared `arrays`, and whether it holds them."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    head = {"version": VERSION, "chunk_bytes": chunk_bytes, "meta": dict(meta),
            "arrays": [[a.dtype.name, a.shape] for a in arrays]}
    text = json.dumps(head, separators=(",", ":"), default=_json_default).encode("utf-8")
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"bundle header is {len(text)} bytes; the limit is {MAX_JSON_BYTES}")
    offsets, end = aligned_layout(PREFIX + len(text), [a.nbytes for a in arrays])
    inline = end <= chunk_bytes
    message = np.zeros(end if inline else PREFIX + len(text), dtype=np.uint8)
    message[:PREFIX].view(np.int64)[:] = MAGIC, len(text)
    message[PREFIX:PREFIX + len(text)] = np.frombuffer(text, dtype=np.uint8)
    for offset, array in zip(offsets if inline else [], arrays):
        message[offset:offset + array.nbytes] = byte_view(array)
    return message, inline


def decode(raw: np.ndarray, source: int, tag: int) -> tuple[Bundle, int | None]:
    """The bundle a header message `raw` (uint8) describes, and the chunk_bytes its arrays follow in
    (None: they are views of `raw`; else they are empty, to be received)."""
    where = f"bundle from rank {source} tag {tag}"
    magic, length = raw[:PREFIX].view(np.int64).tolist() if raw.size >= PREFIX else (0, 0)
    if magic != MAGIC:
        raise TransportError(f"malformed {where}: magic {magic:#x} != {MAGIC:#x} (not sent by send_bundle?)")
    if not 0 < length <= raw.size - PREFIX:
        raise TransportError(f"malformed {where}: a {length}-byte header in a {raw.size}-byte message")
    try:
        head = json.loads(raw[PREFIX:PREFIX + length].tobytes().decode("utf-8"))
        version, chunk_bytes, meta, specs = head["version"], head["chunk_bytes"], head["meta"], head["arrays"]
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
        raise TransportError(f"malformed {where}: header is not bundle JSON ({err})") from None
    if version != VERSION:
        raise TransportError(f"{where}: protocol version {version} received, this side speaks {VERSION}")
    if not isinstance(meta, dict) or not isinstance(specs, list):
        raise TransportError(f"malformed {where}: metadata is {type(meta).__name__}, arrays {type(specs).__name__}")
    if not isinstance(chunk_bytes, int) or not MIN_CHUNK_BYTES <= chunk_bytes < CHUNK_LIMIT:
        raise TransportError(f"malformed {where}: chunk_bytes {chunk_bytes!r} out of range")
    dtypes, shapes = [], []
    for i, spec in enumerate(specs):
        name, shape = spec if isinstance(spec, list) and len(spec) == 2 else (None, None)
        if name not in _BY_NAME:
            raise TransportError(f"malformed {where}: array {i} has unknown dtype {name!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise TransportError(f"malformed {where}: array {i} has shape {shape!r}")
        dtypes.append(_BY_NAME[name])
        shapes.append(tuple(shape))
    sizes = [dt.itemsize * math.prod(sh) for dt, sh in zip(dtypes, shapes)]
    if raw.size == PREFIX + length:  # the arrays follow in chunks
        arrays = [np.empty(sh, dtype=dt) for dt, sh in zip(dtypes, shapes)]
        return Bundle(source, tag, meta, arrays, raw.size + sum(sizes)), chunk_bytes
    offsets, end = aligned_layout(PREFIX + length, sizes)
    if end != raw.size:
        raise TransportError(f"malformed {where}: {raw.size} bytes, its header describes {end}")
    arrays = [raw[off:off + n].view(dt).reshape(sh) for off, n, dt, sh in zip(offsets, sizes, dtypes, shapes)]
    return Bundle(source, tag, meta, arrays, raw.size), None
