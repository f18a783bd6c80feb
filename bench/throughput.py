"""Images/s of our training loop, and seconds per full epoch (train + test evaluation).

    python bench/throughput.py --data-dir data --compare-public

With --compare-public the common public recipe (bench/public_recipe.py: torchvision transforms
in a DataLoader with 2 workers, NCHW fp32) is measured in the same run, interleaved with ours,
and the ratio is printed. Medians over --repeats.
"""
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models import get_model  # noqa: E402
from utils.config import TrainConfig  # noqa: E402
from utils.errors import cli_main  # noqa: E402
from utils.experiment import task_parser, task_setup  # noqa: E402
from utils.io import save_json  # noqa: E402
from utils.train import cpu_generator, evaluate, make_optimizer, seeded, train_epoch  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ours(model, optimizer, setup, steps):
    """Seconds for `steps` training batches, and for one full epoch plus test evaluation."""
    order, aug, bs = cpu_generator(0, "order"), cpu_generator(0, "augment"), setup.hp.batch_size
    sync(setup.device)
    t0 = time.perf_counter()
    loss, _ = train_epoch(model, optimizer, setup.train, bs, order, aug, max_steps=steps,
                          precision=setup.precision)
    loss.item()  # the one host sync, as in train_run
    step_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss, _ = train_epoch(model, optimizer, setup.train, bs, order, aug, precision=setup.precision)
    loss.item()
    evaluate(model, setup.test, precision=setup.precision)
    return step_seconds, time.perf_counter() - t0


def time_public(model, optimizer, loaders, steps):
    from bench import public_recipe

    train_loader, test_loader = loaders
    t0 = time.perf_counter()
    public_recipe.train_epoch(model, optimizer, train_loader, max_steps=steps)
    step_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    public_recipe.train_epoch(model, optimizer, train_loader)
    public_recipe.evaluate(model, test_loader)
    return step_seconds, time.perf_counter() - t0


@cli_main
def main(argv=None):
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (capped at one epoch)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="measurements; the median is reported")
    parser.add_argument("--compare-public", action="store_true", help="also time the public recipe")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    setup = task_setup(args)
    hp: TrainConfig = setup.hp
    steps = min(args.steps, math.ceil(len(setup.train) / hp.batch_size))
    step_images = min(steps * hp.batch_size, len(setup.train))

    model = seeded(lambda: get_model(args.arch), 0).to(setup.device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, hp)
    train_epoch(model, optimizer, setup.train, hp.batch_size, cpu_generator(1, "o"), cpu_generator(1, "a"),
                max_steps=args.warmup, precision=setup.precision)
    runs = {"ours": []}
    if args.compare_public:
        from bench import public_recipe
        public_model = public_recipe.public_model(args.arch)
        public_opt = torch.optim.SGD(public_model.parameters(), lr=hp.lr, momentum=hp.momentum,
                                     weight_decay=hp.weight_decay)
        public_loaders = public_recipe.loaders(setup.train, setup.test, hp.batch_size)
        public_recipe.train_epoch(public_model, public_opt, public_loaders[0], max_steps=args.warmup)
        runs["public"] = []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        runs["ours"].append(time_ours(model, optimizer, setup, steps))
        if args.compare_public:
            runs["public"].append(time_public(public_model, public_opt, public_loaders, steps))

    report = {"device": str(setup.device), "arch": args.arch, "batch_size": hp.batch_size,
              "train_images": len(setup.train), "test_images": len(setup.test), "steps": steps}
    for name, times in runs.items():
        step_s = statistics.median(t[0] for t in times)
        epoch_s = statistics.median(t[1] for t in times)
        report[name] = {"images_per_s": step_images / step_s, "epoch_seconds": epoch_s,
                        "epoch_seconds_per_50k": epoch_s * 50000 / len(setup.train)}
        print(f"{name:>7}: {report[name]['images_per_s']:8.0f} images/s training, "
              f"{epoch_s:6.2f} s per epoch incl. evaluation ({len(setup.train)} train / "
              f"{len(setup.test)} test images)")
    if args.compare_public:
        report["speedup"] = report["ours"]["images_per_s"] / report["public"]["images_per_s"]
        report["epoch_speedup"] = report["public"]["epoch_seconds"] / report["ours"]["epoch_seconds"]
        print(f"speed-up: {report['speedup']:.2f}x images/s, {report['epoch_speedup']:.2f}x per epoch")
    if args.out:
        save_json(report, args.out)


if __name__ == "__main__":
    main()
