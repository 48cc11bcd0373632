"""Command-line hygiene: --out refusal / --overwrite / numbered default folders, config show and merging,
logging levels and rank tags, progress bars only on a terminal, numba's private cache and compile notice."""

import io
import json
import logging
import os
import stat
import subprocess
import sys

import numba
import pytest

from sparsenet import logs
from sparsenet.cli import main
from sparsenet.metrics import ProgressBar, log
from tests.unit.cli_errors import error_of

SMALL = ["--set", "data.name=synthetic", "--set", "data.samples=200", "--set", "data.features=24",
         "--set", "model.hidden=[16]", "--set", "model.epsilon=4", "--set", "train.epochs=1",
         "--set", "train.batch_size=32", "--set", "train.progress=false"]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_folder_another_run_is_writing_is_refused_and_left_as_it_is(tmp_path, capsys):
    from sparsenet.fileio import LOCK_NAME, hold_lock

    out = tmp_path / "run"
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(out)]) == 0
    assert not (out / LOCK_NAME).exists()  # the run let it go
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with hold_lock(out):  # another run, as far as the next ones can tell (flock is per open file)
        for flag in ("--resume", "--overwrite"):  # --overwrite would have removed the other run's files
            err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(out), flag])
            assert err.startswith(f"sparsenet: error: output folder '{out}' is in use by another sparsenet run "
                                  f"(pid {os.getpid()} on "), err
            assert err.endswith("wait for it to end, or give another --out")
            assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK_NAME} == before
    # a killed run's lock file (nobody holds it) is no run: neither "not empty" nor "in use"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK_NAME).write_text("pid 1 on elsewhere since long ago")
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(fresh)]) == 0
    assert sorted(p.name for p in fresh.iterdir()) == sorted(before)


def test_the_run_lock_says_who_holds_it_and_goes_with_its_holder(tmp_path):
    from sparsenet.errors import OutputError
    from sparsenet.fileio import LOCK_NAME, hold_lock

    with hold_lock(tmp_path):
        with pytest.raises(OutputError, match="in use by another sparsenet run"):
            with hold_lock(tmp_path):
                pass
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
    assert not (tmp_path / LOCK_NAME).exists()
    with hold_lock(tmp_path):  # free again
        assert (tmp_path / LOCK_NAME).exists()


def test_non_empty_out_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(out)]) == 0
    first = (out / "metrics.jsonl").read_text()
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(out)])
    assert err == (f"sparsenet: error: output folder '{out}' is not empty (checkpoint.h5, checkpoint_best.h5, "
                   f"config.yaml, metrics.jsonl); give --resume to continue its run, --overwrite to replace it, "
                   f"or another --out")
    assert (out / "metrics.jsonl").read_text() == first       # untouched
    # --resume continues (2 epochs in all), --overwrite starts again from epoch 0
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--set", "train.epochs=2", "--out", str(out),
                 "--resume"]) == 0
    assert last_json(capsys)["epoch"] == 2
    (out / "notes.txt").write_text("mine")
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--set", "seed=4", "--out", str(out),
                 "--overwrite"]) == 0
    assert last_json(capsys)["epoch"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and (out / "notes.txt").read_text() == "mine"
    # an empty existing folder is fine without either flag
    (tmp_path / "empty").mkdir()
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(tmp_path / "empty")]) == 0


