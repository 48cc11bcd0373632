"""The wire format of a bundle (JSON metadata plus typed numpy arrays): headers, packing, checks.

Pure numpy; transport.py moves the bytes. One bundle, all messages from one source with one tag:
  1. header: int64 [MAGIC, VERSION, chunk_bytes, n_arrays, meta_nbytes,
                    then per array: dtype code, ndim, dims padded to MAX_NDIM with 0, nbytes]
  2. the UTF-8 JSON metadata, in chunks of at most chunk_bytes
  3. each array's bytes (C order), in chunks
A bundle that fits in one chunk travels instead as ONE message (pack): the header with
MAGIC_PACKED, the metadata, then each array at a 64-byte aligned offset; the receiver's arrays are
views of it (unpack). One message instead of n + 2 saves a rendezvous per array.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = 0x53504E5442554E31  # "SPNTBUN1": header of a bundle sent in pieces
MAGIC_PACKED = 0x53504E544255504B  # "SPNTBUPK": a whole bundle in one message
ALIGN = 64  # byte alignment of each array inside a packed message
VERSION = 1
MAX_NDIM = 4
DEFAULT_CHUNK_BYTES = 1 << 30
MIN_CHUNK_BYTES = 1024
CHUNK_LIMIT = 1 << 31  # chunk_bytes must stay below this: MPI counts are C ints
MAX_ARRAYS = 1 << 16
MAX_META_BYTES = 1 << 30
_HEAD = 5  # magic, version, chunk_bytes, n_arrays, meta_nbytes
_PER_ARRAY = 3 + MAX_NDIM  # dtype code, ndim, dims..., nbytes
DTYPES = tuple(np.dtype(name) for name in (
    "bool", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "float32", "float64"))
_CODE = {dt: code for code, dt in enumerate(DTYPES, start=1)}


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
    """Return chunk_bytes (bytes per MPI message) if 1024 <= chunk_bytes < 2**31, else raise ValueError."""
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, (int, np.integer)):
        raise ValueError(f"chunk_bytes must be an integer, got {chunk_bytes!r}")
    if not MIN_CHUNK_BYTES <= chunk_bytes < CHUNK_LIMIT:
        raise ValueError(f"chunk_bytes must satisfy {MIN_CHUNK_BYTES} <= chunk_bytes < 2**31 "
                         f"(MPI counts are 32-bit), got {chunk_bytes}")
    return int(chunk_bytes)


def chunks(flat: np.ndarray, chunk_bytes: int) -> Iterator[np.ndarray]:
    """Consecutive views of a flat uint8 array, each at most chunk_bytes long."""
    for start in range(0, flat.size, chunk_bytes):
        yield flat[start:start + chunk_bytes]


def byte_view(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


def prepare(array: Any) -> np.ndarray:
    """A native-endian, C-contiguous array of a supported dtype; copies only when needed."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype not in _CODE:
        raise TypeError(f"unsupported dtype {array.dtype} (supported: {', '.join(dt.name for dt in DTYPES)})")
    if array.ndim > MAX_NDIM:
        raise ValueError(f"arrays may have at most {MAX_NDIM} dimensions, got shape {array.shape}")
    return array if array.flags.c_contiguous else np.array(array, order="C")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON bytes of a metadata mapping (never pickle)."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    data = json.dumps(dict(meta), separators=(",", ":"), default=_json_default).encode("utf-8")
    if len(data) > MAX_META_BYTES:
        raise ValueError(f"metadata is {len(data)} bytes; the limit is {MAX_META_BYTES}")
    return data


