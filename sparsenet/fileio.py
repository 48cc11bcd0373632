"""Writing run outputs: every file goes through a private temporary in its folder, fsync, then rename.

Threat model: other local accounts on a shared machine. A temporary is created with
O_CREAT|O_EXCL|O_NOFOLLOW under an unpredictable name, so nobody can plant a symlink or a file
there first; the rename replaces the target's directory entry (a symlink planted at the target is
replaced, never followed). That is only safe in a folder nobody else can rename entries in, so an
output folder must be owned by us (or root) and not writable by group/others unless it has the
sticky bit. Folders sparsenet creates get mode 0o755 (less if the umask says so).

A temporary is named `.<target>.tmp-<pid>-<host>-<random>`; clean_stale_temporaries() removes the
ones whose process is gone (a kill during a write), on this host, owned by us.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputError

FOLDER_MODE = 0o755
FILE_MODE = 0o644  # never group/other-writable, whatever the umask

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)(?:-(?P<host>[A-Za-z0-9_]{1,32})-[0-9a-f]{16})?$")
_OPEN_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _my_uid() -> int:
    return os.geteuid()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on device"
        if exc.errno == errno.EDQUOT:
            return "disk quota exceeded"
        if exc.strerror:
            return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def check_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """`folder` if it is a directory others cannot rename entries in; else OutputError (one line)."""
    folder = Path(folder)
    try:
        st = os.lstat(folder)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (_my_uid(), 0):  # its owner may repoint it mid-run
                raise OutputError(f"{what} '{folder}' is a symbolic link of another user (uid {st.st_uid}); give "
                                  f"the folder itself")
            st = os.stat(folder)  # only a link nobody else can change is followed: the entry judged is the one used
    except FileNotFoundError:
        raise OutputError(f"{what} '{folder}' does not exist") from None
    except OSError as exc:
        raise OutputError(f"cannot use {what} '{folder}': {_reason(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{what} '{folder}' is a file, not a folder")
    if st.st_uid not in (_my_uid(), 0):
        raise OutputError(f"{what} '{folder}' belongs to another user (uid {st.st_uid}); "
                          f"write into a folder of your own")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise OutputError(f"{what} '{folder}' is writable by other users (mode {stat.S_IMODE(st.st_mode):o}) "
                          f"without the sticky bit; they could replace its files: chmod go-w it or choose another")
    return folder


def make_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `folder` and its missing parents (mode 0o755 & ~umask), then check_folder it."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if os.path.lexists(probe) and not probe.is_dir():
        raise OutputError(f"cannot create {what} '{folder}': '{probe}' is a file, not a folder")
    for path in reversed(missing):
        try:
            os.mkdir(path, FOLDER_MODE)
        except FileExistsError:
            pass  # created meanwhile: checked below like any existing folder
        except OSError as exc:
            raise OutputError(f"cannot create {what} '{folder}': {_reason(exc)}") from None
        else:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, FOLDER_MODE & ~_umask())  # mkdir's mode went through the umask
            finally:
                os.close(fd)
    return check_folder(folder, what)


LOCK_NAME = ".sparsenet.lock"  # held (flock) by the run writing a folder; removed when it ends


@contextmanager
def hold_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `folder`/LOCK_NAME (flock, exclusive) for the block: another run holding it is an OutputError
    naming it. The file goes at the end; a killed run's stays, unlocked, and the next run takes it over."""
    path = Path(folder) / LOCK_NAME
    fd = _take_lock(path, folder)
    try:
        yield
    finally:
        if fd is not None:
            try:
                os.unlink(path)  # before close: a run that opened it meanwhile sees another file and retries
            except OSError:
                pass
            os.close(fd)


def _take_lock(path: Path, folder) -> int | None:
    """The descriptor holding the lock at `path`, or None on a file system without locks."""
    import fcntl
    import time

    while True:
        try:  # O_NONBLOCK: a FIFO planted there must not block the open or, later, a read
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR):
                kind = "a symbolic link" if exc.errno == errno.ELOOP else "a folder"
                raise OutputError(f"the lock file '{path}' is {kind}, not a file of sparsenet's; move it away "
                                  f"or give another --out") from None
            raise OutputError(f"cannot create the lock file '{path}': {_reason(exc)}") from None
        try:
            _check_lock_file(fd, path)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            said = os.read(fd, 200).decode("utf-8", "replace")
            holder = "".join(c if c.isprintable() else "?" for c in said).strip() or "it has not said which"
            os.close(fd)
            raise OutputError(f"output folder '{folder}' is in use by another sparsenet run ({holder}); wait for "
                              f"it to end, or give another --out") from None
        except OSError:  # a file system without locks (some network mounts): the run goes on unlocked
            os.close(fd)
            return None
        except OutputError:
            os.close(fd)
            raise
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        os.close(fd)  # its holder removed it between our open and flock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return fd


