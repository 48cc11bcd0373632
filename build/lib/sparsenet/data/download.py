"""Checksum-verified downloads (temp file, then atomic rename) and safe tar member extraction."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from sparsenet.errors import DataError

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0            # per connect / per read: an unreachable host fails fast
_CHUNK = 1 << 20


class DownloadError(DataError):
    """A download failed: unreachable, HTTP error, timeout or checksum mismatch."""


def download_disabled() -> bool:
    """True when the environment variable SPARSENET_NO_DOWNLOAD is set to a true-ish value."""
    value = os.environ.get("SPARSENET_NO_DOWNLOAD", "").strip().lower()
    return value not in ("", "0", "false", "no")


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _reason(e: BaseException) -> str:
    """One-line reason for a network or file error."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        if isinstance(e.reason, BaseException):
            return _reason(e.reason)
        return " ".join(str(e.reason).split())
    if isinstance(e, TimeoutError):
        return "timed out"
    return " ".join((getattr(e, "strerror", None) or str(e) or type(e).__name__).split())


def fetch_one(url: str, dest: Path, sha256: str, timeout: float = TIMEOUT_S) -> None:
    """Download url to dest, verifying its SHA-256; dest appears only once complete and verified."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DownloadError(f"cannot write to '{dest.parent}': {_reason(e)}") from e
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "sparsenet"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != sha256.lower():
            raise DownloadError(f"checksum mismatch: expected sha256 {sha256}, "
                                f"got {digest.hexdigest()}")
        os.replace(tmp, dest)
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise DownloadError(_reason(e)) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(urls: Sequence[str], dest: Path, sha256: str, timeout: float = TIMEOUT_S) -> None:
    """Try each mirror in turn; raise DownloadError listing every mirror's failure."""
    errors = []
    for url in urls:
        log.info("downloading %s -> %s", url, dest)
        try:
            fetch_one(url, dest, sha256, timeout)
            return
        except DownloadError as e:
            errors.append(f"{url}: {e}")
    raise DownloadError("; ".join(errors))


def extract_members(archive: Path, members: Mapping[str, str], dest: Path) -> None:
    """Extract only the named regular-file members of a tar archive, as {member: file name in dest}.

    Member names are matched exactly and written under names we choose, so paths, links and
    devices inside the archive can never escape dest.
    """
    wanted = dict(members)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                target = wanted.get(info.name)
                if target is None or not info.isreg():
                    continue
                source = tar.extractfile(info)
                fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{target}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out, source:
                        shutil.copyfileobj(source, out, _CHUNK)
                    os.replace(tmp, dest / target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                del wanted[info.name]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot extract '{archive}': {_reason(e)}") from e
    if wanted:
        raise DataError(f"archive '{archive}' lacks the expected members: "
                        f"{', '.join(sorted(wanted))}")


def mirror_urls(mirrors: Iterable[str], filename: str) -> list[str]:
    return [m.rstrip("/") + "/" + filename for m in mirrors]
