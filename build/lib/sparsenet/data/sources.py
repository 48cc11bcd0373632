"""Find a named dataset's folder: data.path, system folders, user cache, then a download."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparsenet.data.download import DownloadError, download_disabled
from sparsenet.errors import DataError


def cache_dir(name: str) -> Path:
    """Per-dataset cache folder: $SPARSENET_DATA/<name>, else ~/.cache/sparsenet/<name>."""
    root = os.environ.get("SPARSENET_DATA")
    if root:
        return Path(root).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sparsenet" / name


@dataclass(frozen=True)
class Source:
    """How to recognise a dataset's folder and how to download it into the cache."""

    name: str
    # folder -> (folder holding the files, "") when complete, else (None, why it does not count)
    probe: Callable[[Path], tuple[Path | None, str]]
    fetch: Callable[[Path], None]           # download into the given cache folder
    hint: str                               # how a user can provide the data themselves


def locate(source: Source, user_path: str | None, system_dirs: Sequence[str]) -> Path:
    """Folder holding the dataset, downloading into the cache if it is nowhere else."""
    cache = cache_dir(source.name)
    candidates = [Path(user_path).expanduser()] if user_path else []
    candidates += [Path(d) for d in system_dirs] + [cache]
    looked = []
    for folder in candidates:
        found, note = source.probe(folder)
        if found is not None:
            return found
        looked.append(f"{folder} ({note})" if note else str(folder))
    if download_disabled():
        outcome = "download disabled (SPARSENET_NO_DOWNLOAD is set)"
    else:
        try:
            source.fetch(cache)
            found, note = source.probe(cache)
            if found is not None:
                return found
            outcome = f"download failed (downloaded files incomplete: {note})"
        except DownloadError as e:
            outcome = f"download failed ({e})"
    raise DataError(f"dataset '{source.name}' not found; looked in: {', '.join(looked)}; "
                    f"{outcome}; {source.hint}")


def missing_note(missing: Sequence[str]) -> str:
    return f"incomplete: missing {', '.join(missing)}"
