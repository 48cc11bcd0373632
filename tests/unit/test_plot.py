"""sparsenet plot: markers on short runs, integer epoch ticks, panels for nnz, neurons and seconds."""

import json

import pytest

pytest.importorskip("matplotlib")

from sparsenet import plot  # noqa: E402


def _rows(n, with_validation=True):
    rows = []
    for e in range(1, n + 1):
        row = {"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.1 / e, "test_accuracy": 0.5 + 0.01 * e,
               "train_seconds": 2.0 + e, "evolution_seconds": 0.1 * e, "eval_seconds": 0.05,
               "nnz": [100 - e, 50 - e, 20], "neurons": [10, 8 - (e > 2), 6, 3],
               "selection_metric": "validation_accuracy" if with_validation else "train_loss", "best_epoch": 2}
        if with_validation:
            row.update(validation_loss=1.05 / e, validation_accuracy=0.6 + 0.001 * e)
        rows.append(row)
    return rows


def _figure(tmp_path, monkeypatch, runs):
    paths = []
    for i, rows in enumerate(runs):
        path = tmp_path / f"run{i}" / "metrics.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    captured = {}
    monkeypatch.setattr(plot, "_save", lambda fig, out: captured.setdefault("fig", fig))
    plot.plot_learning_curves(paths, str(tmp_path / "c.png"))
    return captured["fig"]


def _panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_short_run_has_markers_integer_ticks_and_every_panel(tmp_path, monkeypatch):
    fig = _figure(tmp_path, monkeypatch, [_rows(3)])
    acc = _panel(fig, "Accuracy")
    test_line = acc.get_lines()[0]
    assert test_line.get_marker() == "o" and list(test_line.get_xdata()) == [1, 2, 3]
    fig.canvas.draw()
    for title in ("Accuracy", "Loss (train with dropout)", "Seconds per epoch", "Connections (nnz) per layer",
                  "Neurons per hidden layer"):
        ticks = [t for t in _panel(fig, title).get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), title
    nnz = _panel(fig, "Connections (nnz) per layer").get_lines()
    assert [list(l.get_ydata()) for l in nnz] == [[99, 98, 97], [49, 48, 47], [20, 20, 20]]
    neurons = _panel(fig, "Neurons per hidden layer").get_lines()
    assert [list(l.get_ydata()) for l in neurons] == [[8, 8, 7], [6, 6, 6]]
    seconds = _panel(fig, "Seconds per epoch").get_lines()
    assert list(seconds[0].get_ydata()) == [3.0, 4.0, 5.0] and len(seconds) == 3
    # the selected epoch (best_epoch 2, chosen on validation) is starred at its test accuracy
    star = next(l for l in acc.get_lines() if l.get_marker() == "*")
    assert list(star.get_xdata()) == [2] and list(star.get_ydata()) == pytest.approx([52.0])
    assert any("selected: epoch 2 on validation_accuracy" in t.get_text() for t in acc.get_legend().get_texts())


def test_long_run_has_no_markers(tmp_path, monkeypatch):
    fig = _figure(tmp_path, monkeypatch, [_rows(40, with_validation=False)])
    lines = _panel(fig, "Accuracy").get_lines()
    assert lines[0].get_marker() in ("None", None, "")
    assert not any("validation" in l.get_label() for l in lines)


def test_legend_handles_show_the_dashes_beside_the_marker(tmp_path, monkeypatch):
    """Short runs mark every epoch; the default 2-em legend handle put the marker over the first gap of '--', so
    'train' and 'test' (Loss), 'train' and 'evolution' (Seconds), layer 0 and 1 (nnz) looked alike in the legend."""
    fig = _figure(tmp_path, monkeypatch, [_rows(3)])
    checked = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        room = (legend.handlelength * legend.prop.get_size_in_points()) / 2  # points on each side of the centre
        for handle in legend.get_lines():
            offset, dashes = handle._dash_pattern
            if dashes:  # the first dash and gap must end before the marker starts
                assert dashes[0] + dashes[1] < room - handle.get_markersize() / 2, (ax.get_title(), handle.get_label())
                checked += 1
    assert checked >= 5


def test_a_run_folder_stands_for_its_metrics_file(tmp_path, monkeypatch):
    """`sparsenet plot runs/fm` plots runs/fm/metrics.jsonl, labelled fm; a folder without one is one line
    naming the file, with no '[Errno 2]'."""
    run = tmp_path / "fm"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(3)))
    captured = {}
    monkeypatch.setattr(plot, "_save", lambda fig, out: captured.setdefault("fig", fig))
    plot.plot_learning_curves([str(run)], str(tmp_path / "c.png"))
    lines = _panel(captured["fig"], "Accuracy").get_lines()
    assert lines[0].get_label().startswith("fm") and list(lines[0].get_xdata()) == [1, 2, 3]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(plot.SparsenetError) as err:
        plot.plot_learning_curves([str(empty)], str(tmp_path / "d.png"))
    assert str(err.value) == f"cannot read metrics file {empty / 'metrics.jsonl'}: No such file or directory"
