"""Runs fuzz cases in one process under a virtual-memory limit; prints one JSON result per case.

Run by tests/unit/test_fuzz_inputs.py: python -m tests.unit.fuzz_run CASES.json BUDGET_MB
Each case is {"argv": [...]} (the sparsenet CLI, in-process) or {"idx": path} (read_idx). The machine
is made to look as if BUDGET_MB were available (the memory plan sees that), and RLIMIT_AS allows that
much beyond what the warmed-up process already maps: an allocation the plan did not foresee fails.
"""

import contextlib
import io
import json
import resource
import signal
import sys
import traceback

CASE_SECONDS = 20


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


class CaseTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def run_case(case: dict) -> dict:
    from sparsenet.cli import main
    from sparsenet.data.idx import read_idx
    from sparsenet.errors import SparsenetError

    out, err = io.StringIO(), io.StringIO()
    result = {"case": case}
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if "idx" in case:
                try:
                    read_idx(case["idx"])
                    code = 0
                except SparsenetError as exc:
                    print(f"sparsenet: error: {exc}", file=sys.stderr)
                    code = 2
            else:
                code = main(case["argv"])
        result.update(code=code)
    except CaseTimeout:
        result.update(code=None, exception="hang: no result within the case timeout")
    except SystemExit as exc:  # argparse
        result.update(code=exc.code)
    except BaseException as exc:  # noqa: BLE001 - what the test looks for
        result.update(code=None, exception=f"{type(exc).__name__}: {exc}"[:300],
                      traceback=traceback.format_exc()[-1500:])
    finally:
        signal.alarm(0)
    result.update(stderr=err.getvalue()[-2000:], stdout=out.getvalue()[-500:])
    return result


def main(cases_path: str, budget_mb: int) -> None:
    import sparsenet.memory as memory

    budget = budget_mb << 20
    memory.meminfo_available = lambda path="/proc/meminfo": (budget, 24 << 30)
    memory.cgroup_headroom = lambda *a, **k: (None, "")
    with open(cases_path) as f:
        cases = json.load(f)
    signal.signal(signal.SIGALRM, _alarm)
    warm = [c for c in cases if c.get("warmup")]
    for case in warm:  # imports and compiled kernels, before the limit
        r = run_case(case)
        print(json.dumps(r), flush=True)
    limit = _vm_size() + budget + (512 << 20)  # thread stacks and malloc arenas map more than they use
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for case in cases:
        if not case.get("warmup"):
            print(json.dumps(run_case(case)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