def test_default_out_is_a_fresh_numbered_folder(tmp_path, monkeypatch, capsys):
    configs = [os.path.abspath(f"configs/{name}.yaml") for name in ("fashion_mnist", "fashion_mnist_pruning")]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "fashion_mnist_pruning-1").mkdir(parents=True)   # taken, even though empty
    outs = []
    for _ in range(2):
        assert main(["train", *configs, *SMALL]) == 0
        outs.append(last_json(capsys)["out"])
    assert outs == ["runs/fashion_mnist_pruning-2", "runs/fashion_mnist_pruning-3"]  # named after the last config
    assert all((tmp_path / o / "checkpoint.h5").exists() for o in outs)
    from sparsenet.checkpoint import load_checkpoint
    from sparsenet.config import config_from_yaml, load_config

    stored = config_from_yaml(load_checkpoint(tmp_path / outs[0] / "checkpoint.h5").config_yaml)
    assert stored == load_config(configs, SMALL[1::2])          # the checkpoint keeps the merged config
    assert stored.pruning.method == "importance" and stored.data.name == "synthetic"
    assert sorted(os.listdir(tmp_path / "runs" / "fashion_mnist_pruning-1")) == []
    assert "--resume needs --out FOLDER" in error_of(capsys, ["train", configs[0], "--resume"])


def test_fresh_folder_numbers_never_collide(tmp_path):
    from sparsenet.fileio import fresh_folder

    (tmp_path / "x-2").mkdir()
    got = [fresh_folder(tmp_path, "x").name for _ in range(3)]
    assert got == ["x-1", "x-3", "x-4"]


