"""How run_all.py runs its jobs: one job per (seed, step), here (`local`) or on Slurm (`slurm`).

A job is one entry script's command line. Both launchers run the same argv, append its output to
<log_dir>/<step>.log under a header per attempt, and write <log_dir>/<step>.done when the script
exits 0 (the marker a Slurm rerun uses to leave finished steps out). Which job waits on which is
DEPENDS: the inputs each script reads, nothing more.

    python -m utils.launch --log L --marker M -- python step.py ...   # what a Slurm job runs
"""
import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError
from utils.io import save_text

REPO = Path(__file__).resolve().parents[1]
ATTEMPT_MARK = "===== run_all attempt,"  # starts the header line of each attempt in a step's log
# step: the steps of the same seed whose outputs it reads (steps left out with --skip are dropped)
DEPENDS = {
    "train_dense": (),
    # Tasks 2-4, three_regime, prune_at_init: the dense run's checkpoints only
    "prune_magnitude": ("train_dense",), "lottery_imp": ("train_dense",), "early_bird": ("train_dense",),
    "three_regime": ("train_dense",), "prune_at_init": ("train_dense",),
    "ticket_transfer": (),  # MNIST networks: needs nothing of the CIFAR-10 pipeline
    # its table compares with prune_at_init's, Early-Bird's and IMP's rows at the same sparsity
    "earlycrop": ("train_dense", "prune_at_init", "early_bird", "lottery_imp"),
    # attacks every dense and pruned checkpoint (utils.robustness.find_checkpoints: all but
    # ticket_transfer's and three_regime's)
    "robustness": ("train_dense", "prune_magnitude", "lottery_imp", "early_bird", "prune_at_init", "earlycrop"),
    # measures every network of the leaderboard: the steps whose runs it lists
    "deploy": ("train_dense", "prune_magnitude", "lottery_imp", "early_bird", "prune_at_init", "earlycrop"),
}
# Run once over the top-level results folder, after every training job of every seed.
FINAL_STEPS = ("plot_results", "make_report")


@dataclass
class Job:
    """One entry script run: `seed` None for the steps that run once over all seeds (and for every
    step of a single-seed pipeline, whose layout has no seed_<s> folders)."""
    step: str
    argv: list
    log_dir: Path
    results_dir: Path  # where its runs' summary.json files land (for the progress line)
    folder: str = None  # the folder under results_dir that holds its runs; None: no runs
    seed: int = None
    after: list = field(default_factory=list)  # indices of the jobs it waits for

    @property
    def title(self):
        return self.step if self.seed is None else f"{self.step} (seed {self.seed})"

    @property
    def log_path(self):
        return Path(self.log_dir) / f"{self.step}.log"

    @property
    def marker(self):
        return Path(self.log_dir) / f"{self.step}.done"


def link_jobs(jobs):
    """Fill each job's `after` from DEPENDS (same seed) and FINAL_STEPS (all training jobs; make_report
    also after plot_results). Jobs are in pipeline order; returns them."""
    for i, job in enumerate(jobs):
        if job.step in FINAL_STEPS:
            job.after = [k for k, other in enumerate(jobs[:i])
                         if other.step not in FINAL_STEPS or other.step == "plot_results"]
        else:
            job.after = [k for k, other in enumerate(jobs[:i])
                         if other.seed == job.seed and other.step in DEPENDS.get(job.step, ())]
    return jobs


def run_summaries(results_dir, folder):
    """{summary.json path: mtime} of every finished run under results/<folder>/."""
    root = Path(results_dir) / folder
    return {p: p.stat().st_mtime_ns for p in root.rglob("summary.json")} if root.is_dir() else {}