def decode_meta(raw: np.ndarray, source: int, tag: int) -> dict:
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TransportError(f"bundle from rank {source} tag {tag}: metadata is not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise TransportError(f"bundle from rank {source} tag {tag}: metadata is {type(meta).__name__}, not a dict")
    return meta


def encode_header(chunk_bytes: int, meta_nbytes: int, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The int64 header describing a bundle (see the module docstring)."""
    if len(arrays) > MAX_ARRAYS:
        raise ValueError(f"a bundle holds at most {MAX_ARRAYS} arrays, got {len(arrays)}")
    words = [MAGIC, VERSION, chunk_bytes, len(arrays), meta_nbytes]
    for array in arrays:  # plain Python ints, one numpy call at the end: this runs for every message
        words += [_CODE[array.dtype], array.ndim, *array.shape, *[0] * (MAX_NDIM - array.ndim), array.nbytes]
    return np.array(words, dtype=np.int64)


def decode_header(raw: np.ndarray) -> tuple[int, int, list[tuple[np.dtype, tuple[int, ...]]]]:
    """Validate a received header (uint8 bytes); return (chunk_bytes, meta_nbytes, [(dtype, shape)])."""
    if raw.size % 8 or raw.size < 8 * _HEAD:
        raise TransportError(f"malformed bundle header: {raw.size} bytes is not a valid header size")
    words = raw.view(np.int64).tolist()
    magic, version, chunk_bytes, n_arrays, meta_nbytes = words[:_HEAD]
    if magic not in (MAGIC, MAGIC_PACKED):
        raise TransportError(f"malformed bundle header: magic {magic:#x} != {MAGIC:#x} "
                             "(a message not sent by Transport.send_bundle?)")
    if version != VERSION:
        raise TransportError(f"bundle protocol version {version} received, this side speaks {VERSION}")
    if not MIN_CHUNK_BYTES <= chunk_bytes < CHUNK_LIMIT:
        raise TransportError(f"malformed bundle header: chunk_bytes {chunk_bytes} out of range")
    if not 0 <= n_arrays <= MAX_ARRAYS or len(words) != _HEAD + _PER_ARRAY * n_arrays:
        raise TransportError(f"malformed bundle header: {n_arrays} arrays but {len(words)} header words")
    if not 0 <= meta_nbytes <= MAX_META_BYTES:
        raise TransportError(f"malformed bundle header: metadata size {meta_nbytes} out of range")
    specs = []
    for i in range(n_arrays):
        row = words[_HEAD + i * _PER_ARRAY:_HEAD + (i + 1) * _PER_ARRAY]
        code, ndim, dims, nbytes = row[0], row[1], row[2:2 + MAX_NDIM], row[-1]
        if not 1 <= code <= len(DTYPES):
            raise TransportError(f"malformed bundle header: array {i} has unknown dtype code {code}")
        if not 0 <= ndim <= MAX_NDIM or any(d < 0 for d in dims) or any(dims[ndim:]):
            raise TransportError(f"malformed bundle header: array {i} has ndim {ndim}, dims {dims}")
        dtype, shape = DTYPES[code - 1], tuple(dims[:ndim])
        if math.prod(shape) * dtype.itemsize != nbytes:
            raise TransportError(f"malformed bundle header: array {i} of {dtype} {shape} claims {nbytes} bytes")
        specs.append((dtype, shape))
    return chunk_bytes, meta_nbytes, specs


def _packed_layout(header_nbytes: int, meta_nbytes: int, sizes: list[int]) -> tuple[list[int], int]:
    """Aligned offsets of the arrays in a packed message, and its total size."""
    offsets, offset = [], -(-(header_nbytes + meta_nbytes) // ALIGN) * ALIGN
    for size in sizes:
        offsets.append(offset)
        offset = -(-(offset + size) // ALIGN) * ALIGN
    return offsets, offset


def pack(meta_bytes: np.ndarray, arrays: list[np.ndarray], chunk_bytes: int) -> np.ndarray | None:
    """The whole bundle as one zero-padded uint8 buffer, or None if it would exceed one chunk."""
    header = encode_header(chunk_bytes, meta_bytes.size, arrays)
    header[0] = MAGIC_PACKED
    offsets, total = _packed_layout(header.nbytes, meta_bytes.size, [a.nbytes for a in arrays])
    if total > chunk_bytes:
        return None
    buffer = np.zeros(total, dtype=np.uint8)
    buffer[:header.nbytes] = byte_view(header)
    buffer[header.nbytes:header.nbytes + meta_bytes.size] = meta_bytes
    for offset, array in zip(offsets, arrays):
        buffer[offset:offset + array.nbytes] = byte_view(array)
    return buffer


def unpack(raw: np.ndarray, source: int, tag: int) -> Bundle:
    """A bundle from one packed message; its arrays are aligned views of `raw`."""
    n_arrays = int(raw[24:32].view(np.int64)[0]) if raw.size >= 8 * _HEAD else -1
    header_nbytes = 8 * (_HEAD + _PER_ARRAY * n_arrays)
    if n_arrays < 0 or header_nbytes > raw.size:
        raise TransportError(f"malformed packed bundle: {raw.size} bytes cannot hold its header")
    _, meta_nbytes, specs = decode_header(raw[:header_nbytes])
    sizes = [dt.itemsize * math.prod(sh) for dt, sh in specs]
    offsets, end = _packed_layout(header_nbytes, meta_nbytes, sizes)
    if end != raw.size:
        raise TransportError(f"malformed packed bundle: {raw.size} bytes, its header describes {end}")
    meta = decode_meta(raw[header_nbytes:header_nbytes + meta_nbytes], source, tag)
    arrays = [raw[off:off + size].view(dt).reshape(sh) for off, size, (dt, sh) in zip(offsets, sizes, specs)]
    return Bundle(source=source, tag=tag, meta=meta, arrays=arrays, nbytes=raw.size)
