"""scripts/reproduce.py --quick on tiny Madelon rows: runs, records, skips what is recorded, reports."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path("scripts/reproduce.py")
# Madelon shrunk so a 10-epoch run takes about a second; pruning moved into those 10 epochs
TINY = ["--set", "data.samples=120", "--set", "data.features=24", "--set", "model.hidden=[12,6]",
        "--set", "pruning.start_epoch=3", "--set", "pruning.every=2"]


def _command(tmp_path, *args):
    return [sys.executable, str(SCRIPT), "--quick", "--runs-dir", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results.json"), "--figure", str(tmp_path / "curves.png"), *TINY, *args]


def _reproduce(tmp_path, *args, code=0):
    done = subprocess.run(_command(tmp_path, *args), capture_output=True, text=True, timeout=600)
    assert done.returncode == code, done.stderr[-2000:]
    return done.stdout if code == 0 else done


def _metrics(tmp_path, row):
    path = tmp_path / "runs" / row / "0" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_quick_runs_records_skips_and_reports(tmp_path):
    out = _reproduce(tmp_path, "--rows", "madelon-allrelu,madelon-ip", "--jobs", "2")
    results = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert sorted(results) == ["madelon-allrelu/0", "madelon-ip/0"]     # --quick: 1 seed of each row
    for key, entry in results.items():
        metrics = _metrics(tmp_path, entry["row"])
        assert len(metrics) == entry["epochs"] == 10
        best = max(metrics, key=lambda r: r["test_accuracy"])
        assert entry["best_test_accuracy"] == round(100 * best["test_accuracy"], 4)
        assert entry["best_epoch"] == best["epoch"]
        assert entry["last_test_accuracy"] == round(100 * metrics[-1]["test_accuracy"], 4)
        assert (entry["weights_start"], entry["weights_end"]) == (sum(metrics[0]["nnz"]), sum(metrics[-1]["nnz"]))
        assert "--resume" in entry["command"] and "measured under load" in entry["timings"]
    # the pruned row lost hidden neurons (and their weights); the other kept its 12-6
    assert results["madelon-ip/0"]["neurons_end"][1:3] != [12, 6]
    assert results["madelon-ip/0"]["weights_end"] < 0.8 * results["madelon-ip/0"]["weights_start"]
    assert results["madelon-allrelu/0"]["neurons_end"] == [24, 12, 6, 2]
    # the table: ours beside the paper's figure, rows not run are listed as such
    # a pruning row's accuracy is its final model's: the best epoch since the last pruning
    metrics = _metrics(tmp_path, "madelon-ip")
    final = [r for r in metrics if r["neurons"] == metrics[-1]["neurons"]]
    assert metrics[0]["neurons"] == [24, 12, 6, 2] and final[0]["epoch"] == 10   # pruned after epochs 3, 5, 7, 9
    assert results["madelon-ip/0"]["final_model_from_epoch"] == 10
    ip = results["madelon-ip/0"]["best_test_accuracy_final_model"]
    assert ip == round(100 * final[0]["test_accuracy"], 4)
    allrelu = results["madelon-allrelu/0"]
    assert (allrelu["final_model_from_epoch"], allrelu["best_test_accuracy_final_model"]) == \
        (1, allrelu["best_test_accuracy"])
    line = next(l for l in out.splitlines() if l.startswith("| Madelon, All-ReLU + Importance Pruning (from 200"))
    assert f"**{ip:.2f} ± 0.00 %**" in line and "77.00 %" in line and f"FAIL: final model, best {ip:.2f} vs >= 77" in line
    assert f"| 1/3 | {results['madelon-ip/0']['last_test_accuracy']:.2f} % | " in line
    assert "| Madelon, ReLU | not run yet | 0/3 | | | | 68.50 % | |" in out
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second sitting skips what is recorded and changes nothing
    before = (tmp_path / "results.json").read_text()
    again = _reproduce(tmp_path, "--rows", "madelon-allrelu,madelon-ip")
    assert "madelon-allrelu/0 recorded, skipped" in again and "madelon-ip/0 recorded, skipped" in again
    assert "starting" not in again
    assert (tmp_path / "results.json").read_text() == before

    # a run whose record is lost continues from its checkpoint (--resume) instead of training again
    data = json.loads(before)
    del data["runs"]["madelon-allrelu/0"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    third = _reproduce(tmp_path, "--rows", "madelon-allrelu")
    assert "madelon-allrelu/0 starting" in third
    log = (tmp_path / "runs" / "madelon-allrelu" / "0" / "train.log").read_text()
    assert "resuming from" in log and "after epoch 10" in log
    assert json.loads((tmp_path / "results.json").read_text())["runs"]["madelon-allrelu/0"]["best_test_accuracy"] == \
        json.loads(before)["runs"]["madelon-allrelu/0"]["best_test_accuracy"]


def test_report_writes_the_table_between_the_markers(tmp_path):
    _reproduce(tmp_path, "--rows", "madelon-relu")
    doc = tmp_path / "bench.md"
    doc.write_text("# before\n<!-- reproduction table: start -->\nold table\n<!-- reproduction table: end -->\nafter\n")
    out = _reproduce(tmp_path, "--report", "--docs", str(doc))
    assert "starting" not in out
    table = "\n".join(l for l in out.splitlines() if l.startswith("|"))
    expected = f"# before\n<!-- reproduction table: start -->\n{table}\n<!-- reproduction table: end -->\nafter\n"
    assert doc.read_text() == expected
    _reproduce(tmp_path, "--report", "--docs", str(doc))
    assert doc.read_text() == expected       # a second report leaves it as it is
    relu = json.loads((tmp_path / "results.json").read_text())["runs"]["madelon-relu/0"]["best_test_accuracy"]
    assert f"| Madelon, ReLU | **{relu:.2f} ± 0.00 %** ({relu:.2f} %) | 1/3 |" in table
    bad = tmp_path / "plain.md"
    bad.write_text("no markers\n")
    cmd = [sys.executable, str(SCRIPT), "--quick", "--report", "--results", str(tmp_path / "results.json"),
           "--figure", str(tmp_path / "c.png"), "--docs", str(bad)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1 and "has no lines '<!-- reproduction table: start -->'" in done.stderr
    assert bad.read_text() == "no markers\n"


def test_unknown_row_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rows", "madelon-allrelu,nope",
                           "--results", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown row(s) nope; rows are: madelon-allrelu," in done.stderr
    assert not (tmp_path / "r.json").exists()


def _reproduce_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import reproduce
    finally:
        sys.path.pop(0)
    return reproduce


def _runs(accuracies, **fields):
    return [{"seed": i, "best_test_accuracy": a, **fields} for i, a in enumerate(accuracies)]


@pytest.mark.parametrize("row, by_row, expected", [
    ("fmnist-allrelu", {"fmnist-allrelu": _runs([91.6, 91.0, 91.0])},
     "PASS: best 91.60 vs >= 91.5 (+0.10), mean 91.20 vs >= 91.1 (+0.10)"),
    ("fmnist-allrelu", {"fmnist-allrelu": _runs([91.4, 91.3, 91.2])},
     "FAIL: best 91.40 vs >= 91.5 (-0.10), mean 91.30 vs >= 91.1 (+0.20)"),
    ("fmnist-allrelu", {"fmnist-allrelu": _runs([91.6])},
     "FAIL: best 91.60 vs >= 91.5 (+0.10), mean 91.60 vs >= 91.1 (+0.50) (1/3 seeds)".replace("FAIL", "PASS")),
    ("fmnist-ip", {"fmnist-ip": _runs([90.9, 90.7, 90.8], best_test_accuracy_final_model=90.4,
                                      weights_start=1000, weights_end=190)},
     "FAIL: final model 90.40 % vs >= 90.5 (-0.10) with up to 19.0 % of the weights vs <= 20 %"),
    ("fmnist-ip", {"fmnist-ip": _runs([90.9, 90.7, 90.8], best_test_accuracy_final_model=90.6,
                                      weights_start=1000, weights_end=250)},
     "FAIL: final model 90.60 % vs >= 90.5 (+0.10) with up to 25.0 % of the weights vs <= 20 %"),
    ("fmnist-ip", {"fmnist-ip": _runs([90.9, 90.7, 90.8], best_test_accuracy_final_model=90.6,
                                      weights_start=1000, weights_end=200)},
     "PASS: final model 90.60 % vs >= 90.5 (+0.10) with up to 20.0 % of the weights vs <= 20 %"),
    ("fmnist-wasap", {"fmnist-wasap": _runs([91.0]), "fmnist-allrelu": _runs([91.2, 91.5])},
     "PASS: 0.20 points from sequential vs <= 0.3"),
    ("fmnist-wasap", {"fmnist-wasap": _runs([90.8]), "fmnist-allrelu": _runs([91.2])},
     "FAIL: 0.40 points from sequential vs <= 0.3"),
    ("madelon-ip", {"madelon-ip": [{"seed": i, "best_test_accuracy": 81.0, "best_test_accuracy_final_model": a}
                                   for i, a in enumerate([76.5, 77.5, 70.0])]},
     "PASS: final model, best 77.50 vs >= 77 (+0.50)"),
    ("madelon-ip", {"madelon-ip": [{"seed": 0, "best_test_accuracy": 81.0, "best_test_accuracy_final_model": 76.0}]},
     "FAIL: final model, best 76.00 vs >= 77 (-1.00) (1/3 seeds)"),
    ("madelon-relu", {"madelon-relu": _runs([70.0])}, ""),    # no target
])
def test_targets(row, by_row, expected):
    reproduce = _reproduce_module()
    assert reproduce.check_target(reproduce.ROWS[row], by_row) == expected


def test_results_figure_and_docs_keep_readable_modes(tmp_path):
    """Written as mkstemp's 0600 temporaries renamed over the target, the results file, the figure and the
    --docs file (docs/benchmarks.md) became readable by their owner only; fileio gives 0644 under umask 022."""
    reproduce = _reproduce_module()
    old = os.umask(0o022)
    try:
        doc = tmp_path / "bench.md"
        doc.write_text(f"a\n{reproduce.DOCS_START}\nold\n{reproduce.DOCS_END}\nb\n")
        doc.chmod(0o644)
        reproduce.update_docs(doc, "| new |")
        reproduce.write_json(tmp_path / "results" / "r.json", {"runs": {}})
        rows = list(reproduce.ROWS.values())
        assert reproduce.figure(rows, {}, tmp_path / "curves.png") == tmp_path / "curves.png"
    finally:
        os.umask(old)
    assert doc.read_text() == f"a\n{reproduce.DOCS_START}\n| new |\n{reproduce.DOCS_END}\nb\n"
    for path in (doc, tmp_path / "results" / "r.json", tmp_path / "curves.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.md", "curves.png", "results"]   # no temporaries


def test_docs_with_markers_reversed_or_missing_fail_in_one_line_before_any_run(tmp_path):
    """An end marker above the start one raised IndexError (a traceback) after every run had finished."""
    reproduce = _reproduce_module()
    doc = tmp_path / "bench.md"
    doc.write_text(f"a\n{reproduce.DOCS_END}\nx\n{reproduce.DOCS_START}\nb\n")
    for path, says in ((doc, "(in that order)"), (tmp_path / "missing.md", "cannot read --docs")):
        cmd = [sys.executable, str(SCRIPT), "--quick", "--rows", "madelon-relu", "--runs-dir", str(tmp_path / "runs"),
               "--results", str(tmp_path / "r.json"), "--figure", str(tmp_path / "c.png"), "--docs", str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr and str(path) in done.stderr and says in done.stderr
        assert not (tmp_path / "runs").exists() and not (tmp_path / "r.json").exists()


def test_table_header_says_what_the_minutes_and_seconds_count():
    """Before: the header said 'train min/run, s/epoch', but the minutes add evaluation to train + SET
    (summarize_metrics: train_minutes) while the seconds per epoch do not."""
    reproduce = _reproduce_module()
    runs = [{"seed": 0, "epochs": 2, "best_test_accuracy": 50.0, "last_test_accuracy": 50.0, "weights_start": 10,
             "weights_end": 10, **reproduce.summarize_metrics([
                 {"epoch": e, "test_accuracy": 0.5, "nnz": [10], "train_seconds": 30.0, "evolution_seconds": 6.0,
                  "eval_seconds": 24.0} for e in (1, 2)])}]
    text = reproduce.table([reproduce.ROWS["madelon-relu"]], {"madelon-relu": runs})
    assert "| min/run (train + SET + eval), s/epoch (train + SET), under load |" in text.splitlines()[0]
    assert "| 2.0, 36.00 (2 ep.) |" in text.splitlines()[2]       # 2 x 60 s = 2.0 min; 30 + 6 s per epoch


def test_a_refused_run_says_why_instead_of_rerun_to_continue(tmp_path):
    """Before: a run sparsenet refused (exit 2, e.g. a bad --set) was reported as 'ended (exit 2) without all
    its epochs; rerun to continue it', which rerunning cannot do."""
    done = _reproduce(tmp_path, "--rows", "madelon-relu", "--set", "model.alpha=-1", code=1)
    out = done.stdout
    assert done.stderr.strip().splitlines()[-1] == "reproduce: did not finish: madelon-relu/0 (exit 2) (see above)"
    line = next(l for l in out.splitlines() if l.startswith("reproduce: madelon-relu/0 "))
    assert "starting" in line
    refused = next(l for l in out.splitlines() if l.startswith("reproduce: madelon-relu/0 was refused"))
    assert refused.startswith("reproduce: madelon-relu/0 was refused (exit 2): sparsenet: error: ")
    assert "model.alpha" in refused and "rerun to continue" not in out


