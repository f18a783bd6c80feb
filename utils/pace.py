"""Keep a run's pace when the machine becomes busy after it started.

utils/runtime.py picks libgomp's wait policy once, before torch loads: spinning on a quiet machine
(the fastest there), passive where others already load the cores. libgomp reads OMP_WAIT_POLICY
only when it loads, so a run that started spinning keeps spinning for its whole life; when
another CPU-heavy process starts later, each waiting thread burns the time slice its sibling needs,
and the run slows far beyond its fair share (measured: 6-9 s epochs became 30-112 s beside a few
short single-threaded processes on 2 cores; bench/README.md).

`PaceGuard`, a training-loop callback (utils/train.py adds it to every CPU run that spins by
default), times each epoch and the other processes' load over it. When an epoch took more than
TOLERANCE x its fair share of the fastest epoch so far while other processes kept at least
runtime.BUSY_CORES cores busy, and lost more than RESTART_SECONDS (about what a restart costs),
it says so and re-executes the same command line (os.execv: same process id, same output) with
OMP_WAIT_POLICY=PASSIVE. It acts right after the loop saved the epoch's resume state, so the new
process resumes after that epoch: the thread count is unchanged and the wait policy changes no
arithmetic, so the run ends bit-identical to an uninterrupted one (same seed, same numbers).

The fair share of a run with T threads beside others using L cores, on C cores: max(1, (T + L) / C)
times its quiet epoch. Only a process started from its command line restarts itself
(`utils.errors.cli_main` calls `allow_restart`), never one that called a script's main() in-process
(a test, a notebook), and never when the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT.
"""
import os
import sys
import time
from pathlib import Path

from utils.runtime import BUSY_CORES, usable_cores
from utils.train import Callback

TOLERANCE = 1.5  # an epoch slower than 1.5x its fair share has collapsed
RESTART_SECONDS = 5.0  # an epoch must lose more than this for a restart to pay off

_restart_allowed = False


def allow_restart():
    """This process runs an entry script from its command line: it may re-execute itself."""
    global _restart_allowed
    _restart_allowed = True


def spinning_by_default(environ=os.environ):
    """True when this process's OpenMP threads spin because runtime.py chose so (not the user)."""
    return "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ


def sample():
    """(wall seconds, CPU seconds the whole machine was busy, this process's CPU seconds), or
    None where /proc/stat cannot be read."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except (OSError, ValueError, IndexError):
        return None
    return time.monotonic(), busy, time.process_time()


def fair_share(threads, others, cores):
    """How many times its quiet epoch a run of `threads` threads may take beside others using
    `others` cores on `cores` cores: every runnable thread gets an equal slice."""
    return max(1.0, (min(threads, cores) + others) / cores)


def collapsed(seconds, fastest, others, threads, cores):
    """True when an epoch of `seconds` (the fastest so far: `fastest`) is far beyond its fair
    share while other processes load the cores, by more than a restart costs."""
    fair = fair_share(threads, others, cores) * fastest
    return others >= BUSY_CORES and seconds > TOLERANCE * fair and seconds - fair > RESTART_SECONDS


class PaceGuard(Callback):
    """Watch each epoch's pace; restart the process with passive OpenMP waiting after the epoch
    that collapsed (module docstring)."""

    def __init__(self, threads, desc="train"):
        self.threads, self.cores, self.desc = threads, usable_cores(), desc
        self.last, self.epochs, self.verdict = sample(), [], None

    @staticmethod
    def wanted(device, threads):
        """A guard is worth having: a CPU run of several threads, spinning by default, that may restart."""
        return _restart_allowed and str(device).startswith("cpu") and threads > 1 and spinning_by_default()

    def on_row(self, run):
        """After each row: the epoch's window (since the previous row) and the others' load in it."""
        now = sample()
        if now is None or self.last is None:
            self.last = now
            return
        wall, busy, own = (b - a for a, b in zip(self.last, now))
        self.last = now
        if run.epoch == 0 or wall <= 0:  # epoch 0 is an evaluation only: no epoch to compare
            return
        others = max(0.0, (busy - own) / wall)
        if self.epochs and collapsed(wall, min(self.epochs), others, self.threads, self.cores):
            self.verdict = (wall, min(self.epochs), others)
        self.epochs.append(wall)

    def on_saved(self, run):
        """After the epoch's resume state is saved: restart if that epoch collapsed."""
        if self.verdict is None:
            return
        wall, fastest, others = self.verdict
        fair = fair_share(self.threads, others, self.cores)
        print(f"{self.desc}: epoch {run.epoch} took {wall:.1f} s, {wall / fastest:.1f}x the fastest "
              f"({fastest:.1f} s), while other processes kept {others:.1f} of {self.cores} cores busy "
              f"(fair share {fair:.1f}x): switching to passive OpenMP waiting (OMP_WAIT_POLICY=PASSIVE); "
              f"restarting this command, which resumes after epoch {run.epoch}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)

