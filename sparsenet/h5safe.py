"""Reading HDF5 files that may come from someone else: only what the file itself stores.

Every object is reached through hard links only (no soft or external links); every dataset read keeps
its raw data inside the file (contiguous, compact or chunked; no external raw storage, no virtual
dataset), and its declared size is checked against the storage the file really holds before
anything is allocated: a dataset declared huge but never written, or with chunks missing, is refused.
The caller's error class carries every refusal as one line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

MAX_ATTRIBUTE_ELEMENTS = 1 << 16   # attributes hold scalars and short lists (slopes)
MAX_CHUNK_BYTES = 1 << 26          # HDF5 decompresses a whole chunk at a time


def _layouts():
    from h5py import h5d

    return {h5d.COMPACT: "compact", h5d.CONTIGUOUS: "contiguous", h5d.CHUNKED: "chunked", h5d.VIRTUAL: "virtual"}


def open_file(path: Path, error, prefix: str):
    """h5py.File opened read-only, or `error` starting with `prefix` saying why it cannot be."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise error(f"{prefix}: {' '.join(str(exc).split())}") from None


def link_kind(group, name: str) -> str | None:
    """'hard', 'soft', 'external' or None (no such link) for one link name in `group`."""
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        return None
    if isinstance(link, h5py.HardLink):
        return "hard"
    return "soft" if isinstance(link, h5py.SoftLink) else "external"


def hard_object(f, name: str, where: str, error):
    """The object at path `name` below `f`, every link on the way a hard link; None if a link is missing."""
    import h5py

    obj = f
    for part in (p for p in name.split("/") if p):
        here = f"{obj.name.rstrip('/')}/{part}"
        if not isinstance(obj, h5py.Group):
            raise error(f"{where}: '{obj.name}' is a dataset, expected a group")
        kind = link_kind(obj, part)
        if kind is None:
            return None
        if kind != "hard":
            raise error(f"{where}: '{here}' is {'an' if kind == 'external' else 'a'} {kind} link; only objects "
                        f"stored in the file itself (hard links) are read")
        obj = obj[part]
    return obj


def declared_bytes(ds) -> int:
    """Bytes the dataset's shape and dtype declare (Python ints: no overflow)."""
    return math.prod(int(n) for n in ds.shape) * int(ds.dtype.itemsize)


def check_storage(ds, where: str, error, file_size: int) -> int:
    """Refuse external raw storage, virtual datasets and declared sizes the file does not hold.

    Returns the declared size in bytes (what reading the dataset whole allocates).
    """
    from h5py import h5d

    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    name = ds.name
    if ds.shape is None:
        raise error(f"{where}: dataset '{name}' is empty (an HDF5 null dataspace: no shape, no values)")
    if layout == h5d.VIRTUAL:
        raise error(f"{where}: dataset '{name}' is a virtual dataset (data from other datasets or files); "
                    f"only data stored in the file itself is read")
    if layout not in (h5d.CONTIGUOUS, h5d.COMPACT, h5d.CHUNKED):
        raise error(f"{where}: dataset '{name}' has an unknown storage layout ({layout})")
    if dcpl.get_external_count():
        raise error(f"{where}: dataset '{name}' keeps its data in external files "
                    f"({dcpl.get_external(0)[0].decode(errors='replace')!r}); only data stored in the file itself is read")
    nbytes = declared_bytes(ds)
    stored = int(ds.id.get_storage_size())
    if stored > file_size:
        raise error(f"{where}: dataset '{name}' claims {stored} bytes of storage in a file of {file_size} bytes")
    if layout == h5d.CHUNKED:
        chunks = dcpl.get_chunk()
        expected = math.prod(-(-int(n) // int(c)) for n, c in zip(ds.shape, chunks))
        chunk_bytes = math.prod(int(c) for c in chunks) * int(ds.dtype.itemsize)
        if chunk_bytes > max(MAX_CHUNK_BYTES, nbytes):
            raise error(f"{where}: dataset '{name}' has chunks of {chunk_bytes} bytes, more than its "
                        f"{nbytes} bytes of data")
        written = int(ds.id.get_num_chunks())
        if written != expected:
            raise error(f"{where}: dataset '{name}' declares shape {ds.shape} but the file stores {written} of its "
                        f"{expected} chunks (never written?)")
        if dcpl.get_nfilters() == 0 and stored < nbytes:
            raise error(f"{where}: dataset '{name}' declares {nbytes} bytes but the file stores {stored}")
    elif ds.dtype.kind == "O":  # variable-length strings: heap references here, the text in the file's heap
        if nbytes and not stored:
            raise error(f"{where}: dataset '{name}' was never written")
    elif stored != nbytes:  # contiguous or compact: the data itself, byte for byte
        raise error(f"{where}: dataset '{name}' declares shape {ds.shape} ({nbytes} bytes) but the file stores "
                    f"{stored} bytes (never written or truncated)")
    return nbytes


def dataset(f, name: str, where: str, error, file_size: int):
    """The dataset at `name` (hard links only, storage checked), or None if there is no such link."""
    import h5py

    obj = hard_object(f, name, where, error)
    if obj is None:
        return None
    if not isinstance(obj, h5py.Dataset):
        raise error(f"{where}: '{obj.name}' is a {type(obj).__name__.lower()}, expected a dataset")
    check_storage(obj, where, error, file_size)
    return obj


def read_string(f, name: str, where: str, error, file_size: int) -> str:
    """A scalar string dataset (as h5py writes a Python str), decoded."""
    import h5py

    ds = dataset(f, name, where, error, file_size)
    if ds is None:
        raise error(f"{where}: lacks the dataset '{name}'")
    if ds.shape != () or h5py.check_string_dtype(ds.dtype) is None:
        raise error(f"{where}: '{name}' is {ds.dtype} of shape {ds.shape}, expected one string")
    raw = ds[()]
    try:
        return raw.decode() if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError as exc:
        raise error(f"{where}: '{name}' is not UTF-8 text ({exc})") from None


def read_attribute(obj, name: str, where: str, error):
    """An attribute value (bytes decoded), its size checked before it is read; KeyError if absent."""
    if name not in obj.attrs:
        raise KeyError(name)
    attr = obj.attrs.get_id(name)
    elements = math.prod(int(n) for n in (attr.shape or ()))
    if elements > MAX_ATTRIBUTE_ELEMENTS or attr.dtype.kind == "V":
        raise error(f"{where}: attribute '{name}' is {attr.dtype} of shape {attr.shape}; expected a short value")
    value = obj.attrs[name]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError as exc:
            raise error(f"{where}: attribute '{name}' is not UTF-8 text ({exc})") from None
    return value


def file_size(path: Path) -> int:
    return os.stat(path).st_size


def read_array(ds, where: str, error) -> np.ndarray:
    """The whole dataset as a numpy array (storage already checked by `dataset`)."""
    try:
        return ds[()]
    except (OSError, ValueError, TypeError) as exc:
        name = getattr(ds, "name", None) or getattr(getattr(ds, "_dset", None), "name", "?")
        raise error(f"{where}: cannot read dataset '{name}': {' '.join(str(exc).split())}") from None
