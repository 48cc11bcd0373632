"""A checkpoint trained on pixel data (IDX/CIFAR, read as value/255) scores raw pixels 0..255 as its test set."""

import json
import struct

import numpy as np
import pytest

import sparsenet
from sparsenet.api import forward_logits
from sparsenet.cli import main
from sparsenet.config import load_config
from sparsenet.data import load_dataset


def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def pixel_set(tmp_path, monkeypatch):
    """An MNIST-format folder: 4x4 images whose class (0..2) brightens one row of pixels."""
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("SPARSENET_NO_DOWNLOAD", "1")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 360).astype(np.uint8)
    x = rng.integers(0, 120, (360, 4, 4)).astype(np.uint8)
    x[np.arange(360), y] += 120
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, a in {"train-images-idx3-ubyte": x[:240], "train-labels-idx1-ubyte": y[:240],
                    "t10k-images-idx3-ubyte": x[240:], "t10k-labels-idx1-ubyte": y[240:]}.items():
        (folder / name).write_bytes(_idx(a))
    np.savez(tmp_path / "new.npz", x=x[240:].reshape(120, 16), y=y[240:])
    return tmp_path, folder


@pytest.mark.parametrize("standardize", [True, False])
def test_predict_takes_raw_pixels_as_the_test_set_was_read(pixel_set, capsys, standardize):
    d, folder = pixel_set
    cfg_file = d / "cfg.yaml"
    cfg_file.write_text(f"data: {{name: mnist, path: {folder}, standardize: {str(standardize).lower()}}}\n"
                        "model: {hidden: [24], epsilon: 4}\ntrain: {epochs: 2, batch_size: 16, progress: false}\n")
    assert main(["train", str(cfg_file), "--out", str(d / "run"), "-q"]) == 0
    last = json.loads((d / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    model = sparsenet.load(d / "run" / "checkpoint.h5")
    test = np.asarray(load_dataset(load_config([str(cfg_file)]).data, 0).x_test)  # pixels / 255, standardised
    reference = forward_logits(model.network, test, 64)
    raw = np.load(d / "new.npz")["x"]
    assert raw.max() > 200  # raw pixels, not [0, 1]
    if standardize:  # (x - 255 m) / (255 s) against (x / 255 - m) / s: float32 rounding apart
        np.testing.assert_allclose(model.logits(raw), reference, rtol=1e-4, atol=1e-4)
    else:            # x / 255 either way
        np.testing.assert_array_equal(model.logits(raw), reference)
    capsys.readouterr()
    assert main(["predict", str(d / "run" / "checkpoint.h5"), "--data", str(d / "new.npz"),
                 "--out", str(d / "preds.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == last["test_accuracy"] > 0.6


def _as_format(src, dst, version: int, data_name: str):
    """A copy of checkpoint `src` marked with format `version` and a config naming `data_name`."""
    import h5py

    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        f.attrs["format_version"] = version
        f.attrs["config"] = str(f.attrs["config"]).replace("name: mnist", f"name: {data_name}")
    return dst


def test_an_image_checkpoint_of_an_older_format_warns_that_its_statistics_are_for_pixels_over_255(
        pixel_set, capsys, recwarn):
    d, folder = pixel_set
    cfg_file = d / "cfg.yaml"
    cfg_file.write_text(f"data: {{name: mnist, path: {folder}}}\nmodel: {{hidden: [8], epsilon: 4}}\n"
                        "train: {epochs: 1, batch_size: 16, progress: false}\n")
    assert main(["train", str(cfg_file), "--out", str(d / "run"), "-q"]) == 0
    ckpt = d / "run" / "checkpoint.h5"
    sparsenet.load(ckpt)  # written now (format 3): nothing to say
    sparsenet.load(_as_format(ckpt, d / "v2csv.h5", 2, "csv"))  # not an image set
    assert not [w for w in recwarn if "pixels / 255" in str(w.message)]
    old = _as_format(ckpt, d / "v2.h5", 2, "fashion_mnist")
    with pytest.warns(UserWarning, match=r"checkpoint format 2 and names fashion_mnist: .* divide raw 0\.\.255 "
                                         r"pixels by 255 before predicting"):
        sparsenet.load(old)
    capsys.readouterr()
    assert main(["export", str(old), "--format", "npz", "--out", str(d / "m.npz")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sparsenet: warning: ") and "pixels / 255" in err[0], err
    # evaluate reads the image files as training did: the stored statistics match in either format's terms
    import h5py

    v2 = _as_format(ckpt, d / "v2mnist.h5", 2, "mnist")
    data = load_dataset(load_config([str(cfg_file)]).data, 0)
    with h5py.File(v2, "r+") as f:  # as format 2 stored them: the statistics of pixels / 255
        f["preprocessing/mean"][...], f["preprocessing/std"][...] = data.mean, data.std
    scores = []
    for path in (ckpt, v2):
        assert main(["evaluate", str(path)]) == 0, capsys.readouterr().err
        scores.append(json.loads(capsys.readouterr().out)["test_accuracy"])
    last = json.loads((d / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert scores == [last["test_accuracy"]] * 2
