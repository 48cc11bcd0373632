"""Fuzz (issue 15): mutated checkpoints, generated configs, data and IDX files through the CLI.

Every case must end in success or exit 2 with one line: never a traceback, a hang, or an allocation
beyond the memory plan (the cases run in two processes under RLIMIT_AS, see fuzz_run.py). Mutations
that put data outside the file (links, external storage, virtual datasets) or declare data never
written must be refused.
"""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from sparsenet import checkpoint as ckpt
from sparsenet.config import load_config
from sparsenet.train import new_state, state_to_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MB = 1024
CONFIG = str(ROOT / "configs" / "fashion_mnist.yaml")
TINY = ["data.name=synthetic", "data.samples=120", "data.features=12", "data.informative=3", "data.redundant=2",
        "data.classes=3", "model.hidden=[10]", "model.epsilon=3", "train.epochs=1", "train.batch_size=16",
        "train.eval_batch_size=16", "train.progress=false"]
MUST_REFUSE = "must refuse"

ATTR_VALUES = [-1, 0, 2**31, 2**31 - 1, 10**12, 2**62, 1.5, float("nan"), float("inf"), "", "x" * 300,
               b"\xff\xfe", np.arange(3), np.zeros((2, 2)), True, np.array([np.nan])]
JSON_TEXTS = ["[1]", "{}", "null", '"x"', "[" * 50_000 + "]" * 50_000, '[{"epoch": 1e999}]', "[[]]",
              '{"bit_generator": "PCG64", "state": {"state": -1, "inc": "x"}}', "not json", "[{}]" * 1]


def _sets(pairs):
    return [a for p in pairs for a in ("--set", p)]


def _base_checkpoint(folder: Path) -> Path:
    cfg = load_config(None, TINY)
    state = new_state(cfg, 12, 3)
    state.epoch = 1
    state.history = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.5, "test_accuracy": 0.5,
                      "train_seconds": 0.1, "evolution_seconds": 0.0, "eval_seconds": 0.0,
                      "nnz": state.model.nnz, "neurons": state.model.sizes, "parameters": state.model.n_parameters}]
    path = folder / "base.h5"
    ckpt.save_checkpoint(path, state_to_checkpoint(state, cfg))
    return path


def _datasets(f) -> list[str]:
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _groups(f) -> list[str]:
    names = ["/"]
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Group) else None)
    return sorted(names)


def _replace(f, name, **kw):
    del f[name]
    return f.create_dataset(name, **kw)


