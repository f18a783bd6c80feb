"""Images/s of our training loop against its bare step, seconds per epoch with evaluation, and
the same for the common public recipe, eager and compiled.

    python bench/throughput.py --data-dir data --compare-public          # CPU: ours vs public
    python bench/throughput.py --data-dir data                           # CUDA: eager vs compiled

Measures, medians over --repeats interleaved repeats:
- bare step: model, loss, backward, SGD on one fixed batch (nothing else): the ceiling;
- our loop (utils.train.train_epoch): --steps batches, then one full epoch plus the test
  evaluation (utils.train.evaluate), as train_run runs them;
- with --compare-public, the public recipe (bench/public_recipe.py), in its own process with
  PyTorch's default threading, as users run it;
- with --compiled (default on CUDA), our loop torch.compiled as --compile on runs it (compile
  time reported apart);
The busy-machine case: start a second training run first (e.g. `python train_dense.py` in
another terminal), wait until it trains, then run this; every process chooses its threading when
it starts (utils/runtime.py).
Also prints seconds per 50,000-image epoch (the full CIFAR-10 training set).
"""
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import utils.runtime  # noqa: E402  (before torch: CPU threads, OpenMP wait policy)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data import to_pixels  # noqa: E402
from models import get_model  # noqa: E402
from utils.config import TrainConfig  # noqa: E402
from utils.errors import UserError, cli_main  # noqa: E402
from utils.experiment import task_parser, task_setup  # noqa: E402
from utils.io import save_json  # noqa: E402
from utils.train import (autocast, compiled_forward, cpu_generator, cpu_has_native_bf16, evaluate,  # noqa: E402
                         make_optimizer, seeded, train_epoch)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_bare(model, optimizer, setup, steps, forward):
    """Seconds for `steps` bare training steps on one fixed batch."""
    x = to_pixels(setup.train.images[:setup.hp.batch_size])
    y = setup.train.labels[:setup.hp.batch_size]
    sync(setup.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast(setup.device, setup.precision):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(setup.device)
    return time.perf_counter() - t0


def time_loop(model, optimizer, setup, steps, forward, compiled):
    """(seconds for `steps` batches, seconds for one full epoch + test evaluation, of which
    the evaluation)."""
    order, aug, bs = cpu_generator(0, "order"), cpu_generator(0, "augment"), setup.hp.batch_size
    sync(setup.device)
    t0 = time.perf_counter()
    loss, _ = train_epoch(model, optimizer, setup.train, bs, order, aug, max_steps=steps,
                          precision=setup.precision, forward=forward)
    loss.item()  # the one host sync, as in train_run
    step_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss, _ = train_epoch(model, optimizer, setup.train, bs, order, aug, precision=setup.precision,
                          forward=forward)
    loss.item()
    t1 = time.perf_counter()
    evaluate(model, setup.test, precision=setup.precision, compile=compiled)
    t2 = time.perf_counter()
    return step_seconds, t2 - t0, t2 - t1


def cpu_model():
    """'AMD EPYC (AVX2, no native bf16)': the CPU's name and whether it computes bf16 natively."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "CPU")
    flags = set(info.split())
    vector = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name} ({vector}, {'native bf16' if cpu_has_native_bf16() else 'no native bf16'})"


class PublicRecipe:
    """bench/public_recipe.py serving timings from its own process (default OpenMP settings)."""

    def __init__(self, args, hp):
        env = {k: v for k, v in os.environ.items() if k not in utils.runtime.CHOSEN}
        cmd = [sys.executable, str(REPO / "bench" / "public_recipe.py"), "--data-dir", args.data_dir,
               "--train-subset", str(args.train_subset), "--test-subset", str(args.test_subset),
               "--arch", args.arch, "--batch-size", str(hp.batch_size), "--lr", str(hp.lr),
               "--warmup", str(args.warmup)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise UserError("the public recipe's timing process stopped; run python "
                            "bench/public_recipe.py with the same flags to see why")
        return json.loads(line)

    def time(self, steps):
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        r = self._read()
        return r["step_seconds"], r["epoch_seconds"], None

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


@cli_main
def main(argv=None):
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (capped at one epoch)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="measurements; the median is reported")
    parser.add_argument("--compare-public", action="store_true", help="also time the public recipe")
    parser.add_argument("--compiled", choices=("auto", "yes", "no"), default="auto",
                        help="also time our loop torch.compiled; auto = on CUDA only (compiling "
                             "on a CPU takes minutes)")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    setup = task_setup(args)
    hp: TrainConfig = setup.hp
    steps = min(args.steps, math.ceil(len(setup.train) / hp.batch_size))
    step_images = min(steps * hp.batch_size, len(setup.train))
    compiled = args.compiled == "yes" or (args.compiled == "auto" and setup.device.type == "cuda")

    model = seeded(lambda: get_model(args.arch), 0).to(setup.device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, hp)
    variants = {"ours": model}
    compile_seconds = None
    if compiled:
        forward = compiled_forward(model, setup.device)
        t0 = time.perf_counter()  # compile: the full batch, the last partial one, the evaluation
        train_epoch(model, optimizer, setup.train, hp.batch_size, cpu_generator(2, "o"), cpu_generator(2, "a"),
                    precision=setup.precision, forward=forward)
        evaluate(model, setup.test, precision=setup.precision, compile=True)
        sync(setup.device)
        compile_seconds = time.perf_counter() - t0
        variants["ours compiled"] = forward
    for forward in variants.values():
        train_epoch(model, optimizer, setup.train, hp.batch_size, cpu_generator(1, "o"), cpu_generator(1, "a"),
                    max_steps=args.warmup, precision=setup.precision, forward=forward)
        time_bare(model, optimizer, setup, 2, forward)
    evaluate(model, setup.test, precision=setup.precision)

    public = PublicRecipe(args, hp) if args.compare_public else None
    try:
        runs = {name: [] for name in variants}
        bare = {name: [] for name in variants}
        if public:
            runs["public"] = []
        for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
            for name, forward in variants.items():
                is_compiled = name != "ours"
                bare[name].append(time_bare(model, optimizer, setup, steps, forward))
                runs[name].append(time_loop(model, optimizer, setup, steps, forward, is_compiled))
            if public:
                runs["public"].append(public.time(steps))
    finally:
        if public:
            public.close()

    report = {"device": str(setup.device), "cpu_threads": torch.get_num_threads(), "arch": args.arch,
              "precision": setup.precision, "batch_size": hp.batch_size, "train_images": len(setup.train),
              "test_images": len(setup.test), "steps": steps, "compile_seconds": compile_seconds,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default (spin)")}
    if setup.device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(setup.device)
    else:
        report["cpu"] = cpu_model()
    print(f"{report.get('gpu') or report['cpu']}: {report['cpu_threads']} CPU threads, {setup.precision}, "
          f"OpenMP wait: {report['omp_wait_policy']}")
    for name, times in runs.items():
        step_s = statistics.median(t[0] for t in times)
        epoch_s = statistics.median(t[1] for t in times)
        entry = {"images_per_s": step_images / step_s, "epoch_seconds": epoch_s,
                 "epoch_seconds_per_50k": epoch_s * 50000 / len(setup.train)}
        if name in bare:
            entry["bare_step_images_per_s"] = steps * hp.batch_size / statistics.median(bare[name])
            entry["loop_vs_bare"] = entry["images_per_s"] / entry["bare_step_images_per_s"]
            entry["eval_seconds"] = statistics.median(t[2] for t in times)
        report[name] = entry
        extra = (f" (bare step {entry['bare_step_images_per_s']:.0f} images/s: loop at "
                 f"{100 * entry['loop_vs_bare']:.0f}%; evaluation {entry['eval_seconds']:.2f} s)"
                 if name in bare else "")
        print(f"{name:>13}: {entry['images_per_s']:7.0f} images/s training, {epoch_s:6.2f} s per epoch incl. "
              f"evaluation ({len(setup.train)} train / {len(setup.test)} test images; "
              f"{entry['epoch_seconds_per_50k']:.1f} s per 50k-image epoch){extra}")
    if compiled:
        print(f"compiling took {compile_seconds:.1f} s (once per run)")
    if public:
        report["speedup"] = report["ours"]["images_per_s"] / report["public"]["images_per_s"]
        report["epoch_speedup"] = report["public"]["epoch_seconds"] / report["ours"]["epoch_seconds"]
        print(f"speed-up over the public recipe: {report['speedup']:.2f}x images/s, "
              f"{report['epoch_speedup']:.2f}x per epoch")
    if args.out:
        save_json(report, args.out)


if __name__ == "__main__":
    main()
