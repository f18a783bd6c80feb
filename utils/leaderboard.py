"""One leaderboard of every method the results hold: test accuracy and the training cost paid.

Each entry is one trained network of one method at one sparsity, read from the files that
method's script writes (none invented): its test accuracy (several seeds: the mean, with the
seed-to-seed sd and n) and the **training cost** it paid, counted per training image as

    Σ over the trainings that produced it of  epochs × 3 × forward FLOPs of the network trained

(forward + backward ≈ 3 forward passes, `utils.early_bird.TRAIN_FLOPS_PER_FORWARD`; the number of
training images is the same for every method, so it is left out). The dense epochs a method
trains before it prunes are included:

| method | dense epochs before pruning | trainings after pruning |
| --- | --- | --- |
| magnitude + fine-tuning (Task 2) | up to the checkpoint the mask came from | the fine-tuning epochs, masked |
| one-shot ticket, reinit / random control (Task 3) | up to `--from` (the mask's source) | one training of the ticket, masked |
| IMP ticket at round k (Task 3) | up to `--from` | every round 1..k, each at its own sparsity |
| late rewinding (`lottery_rewind_*`) | as its one-shot / IMP counterpart | as its one-shot / IMP counterpart |
| Early-Bird (Task 4) | the ticket epoch | the retraining of the compact network |
| pruning at initialisation | none (the scoring passes are not counted) | the training, masked |
| EarlyCroP / CroP / random-S | the prune epoch (0 at init) | the training after it, masked or compact |

FLOPs are `utils.channels.count_flops`'s (convolutions and matrix products, 2 per multiply-add).
A masked (unstructured) network is counted by its nonzero weights, as the Early-Bird and EarlyCroP
papers count: each layer's FLOPs times the fraction of its weights kept, from the run's
`sparsity_report.json` where the script writes one (Task 2, pruning at initialisation). A one-shot
ticket and its two controls have the per-layer counts of Task 2's mask when Task 2 pruned the
same checkpoint globally at the same sparsity (the one-shot mask *is* that global magnitude mask;
the controls keep its per-layer counts). The other masked runs (IMP rounds, late-rewinding
tickets without that match, EarlyCroP-U) record only their overall sparsity, so their kept
fraction is spread evenly over the layers. A channel-pruned (structured) network is counted as
the smaller network it is (Early-Bird's and EarlyCroP-S's `flops` column).
"""
import re
from dataclasses import dataclass
from functools import lru_cache

from utils.early_bird import TRAIN_FLOPS_PER_FORWARD
from utils.experiment import pct_name
from utils.replicates import n_of, sd_of

# The methods in the order the table and legends list them: (key, label, command that makes it).
METHODS = [
    ("dense", "dense (no pruning)", "python train_dense.py"),
    ("magnitude", "magnitude + fine-tuning (Task 2)", "python prune_magnitude.py"),
    ("oneshot", "one-shot ticket (Task 3)", "python lottery_imp.py --mode oneshot"),
    ("imp", "IMP ticket (Task 3)", "python lottery_imp.py --mode imp"),
    ("reinit", "control: ticket mask, re-initialised", "python lottery_imp.py --controls reinit"),
    ("random", "control: random mask, ticket's layer sparsity", "python lottery_imp.py --controls random"),
    ("rewind", "late-rewinding tickets", "python lottery_imp.py --rewind checkpoints/dense/epoch_010.pt"),
    ("early_bird", "Early-Bird ticket (Task 4)", "python early_bird.py"),
    ("prune_at_init", "pruning at initialisation", "python prune_at_init.py"),
    ("earlycrop", "EarlyCroP", "python earlycrop.py"),
]
LABELS = {k: label for k, label, _ in METHODS}
COMMANDS = {k: command for k, _, command in METHODS}
AT_INIT_NAMES = {"magnitude": "magnitude", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow",
                 "random": "random"}
