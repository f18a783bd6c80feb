"""CPU threading, chosen once at start-up, before PyTorch loads (so import this module first).

PyTorch's CPU kernels run on OpenMP threads (GNU libgomp in the pip wheels). By default an idle
libgomp thread spin-waits for a while at every barrier before it sleeps. On a quiet machine that
is the fastest choice (the next kernel starts without a wake-up); on a busy one (a second training
run, a test suite beside it) a spinning thread burns the time slice its sibling needs to finish
the very work it waits for, and a run slows down far beyond its fair share. Measured on a 2-core
AVX2 CPU (bench/README.md): beside a second training run, spinning ran at 1/4 of its quiet speed
and passive waiting at 1/2 (the fair share); on a quiet machine passive waiting cost ~20%.
So, unless the user chose otherwise:

- OMP_WAIT_POLICY=PASSIVE (waiting threads sleep at once) when other processes keep at least
  half a core busy while this one starts (sampled from /proc/stat for 0.1 s); libgomp's default
  spinning otherwise. libgomp reads the variable when it loads: that is why this runs before
  `import torch`, and why the choice holds for the whole process;
- OMP_NUM_THREADS = the cores this process may use (CPU affinity and the cgroup CPU quota of a
  container), where that is fewer than the machine's cores, since PyTorch would otherwise start
  one thread per core of the machine.

- glibc's malloc keeps freed memory for reuse (mmap threshold 32 MB, trim threshold 1 GB)
  instead of returning every activation buffer to the kernel after each step and faulting it
  in again, zeroed, in the next (measured: 3x fewer page faults, about 10% faster steps on a
  2-core CPU).

Any of OMP_WAIT_POLICY, GOMP_SPINCOUNT or OMP_NUM_THREADS set in the environment wins, and
GLIBC_TUNABLES or MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ leave malloc as they set it.
"""
import ctypes
import math
import os
import sys
import time
from pathlib import Path

BUSY_CORES = 0.5  # other processes' load (in cores) from which waiting threads sleep at once


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


def others_load(seconds=0.1):
    """Cores' worth of CPU time the machine spent busy over `seconds` (this process sleeps
    meanwhile, so it is the others' load); None where /proc/stat is not available."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait (USER_HZ ticks)

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def configure(environ=os.environ, load=others_load):
    """Set the OpenMP defaults above in `environ` (what the user set stays); return what was set."""
    chosen = {}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        busy = load()
        if busy is not None and busy >= BUSY_CORES:
            chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    cores = usable_cores()
    if "OMP_NUM_THREADS" not in environ and cores < (os.cpu_count() or cores):
        chosen["OMP_NUM_THREADS"] = str(cores)
    environ.update(chosen)
    return chosen


def keep_freed_memory(environ=os.environ):
    """glibc malloc: serve buffers up to 32 MB from the heap and keep up to 1 GB of freed memory
    (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD); True when set. Not on other C libraries."""
    if not sys.platform.startswith("linux") or any(
            k in environ for k in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))  # M_MMAP/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


CHOSEN = configure()  # what this process set (bench/throughput.py runs the public recipe without it)
MALLOC_TUNED = keep_freed_memory()