def test_sigterm_stops_the_runs_resumably_and_exits_75_naming_them(tmp_path):
    """Before: after SIGTERM the runs stopped resumably (sparsenet exit 75) but the script itself exited 0."""
    import signal
    import time

    proc = subprocess.Popen(_command(tmp_path, "--rows", "madelon-relu,madelon-allrelu", "--set",
                                     "train.epochs=100000"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "madelon-relu" / "0" / "metrics.jsonl"    # --jobs 1: the first row runs
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    said = err.strip().splitlines()
    assert said[-2] == ("reproduce: stopped resumably (exit 75): madelon-relu/0; rerun the same command to "
                        "resume them from their checkpoints")
    assert said[-1] == "reproduce: not started because of the stop: madelon-allrelu/0"
    assert "stopped" in (metrics.parent / "train.log").read_text()
    assert not json.loads((tmp_path / "results.json").read_text() if (tmp_path / "results.json").exists()
                          else '{"runs": {}}')["runs"]


@pytest.mark.parametrize("text, says", [
    ('{"runs": {"madelon-relu/0": {"row": "madelon-r', "cannot read results file"),
    ("[1, 2]", "the file is not a JSON object of runs"),
    ('{"runs": []}', "its 'runs' is not a JSON object of runs"),
    ('{"runs": {"madelon-relu/0": 3}}', "run 'madelon-relu/0' is int, not an object"),
    ('{"runs": {"madelon-relu/0": {"row": "madelon-relu", "seed": "0"}}}', "has seed = \"0\", not an integer"),
    ('{"runs": {"madelon-relu/0": {"row": "madelon-relu", "seed": 0, "epochs": 10, "best_test_accuracy": null}}}',
     "has best_test_accuracy = null, not a number"),
])
def test_a_damaged_results_file_is_one_line_exit_2_and_left_alone(tmp_path, text, says):
    """Before: a truncated results JSON was a JSONDecodeError traceback, a list an AttributeError, a wrong type
    a TypeError/KeyError in the table (after the runs)."""
    results = tmp_path / "results.json"
    results.write_text(text)
    for extra in ([], ["--report"]):
        done = _reproduce(tmp_path, "--rows", "madelon-relu", *extra, code=2)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"reproduce: ") and str(results) in done.stderr and says in done.stderr
        assert results.read_text() == text
        assert not (tmp_path / "runs").exists() and not (tmp_path / "curves.png").exists()


def test_set_runs_are_refused_in_the_shared_results_and_runs(tmp_path):
    """Before: --set train.epochs=2 recorded a 2-epoch run as fmnist-relu/0 in scripts/results/reproduction.json,
    where the 500-epoch record stands (and would resume the 500-epoch run's checkpoint in runs/reproduce)."""
    cwd = tmp_path / "repo"
    (cwd / "scripts" / "results").mkdir(parents=True)
    base = [sys.executable, str(SCRIPT.resolve()), "--rows", "madelon-relu", "--set", "train.epochs=2"]
    for args in ([], ["--results", "scripts/results/reproduction.json", "--runs-dir", "own"],
                 ["--results", "own.json", "--runs-dir", "runs/reproduce"], ["--results", "own.json"],
                 ["--quick", "--runs-dir", "own"]):
        done = subprocess.run([*base, *args], capture_output=True, text=True, cwd=cwd, timeout=600)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].endswith("give --results and --runs-dir of your own")
        assert sorted(p.name for p in cwd.rglob("*")) == ["results", "scripts"]
