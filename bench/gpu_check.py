"""The one GPU check's steps and summary (issue 23); run it as `bash bench/gpu_check.sh`.

Steps, most valuable first; each runs the real command as a subprocess (printed with its figures,
its output appended to check.log) and rewrites the summary when it ends, so a check stopped by a
time limit still leaves every figure so far:

  info        the card, its driver, torch, CUDA and cuDNN
  throughput  bench/throughput.py on CUDA: eager and compiled s per 50,000-image epoch, compile time
  tests       the CUDA tests but the smoke pipeline's (python -m pytest -m cuda)
  accuracy    the CPU's accuracy mini-protocol on CUDA, compiled: train_dense.py, 30 epochs, lr drops
              after 15 and 23, seeds 0-2 (side by side), mean final test accuracy against the CPU's
              67.73 +- 1.93% (6 seeds, bench/README.md) by the project's noise rule
  jobs        a fixed set of training steps (the smoke preset's dense run on the whole slice, seeds
              0-3) through run_all.py --jobs 1, then --jobs 4, on the one GPU
  smoke       the smoke pipeline's CUDA test (run_all.py --preset smoke --device cuda), timed

Each step gets at most its share of --budget (default 440 s, so the whole check, wheels and
start-up included, ends inside 8 minutes); a step left without time is reported "not run". Writes summary.md, summary.json,
check.log and throughput.json to --out (default: $OUT if set, else results/gpu_check).
"""
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.config import make_parser  # noqa: E402
from utils.errors import UserError, cli_main  # noqa: E402
from utils.io import save_json, save_text  # noqa: E402
from utils.noise import compare  # noqa: E402

PY = sys.executable
STEPS = ("info", "throughput", "tests", "accuracy", "jobs", "smoke")
# Seconds each step may take at most (the budget's remainder caps them further).
CAPS = {"info": 30, "throughput": 150, "tests": 200, "accuracy": 120, "jobs": 150, "smoke": 460}
# The CPU's figures (bench/README.md, bench/accuracy.py "ours (bf16 autocast)", 30 epochs, milestones
# 15 23, on the 5,085-image slice): per seed, and the mean and sd over seeds 0-5.
CPU_ACCURACY = {0: 67.94, 1: 67.35, 2: 64.50, 3: 67.26, 4: 70.01, 5: 69.32}
ACCURACY_SEEDS = (0, 1, 2)
JOBS_SEEDS = (0, 1, 2, 3)


# ---------------------------------------------------------------------------------------------
# Reading the results (pure functions: tests/test_gpu_check.py checks them on hand-made inputs)

def accuracy_verdict(gpu, cpu=CPU_ACCURACY):
    """The GPU's final test accuracies ({seed: %}) against the CPU's ({seed: %}), by the project's
    rule (utils/noise.py: a difference is called only when |Δ| > 2·se).

    Means: Δ = mean(GPU) − mean(CPU over all its seeds), se = √(sd_GPU²/n_GPU + sd_CPU²/n_CPU), the
    seeds' sample sds (one GPU seed: the CPU's sd stands for the GPU's). Paired: the same seed on
    both devices starts from the same initialisation, data order and crops (CPU generators), so
    utils.noise.compare on the seeds both have."""
    g, c = [gpu[s] for s in sorted(gpu)], [cpu[s] for s in sorted(cpu)]
    sd_c = statistics.stdev(c)
    sd_g = statistics.stdev(g) if len(g) >= 2 else sd_c
    diff = statistics.fmean(g) - statistics.fmean(c)
    se = math.sqrt(sd_g ** 2 / len(g) + sd_c ** 2 / len(c))
    called = abs(diff) > 2 * se
    word = ("higher" if diff > 0 else "lower") if called else "within noise"
    shared = sorted(set(gpu) & set(cpu))
    paired = compare([gpu[s] for s in shared], [cpu[s] for s in shared])
    text = (f"{word} (Δ = {diff:+.2f} ± {se:.2f} points: GPU {statistics.fmean(g):.2f} ± "
            f"{statistics.stdev(g) if len(g) >= 2 else 0:.2f} over seeds {' '.join(map(str, sorted(gpu)))}, "
            f"CPU {statistics.fmean(c):.2f} ± {sd_c:.2f} over {len(c)} seeds); paired by seed: "
            f"{paired.says()}")
    return {"gpu_mean": statistics.fmean(g), "cpu_mean": statistics.fmean(c), "diff": diff, "se": se,
            "called": called, "within_noise": not called, "paired_diff": paired.diff, "paired_se": paired.se,
            "text": text}


