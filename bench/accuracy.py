"""Final test accuracy of our training loop vs the common public recipe, same settings, over seeds.

    python bench/accuracy.py --data-dir data --epochs 30 --milestones 15 23 --seeds 0 1 2

Both train the same ResNet-20 on the same images with the same recipe; only the data path and
the training step differ (bench/public_recipe.py). Prints a table and the mean of each.
"""
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils.runtime  # noqa: E402,F401  (before torch: CPU threads, OpenMP wait policy)

from bench import public_recipe  # noqa: E402
from models import get_model  # noqa: E402
from utils.errors import cli_main  # noqa: E402
from utils.experiment import task_parser, task_setup  # noqa: E402
from utils.io import save_json  # noqa: E402
from utils.train import seeded, train_run  # noqa: E402


@cli_main
def main(argv=None):
    parser = task_parser(__doc__.splitlines()[0], epochs=30, milestones=(15, 23))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    setup = task_setup(args)
    hp, results = setup.hp, {"ours": [], "public": []}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            model = seeded(lambda: get_model("resnet20"), seed).to(setup.device)
            summary = train_run(model, setup.train, setup.test, hp, arch="resnet20", seed=seed,
                                config=setup.config(seed=seed), ckpt_dir=Path(tmp) / "ck",
                                results_dir=Path(tmp) / "res", desc=f"ours seed {seed}")
        results["ours"].append(summary["test_acc"])
        history = public_recipe.train(setup.train, setup.test, hp.epochs, list(hp.milestones), seed=seed,
                                      lr=hp.lr, batch_size=hp.batch_size)
        results["public"].append(history[-1][1])
        print(f"seed {seed}: ours {results['ours'][-1]:.2f}%  public {results['public'][-1]:.2f}%",
              flush=True)
    for name, accs in results.items():
        print(f"{name:>7}: mean {statistics.mean(accs):.2f}% over seeds {args.seeds}: "
              + " ".join(f"{a:.2f}" for a in accs))
    if args.out:
        save_json({"epochs": hp.epochs, "milestones": list(hp.milestones), "seeds": args.seeds,
                   "train_images": len(setup.train), "test_images": len(setup.test), **results}, args.out)


if __name__ == "__main__":
    main()
