"""The CLI's one-line error contract, checked the same way by every CLI test."""

from sparsenet.cli import main


def error_of(capsys, argv, with_stdout=False):
    """Run the CLI in-process; check exit code 2 and one 'sparsenet: error: ' line; return it (and stdout)."""
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert err.startswith("sparsenet: error: ") and "\n" not in err, err
    return (err, captured.out) if with_stdout else err
