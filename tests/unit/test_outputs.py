"""Run outputs on a shared machine (issue 15 items 1, 8, 10, 12): no write through a planted symlink,
unsafe output folders refused, a full disk leaves the old checkpoint whole, stale temporaries removed."""

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.unit.cli_errors import error_of
from sparsenet import checkpoint as ckpt
from sparsenet import fileio
from sparsenet.cli import main
from sparsenet.config import config_from_dict, dump_config
from sparsenet.errors import ConfigError, OutputError
from sparsenet.metrics import append_metrics, read_metrics, write_metrics
from sparsenet.train import new_state, state_to_checkpoint

TINY = {"data": {"name": "synthetic", "samples": 120, "features": 12, "redundant": 2},
        "model": {"hidden": [10], "epsilon": 3}, "train": {"epochs": 1, "batch_size": 16, "progress": False}}
VICTIM = b"only the victim may write this\n"


def tiny_checkpoint(epoch=0):
    cfg = config_from_dict(TINY)
    state = new_state(cfg, 12, 2)
    state.epoch = epoch
    state.history = [{"epoch": e + 1} for e in range(epoch)]
    return state_to_checkpoint(state, cfg)


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


# ---------------------------------------------------------------- symlinks

def test_checkpoint_is_not_written_through_a_symlink_at_the_old_temporary_name(tmp_path, victim):
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / f".checkpoint.h5.tmp-{os.getpid()}")  # the name today's code would use
    os.symlink(victim, out / "checkpoint.h5")
    ckpt.save_checkpoint(out / "checkpoint.h5", tiny_checkpoint())
    assert victim.read_bytes() == VICTIM
    assert not (out / "checkpoint.h5").is_symlink() and ckpt.load_checkpoint(out / "checkpoint.h5").epoch == 0


def test_config_and_metrics_are_not_written_through_symlinks(tmp_path, victim):
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / "config.yaml")
    dump_config(config_from_dict(TINY), out / "config.yaml")
    assert victim.read_bytes() == VICTIM and not (out / "config.yaml").is_symlink()
    os.symlink(victim, out / "metrics.jsonl")
    with pytest.raises(OutputError, match="is a symbolic link"):
        append_metrics(out / "metrics.jsonl", {"epoch": 1})
    assert victim.read_bytes() == VICTIM
    write_metrics(out / "metrics.jsonl", [{"epoch": 1}])  # replaces the link itself
    append_metrics(out / "metrics.jsonl", {"epoch": 2})
    assert victim.read_bytes() == VICTIM and not (out / "metrics.jsonl").is_symlink()
    assert read_metrics(out / "metrics.jsonl") == [{"epoch": 1}, {"epoch": 2}]


def test_temporaries_are_private_unpredictable_and_exclusive(tmp_path, monkeypatch):
    seen = []
    real_open = os.open

    def spy(path, flags, mode=0o777, **kw):
        seen.append((str(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(fileio.os, "open", spy)
    for _ in range(2):
        with fileio.replacing(tmp_path / "a.txt") as (tmp, fd):
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
            os.write(fd, b"x")
    monkeypatch.undo()
    creates = [(p, f, m) for p, f, m in seen if f & os.O_CREAT]
    assert len(creates) == 2 and creates[0][0] != creates[1][0]
    for path, flags, mode in creates:
        assert os.path.dirname(path) == str(tmp_path) and mode == 0o600
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
        assert len(os.path.basename(path).rsplit("-", 1)[1]) == 16  # 64 random bits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == fileio.FILE_MODE & ~fileio._umask()


# ---------------------------------------------------------------- output folders

def _owned_by_someone_else(path, monkeypatch):
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)
    else:
        monkeypatch.setattr(fileio, "_my_uid", lambda: os.geteuid() + 1)


def test_folder_of_another_user_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "theirs"
    out.mkdir(mode=0o755)
    _owned_by_someone_else(out, monkeypatch)
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", "data.name=synthetic",
                            "--out", str(out)])
    assert "belongs to another user" in err
    assert list(out.iterdir()) == []