def open_attempt_log(log_path, argv):
    """The step's log, opened for appending with this attempt's header written: the log of a
    failed attempt is never overwritten."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a")
    log.write(f"{ATTEMPT_MARK} {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n$ " + shlex.join(map(str, argv)) + "\n")
    log.flush()
    return log


def last_attempt_line(log_path):
    """The last non-empty line this attempt wrote (the header and command left out)."""
    if not Path(log_path).is_file():
        return "(no log: the step did not start)"
    attempt = Path(log_path).read_text(errors="replace").rsplit(ATTEMPT_MARK, 1)[-1]
    tail = [ln for ln in attempt.splitlines()[2:] if ln.strip()][-1:]
    return tail[0].strip() if tail else "(no output)"


def mark_done(marker, argv):
    save_text(shlex.join(map(str, argv)) + "\n", marker)


# ---------------------------------------------------------------------------------------------
# local: subprocesses on this machine, up to --jobs at a time, one GPU each when there are several


class GpuPool:
    """Gives each started process a GPU of its own, round-robin over the visible ones.

    Visible: the CUDA_VISIBLE_DEVICES list when it is set (its entries are kept as written, ids or
    UUIDs), else 0..count-1. With fewer than two GPUs it hands out nothing (the environment is left
    as it is). A process gets the next GPU in round-robin order that no running process holds;
    when all are held (--jobs above the GPU count) it shares the next one in order."""

    def __init__(self, count, visible_env=None):
        listed = [d.strip() for d in visible_env.split(",") if d.strip()] if visible_env is not None else None
        devices = (listed if listed is not None else [str(i) for i in range(count)])[:count]
        self.devices = devices if len(devices) >= 2 else []
        self.held = {d: 0 for d in self.devices}
        self.next = 0

    @classmethod
    def from_environment(cls, env, device):
        if device == "cpu":
            return cls(0)
        import torch  # only here: the CPU-only paths need no CUDA query
        return cls(torch.cuda.device_count(), env.get("CUDA_VISIBLE_DEVICES"))

    def acquire(self):
        if not self.devices:
            return None
        order = [self.devices[(self.next + k) % len(self.devices)] for k in range(len(self.devices))]
        device = next((d for d in order if not self.held[d]), order[0])
        self.next = (self.devices.index(device) + 1) % len(self.devices)
        self.held[device] += 1
        return device

    def release(self, device):
        if device is not None:
            self.held[device] -= 1


class Running:
    """One job's subprocess, its output in its log file."""

    def __init__(self, position, index, total, job, env, gpus):
        self.position = position  # in the job list
        self.index, self.total, self.job = index, total, job
        self.before = run_summaries(job.results_dir, job.folder) if job.folder else {}
        self.gpus, self.gpu = gpus, gpus.acquire()
        env = dict(env)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        job.marker.unlink(missing_ok=True)  # written again only if this attempt succeeds
        self.log = open_attempt_log(job.log_path, job.argv)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(job.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.close()

    def close(self):
        self.log.close()
        self.gpus.release(self.gpu)
        self.gpu = None

    def finish(self):
        """Print the job's progress line; return its exit code."""
        self.close()
        job, code = self.job, self.proc.returncode
        seconds = time.perf_counter() - self.t0
        if code != 0:
            print(f"error: step {job.title} failed with exit code {code} after {seconds:.0f}s: "
                  f"{last_attempt_line(job.log_path)} (full log: {job.log_path})", file=sys.stderr, flush=True)
            return code
        mark_done(job.marker, job.argv)
        runs = ""
        if job.folder:
            after = run_summaries(job.results_dir, job.folder)
            trained = sum(1 for p, t in after.items() if self.before.get(p) != t)
            if after:  # robustness `evaluate` only attacks checkpoints: no runs of its own to count
                runs = f" {trained} run{'s' * (trained != 1)} trained, {len(after) - trained} already finished,"
        print(f"[{self.index}/{self.total}] {job.title}: done in {seconds:.0f}s,{runs} log {job.log_path}", flush=True)
        return 0


def run_local(jobs, parallel, env, gpus, poll_s=0.2):
    """Run `jobs` here, at most `parallel` at a time, each once the jobs it waits for are done,
    in list order among the ready ones. The first failure terminates the running jobs (they resume
    on the next run) and returns its exit code; 0 when all succeed."""
    done, running, started = set(), [], set()
    while len(done) < len(jobs):
        for i, job in enumerate(jobs):
            if len(running) >= parallel:
                break
            if i not in started and all(k in done for k in job.after):
                started.add(i)
                running.append(Running(i, len(started), len(jobs), job, env, gpus))
        time.sleep(poll_s)
        for run in [r for r in running if r.proc.poll() is not None]:
            running.remove(run)
            code = run.finish()
            if code != 0:
                for other in running:
                    other.stop()
                    print(f"stopped {other.job.title} (it resumes on the next run)", file=sys.stderr)
                return code
            done.add(run.position)
    return 0


# ---------------------------------------------------------------------------------------------
# slurm: one submitit job per (seed, step), Slurm dependencies between them


def parse_minutes(text):
    """--slurm-time: whole minutes (`90`) or HH:MM:SS (`01:30:00`) -> minutes (seconds rounded up)."""
    try:
        if ":" not in text:
            minutes = int(text)
        else:
            h, m, s = (int(p) for p in text.split(":"))
            if not (0 <= m < 60 and 0 <= s < 60 and h >= 0):
                raise ValueError
            minutes = h * 60 + m + (s > 0)
    except ValueError:
        raise UserError(f"--slurm-time {text!r}: give whole minutes (e.g. 720) or HH:MM:SS (e.g. 12:00:00)") from None
    if minutes < 1:
        raise UserError(f"--slurm-time must be at least 1 minute, got {text!r}")
    return minutes


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install submitit") from None
    return submitit


def to_submit(jobs, force):
    """Indices of the jobs to submit: those without their .done marker (all with --force), and every
    job downstream of one submitted (its inputs change, and its script skips what is still finished)."""
    chosen = set()
    for i, job in enumerate(jobs):  # pipeline order: a job's upstream jobs come first
        if force or not job.marker.is_file() or any(k in chosen for k in job.after):
            chosen.add(i)
    return sorted(chosen)


def step_command(job):
    """What a Slurm job runs: this module's wrapper around the step's argv."""
    return [sys.executable, "-m", "utils.launch", "--log", str(job.log_path), "--marker", str(job.marker),
            "--", *map(str, job.argv)]


def submit_slurm(jobs, log_folder, *, partition, gpus_per_job, minutes, array_parallelism, force):
    """Submit every job to do (to_submit) and print one line per job: seed, step, job id, the ids
    it waits for. Jobs that wait on the same jobs go in one job array (--slurm-array-parallelism
    caps how many of its tasks run at once). Without Slurm (no `srun`) submitit's local executor
    runs them on this machine; it has no dependencies, so this then waits for each wave of jobs
    before submitting the next. Returns the exit code."""
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=log_folder)
    local = executor.cluster != "slurm"
    todo = to_submit(jobs, force)
    skipped = len(jobs) - len(todo)
    print(f"run_all: launcher slurm ({executor.cluster} executor), {len(todo)} job(s) to submit, {skipped} "
          f"finished (their .done marker exists), submitit logs in {log_folder}", flush=True)
    ids, pending = {}, list(todo)
    while pending:
        # a wave: the jobs whose upstream jobs are finished or already submitted
        wave = [i for i in pending if all(k in ids or k not in todo for k in jobs[i].after)]
        groups = {}
        for i in wave:
            waits = tuple(sorted({ids[k] for k in jobs[i].after if k in ids}, key=str))
            gpus = 0 if jobs[i].step in FINAL_STEPS else gpus_per_job
            groups.setdefault((waits, gpus), []).append(i)
        submitted = []
        for (waits, gpus), members in groups.items():
            # afterok: start only after those succeed; a failure cancels this job instead of leaving
            # it pending forever (kill-on-invalid-dep). Set on every submit: parameters persist.
            dependency = {"dependency": "afterok:" + ":".join(map(str, waits)),
                          "kill_on_invalid_dep": "yes"} if waits else {}
            params = {"timeout_min": minutes, "slurm_additional_parameters": dependency,
                      "name": "run_all_" + (jobs[members[0]].step if len(members) == 1 else "group")}
            if array_parallelism:
                params["slurm_array_parallelism"] = array_parallelism
            if partition:
                params["slurm_partition"] = partition
            if local:  # visible GPUs only when there is one: CUDA_VISIBLE_DEVICES="" would hide them
                params["gpus_per_node"] = gpus if _cuda_available() else 0
            else:
                params["gpus_per_node"] = gpus
            executor.update_parameters(**params)
            functions = [submitit.helpers.CommandFunction(step_command(jobs[i]), cwd=str(REPO), verbose=False)
                         for i in members]
            if len(members) == 1:
                handles = [executor.submit(functions[0])]
            else:
                with executor.batch():
                    handles = [executor.submit(f) for f in functions]
            for i, handle in zip(members, handles):
                ids[i] = handle.job_id
                seed = "-" if jobs[i].seed is None else jobs[i].seed
                print(f"seed {seed} {jobs[i].step}: job {handle.job_id}"
                      + (f", after {' '.join(map(str, waits))}" if waits else ""), flush=True)
                submitted.append((i, handle))
        pending = [i for i in pending if i not in wave]
        if local:
            for i, handle in submitted:
                try:
                    handle.result()
                except Exception:  # the step failed: its .done marker is missing, so a rerun resubmits it
                    print(f"error: step {jobs[i].title} (job {handle.job_id}) failed: "
                          f"{last_attempt_line(jobs[i].log_path)} (full log: {jobs[i].log_path}); "
                          "run the same command again to resubmit it", file=sys.stderr, flush=True)
                    return 1
    if not local and todo:
        print(f"run_all: submitted; follow with squeue --me, the steps' logs in {Path(log_folder).parent} (and "
              "seed_<s>/logs/); run the same command again after they end to resubmit what failed", flush=True)
    return 0


def _cuda_available():
    import torch
    return torch.cuda.is_available()


def job_main(argv=None):
    """The Slurm job's wrapper: run the step with its output appended to its log; write the .done
    marker when it exits 0; exit with the step's exit code."""
    parser = argparse.ArgumentParser(description="run one run_all step, logged, with a .done marker on success")
    parser.add_argument("--log", required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    Path(args.marker).unlink(missing_ok=True)
    with open_attempt_log(args.log, command) as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code == 0:
        mark_done(args.marker, command)
    else:
        print(f"step failed with exit code {code}: {last_attempt_line(args.log)} (full log: {args.log})",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(job_main())