EARLYCROP_NAMES = {"earlycrop_u": "EarlyCroP-U", "earlycrop_s": "EarlyCroP-S", "crop_u": "CroP-U (at init)",
                   "crop_s": "CroP-S (at init)", "random_s": "random-S (at init)"}
STRUCTURED = {"earlycrop_s", "crop_s", "random_s"}


@dataclass
class Entry:
    """One point of the leaderboard."""

    family: str  # a key of METHODS
    method: str  # the label of this line (e.g. "SNIP at init", "IMP ticket (Task 3)")
    sparsity: float  # fraction of the prunable weights removed (target, or measured where `measured`)
    acc: float  # test accuracy (%), the mean over seeds
    sd: float  # its seed-to-seed sd (None for one seed)
    n: int  # seeds
    cost: float  # training FLOPs per training image (see the module docstring)
    source: str  # the results file the accuracy comes from
    measured: bool = False
    line: str = None  # the figures' legend entry joining this point to others (default: method)
    checkpoint: str = None  # the trained network, relative to the checkpoint folder (deploy.py measures it)

    def __post_init__(self):
        self.line = self.line or self.method

    @property
    def run_summary(self):
        """The run's summary.json, relative to the results folder (deploy/summary.csv's `source`)."""
        return f"{self.checkpoint.rsplit('/', 1)[0]}/summary.json" if self.checkpoint else None


@lru_cache(maxsize=None)
def network_flops(arch, shortcut):
    """{prunable weight: forward FLOPs per image} of the unpruned `arch`."""
    from models import get_model  # torch only where a leaderboard is drawn
    from utils.channels import layer_flops
    return layer_flops(get_model(arch, shortcut=shortcut))


def masked_flops(layers, kept=None, layer_report=None):
    """Forward FLOPs of the masked network: each layer's FLOPs times the fraction of its weights
    kept, from `layer_report` ({weight: {total, zeros}}, a sparsity_report.json's layers) when
    given, else `kept` (the overall fraction kept) for every layer."""
    if layer_report:
        return sum(f * (1 - layer_report[w]["zeros"] / layer_report[w]["total"]) if w in layer_report else f
                   for w, f in layers.items())
    return sum(layers.values()) * kept


def epoch_of(path):
    """'…/dense/epoch_160.pt' -> 160; None for another name (e.g. init.pt)."""
    m = re.search(r"epoch_(\d+)\.pt$", str(path or ""))
    return int(m.group(1)) if m else None


def train_cost(*terms):
    """Σ epochs × 3 × forward FLOPs over (epochs, forward FLOPs) terms."""
    return sum(TRAIN_FLOPS_PER_FORWARD * e * f for e, f in terms)