def _mutate_h5(f, rng, folder: Path, k: int) -> str:
    """One random structural mutation; returns its kind (MUST_REFUSE ones must end in exit 2)."""
    kind = rng.choice(["attr", "dataset", "inflate", "link", "delete", "json", "attr", "dataset"])
    names = _datasets(f)
    if kind == "attr":
        target = f[str(rng.choice(_groups(f)))] if rng.random() < 0.6 else f
        attrs = list(target.attrs) or ["n_in"]
        target.attrs[str(rng.choice(attrs))] = ATTR_VALUES[rng.integers(len(ATTR_VALUES))]
        return "attr"
    if kind == "inflate":
        layer = f"layers/{rng.integers(2)}"
        key = rng.choice(["n_in", "n_out"])
        f[layer].attrs[key] = int(rng.choice([0, -1, 2**31, 2**31 - 1, 2**30, 10**12, 2**40, 10**6]))
        if rng.random() < 0.3:
            f.attrs[str(rng.choice(["n_layers", "n_replicas", "epoch"]))] = int(rng.choice([10**9, 2**40, 3]))
        return "inflate"
    name = str(rng.choice(names))
    ds = f[name]
    n = ds.shape[0] if ds.shape else 1
    if kind == "dataset":
        dtype = ds.dtype if ds.dtype.kind in "iuf" else np.dtype(np.float32)
        choice = rng.integers(10)
        if choice == 0:
            _replace(f, name, data=np.zeros(n, dtype=rng.choice(["f8", "i8", "i1", "?", "c8"])))
        elif choice == 1:
            _replace(f, name, data=np.zeros(max(0, n + int(rng.choice([-1, 1, -n]))), dtype=dtype))
        elif choice == 2:
            _replace(f, name, data=np.zeros((n, 2), dtype=dtype))
        elif choice == 3:
            _replace(f, name, data="a string")
        elif choice == 4:
            _replace(f, name, shape=(int(rng.choice([10**9, 2**40 // 8, n])) * (1 if n else 1) + 1,), dtype=dtype)
            return MUST_REFUSE
        elif choice == 5 and n > 4:
            d = _replace(f, name, shape=(n,), dtype=dtype, chunks=(2,))
            d[:2] = 1
            return MUST_REFUSE
        elif choice == 6 and dtype.kind == "f":
            v = ds[()].copy() if ds.shape else np.zeros(1, dtype)
            v.flat[rng.integers(v.size)] = rng.choice([np.nan, np.inf, -np.inf]) if v.size else 0
            ds[...] = v
        elif choice == 7 and dtype.kind in "iu" and n:
            v = ds[()].copy()
            v[rng.integers(n)] = int(rng.choice([-1, 2**31 - 1, 11, 10**6]))
            ds[...] = v
        elif choice == 8 and ds.shape:
            v = ds[()]
            _replace(f, name, data=v, chunks=(max(1, n // 3),), compression="gzip")  # legitimate storage
        else:
            _replace(f, name, data=rng.standard_normal(n).astype(dtype) if dtype.kind == "f" else
                     rng.integers(-3, 40, n).astype(dtype))
        return "dataset"
    if kind == "link":
        data = ds[()]
        other = folder / f"other{k}.h5"
        how = rng.integers(5)
        if how == 0:
            del f[name]
            f[name] = h5py.SoftLink("/" + str(rng.choice(names)))
        elif how == 1:
            del f[name]
            f[name] = h5py.SoftLink("/nowhere")
        elif how == 2 and ds.shape:
            with h5py.File(other, "w") as o:
                o["d"] = data
            del f[name]
            f[name] = h5py.ExternalLink(str(other), "/d")
        elif how == 3 and ds.shape and data.nbytes:
            raw = folder / f"raw{k}.bin"
            raw.write_bytes(np.ascontiguousarray(data).tobytes())
            _replace(f, name, shape=data.shape, dtype=data.dtype, external=[(str(raw), 0, data.nbytes)])
        elif ds.shape and data.size:
            with h5py.File(other, "w") as o:
                o["d"] = data
            del f[name]
            layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
            layout[:] = h5py.VirtualSource(str(other), "d", shape=data.shape)
            f.create_virtual_dataset(name, layout)
        else:
            del f[name]
            f[name] = h5py.SoftLink("/nowhere")
        return MUST_REFUSE
    if kind == "delete":
        target = rng.choice([name, *[g for g in _groups(f) if g != "/"]])
        if rng.random() < 0.5:
            del f[str(target)]
        else:
            obj = f[str(target)]
            if list(obj.attrs):
                del obj.attrs[str(rng.choice(list(obj.attrs)))]
            elif list(f.attrs):
                del f.attrs[str(rng.choice(list(f.attrs)))]
        return "delete"
    text = JSON_TEXTS[rng.integers(len(JSON_TEXTS))]
    if rng.random() < 0.5:
        _replace(f, "history", data=text)
    else:
        f.attrs[str(rng.choice(["rng_state", "config"]))] = text
    return "json"


def checkpoint_cases(folder: Path, n: int, seed: int) -> list[dict]:
    base = _base_checkpoint(folder)
    rng = np.random.default_rng(seed)
    commands = [["info", "--json"], ["features", "--json", "--top", "3"], ["evaluate"],
                ["prune", "--fraction", "0.5", "--out"]]
    cases = [{"argv": ["info", "--json", str(base)], "warmup": True, "expect": "ok"},
             {"argv": ["evaluate", str(base)], "warmup": True, "expect": "ok"},
             {"argv": ["train", CONFIG, *_sets(TINY), "--out", str(folder / "warm")], "warmup": True, "expect": "ok"}]
    for k in range(n):
        path = folder / f"c{k}.h5"
        shutil.copy(base, path)
        how = rng.integers(10)
        if how == 0:
            data = bytearray(path.read_bytes())
            for pos in rng.integers(0, len(data), rng.integers(1, 30)):
                data[pos] ^= 1 << int(rng.integers(8))
            path.write_bytes(bytes(data))
            kind = "flip"
        elif how == 1:
            data = path.read_bytes()
            path.write_bytes(data[:int(rng.integers(0, len(data)))])
            kind = "truncate"
        else:
            with h5py.File(path, "a") as f:
                kind = _mutate_h5(f, rng, folder, k)
        if k % 25 == 0:  # resume a run from it
            run = folder / f"run{k}"
            run.mkdir()
            shutil.copy(path, run / "checkpoint.h5")
            argv = ["train", CONFIG, *_sets(TINY), "--set", "train.epochs=2", "--out", str(run), "--resume"]
        else:
            argv = list(commands[k % len(commands)])
            argv = argv + [str(folder / f"pruned{k}.h5"), str(path)] if argv[0] == "prune" else argv + [str(path)]
        cases.append({"argv": argv, "expect": "refuse" if kind == MUST_REFUSE else "any", "kind": kind})
    return cases


CONFIG_KEYS = ["seed", "threads", "memory_limit_gb", "data.name", "data.path", "data.test_fraction", "data.samples",
               "data.features", "data.classes", "data.max_train", "model.hidden", "model.epsilon", "model.activation",
               "model.alpha", "model.dropout", "train.epochs", "train.batch_size", "train.lr", "train.eval_batch_size",
               "evolution.zeta", "pruning.method", "pruning.percentile", "checkpoint.every", "parallel.algorithm",
               "parallel.chunk_bytes", "data", "model", "nonsense.key", "train.nonsense"]
CONFIG_VALUES = ["-1", "0", "1", "0.5", "1e309", ".nan", "-.inf", "[]", "{}", "null", "''", "'x'", "[1, [2]]",
                 "[[[[1]]]]", "1000000000000", "true", "[0]", "[3, -1]", "{a: 1}", "&a [1, *a]", "!!binary aGk=",
                 "2**31", "'1e3'", "[1000000000, 1000000000]", "~", "\"\\x00\""]


def config_cases(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        pairs = [f"{rng.choice(CONFIG_KEYS)}={rng.choice(CONFIG_VALUES)}" for _ in range(rng.integers(1, 4))]
        cases.append({"argv": ["plan", CONFIG, "--json", *_sets(["data.name=synthetic", *pairs])],
                      "expect": "plan", "kind": "config"})
    return cases


def _write_npy(path: Path, arrays: dict, fake_shape=None) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                      "shape": fake_shape if (fake_shape and name == "x") else a.shape}
            buf = __import__("io").BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            z.writestr(f"{name}.npy", buf.getvalue() + a.tobytes())


def data_cases(folder: Path, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        x = rng.standard_normal((40, 5)).astype(np.float32)
        y = rng.integers(0, 3, 40)
        m = rng.integers(14)
        if m == 0:
            x = x.astype(rng.choice(["f8", "i4", "?", "c8", "U3"]))
        elif m == 1:
            x[rng.integers(40), rng.integers(5)] = rng.choice([np.nan, np.inf])
        elif m == 2:
            x = x.reshape(-1) if rng.random() < 0.5 else x.reshape(40, 5, 1)
        elif m == 3:
            x = x[:int(rng.choice([0, 1, 2]))]
        elif m == 4:
            y = y.astype(np.float64) + rng.choice([0.5, np.nan, 0.0])
        elif m == 5:
            y = np.array([str(v) for v in y] + ["nan"])[:40]
        elif m == 6:
            y = y[:int(rng.integers(0, 40))]
        elif m == 7:
            y = np.zeros(40, dtype=np.int64) - int(rng.integers(0, 2))
        fmt = rng.choice(["h5", "npz", "csv"])
        path = folder / f"d{k}.{fmt}"
        kind = "data"
        if fmt == "h5":
            x, y = (np.char.encode(a) if a.dtype.kind == "U" else a for a in (x, y))  # h5py stores bytes
            with h5py.File(path, "w") as f:
                f["y"] = y
                if m == 8:
                    f.create_dataset("x", shape=(40, 10**6), dtype=np.float32)
                    kind = MUST_REFUSE
                elif m == 9:
                    f["x"] = h5py.SoftLink(rng.choice(["/y", "/nowhere"]))
                    kind = MUST_REFUSE
                elif m == 10:
                    f.create_group("x")
                    kind = MUST_REFUSE
                elif m == 11:
                    raw = folder / f"x{k}.bin"
                    raw.write_bytes(x.tobytes())
                    f.create_dataset("x", shape=x.shape, dtype=x.dtype, external=[(str(raw), 0, x.nbytes)])
                    kind = MUST_REFUSE
                else:
                    f["x"] = x
            name = "hdf5"
        elif fmt == "npz":
            if m == 8:
                _write_npy(path, {"x": x, "y": y}, fake_shape=(40, 10**9))
                kind = MUST_REFUSE
            else:
                np.savez(path, x=x, y=y)
            name = "npz"
        else:
            rows = [",".join(map(str, list(r) + [v])) for r, v in zip(np.atleast_2d(x), y)]
            if m == 12:
                rows.insert(int(rng.integers(len(rows) + 1)), rng.choice(["", "1,2", "a,b,c,d,e,f", ",,,,,", "nan"]))
            path.write_text("\n".join(rows) + "\n")
            name = "csv"
        if m == 13:  # bytes flipped or cut, whatever the format
            data = bytearray(path.read_bytes())
            if rng.random() < 0.5 and data:
                for pos in rng.integers(0, len(data), rng.integers(1, 20)):
                    data[pos] ^= 1 << int(rng.integers(8))
            else:
                data = data[:int(rng.integers(0, len(data) + 1))]
            path.write_bytes(bytes(data))
            kind = "data"
        sets = ["data.name=" + name, f"data.path={path}", "model.hidden=[4]", "train.epochs=1", "train.batch_size=8",
                "train.eval_batch_size=8", "train.progress=false", "checkpoint.every=1"]
        cases.append({"argv": ["train", CONFIG, *_sets(sets), "--out", str(folder / f"o{k}")],
                      "expect": "refuse" if kind == MUST_REFUSE else "any", "kind": f"{name}:{m}"})
    return cases


def idx_cases(folder: Path, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        ndim = int(rng.choice([0, 1, 2, 3, 4, 255]))
        dims = [int(rng.choice([0, 1, 3, 28, 60000, 2**32 - 1])) for _ in range(min(ndim, 8))]
        type_code = int(rng.choice([0x08, 0x09, 0x0B, 0x0D, 0x0E, 0x07]))
        payload = bytes(int(rng.choice([0, 1, 9, 28 * 28, 5000])))
        raw = struct.pack(">HBB", int(rng.choice([0, 0, 0, 1])), type_code, ndim) + struct.pack(f">{len(dims)}I", *dims)
        raw = raw[:int(rng.integers(0, len(raw) + 1))] + payload if rng.random() < 0.2 else raw + payload
        path = folder / f"i{k}-idx-ubyte"
        if rng.random() < 0.5:
            path = path.with_suffix(".gz")
            raw = gzip.compress(raw)
            if rng.random() < 0.2:
                raw = raw[:int(rng.integers(0, len(raw)))]
        path.write_bytes(raw)
        cases.append({"idx": str(path), "expect": "any", "kind": "idx"})
    return cases


def _run(cases: list[dict], folder: Path, name: str) -> subprocess.Popen:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cases))
    env = {**os.environ, "SPARSENET_NO_DOWNLOAD": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.unit.fuzz_run", str(path), str(BUDGET_MB)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _problems(results: list[dict]) -> list[str]:
    bad = []
    for r in results:
        case, code, err = r["case"], r.get("code"), r.get("stderr", "")
        what = f"{case.get('kind', '')} {case.get('argv', case.get('idx'))}"
        if r.get("exception"):
            bad.append(f"{what}: {r['exception']}\n{r.get('traceback', '')}")
            continue
        errors = [line for line in err.splitlines() if line.startswith("sparsenet: error:")]
        allowed = (0, 1, 2) if case["expect"] == "plan" else (0, 2)
        if code not in allowed:
            bad.append(f"{what}: exit {code}: {err[-500:]}")
        elif case["expect"] == "refuse" and code != 2:
            bad.append(f"{what}: accepted, must be refused")
        elif case["expect"] == "ok" and code != 0:
            bad.append(f"{what}: a valid case failed: {err[-500:]}")
        elif code == 2 and (len(errors) != 1 or "Traceback" in err or not err.rstrip().splitlines()[-1:] == errors):
            bad.append(f"{what}: exit 2 without exactly one error line: {err[-500:]}")
        elif code == 2 and ("MemoryError" in err or "out of memory" in err.lower()):
            bad.append(f"{what}: an allocation beyond the plan: {errors[0][:300]}")
    return bad


def test_fuzzed_checkpoints_configs_and_data_end_in_success_or_one_line(tmp_path):
    groups = {"checkpoints": checkpoint_cases(tmp_path, 240, seed=15),
              "inputs": config_cases(60, seed=16) + data_cases(tmp_path, 80, seed=17) + idx_cases(tmp_path, 40, seed=18)}
    groups["inputs"] = groups["checkpoints"][:1] + groups["inputs"]  # warm-up
    procs = {name: _run(cases, tmp_path, name) for name, cases in groups.items()}
    results, problems = [], []
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            problems.append(f"{name}: the fuzz process hung (killed after 600 s)")
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if len(lines) != len(groups[name]):
            problems.append(f"{name}: {len(lines)} of {len(groups[name])} cases reported; stderr: {err[-3000:]}")
        results += lines
    problems += _problems(results)
    kinds = {}
    for r in results:
        key = (r["case"].get("kind", "warmup"), r.get("code"))
        kinds[key] = kinds.get(key, 0) + 1
    print("outcomes (kind, exit code): count", sorted(kinds.items(), key=str))
    if problems:
        print("\n\n".join(problems[:5]))  # the first ones whole, with their tracebacks
    assert not problems, f"{len(problems)} of {len(results)} cases:\n" + "\n".join(p.splitlines()[0][:300] for p in problems[:40])
    assert len(results) >= 420
    codes = [r.get("code") for r in results]
    assert codes.count(0) >= 20 and codes.count(2) >= 200, kinds  # both outcomes really happen
