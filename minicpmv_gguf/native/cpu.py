"""The CPU's physical core count: the thread count llama.cpp runs fastest with."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads of one core count once); at least 1.

    llama.cpp runs fastest with one thread per physical core. Linux topology files are read when
    present; elsewhere this falls back to the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topo / "physical_package_id").read_text().strip()
            cores.add((package, (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))