def test_a_folder_swapped_for_a_symlink_during_the_check_is_refused(tmp_path, monkeypatch):
    """Another user swapping their folder and their symlink (to a folder of ours) at the name, as fast as
    renameat2(RENAME_EXCHANGE) goes: the check saw the folder (lstat: no link), then followed the link
    (stat: our folder, accepted), and --overwrite deleted the run files in our folder. Here the swap
    happens exactly between the check's first look and whatever it looks at next."""
    ours = tmp_path / "ours"
    ours.mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "y").symlink_to(ours)
    theirs = [tmp_path / "x"]
    if os.geteuid() == 0:
        os.chown(tmp_path / "x", 54321, -1)   # a uid with no account
        os.lchown(tmp_path / "y", 54321, -1)
    else:
        os.chmod(tmp_path / "x", 0o777)       # refused for its mode instead of its owner
    real_lstat = os.lstat

    def lstat_then_swap(path, *args, **kwargs):
        st = real_lstat(path, *args, **kwargs)
        if os.fspath(path) == str(theirs[0]):
            os.rename(tmp_path / "x", tmp_path / "z")
            os.rename(tmp_path / "y", tmp_path / "x")
            os.rename(tmp_path / "z", tmp_path / "y")
            theirs.clear()  # once
        return st

    monkeypatch.setattr(fileio.os, "lstat", lstat_then_swap)
    with pytest.raises(OutputError, match="belongs to another user" if os.geteuid() == 0 else "writable by other"):
        fileio.check_folder(tmp_path / "x")


@pytest.mark.parametrize("mode,ok", [(0o777, False), (0o775, False), (0o757, False), (0o1777, True), (0o755, True)])
def test_folder_writable_by_others_needs_the_sticky_bit(tmp_path, mode, ok):
    out = tmp_path / "shared"
    out.mkdir()
    os.chmod(out, mode)
    if ok:
        fileio.write_text(out / "f.txt", "hi")
        assert (out / "f.txt").read_text() == "hi"
    else:
        with pytest.raises(OutputError, match="writable by other users .* without the sticky bit"):
            fileio.write_text(out / "f.txt", "hi")
        assert list(out.iterdir()) == []


def test_created_folders_are_not_writable_by_others(tmp_path):
    old = os.umask(0o002)  # a group-writable umask must not make our own folder unsafe
    try:
        fileio.make_folder(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for part in ("a", "a/b", "a/b/c"):
        assert stat.S_IMODE((tmp_path / part).stat().st_mode) == 0o755


def test_out_under_a_missing_folder_or_naming_a_file(tmp_path, capsys):
    data = tiny_checkpoint()
    ckpt.save_checkpoint(tmp_path / "c.h5", data)
    assert main(["prune", str(tmp_path / "c.h5"), "--fraction", "0.2", "--out", str(tmp_path / "new" / "dir" / "p.h5")]) == 0
    assert ckpt.load_checkpoint(tmp_path / "new" / "dir" / "p.h5").layers[0].n_out == 8
    assert main(["features", str(tmp_path / "c.h5"), "--out", str(tmp_path / "more" / "f.csv")]) == 0
    assert (tmp_path / "more" / "f.csv").read_text().startswith("rank,feature,strength,connections\n1,")
    capsys.readouterr()
    (tmp_path / "file").write_text("x")
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", "data.name=synthetic",
                            "--out", str(tmp_path / "file")])
    assert err.endswith(f"'{tmp_path / 'file'}' is a file, not a folder")
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", "--set", "data.name=synthetic",
                            "--out", str(tmp_path / "file" / "run")])
    assert err.endswith(f"'{tmp_path / 'file'}' is a file, not a folder")
    err = error_of(capsys, ["prune", str(tmp_path / "c.h5"), "--fraction", "0.2", "--out", str(tmp_path / "file" / "p.h5")])
    assert "is a file, not a folder" in err
    err = error_of(capsys, ["prune", str(tmp_path / "c.h5"), "--fraction", "0.2", "--out", str(tmp_path / "new")])
    assert err.endswith(f"checkpoint '{tmp_path / 'new'}' is a folder; give a file name")