RESULT = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)
SHORT = re.compile(r"^(FAILED|ERROR) (tests/\S+::\S+)(?: - (.*))?$", re.M)
DURATION = re.compile(r"^([\d.]+)s call\s+(tests/\S+::\S+)$", re.M)


def pytest_results(log):
    """What `pytest -v --durations=0` printed, read line by line (so a run cut short still counts
    what finished): {"counts": {status: n}, "failed": {node: message}, "call_seconds": {node: s}}."""
    status = {}
    for node, word in RESULT.findall(log):
        if status.get(node) not in ("FAILED", "ERROR"):  # a teardown ERROR after PASSED counts
            status[node] = word
    counts = {}
    for word in status.values():
        counts[word.lower()] = counts.get(word.lower(), 0) + 1
    failed = {node: (msg or "").strip() for word, node, msg in SHORT.findall(log)}
    failed.update({n: "" for n, w in status.items() if w in ("FAILED", "ERROR") and n not in failed})
    seconds = {node: float(s) for s, node in DURATION.findall(log)}
    return {"counts": counts, "failed": failed, "call_seconds": seconds}


def describe_tests(results):
    counts = results["counts"]
    text = ", ".join(f"{n} {word}" for word, n in sorted(counts.items())) or "no test finished"
    if results["failed"]:
        text += "; failing: " + "; ".join(f"{node.split('::')[-1]} ({msg[:160]})" if msg else node.split("::")[-1]
                                          for node, msg in results["failed"].items())
    return text


def shell(cmd):
    """The command as one would type it (this interpreter shown as `python`)."""
    return shlex.join(["python" if c == PY else str(c) for c in cmd])


# ---------------------------------------------------------------------------------------------
# Running

