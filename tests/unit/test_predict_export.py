"""sparsenet predict / export / --version, and the checkpoint's preprocessing group."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import sparsenet
from sparsenet.cli import main
from sparsenet.errors import CheckpointError
from tests.unit.cli_errors import error_of

ROOT = Path(__file__).resolve().parents[2]
NAMES = np.array(["cat", "dog", "eel"])


def _docs_block(marker: str) -> str:
    """The python code block of docs/python-api.md that starts with `# <marker>`."""
    text = (ROOT / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if b.startswith(f"# {marker}")]
    assert len(found) == 1, f"docs/python-api.md has {len(found)} blocks marked {marker}"
    return found[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch run on raw (unstandardised) features with string labels."""
    d = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 9)) * 4 + 10
    x[:, :3] += 3 * y[:, None]  # three informative features
    np.savez(d / "data.npz", x_train=x[:200], y_train=NAMES[y[:200]], x_test=x[200:], y_test=NAMES[y[200:]])
    np.savez(d / "new.npz", x=x[200:], y=NAMES[y[200:]])
    (d / "cfg.yaml").write_text(f"data: {{name: npz, path: {d / 'data.npz'}}}\nmodel: {{hidden: [32, 16], epsilon: 5}}\n"
                                "train: {epochs: 3, batch_size: 32, progress: false}\n")
    assert main(["train", str(d / "cfg.yaml"), "--out", str(d / "run")]) == 0
    history = [json.loads(line) for line in (d / "run" / "metrics.jsonl").read_text().splitlines()]
    return d, d / "run" / "checkpoint.h5", x, y, history[-1]


def test_checkpoint_keeps_preprocessing(trained):
    d, ckpt, x, y, last = trained
    with h5py.File(ckpt) as f:
        g = f["preprocessing"]
        mean, std = g["mean"][()], g["std"][()]
        assert json.loads(g.attrs["classes"]) == ["cat", "dog", "eel"]
    np.testing.assert_allclose(mean, x[:200].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, x[:200].std(axis=0), rtol=1e-4)
    # `sparsenet prune` keeps it
    assert main(["prune", str(ckpt), "--percentile", "10", "--out", str(d / "pruned.h5")]) == 0
    pruned = sparsenet.load(d / "pruned.h5")
    np.testing.assert_array_equal(pruned.preprocessing.mean, mean)
    np.testing.assert_array_equal(pruned.classes_, NAMES)