# ---------------------------------------------------------------- full disk, memory

def test_full_disk_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch, capsys):
    ckpt.save_checkpoint(tmp_path / "c.h5", tiny_checkpoint())
    before = (tmp_path / "c.h5").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot write checkpoint .*: no space left on device; "
                                          r"the previous file is unchanged$"):
        ckpt.save_checkpoint(tmp_path / "c.h5", tiny_checkpoint(epoch=1))
    err = error_of(capsys, ["prune", str(tmp_path / "c.h5"), "--fraction", "0.2", "--out", str(tmp_path / "c2.h5")])
    assert "no space left on device" in err
    monkeypatch.undo()
    assert (tmp_path / "c.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


def test_a_real_failed_write_is_one_line_and_keeps_the_old_file(tmp_path):
    """The write really fails inside HDF5 (file size limit, EFBIG): exit 2, one line, old file whole."""
    ckpt.save_checkpoint(tmp_path / "c.h5", tiny_checkpoint())
    ckpt.save_checkpoint(tmp_path / "p.h5", tiny_checkpoint())
    before = (tmp_path / "p.h5").read_bytes()
    size = len(before)
    assert ckpt._file_size_bound(tiny_checkpoint()) >= size  # the space reserved before HDF5 writes

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 3, size // 3))

    proc = subprocess.run([sys.executable, "-m", "sparsenet", "prune", str(tmp_path / "c.h5"), "--fraction", "0.2",
                           "--out", str(tmp_path / "p.h5")], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sparsenet: error: cannot write checkpoint '{tmp_path / 'p.h5'}': ")
    assert lines[0].endswith("the previous file is unchanged")
    assert (tmp_path / "p.h5").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "p.h5"]


def test_memory_error_is_one_line(tmp_path, monkeypatch, capsys):
    ckpt.save_checkpoint(tmp_path / "c.h5", tiny_checkpoint())

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.28 TiB for an array with shape (1000000000000,)")

    monkeypatch.setattr("sparsenet.train.model_from_checkpoint", no_memory)
    err = error_of(capsys, ["info", str(tmp_path / "c.h5")])
    assert err.startswith("sparsenet: error: out of memory (Unable to allocate 7.28 TiB")


def test_evaluate_prints_strict_json(tmp_path, monkeypatch, capsys):
    cfg = config_from_dict(TINY)
    data = tiny_checkpoint()
    ckpt.save_checkpoint(tmp_path / "c.h5", data)
    monkeypatch.setattr("sparsenet.model.SparseMLP.evaluate", lambda self, x, y, batch, max_bytes=None: (float("nan"), 0.5))
    assert main(["evaluate", str(tmp_path / "c.h5")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert result["test_loss"] is None and result["test_accuracy"] == 0.5
    assert "test_loss is nan, which JSON cannot hold; printed as null" in captured.err


# ---------------------------------------------------------------- stale temporaries

def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_are_removed_at_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead, host = _dead_pid(), fileio._HOST
    stale = [f".checkpoint.h5.tmp-{dead}-{host}-0123456789abcdef", f".checkpoint.h5.tmp-{dead}",
             f".metrics.jsonl.tmp-{dead}", f".config.yaml.tmp-{dead}-{host}-fedcba9876543210"]
    kept = [f".checkpoint.h5.tmp-{os.getpid()}-{host}-0123456789abcdef",  # a live process: still writing
            f".checkpoint.h5.tmp-{dead}-otherhost-0123456789abcdef",  # another node on a shared filesystem
            f".notes.txt.tmp-{dead}", "notes.txt"]
    for name in stale + kept:
        (out / name).write_bytes(b"x" * 100)
    from sparsenet.train import prepare_run_folder

    assert prepare_run_folder(out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(kept)


def test_a_directory_given_as_checkpoint_says_so(tmp_path, capsys):
    err = error_of(capsys, ["info", str(tmp_path)])
    assert err == (f"sparsenet: error: checkpoint {tmp_path} is a directory; give the checkpoint file, "
                   f"e.g. {tmp_path / 'checkpoint.h5'}")


def test_plot_replaces_a_symlink_and_creates_its_folder(tmp_path, victim, capsys):
    pytest.importorskip("matplotlib")
    metrics = tmp_path / "m.jsonl"
    write_metrics(metrics, [{"epoch": e, "test_accuracy": 0.5, "test_loss": 1.0, "train_loss": 1.1} for e in (1, 2)])
    os.symlink(victim, tmp_path / "curve.png")
    assert main(["plot", str(metrics), "--out", str(tmp_path / "curve.png")]) == 0
    assert victim.read_bytes() == VICTIM and (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    assert main(["plot", str(metrics), "--out", str(tmp_path / "new" / "c.pdf")]) == 0
    assert (tmp_path / "new" / "c.pdf").read_bytes().startswith(b"%PDF")
    capsys.readouterr()
    assert "matplotlib writes" in error_of(capsys, ["plot", str(metrics), "--out", str(tmp_path / "c.xyz")])


def test_command_line_values_are_cut_in_messages(tmp_path, capsys):
    ckpt.save_checkpoint(tmp_path / "c.h5", tiny_checkpoint())
    long = "9" * 10_000
    for argv in (["prune", str(tmp_path / "c.h5"), "--percentile", long, "--out", str(tmp_path / "p.h5")],
                 ["features", str(tmp_path / "c.h5"), "--top", "x" * 10_000],
                 ["features", str(tmp_path / "c.h5"), "--image", "x" * 10_000]):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage error
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and len(err) < 1000 and "..." in err, err[:300]


def test_a_kill_during_a_checkpoint_write_leaves_the_old_one_and_the_next_run_removes_the_temporary(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    ckpt.save_checkpoint(out / "checkpoint.h5", tiny_checkpoint())
    before = (out / "checkpoint.h5").read_bytes()
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_outputs import tiny_checkpoint
from sparsenet import checkpoint as ckpt
def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)
ckpt._write_layers = die  # killed half-way: attributes written, layers not
ckpt.save_checkpoint({str(out / 'checkpoint.h5')!r}, tiny_checkpoint(epoch=1))
"""])
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in out.iterdir() if p.name != "checkpoint.h5"]
    assert len(left) == 1 and left[0].startswith(".checkpoint.h5.tmp-")
    assert (out / "checkpoint.h5").read_bytes() == before
    from sparsenet.train import prepare_run_folder

    prepare_run_folder(out)
    assert [p.name for p in out.iterdir()] == ["checkpoint.h5"]
    assert ckpt.load_checkpoint(out / "checkpoint.h5").epoch == 0


def test_another_users_file_in_a_sticky_folder_says_why_it_cannot_be_replaced(tmp_path, monkeypatch):
    """Non-root, a rename over another user's file in /tmp fails with EPERM (the sticky bit); the error said
    only 'Operation not permitted'. Root is not stopped by the sticky bit, so the rename's refusal is simulated."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    target = tmp_path / "model.h5"
    target.write_bytes(VICTIM)
    os.chown(target, 54321, -1)  # a uid with no account
    os.chmod(tmp_path, 0o1777)

    def sticky_refusal(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fileio.os, "replace", sticky_refusal)
    with pytest.raises(OutputError) as exc:
        fileio.write_bytes(target, b"new")
    assert str(exc.value) == (f"cannot write output file '{target}': Operation not permitted ('model.h5' belongs to "
                              f"another user (uid 54321) and the folder's sticky bit lets only them replace it: give "
                              f"another name); the previous file is unchanged")
    assert target.read_bytes() == VICTIM and sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]
    os.chmod(tmp_path, 0o755)  # a folder of ours: a refusal there is not the sticky bit's, and is not said to be
    with pytest.raises(OutputError, match=r"Operation not permitted; the previous file is unchanged$"):
        fileio.write_bytes(target, b"new")
