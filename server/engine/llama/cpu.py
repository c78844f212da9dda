"""The default thread count: the physical cores this process may run on, as llama.cpp chooses.

llama.cpp's own tools default to the physical cores (``cpu_get_num_math``): a second
hyperthread on a core shares its vector units, so decode gains nothing from it and loses
to the contention. Unlike llama.cpp we count only the cores in the process's CPU affinity
(``taskset``, a container's cpuset), so a server pinned to two cores of a big machine does
not start forty threads that fight over them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: Iterable[int] | None = None, *, sys_cpu: Path = SYS_CPU) -> int:
    """Distinct physical cores among ``cpus`` (default: this process's affinity), at least 1.

    Logical CPUs that list the same ``thread_siblings_list`` are one core. Without the
    topology files (not Linux, a restricted /sys) every logical CPU counts as a core.
    """
    logical = list(cpus) if cpus is not None else allowed_cpus()
    cores: set[str] = set()
    for cpu in logical:
        try:
            cores.add((sys_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            return max(1, len(logical))
    return max(1, len(cores))
