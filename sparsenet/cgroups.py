"""Where this process sits in the cgroup hierarchies (v2 unified and a v1 controller), from /proc/self/cgroup."""

from __future__ import annotations

import os
from pathlib import Path


def own_cgroup_paths(controller: str, self_cgroup: str | os.PathLike = "/proc/self/cgroup") -> tuple[str | None, str | None]:
    """(v2 path, v1 path of `controller`), each relative to its hierarchy's mount, None where absent."""
    v2_path, v1_path = None, None
    try:
        text = Path(self_cgroup).read_text()
    except OSError:
        return None, None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, cg = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_path = cg
        elif controller in controllers.split(","):
            v1_path = cg
    return v2_path, v1_path
