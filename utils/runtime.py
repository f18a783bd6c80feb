"""CPU threading, chosen once at start-up, before PyTorch loads (so import this module first).

PyTorch's CPU kernels run on OpenMP threads (GNU libgomp in the pip wheels). By default an idle
libgomp thread spin-waits for a while at every barrier before it sleeps. On a quiet machine that
saves a few microseconds per kernel; on a busy one (a second training run, a test suite beside
it) a spinning thread burns the time slice its sibling needs to finish the very work it waits
for, and a run slows down far beyond its fair share (measured on a 2-core CPU: 7x slower beside
one competitor, against 2x for a fair share; bench/README.md). So, unless the user chose
otherwise:

- OMP_WAIT_POLICY=PASSIVE: waiting threads sleep at once (libgomp reads it when it loads, which
  is why this must run before `import torch`);
- OMP_NUM_THREADS = the cores this process may use (CPU affinity and the cgroup CPU quota of a
  container), where that is fewer than the machine's cores, since PyTorch would otherwise start
  one thread per core of the machine.

Any of OMP_WAIT_POLICY, GOMP_SPINCOUNT or OMP_NUM_THREADS set in the environment wins.
"""
import math
import os
from pathlib import Path


def usable_cores():
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2/v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = None
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if fields and fields[0] != "max":
            quota = int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError):
        try:  # cgroup v1
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = q / p if q > 0 else None
        except (OSError, ValueError):
            pass
    if quota:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def configure(environ=os.environ):
    """Set the OpenMP defaults above in `environ` (what the user set stays); return what was set."""
    chosen = {}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    cores = usable_cores()
    if "OMP_NUM_THREADS" not in environ and cores < (os.cpu_count() or cores):
        chosen["OMP_NUM_THREADS"] = str(cores)
    environ.update(chosen)
    return chosen


CHOSEN = configure()  # what this process set (bench/throughput.py runs the public recipe without it)