class Leaderboard:
    """Every method the results under `res` (a utils.plots.Results) hold: `entries` (Entry list, by
    sparsity then cost), `dense_cost` (training the dense network once) and `missing`
    ([(label, command)] for each method absent from the results)."""

    def __init__(self, res):
        self.res = res
        dense = res.dense_summary or {}
        cfg = dense.get("config") or {}
        self.layers = network_flops(cfg.get("arch", "resnet20"), cfg.get("shortcut", "B"))
        self.dense_flops = sum(self.layers.values())
        self.dense_epochs = dense.get("epochs")
        self.dense_cost = train_cost((self.dense_epochs, self.dense_flops)) if self.dense_epochs else None
        self.entries, self.missing = [], []
        if dense:
            self._add("dense", LABELS["dense"], 0.0, dense, "test_acc", self.dense_cost, "dense/summary.json",
                      checkpoint=f"dense/epoch_{int(self.dense_epochs):03d}.pt" if self.dense_epochs else None)
        for family, reader in (("magnitude", self._magnitude), ("lottery", self._lottery),
                               ("early_bird", self._early_bird), ("prune_at_init", self._prune_at_init),
                               ("earlycrop", self._earlycrop)):
            reader()
        self.entries.sort(key=lambda e: (round(e.sparsity, 4), e.cost))

    # -- helpers ---------------------------------------------------------------------------------
    def _add(self, family, method, sparsity, row, column, cost, source, measured=False, line=None, checkpoint=None):
        if row is None or not isinstance(row.get(column), (int, float)) or cost is None:
            return
        self.entries.append(Entry(family, method, float(sparsity), float(row[column]), sd_of(row, column),
                                  n_of(row, column), float(cost), source, measured, line, checkpoint))

    def _pruned_at(self, from_epoch):
        """Dense epochs before pruning: the mask's source epoch, else the whole dense run."""
        return from_epoch if from_epoch is not None else self.dense_epochs

    def _missing(self, family):
        self.missing.append((LABELS[family], COMMANDS[family]))

    # -- one reader per script -------------------------------------------------------------------
    def _magnitude(self):
        rows = [r for r in self.res.magnitude if r.get("sparsity")]  # sparsity 0: the dense net fine-tuned
        if not rows:
            return self._missing("magnitude")
        for r in rows:
            run = ("magnitude", pct_name(r["sparsity"], "sparsity"))
            report = self.res.json(*run, "sparsity_report.json") or {}
            summary = self.res.json(*run, "summary.json") or {}
            epochs = r.get("epochs") or summary.get("epochs")
            dense_epochs = self._pruned_at(epoch_of(report.get("from")))
            if epochs is None or dense_epochs is None:
                continue
            kept = masked_flops(self.layers, 1 - r["sparsity"], report.get("layers"))
            cost = train_cost((dense_epochs, self.dense_flops), (epochs, kept))
            self._add("magnitude", LABELS["magnitude"], r["sparsity"], r, "retrained_acc", cost,
                      "magnitude/summary.csv", checkpoint="/".join(run) + "/final.pt")

    def _ticket_cost(self, run_name, method, sparsity):
        """Training cost of a ticket (or control) of `run_name` at `sparsity`: the dense run to the
        mask's source, then (IMP) every round up to this one, or (one-shot, controls) one training."""
        summary = self.res.json(run_name, method, pct_name(sparsity, "sparsity"), "summary.json")
        if not summary:
            return None
        cfg = summary.get("config") or {}
        dense_epochs = self._pruned_at(cfg.get("from_epoch"))
        if dense_epochs is None or summary.get("epochs") is None:
            return None
        terms = [(dense_epochs, self.dense_flops)]
        if method == "imp":
            for s in cfg.get("imp_schedule") or [sparsity]:  # every round up to this one
                earlier = self.res.json(run_name, method, pct_name(s, "sparsity"), "summary.json") or summary
                terms.append((earlier.get("epochs", summary["epochs"]), masked_flops(self.layers, 1 - s)))
        else:
            terms.append((summary["epochs"], masked_flops(self.layers, 1 - sparsity, self._task2_layers(cfg, sparsity))))
        return train_cost(*terms)

    def _task2_layers(self, cfg, sparsity):
        """The per-layer counts of Task 2's mask when it is this one-shot ticket's mask (same
        checkpoint, global scope, same sparsity, no layer left out), else None."""
        report = self.res.json("magnitude", pct_name(sparsity, "sparsity"), "sparsity_report.json") or {}
        source = str(report.get("from") or "")
        if (cfg.get("ignore_layers") or report.get("scope") != "global" or not cfg.get("mask_from")
                or not source.replace("\\", "/").endswith("/" + cfg["mask_from"])):
            return None
        return report.get("layers")

    def _lottery(self):
        runs = sorted(name for name in self._task_folders() if name == "lottery" or name.startswith("lottery_"))
        found = set()
        for run_name in runs:
            rows = self.res.csv(run_name, "summary.csv")
            for r in rows:
                method = r.get("method")
                if method not in ("oneshot", "imp", "reinit", "random"):
                    continue
                summary = self.res.json(run_name, method, pct_name(r["sparsity"], "sparsity"), "summary.json") or {}
                rewind = (summary.get("config") or {}).get("rewind_epoch")
                label = LABELS[method]
                family = method
                if rewind:  # late rewinding: its own line, named by the rewind epoch
                    label, family = f"{label.split(' (')[0]}, rewound to epoch {rewind:g}", "rewind"
                found.add(family)
                self._add(family, label, r["sparsity"], r, "retrained_acc",
                          self._ticket_cost(run_name, method, r["sparsity"]), f"{run_name}/summary.csv",
                          checkpoint=f"{run_name}/{method}/{pct_name(r['sparsity'], 'sparsity')}/final.pt")
        for family in ("oneshot", "imp", "reinit", "random", "rewind"):
            if family not in found:
                self._missing(family)

    def _task_folders(self):
        """Names of the task folders of the results (of any seed)."""
        roots = [r.root for r in self.res.replicates]
        return {p.name for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir()}

    def _early_bird(self):
        rows = self.res.early_bird
        if not rows:
            return self._missing("early_bird")
        for r in rows:
            run = ("early_bird", f"epoch_{int(r['ticket_epoch']):03d}", pct_name(r["ratio"], "ratio"))
            summary = self.res.json(*run, "summary.json") or {}
            if summary.get("epochs") is None or r.get("flops") is None:
                continue
            dense_params = r.get("dense_params") or (self.res.dense_summary or {}).get("params")
            if not dense_params or r.get("params") is None:
                continue
            scratch = " from scratch" if r.get("retrain_from") == "scratch" else ""
            line = f"Early-Bird{scratch}, ticket epoch {int(r['ticket_epoch'])}"
            label = f"Early-Bird{scratch}, {100 * r['ratio']:g}% channels, ticket epoch {int(r['ticket_epoch'])}"
            cost = train_cost((r["ticket_epoch"], self.dense_flops), (summary["epochs"], r["flops"]))
            # its weight sparsity: the parameters the compact network lost (BatchNorm's included)
            self._add("early_bird", label, 1 - r["params"] / dense_params, r, "retrained_acc", cost,
                      "early_bird/summary.csv", measured=True, line=line, checkpoint="/".join(run) + "/final.pt")

    def _prune_at_init(self):
        rows = [r for r in self.res.csv("prune_at_init", "summary.csv")
                if r.get("ablation") == "original" and r.get("method") in AT_INIT_NAMES and r.get("sparsity")]
        if not rows:
            return self._missing("prune_at_init")
        for r in rows:
            report = self.res.json("prune_at_init", r["method"], "original", pct_name(r["sparsity"], "sparsity"),
                                   "sparsity_report.json") or {}
            if r.get("epochs") is None:
                continue
            cost = train_cost((r["epochs"], masked_flops(self.layers, 1 - r["sparsity"], report.get("layers"))))
            self._add("prune_at_init", f"{AT_INIT_NAMES[r['method']]} at init", r["sparsity"], r, "final_acc", cost,
                      "prune_at_init/summary.csv",
                      checkpoint=f"prune_at_init/{r['method']}/original/{pct_name(r['sparsity'], 'sparsity')}/final.pt")

    def _earlycrop(self):
        rows = [r for r in self.res.csv("earlycrop", "summary.csv")
                if r.get("method") in EARLYCROP_NAMES and isinstance(r.get("test_acc"), float)]
        if not rows:
            return self._missing("earlycrop")
        for r in rows:
            summary = self.res.json("earlycrop", r["method"], pct_name(r["sparsity"], "sparsity"), "summary.json") or {}
            sparsity = r.get("weight_sparsity")
            if summary.get("epochs") is None or sparsity is None or r.get("prune_epoch") is None:
                continue
            after = r.get("flops") if r["method"] in STRUCTURED else masked_flops(self.layers, 1 - sparsity)
            if after is None:
                continue
            cost = train_cost((r["prune_epoch"], self.dense_flops), (summary["epochs"], after))
            self._add("earlycrop", EARLYCROP_NAMES[r["method"]], sparsity, r, "test_acc", cost,
                      "earlycrop/summary.csv", measured=True,
                      checkpoint=f"earlycrop/{r['method']}/{pct_name(r['sparsity'], 'sparsity')}/final.pt")
