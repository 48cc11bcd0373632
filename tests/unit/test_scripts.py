"""scripts/ a user runs to check our figures: bad arguments are one line, results files go through fileio,
checks that cannot fail do fail, and no script starts its (long) work before its arguments are known good."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsenet.config import load_config
from sparsenet.train import run

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
TINY = ["data.name=synthetic", "data.samples=200", "data.features=16", "data.informative=4", "data.redundant=2",
        "model.hidden=[12,12]", "model.epsilon=4", "train.epochs=2", "train.batch_size=20", "train.progress=false"]


def script(name):
    """The module scripts/<name>.py, imported as the tests of reproduce.py do."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def run_script(name, *args):
    return subprocess.run([sys.executable, f"scripts/{name}.py", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def one_line_error(done, *says):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and "error: " in last, done.stderr[-2000:]
    for text in says:
        assert text in last, last


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    run(load_config(None, TINY), out)
    return out / "checkpoint.h5"


def test_post_training_pruning_bad_input_is_one_line(checkpoint, tmp_path):
    """Before: a missing checkpoint was a CheckpointError traceback, --percentiles 150 numpy's ValueError
    traceback, and a --json path that cannot be written an OSError traceback after the work."""
    one_line_error(run_script("post_training_pruning", tmp_path / "none.h5"), "none.h5", "does not exist")
    one_line_error(run_script("post_training_pruning", checkpoint, "--percentiles", "10", "150"),
                   "--percentiles", "150")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(run_script("post_training_pruning", checkpoint, "--json", blocker / "rows.json"), "is a file")


def test_post_training_pruning_json_matches_its_table_and_replaces_a_planted_link(checkpoint, tmp_path):
    """Before: open(path, "w") followed a symlink at the --json path and wrote into its target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    rows_json = tmp_path / "rows.json"
    rows_json.symlink_to(victim)
    done = run_script("post_training_pruning", checkpoint, "--percentiles", "20", "--json", rows_json)
    assert done.returncode == 0, done.stderr[-2000:]
    assert victim.read_text() == "keep me\n" and not rows_json.is_symlink()
    rows = json.loads(rows_json.read_text())
    assert [r["pruning"] for r in rows] == ["none", "20th percentile"]
    assert rows[1]["weights"] < rows[0]["weights"]
    printed = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["none"], ["20th"])}
    for r in rows:
        cells = printed[r["pruning"].split()[0]]
        assert cells[-5:-1] == [f"{100 * r['test_accuracy']:.2f}", str(r["weights"]),
                                f"{100 * r['weights'] / rows[0]['weights']:.1f}%", str(r["parameters"])]
    assert f"reproduce: python scripts/post_training_pruning.py {checkpoint} --percentiles 20 --json {rows_json}" in done.stdout


def test_feature_recall_counts_against_sparsenet_features_and_bad_files_are_one_line(checkpoint, tmp_path):
    """Before: a missing synthetic file was h5py's traceback, a missing checkpoint subprocess's
    CalledProcessError traceback, and the line printed no command to reproduce it."""
    from sparsenet.data.synthfile import write_synthetic

    synth = tmp_path / "synth.h5"
    write_synthetic(load_config(None, ["data.name=synthetic_hdf5", "data.samples=100", "data.features=16",
                                       "data.informative=4", "data.redundant=2", f"data.path={synth}"]).data, 0)
    done = run_script("feature_recall", checkpoint, synth, "--top", 8)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout)
    ranked = json.loads(subprocess.run([sys.executable, "-m", "sparsenet", "features", str(checkpoint), "--top", "8",
                                        "--json"], capture_output=True, text=True, check=True).stdout)["top"]
    import h5py

    with h5py.File(synth) as fh:
        useful = set(fh["useful_columns"][:].tolist())
    assert len(useful) == 6 and line["useful_columns"] == 6
    ranks = [k + 1 for k, f in enumerate(ranked) if f["feature"] in useful]
    assert (line["useful_in_top"], line["ranks_of_useful"]) == (len(ranks), ranks)
    assert line["command"] == f"python scripts/feature_recall.py {checkpoint} {synth} --top 8"
    one_line_error(run_script("feature_recall", checkpoint, tmp_path / "none.h5"), "none.h5")
    one_line_error(run_script("feature_recall", checkpoint, checkpoint), "no 'useful_columns'")
    one_line_error(run_script("feature_recall", tmp_path / "none.h5", synth), "none.h5", "does not exist")


SETS = [item for key in TINY if not key.startswith(("train.epochs", "train.progress")) for item in ("--set", key)]


def test_bench_pruning_times_only_pruned_epochs_as_late_and_writes_what_it_prints(tmp_path):
    """Before: 'late' was always the last 5 epochs, so with --epochs 6 --start 4 it mixed epochs 2-4 (not pruned
    yet) into the after-pruning time the speed check uses; --start 1 crashed in statistics.median (no early
    epochs); the JSON went through Path.write_text."""
    out, figures = tmp_path / "runs", tmp_path / "bench_pruning.json"
    done = run_script("bench_pruning", "--epochs", 6, "--start", 4, "--every", 1, "--percentile", 30, *SETS,
                      "--out", out, "--json", figures, "--check")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    written = json.loads(figures.read_text())
    for method in ("none", "importance"):
        rows = [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]
        seconds = [r["train_seconds"] for r in rows]
        mine = written["results"][method]
        assert mine["train_seconds_early"] == pytest.approx(sorted(seconds[1:4])[1])        # epochs 2-4
        assert mine["train_seconds_late"] == pytest.approx(sum(seconds[4:6]) / 2)           # epochs 5-6
        assert mine["weights_end"] == sum(rows[-1]["nnz"])
    assert written["results"]["importance"]["weights_end"] < written["results"]["none"]["weights_end"]
    for name, ok in written["checks"].items():
        assert f"  {'PASS' if ok else 'FAIL'}  {name}" in done.stdout
    assert done.returncode == (0 if all(written["checks"].values()) else 1)
    for start, epochs in ((1, 6), (6, 6)):
        one_line_error(run_script("bench_pruning", "--epochs", epochs, "--start", start, *SETS), "2 <= --start < --epochs")
    one_line_error(run_script("bench_pruning", "--epochs", 4, "--start", 2, "--percentile", 100, *SETS),
                   "pruning.percentile")


def test_bench_scale_check_fails_when_no_1m_model_ran_and_json_matches(tmp_path):
    """Before: --check with only configs below 1M neurons printed no check line and exited 0, a check that
    could not fail; the rows went through Path.write_text after the training."""
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("data: {name: synthetic, samples: 200, features: 16, informative: 4, redundant: 2}\n"
                    "model: {hidden: [12, 12], epsilon: 4}\ntrain: {batch_size: 20}\n")
    rows_json = tmp_path / "rows.json"
    done = run_script("bench_scale", "--configs", tiny, "--epochs", 2, "--out", tmp_path / "runs", "--json", rows_json,
                      "--check")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "  FAIL  no 1M-neuron model among the configs run" in done.stdout
    (row,) = json.loads(rows_json.read_text())
    metrics = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert (row["architecture"], row["neurons"], row["weights"]) == ("16-12-12-2", 42, sum(metrics[0]["nnz"]))
    assert row["train_minutes"] == pytest.approx(sum(r["train_seconds"] for r in metrics) / 2 / 60)
    assert row["test_accuracy"] == [round(r["test_accuracy"], 4) for r in metrics]
    # without --check: the same PASS/FAIL line, exit 0 (before: no line at all)
    done = run_script("bench_scale", "--configs", tiny, "--epochs", 2, "--out", tmp_path / "again")
    assert done.returncode == 0 and "  FAIL  no 1M-neuron model among the configs run" in done.stdout, done.stderr
    bench_scale = script("bench_scale")
    one_m = {"architecture": "65536-500000-500000-2", "neurons": 1_065_538}
    assert [ok for ok, _ in bench_scale.check([{**one_m, "train_minutes": 2.9}, {"neurons": 42}])] == [True]
    assert [ok for ok, _ in bench_scale.check([{**one_m, "train_minutes": 3.1}])] == [False]


def test_bench_fashion_mnist_json_replaces_a_planted_link_and_matches_its_table(tmp_path):
    """Before: --json went through Path.write_text after the benchmark (a symlink there was followed, a path
    that cannot be written was an OSError traceback at the end) and a bad --set was a ConfigError traceback."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    figures = tmp_path / "bench.json"
    figures.symlink_to(victim)
    small = ["--set", "model.hidden=[32,32]", *SETS]
    done = run_script("bench_fashion_mnist", "--epochs", 2, "--no-torch", *small, "--json", figures, "--check")
    assert done.returncode == 0, done.stderr[-2000:]
    assert victim.read_text() == "keep me\n" and not figures.is_symlink()
    report = json.loads(figures.read_text())
    table = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [row[:2] for row in table] == [["1", f"{report['epochs'][0]['train_s']:.3f}"],
                                          ["2", f"{report['epochs'][1]['train_s']:.3f}"]]
    assert report["passed"] is True and report["command"] in done.stdout and "--check" in report["command"]
    assert report["median"]["train_evolution_s"] == pytest.approx(
        sum(e["train_evolution_s"] for e in report["epochs"]) / 2)
    one_line_error(run_script("bench_fashion_mnist", "--set", "model.alpha=-1"), "model.alpha")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(run_script("bench_fashion_mnist", "--json", blocker / "x.json"), "is a file")


def test_bench_parallel_throughput_check_pairs_runs_within_a_round():
    """Before: the check compared WASAP's median samples/s with the sequential median, which can pair runs of
    different rounds (different load): here 170 / 100 = 170 % PASSed, while within each round WASAP ran at
    80, 190 and 85 % of the sequential trainer (median 85 %, FAIL)."""
    bench_parallel = script("bench_parallel")
    rounds = {"sequential": [{"samples_per_second": v} for v in (50, 100, 200)],
              "wasap": [{"samples_per_second": v} for v in (40, 190, 170)]}
    assert bench_parallel.round_ratios(rounds) == pytest.approx([0.8, 1.9, 0.85])
    common = {"server_wait_cpu_share": 0.05, "bytes_per_update": 8_000.0, "nnz": 1000}
    results = {"sequential": {"samples_per_second": 100.0, "nnz": 1000}, "wasap": {"samples_per_second": 170.0, **common},
               "wassp": {"samples_per_second": 90.0, **common}}
    checks = bench_parallel.check_targets(results, rounds)
    assert list(checks.values()) == [False, True, True]
    rounds["wasap"][2]["samples_per_second"] = 190        # 80, 190, 95 %: median 95 %
    assert list(bench_parallel.check_targets(results, rounds).values()) == [True, True, True]
    results["wassp"]["server_wait_cpu_share"] = 0.10      # the target is < 10 %
    results["wasap"]["bytes_per_update"] = 10_000.0       # and < 10 bytes per connection
    assert list(bench_parallel.check_targets(results, rounds).values()) == [True, False, False]


def test_bench_parallel_bad_arguments_are_one_line_before_any_run(tmp_path):
    """Before: --repeat 0 ran nothing and crashed in statistics.median; a --json path that cannot be written
    was an OSError traceback after every run."""
    one_line_error(run_script("bench_parallel", "--repeat", 0), "--repeat")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(run_script("bench_parallel", "--json", blocker / "x.json"), "is a file")


def test_bench_contention_and_sparse_inputs_check_json_before_their_runs(tmp_path, monkeypatch, capsys):
    """Before: both found a --json path that cannot be written only when writing it, after every run
    (bench_contention: an OutputError traceback; bench_sparse_inputs: an OutputError traceback)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    bench_contention = script("bench_contention")

    def started(*_args, **_kwargs):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench_contention, "run_alone", started)
    with pytest.raises(SystemExit) as stop:
        bench_contention.main(["--json", str(blocker / "x.json")])
    assert "cannot write --json file" in str(stop.value.code) and "is a file" in str(stop.value.code)
    bench_sparse_inputs = script("bench_sparse_inputs")
    monkeypatch.setattr(bench_sparse_inputs, "bag_of_words", started)
    with pytest.raises(SystemExit) as stop:
        bench_sparse_inputs.main(["--json", str(blocker / "x.json")])
    assert stop.value.code == 2 and "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("args, says", [(["--epochs", "1"], "--epochs must be >= 2"),
                                        (["--wide-steps", "0"], "--wide-steps must be >= 1"),
                                        (["--skip-wide", "--only-wide"], "exclude each other")])
def test_bench_contention_bad_arguments_exit_2_as_argparse_does(args, says):
    """Before: its own checks raised SystemExit(text), exit 1 (argparse's own errors exit 2)."""
    one_line_error(run_script("bench_contention", *args), says)


def test_bench_contention_labels_its_peak_rss_in_mib(tmp_path, monkeypatch, capsys):
    """Before: VmHWM kB / 1024 (MiB) was printed as 'wide, peak RSS MB' and written as wide_peak_rss_mb."""
    bench = script("bench_contention")
    monkeypatch.setattr(bench, "run_alone", lambda *args: None)
    monkeypatch.setattr(bench, "run_wide", lambda *args: (0.1, 502.5, 498.0))
    figures = tmp_path / "wide.json"
    assert bench.main(["--only-wide", "--json", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "wide, peak RSS MiB" in out and "  502.500  target <= 600" in out and "expected 498 MiB" in out
    assert " MB" not in out
    written = json.loads(figures.read_text())
    assert (written["wide_peak_rss_mib"], written["wide_planned_mib"]) == (502.5, 498.0)
    assert not [k for k in written if k.endswith("_mb")]


def test_quickselection_finds_the_large_file_in_the_users_cache_and_refuses_empty_runs(tmp_path, monkeypatch):
    """Before: --large read /root/.cache/sparsenet/synthetic/... whoever ran it (h5py's traceback for any other
    user or $SPARSENET_DATA), --skip-fmnist --skip-synthetic ran nothing and rewrote the results file, and a
    missing --checkpoint was a traceback."""
    monkeypatch.setenv("SPARSENET_DATA", str(tmp_path / "cache"))
    quickselection = script("quickselection")
    assert quickselection.large_file() == tmp_path / "cache" / "synthetic" / "madelon_65536x10000_c2_i5_r15_t0.3_s0.h5"
    results = tmp_path / "qs.json"
    for args, says in ((["--skip-fmnist", "--skip-synthetic", "--large"], "sparsenet data synth --samples 10000"),
                       (["--skip-fmnist", "--skip-synthetic"], "nothing to run"),
                       (["--skip-synthetic", "--checkpoint", tmp_path / "none.h5"], "is not a file")):
        done = subprocess.run([sys.executable, "scripts/quickselection.py", *map(str, args), "--results", str(results)],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ}, timeout=600)
        one_line_error(done, says)
    assert not results.exists()


def test_quickselection_checkpoint_ranks_features_on_the_data_it_was_trained_for(tmp_path, monkeypatch):
    """Before: with --checkpoint it still loaded configs/quickselection_fashion_mnist.yaml's data (FashionMNIST,
    784 pixels) and scored a 16-feature synthetic autoencoder's top features as pixels of it."""
    import argparse

    out = tmp_path / "ae"
    run(load_config(None, [*TINY, "model.task=autoencoder", "model.output=linear"]), out)
    quickselection = script("quickselection")
    loaded, real = [], quickselection.load_dataset
    monkeypatch.setattr(quickselection, "load_dataset", lambda data, seed: loaded.append(data) or real(data, seed))
    args = argparse.Namespace(checkpoint=str(out / "checkpoint.h5"), epochs=1, k=3, classifier_train=100, draws=1,
                              all_pixels=True)
    figures = quickselection.fashion_mnist(args, tmp_path / "work")
    assert [(d.name, d.features, d.samples) for d in loaded] == [("synthetic", 16, 200)]
    assert figures["config"] == f"the config stored in {out / 'checkpoint.h5'}" and figures["data"] == "synthetic"
    assert len(figures["top"]) == 3 and all(0 <= f < 16 for f in figures["top"]) and figures["epochs"] == 2
    assert all(0 <= v <= 1 for v in figures["all_pixels"].values())


def test_bench_sparse_inputs_times_warm_batches_and_names_the_epochs_batches(tmp_path, monkeypatch):
    """Before: the CSR-vs-densified comparison timed the first eager CSR batch, which loads (or compiles) kernels
    training never used (--features 20000 --samples 3000: 625.6 ms on CSR vs 5.4 ms densified, 0.0x; warm:
    0.7 vs 7.8 ms, 11x), and the epoch-end catch-up was divided by 313 batches whatever --samples gave."""
    import sparsenet.train

    bench = script("bench_sparse_inputs")
    figures = tmp_path / "sparse.json"
    assert bench.main(["--features", "2000", "--samples", "1000", "--rounds", "2", "--hidden", "8", "--classes", "2",
                       "--profile-batches", "2", "--densified-batches", "2", "--json", str(figures)]) in (0, 1)
    written = json.loads(figures.read_text())
    assert [k for k in written["profile_ms_per_batch"] if k.startswith("catch-up of every")] == \
        ["catch-up of every connection at the epoch end, per batch of a 7-batch epoch"]      # 800 samples / 128
    assert written["args"]["densified_batches"] == 2 and len(written["sparse"]) == 2

    calls, real = [], sparsenet.train.compute_gradients

    def slow_first(*args):
        calls.append(1)
        if len(calls) == 1:       # the first call pays for loading kernels
            import time
            time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(sparsenet.train, "compute_gradients", slow_first)
    x, y, _ = bench.bag_of_words(600, 2000, 0.01, 2, 20, 4, 0)
    config = {"seed": 0, "threads": 1, "data": {"standardize": False}, "model": {"hidden": [8], "epsilon": 4.0},
              "train": {"epochs": 1, "batch_size": 64, "progress": False}}
    state, _, data = bench.make_state(config, x[100:], y[100:], x[:100], y[:100], 2, "bow")
    sparse_s, dense_s = bench.densified_batches(state.model, data.x_train, data.y_train, 64, 2)
    assert len(calls) == 3 and sparse_s < 0.25 and dense_s > 0


def test_bench_sparse_inputs_exits_1_on_a_fail_only_with_check(capsys):
    """Before: it had no --check and exited 1 on any FAIL line (here the peak RSS one: a 1000 x 2000 set's
    dense matrix is 7.5 MiB, a tenth of which no process stays under), unlike the other benchmarks."""
    bench = script("bench_sparse_inputs")
    tiny = ["--features", "2000", "--samples", "1000", "--rounds", "2", "--hidden", "8", "--classes", "2",
            "--profile-batches", "0", "--densified-batches", "0"]
    assert bench.main(tiny) == 0
    fails = [l for l in capsys.readouterr().out.splitlines() if l.startswith("FAIL ")]
    assert fails and fails[0].startswith("FAIL peak RSS")
    assert bench.main([*tiny, "--check"]) == 1
    assert [l for l in capsys.readouterr().out.splitlines() if l.startswith("FAIL ")][0].startswith("FAIL peak RSS")


def test_bench_stop_refuses_set_flags_among_its_overrides(tmp_path):
    """Before: the docstring's '-- --set parallel.phase1_epochs=0' started mpiexec with '--set --set ...', which
    sparsenet refused, reported only as 'the run ended (2) before epoch 1'."""
    one_line_error(run_script("bench_stop", "--out", tmp_path / "stop", "--", "--set", "parallel.phase1_epochs=0"),
                   "KEY=VALUE, without --set", "got --set")
    assert not (tmp_path / "stop").exists()


@pytest.mark.parametrize("args, says", [(["--threads", "1", "999"], "--threads between 1 and"),
                                        (["--repeat", "0"], "--repeat >= 1")])
def test_bench_kernels_bad_arguments_are_one_line(args, says):
    """Before: --threads above NUMBA_NUM_THREADS was numba's ValueError traceback (after the 1-thread rows),
    --repeat 0 'min() arg is an empty sequence'."""
    one_line_error(run_script("bench_kernels", "--only", "small", *args), says)


def test_profile_parallel_wraps_the_functions_its_callers_call():
    """Before: it wrapped mpi_workers.adopt_values, but worker.py calls the name it imported, so the
    'worker adopt values' row never appeared. After wrapping, no sparsenet.parallel module but the one defining
    it (which does not call it) may still hold an unwrapped original of a wrapped module function."""
    check = """
import sys, types
sys.path.insert(0, "scripts")
import profile_parallel as p
from sparsenet import parallel
import sparsenet.parallel.channel, sparsenet.parallel.mpi_workers, sparsenet.parallel.server
import sparsenet.parallel.transport, sparsenet.parallel.worker
originals = {(o.__name__, n): getattr(o, n) for o, n, _ in p.HOT if isinstance(o, types.ModuleType)}
for owner, name, label in p.HOT:
    p.timed(owner, name, label)
modules = [m for k, m in sys.modules.items() if k.startswith("sparsenet.parallel.")]
stale = [f"{m.__name__}.{n}" for (_, n), f in originals.items() for m in modules
         if getattr(m, n, None) is f and m.__name__ != f.__module__]
print(stale)
"""
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