def _check_lock_file(fd: int, path: Path) -> None:
    """OutputError unless `fd` is a regular file of ours (or root's) with no other name: we truncate and
    write it, so a planted FIFO, another user's file or a hard link to some file must not be it."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        problem = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
    elif st.st_uid not in (_my_uid(), 0):
        problem = f"a file of another user (uid {st.st_uid})"
    elif st.st_nlink > 1:
        problem = f"a file with {st.st_nlink - 1} other name(s) (a hard link)"
    else:
        return
    raise OutputError(f"the lock file '{path}' is {problem}, not a file of sparsenet's; move it away "
                      f"or give another --out")


def check_unused(out: str | os.PathLike) -> None:
    """OutputError if the folder `out` holds anything but LOCK_NAME (ours, or a killed run's): a new run's folder."""
    held = sorted(name for name in os.listdir(out) if name != LOCK_NAME)
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise OutputError(f"output folder '{out}' is not empty ({shown}); give --resume to continue its run, "
                          f"--overwrite to replace it, or another --out")


def fresh_folder(parent: str | os.PathLike, stem: str, what: str = "output folder") -> Path:
    """A new folder parent/<stem>-<n>, n the smallest free number from 1; mkdir claims it, so two
    runs started at once never get the same one."""
    parent = make_folder(parent, what)
    n = 1
    while True:
        path = parent / f"{stem}-{n}"
        try:
            os.mkdir(path, FOLDER_MODE)
        except FileExistsError:
            n += 1
            continue
        except OSError as exc:
            raise OutputError(f"cannot create {what} '{path}': {_reason(exc)}") from None
        return check_folder(path, what)


def prepare_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """A target file path whose folder exists (created if missing) and is safe to write in."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputError(f"{what} '{path}' names a folder, not a file")
    if path.is_dir():
        raise OutputError(f"{what} '{path}' is a folder; give a file name")
    try:
        make_folder(path.parent, "folder")
    except OutputError as exc:
        raise OutputError(f"cannot write {what} '{path}': {exc}") from None
    return path


def _temporary_name(target: str) -> str:
    return f".{target}.tmp-{os.getpid()}-{_HOST}-{secrets.token_hex(8)}"


@contextmanager
def replacing(path: str | os.PathLike, what: str = "output file", reserve: int = 0) -> Iterator[tuple[str, int]]:
    """Yield (temporary path, its fd) for the caller to fill; on success the temporary replaces `path`.

    The temporary is created O_EXCL|O_NOFOLLOW, mode 0o600; afterwards it must still be the file
    we created (same inode), is fsynced, made FILE_MODE & ~umask and renamed over `path`; the
    folder is fsynced. Any failure removes the temporary and leaves `path` as it was (OutputError).
    reserve: bytes the caller will write; allocated first, so a disk without room for them fails
    here, cleanly, instead of inside a library (HDF5 crashes when a write fails: segfault at close).
    A check, not a reservation: h5py's "w" open truncates the file again, so a disk that another
    process fills during the write can still make HDF5 fail (the old file stays whole either way).
    """
    path = Path(path)
    try:
        folder = check_folder(path.parent, "folder")
    except OutputError as exc:
        raise OutputError(f"cannot write {what} '{path}': {exc}") from None
    tmp = str(folder / _temporary_name(path.name))
    try:
        fd = os.open(tmp, _OPEN_FLAGS | os.O_RDWR, 0o600)
    except OSError as exc:
        raise OutputError(f"cannot write {what} '{path}': {_reason(exc)}") from None
    try:
        try:
            if reserve > 0:
                _reserve(fd, reserve)
            yield tmp, fd
            mine = os.fstat(fd)
            there = os.lstat(tmp)
            if (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
                raise OutputError(f"cannot write {what} '{path}': its temporary {tmp} was replaced by someone else")
            os.fsync(fd)
            os.fchmod(fd, FILE_MODE & ~_umask())
            if path.is_dir():
                raise OutputError(f"{what} '{path}' is a folder; give a file name")
            os.replace(tmp, path)
            _fsync_folder(folder)
        except OutputError:
            raise
        except (OSError, RuntimeError) as exc:  # h5py reports some write failures as RuntimeError
            raise OutputError(f"cannot write {what} '{path}': {_reason(exc)}{_whose(path, exc)}"
                              f"{'; the previous file is unchanged' if os.path.exists(path) else ''}") from None
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:  # renamed already (success), or gone
            pass


def _whose(path: Path, exc: BaseException) -> str:
    """Why a rename over `path` was not permitted, if it is another user's file in a sticky folder (/tmp)."""
    if not (isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES)):
        return ""
    try:
        st, folder = os.lstat(path), os.stat(path.parent)
    except OSError:
        return ""
    if st.st_uid == _my_uid() or not folder.st_mode & stat.S_ISVTX:
        return ""
    return (f" ('{path.name}' belongs to another user (uid {st.st_uid}) and the folder's sticky bit lets only "
            f"them replace it: give another name)")


def _reserve(fd: int, nbytes: int) -> None:
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "output file") -> None:
    """Atomically make `path` hold `data` (see replacing)."""
    with replacing(path, what) as (_, fd):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


def write_text(path: str | os.PathLike, text: str, what: str = "output file") -> None:
    write_bytes(path, text.encode("utf-8"), what)


def read_own(path: str | os.PathLike) -> bytes:
    """Bytes of a regular file we own, opened without following a symlink (b'' if missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"'{path}' is a symbolic link; sparsenet does not write through links") from None
        raise OutputError(f"cannot read '{path}': {_reason(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (_my_uid(), 0):
            raise OutputError(f"'{path}' is not a regular file of yours; move it away")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def append_text(path: str | os.PathLike, text: str, what: str = "output file") -> None:
    """`path` with `text` appended, written as a new file (a kill never leaves half a line)."""
    write_bytes(path, read_own(path) + text.encode("utf-8"), what)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot sync a folder
            raise
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporaries in `folder` left by dead sparsenet processes of this host; their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMPORARY.match(name)
        if m is None or (m["host"] is not None and m["host"] != _HOST) or _alive(int(m["pid"])):
            continue
        if m["host"] is None and m["target"] not in ("checkpoint.h5", "metrics.jsonl"):
            continue  # an old-style name (`.checkpoint.h5.tmp-<pid>`) only for the files that used it
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == _my_uid():
                os.unlink(path)
                removed.append(name)
        except OSError:
            pass
    return removed