def test_predict_scores_raw_rows_as_the_test_set_was_scored(trained, capsys):
    d, ckpt, x, y, last = trained
    capsys.readouterr()
    assert main(["predict", str(ckpt), "--data", str(d / "new.npz"), "--out", str(d / "preds.csv")]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(open(d / "preds.csv")))
    assert len(rows) == 100 and set(rows[0]) == {"prediction"}
    accuracy = np.mean([r["prediction"] == NAMES[t] for r, t in zip(rows, y[200:])])
    assert accuracy == summary["accuracy"] == last["test_accuracy"]
    assert summary["rows"] == 100
    # --proba to standard output: one column per class, rows sum to 1, argmax = prediction
    assert main(["predict", str(ckpt), "--data", str(d / "new.npz"), "--proba"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "prediction,p_cat,p_dog,p_eel" and len(lines) == 101
    p = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert [line.split(",")[0] for line in lines[1:]] == [r["prediction"] for r in rows]
    assert [NAMES[i] for i in p.argmax(axis=1)] == [r["prediction"] for r in rows]


def test_predict_reads_csv_with_and_without_labels(trained, capsys):
    d, ckpt, x, y, last = trained
    with open(d / "new.csv", "w") as fh:
        fh.write(",".join(f"f{i}" for i in range(9)) + ",label\n")
        for row, t in zip(x[200:], y[200:]):
            fh.write(",".join(repr(float(v)) for v in row) + f",{NAMES[t]}\n")
    np.savetxt(d / "plain.csv", x[200:], delimiter=",")
    capsys.readouterr()
    assert main(["predict", str(ckpt), "--data", str(d / "new.csv"), "--out", str(d / "a.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == last["test_accuracy"]
    assert main(["predict", str(ckpt), "--data", str(d / "plain.csv"), "--out", str(d / "b.csv")]) == 0
    assert "accuracy" not in json.loads(capsys.readouterr().out)
    assert (d / "a.csv").read_text() == (d / "b.csv").read_text()


def test_predict_refuses_bad_files_in_one_line(trained, capsys):
    d, ckpt, x, y, last = trained
    np.savez(d / "narrow.npz", x=x[:5, :4])
    np.savez(d / "strange.npz", x=x[:3], y=np.array(["cat", "dog", "yak"]))
    capsys.readouterr()
    for data, message in (("narrow.npz", "X has 4 features per sample, but the model takes 9"),
                          ("strange.npz", "label outside the model's classes: 'yak' at sample 2"),
                          ("missing.npz", "not found")):
        assert main(["predict", str(ckpt), "--data", str(d / data)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_export_npz_runs_with_the_documented_scipy_reader(trained, capsys):
    d, ckpt, x, y, last = trained
    assert main(["export", str(ckpt), "--format", "npz", "--out", str(d / "m.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(d / "m.npz")
    scope: dict = {}
    exec(_docs_block("export-npz-reader"), scope)
    model = sparsenet.load(ckpt)
    np.testing.assert_allclose(scope["npz_forward"](d / "m.npz", x), model.logits(x), rtol=1e-4, atol=1e-4)
    with np.load(d / "m.npz") as f:  # no pickle needed
        assert list(f["classes"]) == list(NAMES) and str(f["output"]) == "softmax"


def test_export_refuses_to_overwrite_its_checkpoint(trained, capsys, tmp_path):
    d, ckpt, x, y, last = trained
    named_npz = tmp_path / "model.npz"  # a checkpoint may carry any name
    named_npz.write_bytes(ckpt.read_bytes())
    assert main(["export", str(named_npz), "--format", "npz"]) == 2
    assert "would overwrite the checkpoint" in capsys.readouterr().err
    assert named_npz.read_bytes() == ckpt.read_bytes()


def test_export_torch_runs_with_the_documented_module(trained, capsys):
    d, ckpt, x, y, last = trained
    torch = pytest.importorskip("torch")
    assert main(["export", str(ckpt), "--format", "torch", "--out", str(d / "m.pt")]) == 0
    scope: dict = {}
    exec(_docs_block("export-torch-module"), scope)
    saved = torch.load(d / "m.pt", weights_only=True)
    assert saved["classes"] == list(NAMES) and saved["output"] == "softmax"
    assert saved["state_dict"]["layers.0.weight"].layout == torch.sparse_csr
    logits = scope["SparseMLP"](saved)(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(logits, sparsenet.load(ckpt).logits(x), rtol=1e-4, atol=1e-4)


def test_bad_preprocessing_in_a_checkpoint_is_refused(trained, tmp_path):
    d, ckpt, x, y, last = trained
    for name, change in (("mean", lambda g: g.__setitem__("mean", np.zeros(8, np.float32))),
                         ("std", lambda g: g.__setitem__("std", np.zeros(9, np.float32))),
                         ("classes", lambda g: g.attrs.__setitem__("classes", json.dumps(["a", "b"]))),
                         ("classes", lambda g: g.attrs.__setitem__("classes", json.dumps(["a", "a", "b"])))):
        bad = tmp_path / f"bad-{name}.h5"
        bad.write_bytes(ckpt.read_bytes())
        with h5py.File(bad, "r+") as f:
            g = f["preprocessing"]
            if name in g:
                del g[name]
            change(g)
        with pytest.raises(CheckpointError, match="preprocessing"):
            sparsenet.load(bad)


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"sparsenet {sparsenet.__version__}"


def test_predict_quotes_labels_that_hold_commas(tmp_path, capsys):
    import scipy.sparse as sp

    w = sp.csr_array((np.array([1.0, -1.0], dtype=np.float32), np.array([0, 0]), np.array([0, 1, 2])), shape=(2, 1))
    sparsenet.Model.from_sparse([w], classes=["a,b", 'say "hi"']).save(tmp_path / "m.h5")
    np.savez(tmp_path / "x.npz", x=np.array([[2.0], [-3.0]]))
    assert main(["predict", str(tmp_path / "m.h5"), "--data", str(tmp_path / "x.npz"), "--proba"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["prediction", "p_a,b", 'p_say "hi"']
    assert [r[0] for r in rows[1:]] == ["a,b", 'say "hi"']  # logits (2, -2) then (-3, 3)
    assert float(rows[1][1]) == pytest.approx(1 / (1 + np.exp(-4)))


def _h5(path, build):
    with h5py.File(path, "w") as f:
        build(f)
    return path


@pytest.mark.parametrize("build,expected", [
    (lambda f: f.create_dataset("x", data=np.zeros((5, 9), dtype=[("a", "f4"), ("b", "i4")])), "'x' holds"),
    (lambda f: f.create_dataset("x", data=np.zeros((5, 9), dtype="c8")), "'x' holds complex64, expected numbers"),
    (lambda f: f.create_dataset("x", shape=(5,), dtype=h5py.vlen_dtype(np.float32)).__setitem__(
        slice(None), [np.zeros(k + 1, "f4") for k in range(5)]),
     "expected numbers"),
    (lambda f: f.create_dataset("x", shape=(10**6, 9 * 10**4), dtype=np.float32), "never written"),
    (lambda f: f.create_dataset("x", shape=(10**6, 9), dtype=np.float32, chunks=(100, 9)), "never written"),
    (lambda f: f.create_dataset("x", data=np.zeros((2, 3, 9), dtype=np.float32)),
     "'x' has shape (2, 3, 9); expected a 2-D array (samples, 9 features)"),
    (lambda f: f.create_dataset("x", data=np.zeros((4, 5), dtype=np.float32)),
     "'x' has shape (4, 5); expected a 2-D array (samples, 9 features)"),
    (lambda f: (f.create_dataset("x", data=np.zeros((4, 9))), f.create_dataset("y", data=np.zeros((4, 2, 2)))),
     "'y' has shape (4, 2, 2); expected one label per sample"),
    (lambda f: f.__setitem__("x", h5py.ExternalLink("elsewhere.h5", "/x")), "'/x' is an external link"),
    (lambda f: f.__setitem__("x", h5py.SoftLink("/nowhere")), "'/x' is a soft link"),
    (lambda f: f.create_group("x"), "'/x' is a group, expected a dataset"),
    (lambda f: f.create_dataset("labels", data=np.zeros(3)), "has arrays []; expected x (and optionally y) or x_test"),
])
def test_predict_refuses_hostile_hdf5_in_one_line(trained, capsys, build, expected):
    """Through the one safe HDF5 reader (h5safe): nothing declared is allocated before it is checked."""
    d, ckpt, x, y, last = trained
    path = _h5(d / "hostile.h5", build)
    err = error_of(capsys, ["predict", str(ckpt), "--data", str(path)])
    assert expected in err, err


def test_predict_refuses_hdf5_beyond_the_memory_available(trained, capsys, monkeypatch):
    import sparsenet.memory

    d, ckpt, x, y, last = trained
    path = _h5(d / "big.h5", lambda f: f.create_dataset("x", data=np.zeros((3 * 2**20 // 9, 9))))  # 24 MiB
    monkeypatch.setattr(sparsenet.memory, "available_memory", lambda *a, **k: (2**20, "test"))  # the model: ~10 kB
    err = error_of(capsys, ["predict", str(ckpt), "--data", str(path)])
    assert "its arrays x declare 0.02 GiB, more than the 0.00 GiB available (test)" in err


def test_predict_reads_a_good_hdf5_file(trained, capsys):
    d, ckpt, x, y, last = trained
    path = _h5(d / "good.h5", lambda f: (f.create_dataset("x_test", data=x[200:], chunks=(10, 9), compression="gzip"),
                                         f.create_dataset("y_test", data=NAMES[y[200:]].astype("S"))))
    assert main(["predict", str(ckpt), "--data", str(path), "--out", str(d / "h5.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == last["test_accuracy"]


def test_predict_checks_npz_headers_before_reading(trained, capsys):
    """An .npy header declaring far more than its archive member holds is refused before numpy allocates it."""
    import io
    import zipfile

    d, ckpt, x, y, last = trained
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 9)})
    with zipfile.ZipFile(d / "lying.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + bytes(72))
    err = error_of(capsys, ["predict", str(ckpt), "--data", str(d / "lying.npz")])
    assert "array 'x' is truncated or damaged (its header declares shape (10000000, 9) of float64, 720000000 bytes" in err
    import scipy.sparse as sp  # a scipy.sparse.save_npz file passes the same check and is scored

    sp.save_npz(d / "scipy.npz", sp.csr_array(x[200:]))
    assert main(["predict", str(ckpt), "--data", str(d / "scipy.npz"), "--out", str(d / "scipy.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 100


@pytest.mark.parametrize("command", [["config", "show"], ["predict", "CKPT", "--data", "NEW", "--proba"]])
def test_output_into_a_closed_pipe_ends_quietly(trained, command):
    """`sparsenet ... | head -n 1`, the reader gone: no traceback, exit 141 (128 + SIGPIPE) as cat's."""
    d, ckpt, x, y, last = trained
    command = [{"CKPT": str(ckpt), "NEW": str(d / "new.npz")}.get(a, a) for a in command]
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "sparsenet", *command], stdout=write, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, timeout=300)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 141