def test_config_show_lists_every_key_with_value_default_and_meaning(capsys):
    from sparsenet.config import Config, describe

    assert main(["config", "show", "configs/fashion_mnist.yaml", "configs/fashion_mnist_wassp.yaml",
                 "--set", "train.lr=0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = [k for k, *_ in describe(Config())]
    assert len(lines) == len(keys) + 2 and len(keys) == len(set(keys)) > 60
    row = {line.split()[0]: line for line in lines[1:-1]}
    assert set(row) == set(keys)
    assert row["train.lr"].split()[1:4] == ["*0.5", "0.01", "learning"]
    assert row["parallel.algorithm"].split()[1:3] == ["*wassp", "wasap"]
    assert row["model.hidden"].split()[1:3] == ["[1000,", "1000,"]
    assert main(["config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert all(k["meaning"] for k in shown["keys"]), [k["key"] for k in shown["keys"] if not k["meaning"]]
    assert shown["config"]["train"]["lr"] == 0.01


def test_quiet_and_verbose_levels(tmp_path, capsys):
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(tmp_path / "a"), "-q"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0])["epoch"] == 1          # only the result line
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "[rank 0] epoch 1/1 train_loss" in out and "kernel cache:" not in out
    assert main(["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(tmp_path / "c"), "-v"]) == 0
    assert "kernel cache: " in capsys.readouterr().out
    assert not logging.getLogger("sparsenet").isEnabledFor(logging.INFO)   # main() left the logger as it was


def test_log_lines_carry_the_rank(monkeypatch):
    stream = io.StringIO()
    previous = logs.configure(logging.INFO, stream)
    try:
        monkeypatch.setenv("PMI_SIZE", "4")  # what an MPI launcher sets (launch.launcher_rank)
        monkeypatch.setenv("PMI_RANK", "3")
        log("from the environment")
        log("told", rank=0)
    finally:
        logs.restore(previous)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("[rank 3] from the environment") and second.endswith("[rank 0] told")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream_cls,drawn", [(io.StringIO, False), (_Terminal, True)])
def test_progress_bar_only_on_a_terminal(monkeypatch, stream_cls, drawn):
    stream = stream_cls()
    monkeypatch.setattr(sys, "stderr", stream)
    previous = logs.configure(logging.INFO, io.StringIO())
    try:
        bar = ProgressBar(3, "epoch 1/1")
        for i in range(1, 4):
            bar.update(i, "loss 0.5")
        bar.close()
    finally:
        logs.restore(previous)
    text = stream.getvalue()
    assert ("\r" in text and "3/3" in text and text.endswith("\n")) if drawn else text == ""


def test_progress_bar_follows_quiet(monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    previous = logs.configure(logging.WARNING, io.StringIO())
    try:
        bar = ProgressBar(2, "epoch")
        bar.update(2)
        bar.close()
    finally:
        logs.restore(previous)
    assert stream.getvalue() == ""


def test_numba_cache_is_private_to_the_user(tmp_path, monkeypatch):
    from sparsenet import jitcache

    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    used = jitcache.use_private_cache()
    assert used == str(tmp_path / "xdg" / "sparsenet" / "numba") == numba.config.CACHE_DIR
    assert stat.S_IMODE(os.stat(used).st_mode) == 0o700
    # a folder others may write to is not used
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    os.chmod(used, 0o777)
    assert jitcache.use_private_cache() is None and numba.config.CACHE_DIR == ""
    # NUMBA_CACHE_DIR (numba.config.CACHE_DIR) chosen by the user wins
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "mine"))
    assert jitcache.use_private_cache() == str(tmp_path / "mine")


def test_compile_notice_only_while_kernels_compile(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    outs = []
    for name in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-m", "sparsenet", "train", "configs/fashion_mnist.yaml", *SMALL,
                               "--out", str(tmp_path / name)], capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    notice = "compiling the numba kernels on first use"
    assert notice in outs[0] and str(tmp_path / "xdg" / "sparsenet" / "numba") in outs[0]
    assert notice not in outs[1]
    assert any((tmp_path / "xdg" / "sparsenet" / "numba").rglob("*.nbi"))


NOBODYS = 54321  # a uid with no account, so owning nothing else


@pytest.mark.parametrize("plant", ["fifo", "symlink", "folder", "hard link", "another user's"])
def test_a_planted_lock_file_is_refused_and_nothing_is_written_through_it(tmp_path, capsys, plant):
    from sparsenet import fileio

    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.write_text("precious")
    lock = out / fileio.LOCK_NAME
    if plant == "fifo":
        os.mkfifo(lock)            # was: the open succeeded, then ftruncate raised a bare OSError (traceback)
    elif plant == "symlink":
        lock.symlink_to(victim)
    elif plant == "folder":
        lock.mkdir()
    elif plant == "hard link":
        os.link(victim, lock)      # was: truncated and overwritten with the pid line
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another uid")
        lock.write_text("pid 1 on trusted since forever")  # was: the run wrote into it (or named it the holder)
        os.chown(lock, NOBODYS, -1)
    kind = {"fifo": "a FIFO", "symlink": "a symbolic link", "folder": "a folder",
            "hard link": "a file with 1 other name(s) (a hard link)",
            "another user's": f"a file of another user (uid {NOBODYS})"}[plant]
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(out)])
    assert err == (f"sparsenet: error: the lock file '{lock}' is {kind}, not a file of sparsenet's; move it away "
                   f"or give another --out")
    assert victim.read_text() == "precious" and sorted(p.name for p in out.iterdir()) == [fileio.LOCK_NAME]
    if plant == "another user's":
        assert lock.read_text() == "pid 1 on trusted since forever"


def test_a_run_that_ended_while_this_one_started_is_not_replaced(tmp_path, monkeypatch, capsys):
    """Emptiness is checked again once the folder is held: a run that held it and ended between this
    run's first check and its lock (a second sbatch, slower to start) was silently trained over."""
    import sparsenet.memory
    from sparsenet.config import load_config
    from sparsenet.train import run

    out = tmp_path / "run"

    def other_run_meanwhile(*args, **kwargs):  # runs after the CLI's first check, before the lock
        run(load_config(["configs/fashion_mnist.yaml"], [*SMALL[1::2], "seed=7"]), out)

    monkeypatch.setattr(sparsenet.memory, "check_memory", other_run_meanwhile)
    err = error_of(capsys, ["train", "configs/fashion_mnist.yaml", *SMALL, "--out", str(out)])
    assert err == (f"sparsenet: error: output folder '{out}' is not empty (checkpoint.h5, checkpoint_best.h5, "
                   f"config.yaml, metrics.jsonl); give --resume to continue its run, --overwrite to replace it, "
                   f"or another --out")
    assert "seed: 7" in (out / "config.yaml").read_text()  # the other run's files, as it left them
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and not (out / ".sparsenet.lock").exists()
