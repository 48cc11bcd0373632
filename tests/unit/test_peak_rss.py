"""metrics.peak_rss_mb: this process's own peak, not the peak of the (large) parent that started it."""

import subprocess
import sys

import numpy as np

from sparsenet.metrics import peak_rss_mb

_PARENT = """
import subprocess, sys
import numpy as np
big = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
child = "from sparsenet.metrics import peak_rss_mb; print(peak_rss_mb())"
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout.strip())
from sparsenet.metrics import peak_rss_mb
print(peak_rss_mb())
"""


def test_a_small_child_of_a_large_parent_reports_its_own_peak():
    out = subprocess.run([sys.executable, "-c", _PARENT], capture_output=True, text=True, timeout=120, check=True)
    child, parent = map(float, out.stdout.split())
    assert parent > 400  # the parent's own peak holds its 400 MiB
    assert child < 200   # the child (Python + sparsenet.metrics, ~40 MiB) does not


def test_vmhwm_is_read_and_ru_maxrss_is_the_fallback(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n")
    assert peak_rss_mb(status) == 50.0
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    assert own > 0 and own <= peak_rss_mb(tmp_path / "missing") < own + 1  # ru_maxrss in kB here
    assert np.isfinite(peak_rss_mb())
