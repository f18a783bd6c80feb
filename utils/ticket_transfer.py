"""Lottery tickets on MNIST and their transfer (Frankle & Carbin 2019; Morcos et al. 2019).

The pieces `ticket_transfer.py` strings together: the experiments' table, the sides each
experiment compares (data halves, digit halves, optimizers), per-layer IMP with fixed rounds,
and one ticket's training run in its folder.

Per-layer IMP: after round r a layer of n weights keeps exactly ⌊n·(1−p)^r + ½⌋ of them, the
largest |w| of the previous round's trained weights among the previous round's survivors (ties
broken by position), so masks are nested. The output layer (the last Linear) is pruned at p/2,
every other Conv2d/Linear weight at p. Everything is deterministic: an interrupted run derives
the same masks again from the finished rounds' `final.pt`.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from models import get_model, model_from_checkpoint, prunable_weights, read_checkpoint
from utils.config import TrainConfig, as_dict
from utils.errors import UserError
from utils.io import load_csv, save_csv, save_json, save_torch
from utils.lottery import masks_equal, source_weights, write_mask
from utils.pruning import (ScoreChoice, apply_mask, collapsed_layers, layerwise_magnitude_mask,
                           magnitude_choice, random_mask_like)
from utils.train import SummaryFields, cpu_generator, make_optimizer, seeded, train_run

HINT = "python ticket_transfer.py"
ARCHS = ("lenet300", "lenet5")
OPTIMIZERS = ("adam", "sgd")
CONTROLS = ("random", "reinit")
TICKETS = ("imp",) + CONTROLS
SUMMARY_COLUMNS = ["experiment", "arch", "ticket", "mask_from", "trained_on", "round", "density",
                   "dense_acc", "ticket_acc", "final_acc", "collapsed_layers", "chosen_by_score"]


@dataclass(frozen=True)
class Experiment:
    """One row of the experiments' table (the IC report's Tables 1 and 2)."""

    name: str
    sides: tuple  # side names, as they appear in folder names
    archs: tuple  # default --archs
    batch_size: int
    epochs: dict  # arch -> epochs
    prune_rate: dict  # arch -> rate
    rounds: int
    num_classes: int = 10
    what: str = ""


EXPERIMENTS = {e.name: e for e in [
    Experiment("imp", ("full",), ARCHS, 60, {"lenet300": 75, "lenet5": 50},
               {"lenet300": 0.3, "lenet5": 0.2}, 20,
               what="winning tickets on full MNIST, Adam"),
    Experiment("data", ("half1", "half2"), ("lenet300",), 50, {"lenet300": 50, "lenet5": 50},
               {"lenet300": 0.5, "lenet5": 0.5}, 5,
               what="two seeded, disjoint halves of the training set, Adam"),
    Experiment("labels", ("digits0to4", "digits5to9"), ("lenet300",), 50, {"lenet300": 50, "lenet5": 50},
               {"lenet300": 0.35, "lenet5": 0.35}, 15, num_classes=5,
               what="digits 0-4 (label y) vs digits 5-9 (label y-5), 5-way output, Adam"),
    Experiment("optimizer", ("adam", "sgd"), ("lenet300",), 50, {"lenet300": 50, "lenet5": 50},
               {"lenet300": 0.5, "lenet5": 0.5}, 10,
               what="full MNIST, Adam vs SGD with momentum 0.9"),
]}


def recipe(experiment, arch, args):
    """(TrainConfig, prune rate, rounds) of one experiment and arch: the table's values, each
    replaced by its flag when the flag was given."""
    e = EXPERIMENTS[experiment]
    hp = TrainConfig(epochs=e.epochs[arch] if args.epochs is None else args.epochs,
                     batch_size=e.batch_size if args.batch_size is None else args.batch_size,
                     lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                     milestones=tuple(args.milestones), precision=args.precision, compile=args.compile)
    hp.validate()
    rate = e.prune_rate[arch] if args.prune_rate is None else args.prune_rate
    rounds = e.rounds if args.rounds is None else args.rounds
    check_rate_and_rounds(rate, rounds)
    return hp, rate, rounds


def check_rate_and_rounds(rate, rounds):
    if rate is not None and not 0 < rate < 1:
        raise UserError(f"--prune-rate takes a fraction in (0, 1) (0.2 = each round removes 20% "
                        f"of a layer's survivors), got {rate}")
    if rounds is not None and rounds < 1:
        raise UserError(f"--rounds must be >= 1 (round 00 is the dense network), got {rounds}")


def optimizer_factory(name):
    """callable(model, hp) -> optimizer, for train_run's `optimizer=`: Adam at hp.lr, or the
    project's SGD (hp.momentum, hp.weight_decay). Constant lr comes from empty milestones."""
    if name == "adam":
        return lambda model, hp: torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    if name == "sgd":
        return make_optimizer
    raise UserError(f"unknown --optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


# ---------------------------------------------------------------------------------------------
# The sides of an experiment: which images each trains and is tested on, with which optimizer.

@dataclass
class Side:
    name: str
    train: object  # data.MnistSplit
    test: object
    optimizer: str
    train_indices: list = field(default_factory=list)
    test_indices: list = field(default_factory=list)


def make_sides(experiment, train, test, seed, optimizer):
    """The sides of `experiment` over the loaded MNIST splits (indices into them)."""
    every_train, every_test = list(range(len(train))), list(range(len(test)))
    if experiment == "imp":
        return [Side("full", train, test, optimizer, every_train, every_test)]
    if experiment == "optimizer":
        return [Side(name, train, test, name, every_train, every_test) for name in OPTIMIZERS]
    if experiment == "data":
        # one seeded permutation: the halves are disjoint and together hold every image
        order = torch.randperm(len(train), generator=cpu_generator(seed, "data_halves"))
        halves = [sorted(order[:len(train) // 2].tolist()), sorted(order[len(train) // 2:].tolist())]
        return [Side(name, train.subset(idx), test, optimizer, idx, every_test)
                for name, idx in zip(EXPERIMENTS["data"].sides, halves)]
    if experiment == "labels":
        sides = []
        for name, digits in zip(EXPERIMENTS["labels"].sides, (range(0, 5), range(5, 10))):
            tr = torch.isin(train.labels.cpu(), torch.tensor(list(digits))).nonzero().flatten().tolist()
            te = torch.isin(test.labels.cpu(), torch.tensor(list(digits))).nonzero().flatten().tolist()
            sides.append(Side(name, train.subset(tr, digits[0]), test.subset(te, digits[0]),
                              optimizer, tr, te))
        return sides
    raise UserError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")


def check_sides(sides, experiment):
    for s in sides:
        if not len(s.train) or not len(s.test):
            raise UserError(f"experiment {experiment}: side {s.name} has {len(s.train)} training and "
                            f"{len(s.test)} test images; raise --train-subset / --test-subset (0 = all)")


def splits_record(sides):
    """splits.json: each side's training indices under its name, its test indices under 'test'."""
    record = {s.name: s.train_indices for s in sides}
    record["test"] = {s.name: s.test_indices for s in sides}
    return record


# ---------------------------------------------------------------------------------------------
# Per-layer IMP with fixed rounds.

def output_layer(model):
    """Name of the output layer's weight: the last Linear."""
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return names[-1]


def layer_rates(model, rate):
    """Prunable weight name -> per-round rate: p, the output layer p/2 (Frankle & Carbin)."""
    out_name = output_layer(model)
    return {n: rate / 2 if n == out_name else rate for n in prunable_weights(model)}


def kept_after(n, rate, round_no):
    """Weights a layer of `n` keeps after `round_no` rounds at `rate`: ⌊n·(1−rate)^r + ½⌋."""
    return math.floor(n * (1 - rate) ** round_no + 0.5)


def round_keep_counts(model, rate, round_no):
    sizes = {n: w.numel() for n, w in prunable_weights(model).items()}
    return {n: kept_after(sizes[n], r, round_no) for n, r in layer_rates(model, rate).items()}


def dense_mask(model):
    return {n: torch.ones_like(w, device="cpu") for n, w in prunable_weights(model).items()}


def imp_mask(trained, prev_mask, keep):
    """Per layer, keep exactly keep[name] weights: the largest |trained| among prev_mask's
    survivors (earlier zeros stay zeros, so masks are nested; ties broken by position)."""
    out = {}
    for name, w in trained.items():
        n = w.numel()
        zeros = n - keep[name]
        # zeros / n maps back to exactly `zeros` under pruning.num_to_prune's round(s·n)
        out[name] = layerwise_magnitude_mask({name: w}, zeros / n, {name: prev_mask[name]})[name]
        assert int(out[name].sum()) == keep[name], (name, int(out[name].sum()), keep[name])
    return out


def density(mask):
    """Fraction of the prunable weights the mask keeps."""
    return sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())


def random_control(mask, seed, experiment, arch, side, round_no):
    """A random mask with `mask`'s per-layer counts, from its own seeded stream."""
    return random_mask_like(mask, cpu_generator(seed, f"random_mask/{experiment}/{arch}/{side}/{round_no}"))


# ---------------------------------------------------------------------------------------------
# The shared initialisation and one ticket's run.

def folder_name(ticket, mask_from, trained_on, round_no):
    return Path(f"{ticket}_{mask_from}_on_{trained_on}") / f"round_{round_no:02d}"


@dataclass
class Context:
    """What every run of one (experiment, arch) shares."""

    experiment: str
    arch: str
    hp: TrainConfig
    rate: float
    num_classes: int
    seed: int
    force: bool
    device: torch.device
    base_config: dict
    ckpt_root: Path  # <checkpoint-dir>/ticket_transfer/<experiment>/<arch>
    results_root: Path  # <results-dir>/ticket_transfer/<experiment>/<arch>

    def new_model(self, stream):
        return seeded(lambda: get_model(self.arch, num_classes=self.num_classes, dataset="mnist"),
                      self.seed, stream)

    def init_checkpoint(self):
        """init.pt: one seeded initialisation both sides start from. A saved one that differs
        (another seed or arch) is refused rather than silently mixed."""
        model = self.new_model("init")
        path = self.ckpt_root / "init.pt"
        ckpt = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "arch": self.arch, "epoch": 0, "num_classes": self.num_classes,
                "config": dict(self.base_config)}
        if path.is_file() and not self.force:
            old = read_checkpoint(path, hint=HINT)
            if not masks_equal(old["model"], ckpt["model"]):
                raise UserError(f"{path} differs from the initialisation derived now (another --seed?); "
                                "rerun with the same flags, or add --force to redo the experiment")
            return old
        save_torch(ckpt, path)
        return ckpt

    def run(self, init_ckpt, side, *, ticket, mask_from, round_no, mask, chosen_by_score=None):
        """Train one ticket (mask on the shared init, or on a fresh init for `reinit`) on `side`;
        return (summary row, path of final.pt). The row and summary.json carry the mask's
        `collapsed_layers` and `chosen_by_score` (utils.pruning)."""
        folder = folder_name(ticket, mask_from, side.name, round_no)
        ckpt_dir, results_dir = self.ckpt_root / folder, self.results_root / folder
        write_mask(ckpt_dir / "mask.pt", mask, self.force)
        if ticket == "reinit":  # same mask, fresh initialisation from its own stream
            model = apply_mask(self.new_model("reinit").to(self.device), mask)
        else:
            model = apply_mask(model_from_checkpoint(init_ckpt, self.device), mask)
        config = dict(self.base_config, ticket=ticket, mask_from=mask_from, trained_on=side.name,
                      round=round_no, optimizer=side.optimizer, train_images=len(side.train),
                      test_images=len(side.test))
        summary = train_run(
            model, side.train, side.test, self.hp, arch=self.arch, config=config, ckpt_dir=ckpt_dir,
            results_dir=results_dir, seed=self.seed, force=self.force,  # a lost final.pt: redone (plan_run)
            save_as=[(0, "start.pt"), (self.hp.epochs, "final.pt")], mask=mask,
            checkpoint_extra={"num_classes": self.num_classes},
            desc=f"{self.experiment} {self.arch} {folder.parent.name} round {round_no}",
            optimizer=optimizer_factory(side.optimizer), callbacks=[SummaryFields(chosen_by_score=chosen_by_score)])
        row = {"experiment": self.experiment, "arch": self.arch, "ticket": ticket, "mask_from": mask_from,
               "trained_on": side.name, "round": round_no, "density": density(mask),
               "ticket_acc": summary["start_test_acc"], "final_acc": summary["test_acc"],
               "collapsed_layers": ";".join(collapsed_layers(mask)),
               "chosen_by_score": "" if chosen_by_score is None else chosen_by_score}
        return row, ckpt_dir / "final.pt"


def trained_weights(final_path):
    """The prunable weights of a finished run's final.pt (the next round's mask source)."""
    return source_weights(read_checkpoint(final_path, hint=HINT))


def run_experiment(ctx, sides, rounds, controls):
    """Per-layer IMP on every side from one shared init, and each round's transferred tickets
    and controls. Returns the summary rows."""
    init_ckpt = ctx.init_checkpoint()
    template = model_from_checkpoint(init_ckpt)
    masks = {s.name: dense_mask(template) for s in sides}
    # per side, how many of its mask's removals |w| decided over the rounds (the rest ties at a
    # layer's cut, removed by position); transferred tickets and controls carry their mask's
    choices = {s.name: ScoreChoice() for s in sides}
    finals, rows, dense_acc = {}, [], {}
    for r in range(rounds + 1):
        # Own tickets: round r's mask from round r−1's trained weights (round 00: dense).
        if r:
            keep = round_keep_counts(template, ctx.rate, r)
            for s in sides:
                trained = trained_weights(finals[s.name])
                mask = imp_mask(trained, masks[s.name], keep)
                magnitude_choice(trained, mask, masks[s.name], scope="layerwise", choice=choices[s.name])
                masks[s.name] = mask
        for s in sides:
            row, finals[s.name] = ctx.run(init_ckpt, s, ticket="imp", mask_from=s.name, round_no=r,
                                          mask=masks[s.name], chosen_by_score=choices[s.name].share)
            if r == 0:
                dense_acc[s.name] = row["final_acc"]
            rows.append(row)
        if r == 0:
            continue
        # Transferred tickets: the other side's round-r mask on the shared init, trained here.
        for s in sides:
            for other in sides:
                if other.name != s.name:
                    rows.append(ctx.run(init_ckpt, s, ticket="imp", mask_from=other.name, round_no=r,
                                        mask=masks[other.name], chosen_by_score=choices[other.name].share)[0])
        # Controls: a random mask with the same per-layer counts; the own mask re-initialised.
        for s in sides:
            if "random" in controls:
                mask = random_control(masks[s.name], ctx.seed, ctx.experiment, ctx.arch, s.name, r)
                rows.append(ctx.run(init_ckpt, s, ticket="random", mask_from=s.name, round_no=r, mask=mask,
                                    chosen_by_score=choices[s.name].share)[0])
            if "reinit" in controls:
                rows.append(ctx.run(init_ckpt, s, ticket="reinit", mask_from=s.name, round_no=r,
                                    mask=masks[s.name], chosen_by_score=choices[s.name].share)[0])
    return [dict(row, dense_acc=dense_acc[row["trained_on"]]) for row in rows]


def write_splits(sides, path):
    save_json(splits_record(sides), path)


def write_summary(rows, path):
    """summary.csv; rows of (experiment, arch) pairs not run this time are kept from the old file."""
    path = Path(path)
    ran = {(r["experiment"], r["arch"]) for r in rows}
    kept = [r for r in load_csv(path) if (r["experiment"], r["arch"]) not in ran] if path.is_file() else []
    order = {e: i for i, e in enumerate(EXPERIMENTS)}
    merged = sorted(kept + rows, key=lambda r: (order.get(r["experiment"], 99), r["arch"], int(r["round"]),
                                                r["trained_on"], TICKETS.index(r["ticket"])
                                                if r["ticket"] in TICKETS else 9, r["mask_from"]))
    save_csv(merged, path, SUMMARY_COLUMNS)
    return merged


def print_table(rows, out=tqdm.write):
    """Per experiment, arch, side and round: own, transferred and control accuracies."""
    for key in dict.fromkeys((r["experiment"], r["arch"], r["trained_on"]) for r in rows):
        sub = [r for r in rows if (r["experiment"], r["arch"], r["trained_on"]) == key]
        out(f"{key[0]} / {key[1]}, trained on {key[2]} (dense {float(sub[0]['dense_acc']):.2f}%)")
        for r in sub:
            out(f"  round {int(r['round']):2d}  {100 * float(r['density']):7.3f}% kept  "
                f"{r['ticket'] + '_' + r['mask_from']:<18} ticket {float(r['ticket_acc']):6.2f}%  "
                f"final {float(r['final_acc']):6.2f}%")


def experiment_config(data_cfg, run_cfg, hp, **extra):
    """The JSON-ready settings saved with every run (data, run, recipe, experiment)."""
    return as_dict(data_cfg, run_cfg, hp) | extra