class Check:
    """The running check: the budget, the log, and the summary rewritten after every figure."""

    def __init__(self, out, work, budget, env, data):
        self.out, self.work, self.env, self.data = Path(out), Path(work), env, Path(data)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.budget = budget
        self.head, self.figures, self.steps = {}, [], {}
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "check.log"
        self.log_path.write_text("")

    def left(self):
        return self.deadline - time.monotonic()

    def figure(self, step, name, value, command=None):
        self.figures.append({"step": step, "name": name, "value": value, "command": command})
        print(f"[{step}] {name}: {value}" + (f"   <- {command}" if command else ""), flush=True)
        self.write()

    def start(self, cmd, log):
        return subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)

    def run(self, step, cmds, cap):
        """Run the commands side by side within min(cap, time left); (all exited 0, seconds, output).
        On the time limit every process group is killed and the step reported as timed out."""
        limit = min(cap, self.left())
        logs = [tempfile.TemporaryFile("w+") for _ in cmds]
        with open(self.log_path, "a") as log:
            for cmd in cmds:
                log.write(f"\n===== {step}: {shell(cmd)}\n")
        print(f"[{step}] running (at most {limit:.0f} s): " + "  &  ".join(shell(c) for c in cmds), flush=True)
        t0 = time.monotonic()
        procs = [self.start(cmd, f) for cmd, f in zip(cmds, logs)]
        timed_out = False
        for p in procs:
            try:
                p.wait(max(0.0, t0 + limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        seconds = time.monotonic() - t0
        output = []
        for f in logs:
            f.seek(0)
            output.append(f.read())
            f.close()
        text = "\n".join(output)
        with open(self.log_path, "a") as log:
            log.write(text)
        codes = [p.returncode for p in procs]
        ok = not timed_out and all(c == 0 for c in codes)
        status = "ok" if ok else f"timed out after {seconds:.0f} s" if timed_out else f"exit codes {codes}"
        self.steps[step] = {"status": status, "seconds": round(seconds, 1)}
        if not ok:
            tail = [ln for ln in text.splitlines() if ln.strip()][-3:]
            print(f"[{step}] {status}: " + " | ".join(tail), flush=True)
        self.write()
        return ok, seconds, text

    def write(self):
        used = time.monotonic() - self.t0
        summary = {**self.head, "seconds_used": round(used, 1), "budget_seconds": self.budget,
                   "steps": self.steps, "figures": self.figures}
        save_json(summary, self.out / "summary.json")
        lines = [f"# GPU check, {self.head.get('date', '')}", ""]
        lines += [f"- {k}: {v}" for k, v in self.head.items() if k != "date"]
        lines += [f"- time used: {used:.0f} s of a {self.budget:.0f} s budget", ""]
        for step in STEPS:
            state = self.steps.get(step)
            figures = [f for f in self.figures if f["step"] == step]
            if state is None and not figures:
                continue
            lines.append(f"## {step}" + (f" ({state['status']}, {state['seconds']:.0f} s)" if state else ""))
            for f in figures:
                lines.append(f"- {f['name']}: **{f['value']}**" + (f"  \n  `{f['command']}`" if f["command"] else ""))
            lines.append("")
        save_text("\n".join(lines), self.out / "summary.md")


def step_info(check):
    import torch

    props = torch.cuda.get_device_properties(0)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        smi = "unknown (nvidia-smi did not answer)"
    check.head.update({
        "card": f"{props.name} (compute capability {props.major}.{props.minor}, "
                f"{props.total_memory / 2 ** 30:.0f} GiB, {props.multi_processor_count} SMs)",
        "driver": smi, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "python": sys.version.split()[0],
        "gpus_visible": torch.cuda.device_count()})
    check.steps["info"] = {"status": "ok", "seconds": 0.0}
    print(f"[info] {check.head['card']}, driver {smi}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
          f"cuDNN {check.head['cudnn']})", flush=True)
    check.write()


def throughput_figures(r, epochs=160):
    """[(name, value)] from bench/throughput.py's --out report `r` of a CUDA run: s per 50,000-image
    epoch eager and compiled, compile time, evaluation, and whether compiling pays over `epochs`
    full epochs (compile time included), which decides --compile auto on CUDA."""
    eager, compiled = r["ours"], r["ours compiled"]
    per_10k = [v["eval_seconds"] * 10000 / r["test_images"] for v in (eager, compiled)]
    eager_total = epochs * eager["epoch_seconds_per_50k"]
    compiled_total = epochs * compiled["epoch_seconds_per_50k"] + r["compile_seconds"]
    verdict = "pays on CUDA: keep it on" if compiled_total < eager_total else "does NOT pay: make it off"
    return [
        ("precision, batch size", f"{r['precision']}, {r['batch_size']}"),
        ("eager: s per 50,000-image epoch (incl. test evaluation)", f"{eager['epoch_seconds_per_50k']:.2f}"),
        ("compiled: s per 50,000-image epoch (incl. test evaluation)", f"{compiled['epoch_seconds_per_50k']:.2f}"),
        ("compile time, s (once per run)", f"{r['compile_seconds']:.1f}"),
        ("training images/s, eager / compiled (compiled bare step)",
         f"{eager['images_per_s']:.0f} / {compiled['images_per_s']:.0f} ({compiled['bare_step_images_per_s']:.0f})"),
        ("evaluation of 10,000 images, s, eager / compiled", f"{per_10k[0]:.3f} / {per_10k[1]:.3f}"),
        (f"{epochs} full epochs, s: eager / compiled incl. compiling",
         f"{eager_total:.0f} / {compiled_total:.0f}: --compile auto {verdict}"),
    ]


def step_throughput(check):
    out = check.out / "throughput.json"
    cmd = [PY, "bench/throughput.py", "--data-dir", check.data / "cifar10", "--no-download", "--device", "cuda",
           "--repeats", 3, "--out", out]
    ok, _, _ = check.run("throughput", [cmd], CAPS["throughput"])
    if ok and out.is_file():
        for name, value in throughput_figures(json.loads(out.read_text())):
            check.figure("throughput", name, value, shell(cmd))


def pytest_cmd(selection):
    return [PY, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-v", "-p", "no:cacheprovider",
            "--durations=0", "-k", selection]


def step_tests(check):
    cmd = pytest_cmd("not smoke")
    _, _, text = check.run("tests", [cmd], CAPS["tests"])
    check.figure("tests", "CUDA tests (all but the smoke pipeline's)", describe_tests(pytest_results(text)), shell(cmd))


def accuracy_cmd(data, root, seed):
    """The CPU's mini-protocol (bench/accuracy.py's "ours") as train_dense.py on CUDA, compiled (auto)."""
    return [PY, "train_dense.py", "--data-dir", Path(data) / "cifar10", "--no-download", "--device", "cuda",
            "--epochs", 30, "--milestones", 15, 23, "--seed", seed,
            "--checkpoint-dir", Path(root) / "ck", "--results-dir", Path(root) / "res"]


def jobs_cmd(data, root, jobs):
    """The smoke preset's dense run on the whole slice for seeds JOBS_SEEDS, nothing else, --jobs `jobs`."""
    import run_all

    others = [s for s, _ in run_all.STEPS if s != "train_dense"]
    return [PY, "run_all.py", "--preset", "smoke", "--seeds", *JOBS_SEEDS, "--train-subset", 0, "--test-subset", 0,
            "--device", "cuda", "--data-dir", Path(data) / "cifar10", "--no-download", "--skip", *others,
            "--jobs", jobs, "--checkpoint-dir", Path(root) / "ck", "--results-dir", Path(root) / "res"]


def step_accuracy(check):
    def cmd(seed):
        return accuracy_cmd(check.data, check.work / "accuracy" / f"seed_{seed}", seed)

    check.run("accuracy", [cmd(s) for s in ACCURACY_SEEDS], CAPS["accuracy"])
    shown = shell(cmd("S")).replace("/seed_S/", "/seed_<S>/")
    accs, runs = {}, {}
    for seed in ACCURACY_SEEDS:
        path = check.work / "accuracy" / f"seed_{seed}" / "res" / "dense" / "summary.json"
        if path.is_file():
            runs[seed] = json.loads(path.read_text())
            accs[seed] = runs[seed]["test_acc"]
    if not accs:
        return
    s = runs[min(runs)]
    check.figure("accuracy", f"final test accuracy % per seed ({s['precision']}, compiled {s['compiled']})",
                 ", ".join(f"seed {k}: {v:.2f}" for k, v in accs.items()), shown)
    check.figure("accuracy", "training seconds per run (30 epochs, 3 runs side by side)",
                 ", ".join(f"{r['seconds']:.0f}" for r in runs.values()), shown)
    check.figure("accuracy", "GPU against CPU (67.73 ± 1.93%, 6 seeds)", accuracy_verdict(accs)["text"], shown)


def step_jobs(check):
    import run_all

    dense = run_all.preset_flags("smoke", "ck")[0]["train_dense"]
    epochs = int(dense[dense.index("--epochs") + 1])

    def cmd(jobs):
        return jobs_cmd(check.data, check.work / f"jobs_{jobs}", jobs)

    train_images = 5085  # the slice's training set: --train-subset 0 takes it all
    steps = len(JOBS_SEEDS) * epochs * math.ceil(train_images / 128)
    seconds = {}
    for jobs in (1, 4):
        ok, t, _ = check.run("jobs", [cmd(jobs)], min(CAPS["jobs"] / 2, check.left()))
        if not ok:
            return
        seconds[jobs] = t
        check.figure("jobs", f"--jobs {jobs}: {len(JOBS_SEEDS)} dense runs x {epochs} epochs ({steps} steps), s",
                     f"{t:.1f} ({steps / t:.0f} steps/s)", shell(cmd(jobs)))
    check.figure("jobs", "--jobs 4 against --jobs 1 on one GPU: throughput ratio (target >= 2)",
                 f"{seconds[1] / seconds[4]:.2f}x")


def step_smoke(check):
    cmd = pytest_cmd("smoke")
    ok, t, text = check.run("smoke", [cmd], CAPS["smoke"])
    results = pytest_results(text)
    check.figure("smoke", "the smoke pipeline's CUDA test", describe_tests(results), shell(cmd))
    call = next(iter(results["call_seconds"].values()), None)
    check.figure("smoke", "smoke pipeline on CUDA, s (run_all.py --preset smoke --device cuda, one seed)",
                 f"{call:.0f}" if call is not None else f"over {t:.0f} (did not finish)",
                 f"python run_all.py --preset smoke --device cuda --data-dir {check.data / 'cifar10'} "
                 f"--mnist-dir {check.data / 'mnist'} --no-download")


@cli_main
def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], prog="bench/gpu_check.py")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS), help="run only these steps")
    parser.add_argument("--budget", type=float, default=440, help="seconds for all steps together")
    parser.add_argument("--data", default=str(REPO / ".gpu_data"), help="folder holding cifar10/ and mnist/")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "results" / "gpu_check"),
                        help="where the summary goes (default: $OUT, else results/gpu_check)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise UserError("the GPU check needs a CUDA GPU and PyTorch sees none here; run bash bench/gpu_check.sh "
                        "on a machine with one")
    data = Path(args.data)
    for sub in ("cifar10/cifar-10-batches-py", "mnist/MNIST/raw"):
        if not (data / sub).is_dir():
            raise UserError(f"{data / sub} not found; fill {data} with bash bench/gpu_prepare.sh (where "
                            "../shared/data is) and carry it to this machine")
    env = dict(os.environ, CIFAR_SLICE=str(data / "cifar10"), MNIST_SLICE=str(data / "mnist"), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        check = Check(args.out, work, args.budget, env, data)
        check.head["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        check.head["data"] = f"{data} (CIFAR-10 slice: 5,085 training, 1,017 test images; MNIST slice)"
        for step in STEPS:
            if step not in args.only and step != "info":
                continue
            if check.left() < 15:
                check.steps[step] = {"status": "not run: the time budget was spent", "seconds": 0.0}
                check.write()
                continue
            globals()[f"step_{step}"](check)
        check.write()
        print(f"\n===== summary ({check.out / 'summary.md'})\n" + (check.out / "summary.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
