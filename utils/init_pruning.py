"""Pruning at initialisation (Frankle et al. 2021): the five scores, SynFlow's iterative schedule,
the three ablations, the score batch and one subnetwork's run.

Every score is a dict parameter name -> tensor over `models.prunable_weights` (Conv2d and Linear
weights, shortcuts and classifier included), computed on a copy of the initialised network so
the init (its BatchNorm buffers included) is never touched, in fp32 (SynFlow: fp64) without
autocast. Masks come from `utils.pruning.global_score_mask`: exactly round(s·N) weights pruned,
ties by position, the lowest scores, or the highest for GraSP (Wang et al.'s convention) and
for the `invert` ablation of the others.
"""
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from data import CLASSES, to_pixels
from models import classifier_weight_name, get_model, model_from_checkpoint, prunable_weights
from models.resnet import Normalize
from utils.errors import UserError
from utils.experiment import pct_name
from utils.io import load_csv, load_json, load_torch, save_csv, save_json, save_torch
from utils.lottery import reinitialised, write_mask
from utils.pruning import (ScoreChoice, apply_mask, chosen_by_score, global_count_mask, global_score_mask, mask_facts,
                           num_to_prune, sparsity_report)
from utils.train import (SummaryFields, checkpoint, cpu_generator, plan_run, seeded, strict_fp32,
                         train_run)

METHODS = ("random", "magnitude", "snip", "grasp", "synflow")
ABLATIONS = ("original", "shuffle", "reinit", "invert")
PRUNE_HIGHEST = {"grasp"}  # GraSP removes the weights whose removal reduces gradient flow least
GRASP_TEMPERATURE = 200  # logits ÷ 200 before the loss, as Wang et al. and OpenLTH
DENSE_METHOD = "none"  # the one shared sparsity-0 run
SUMMARY_COLUMNS = ["method", "ablation", "sparsity", "start_acc", "final_acc", "zeros", "prunable",
                   "epochs", "score_seconds", "collapsed_layers", "classifier_collapsed", "chosen_by_score"]
SCORE_BATCH_SIZE = 256  # Synaptic-Flow's --prune-batch-size: score images per piece
RUN_OUTPUTS = ("mask.pt", "start.pt", "final.pt")  # what a finished run's folder holds


# ---------------------------------------------------------------------------------------------
# The score batch: `per_class` unaugmented training images of every class, a seeded draw.

def draw_score_batch(train, per_class, seed):
    """{indices (into `train`), images (uint8, CPU), labels}: `per_class` images per class."""
    labels = train.labels.cpu()
    generator = cpu_generator(seed, "score_batch")
    chosen = []
    for c, name in enumerate(CLASSES):
        where = torch.nonzero(labels == c).flatten()
        if len(where) < per_class:
            raise UserError(f"class {c} ({name}) has {len(where)} training images, fewer than "
                            f"--score-per-class {per_class}; lower --score-per-class or raise "
                            "--train-subset")
        chosen.append(where[torch.randperm(len(where), generator=generator)[:per_class]])
    indices = torch.cat(chosen)
    return {"indices": indices, "images": train.images[indices.to(train.device)].cpu().clone(),
            "labels": labels[indices].clone()}


# ---------------------------------------------------------------------------------------------
# The five scores.

def _scoring_copy(model, dtype=torch.float32):
    """A private copy to score with: the caller's model and its BatchNorm buffers stay as they are."""
    net = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.contiguous_format)
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def random_scores(weights, seed):
    """U(0, 1) per weight from its own seed stream (the global random baseline)."""
    generator = cpu_generator(seed, "random_scores")
    return {n: torch.rand(w.shape, generator=generator, dtype=torch.float64) for n, w in weights.items()}


def magnitude_scores(weights):
    return {n: w.detach().abs().cpu() for n, w in weights.items()}


def _batch(model, batch):
    device = next(model.parameters()).device
    return to_pixels(batch["images"].to(device)), batch["labels"].to(device)


def _score_chunks(net, batch, batch_size):
    """The score batch in consecutive pieces of at most `batch_size` images (the authors' data
    loader): each piece's loss is its own mean, and a score averages the pieces."""
    x, y = _batch(net, batch)
    size = len(y) if batch_size is None else batch_size
    return list(zip(x.split(size), y.split(size)))


def snip_scores(model, batch, batch_size=None):
    """|w ⊙ ∂L/∂w|, L = the mean over pieces of `batch_size` images (one piece when None) of
    each piece's mean cross-entropy, train mode (each piece's batch statistics), as
    Synaptic-Flow's SNIP accumulates per batch. Plain fp32 (`strict_fp32`: no TF32, no autocast)."""
    net = _scoring_copy(model).train()
    weights = prunable_weights(net)
    params = list(weights.values())
    chunks = _score_chunks(net, batch, batch_size)
    with strict_fp32(next(net.parameters()).device):
        grads = [torch.zeros_like(w) for w in params]
        for x, y in chunks:
            for g, d in zip(grads, torch.autograd.grad(F.cross_entropy(net(x), y), params)):
                g += d / len(chunks)
    return {n: (w * g).abs().detach().cpu() for (n, w), g in zip(weights.items(), grads)}


def grasp_scores(model, batch, temperature=GRASP_TEMPERATURE, batch_size=None):
    """−w ⊙ Hg: g = ∂L/∂w (detached), Hg = ∂(gᵀ ∂L/∂w)/∂w by double backprop, L the mean
    cross-entropy of logits ÷ `temperature`, train mode. With pieces of `batch_size` images
    (one piece when None), as Wang et al.'s and Synaptic-Flow's code: g averages the pieces'
    gradients, then Hg averages each piece's ∂(gᵀ ∂L_piece/∂w)/∂w. Plain fp32 (`strict_fp32`)."""
    net = _scoring_copy(model).train()
    weights = prunable_weights(net)
    params = list(weights.values())
    chunks = _score_chunks(net, batch, batch_size)
    loss = lambda x, y, **kw: torch.autograd.grad(  # noqa: E731
        F.cross_entropy(net(x) / temperature, y), params, **kw)
    with strict_fp32(next(net.parameters()).device):
        if len(chunks) == 1:  # the one pass: g and its graph from the same forward
            grads = loss(*chunks[0], create_graph=True)
            g_dot_grad = sum((g.detach() * h).sum() for g, h in zip(grads, grads))
            hg = torch.autograd.grad(g_dot_grad, params)
        else:
            g = [torch.zeros_like(w) for w in params]
            for x, y in chunks:
                for a, d in zip(g, loss(x, y)):
                    a += d / len(chunks)
            hg = [torch.zeros_like(w) for w in params]
            for x, y in chunks:
                grads = loss(x, y, create_graph=True)
                z = sum((a * h).sum() for a, h in zip(g, grads))
                for a, d in zip(hg, torch.autograd.grad(z, params)):
                    a += d / len(chunks)
    return {n: (-w * h).detach().cpu() for (n, w), h in zip(weights.items(), hg)}


class SynFlowNet:
    """The init linearised for SynFlow: a float64 copy, every parameter replaced by |·|, eval
    mode, the input normalisation set to the identity. `scores(mask)` re-scores the masked net:
    |w ⊙ ∂R/∂w|, R = Σ logits on an all-ones (1, 3, 32, 32) input. Reads no data."""

    def __init__(self, model):
        self.net = _scoring_copy(model, torch.float64).eval()
        with torch.no_grad():
            for p in self.net.parameters():
                p.abs_()
            for m in self.net.modules():
                if isinstance(m, Normalize):
                    m.mean.zero_()
                    m.std.fill_(1.0)
        self.weights = prunable_weights(self.net)
        self.abs_weights = {n: w.detach().clone() for n, w in self.weights.items()}

    def scores(self, mask=None):
        with torch.no_grad():
            for n, w in self.weights.items():
                w.copy_(self.abs_weights[n] if mask is None else self.abs_weights[n] * mask[n].to(w))
        device = next(self.net.parameters()).device
        total = self.net(torch.ones(1, 3, 32, 32, dtype=torch.float64, device=device)).sum()
        grads = torch.autograd.grad(total, list(self.weights.values()))
        return {n: (w * g).abs().detach().cpu() for (n, w), g in zip(self.weights.items(), grads)}


def synflow_survivors(n, sparsity, iterations):
    """Weights alive after each of the K rounds: round(N·(1−s)^(k/K)), the last round exactly
    N − round(s·N) (so the count matches every other mask), never more than the round before."""
    if iterations < 1:
        raise UserError(f"--synflow-iterations must be >= 1, got {iterations}")
    out = []
    for k in range(1, iterations + 1):
        alive = n - num_to_prune(sparsity, n) if k == iterations else round(n * (1 - sparsity) ** (k / iterations))
        out.append(min(alive, out[-1]) if out else alive)
    return out


def synflow_mask(model, sparsity, iterations, invert=False, choice=None):
    """(mask, last round's scores): K rounds, each re-scoring the masked net and keeping the
    scheduled survivors. Pruned weights stay pruned in every round; inverted, each round prunes
    the highest-scoring survivors instead of the lowest. `choice` (a ScoreChoice), if given,
    counts each round's removals against that round's cut: a weight removed while tied with a
    kept one (all scores 0 once the classifier is gone) was chosen by position."""
    flow = SynFlowNet(model)
    n = sum(w.numel() for w in flow.weights.values())
    mask, scores = None, None
    for alive in synflow_survivors(n, sparsity, iterations):
        scores = flow.scores(mask)
        ranked = {k: v.clone() for k, v in scores.items()}
        if mask is not None:  # already pruned: first in line again, whichever end is pruned
            for k in ranked:
                ranked[k][mask[k] == 0] = float("inf") if invert else float("-inf")
        before, mask = mask, global_count_mask(ranked, n - alive, prune_highest=invert)
        if choice is not None:
            choice.add(ranked, mask, before, prune_highest=invert)
    return mask, scores


def one_shot_scores(method, model, batch, seed, batch_size=None):
    """Scores of a one-shot method on the init `model` (SynFlow is iterative: `synflow_mask`);
    SNIP and GraSP average pieces of `batch_size` score images (None: the whole batch at once)."""
    weights = prunable_weights(model)
    if method == "random":
        return random_scores(weights, seed)
    if method == "magnitude":
        return magnitude_scores(weights)
    if method == "snip":
        return snip_scores(model, batch, batch_size=batch_size)
    if method == "grasp":
        return grasp_scores(model, batch, batch_size=batch_size)
    raise ValueError(f"no one-shot score for {method!r}")


def one_shot_mask(method, scores, sparsity, invert=False):
    """The exact global selection of `scores`: the method's end, or the other end when inverted."""
    return global_score_mask(scores, sparsity, prune_highest=prunes_highest(method, invert))


def prunes_highest(method, invert=False):
    return (method in PRUNE_HIGHEST) != invert


# ---------------------------------------------------------------------------------------------
# The ablations.

def shuffled(mask, generator):
    """Each layer's mask randomly permuted within the layer: the same per-layer zero counts."""
    return {n: m.flatten()[torch.randperm(m.numel(), generator=generator)].view(m.shape).clone()
            for n, m in mask.items()}


def shuffle_generator(seed, method, sparsity):
    return cpu_generator(seed, f"shuffle:{method}:{pct_name(sparsity, 'sparsity')}")


def fresh_init_checkpoint(arch, seed):
    """`train_dense.py`'s initialisation of `arch` (the same seed stream, shortcut B): with
    resnet20 and the same seed, bit for bit the dense run's init.pt."""
    model = seeded(lambda: get_model(arch), seed)
    return checkpoint(model, arch, 0, {"shortcut": "B"})


def check_init_checkpoint(ckpt, path):
    if int(ckpt.get("epoch", -1)) != 0 or ckpt.get("mask") is not None:
        what = f"epoch {ckpt.get('epoch')}" if ckpt.get("mask") is None else "masked"
        raise UserError(f"--init {path} is not an initialisation ({what}); pass an unmasked epoch-0 "
                        "checkpoint such as checkpoints/dense/init.pt (python train_dense.py), or --arch")


def keep_all_mask(model):
    """The sparsity-0 mask: every prunable weight kept."""
    return {n: torch.ones(w.shape) for n, w in prunable_weights(model).items()}


def start_model(init_ckpt, mask, ablation, seed, device):
    """The subnetwork to train: init × mask, or for `reinit` a fresh init (own stream) × mask."""
    if ablation == "reinit":
        return reinitialised(init_ckpt, mask, seed, device)
    return apply_mask(model_from_checkpoint(init_ckpt, device), mask)


# ---------------------------------------------------------------------------------------------
# The scores, computed once per settings and kept.

class MethodScores:
    """One method's masks for every (ablation, sparsity), from scores computed at most once.

    What a mask comes from is kept in checkpoints/<run>/<method>/: `scores.pt` (name -> score; for
    SynFlow the last round's scores at the highest sparsity computed, original direction),
    `masks.pt` (SynFlow only: its iterative masks per sparsity and direction) and `scores.json`
    (the settings they depend on, and the seconds each took). A rerun with the same settings reads
    them instead of scoring again (recomputed scores can differ in the last fp32 bits with another
    thread count and flip near-ties); other settings, or `force`, score afresh. Nothing is
    computed until a run asks for a mask.
    """

    def __init__(self, folder, method, settings, init_model, batch, seed, iterations, force=False,
                 score_batch_size=None):
        self.folder, self.method, self.settings = Path(folder), method, settings
        self.init_model, self.batch, self.seed, self.iterations = init_model, batch, seed, iterations
        self.score_batch_size = score_batch_size
        self.meta_path = self.folder / "scores.json"
        meta = load_json(self.meta_path, fix=f"delete {self.meta_path} to score again") \
            if self.meta_path.is_file() and not force else None
        self.valid = meta is not None and meta.get("settings") == settings
        self.seconds = dict(meta["seconds"]) if self.valid else {}
        # chosen_by_score of each mask (per sparsity and direction), kept beside the seconds
        self.shares = dict(meta.get("chosen_by_score") or {}) if self.valid else {}
        self.scores = self.masks = None

    def _key(self, sparsity, invert):
        return pct_name(sparsity, "sparsity") + ("_invert" if invert else "")

    def score_seconds(self, ablation, sparsity):
        """Seconds the scores (SynFlow: the rounds for this sparsity and direction) took; None
        if they were never computed with these settings."""
        if self.method != "synflow":
            return self.seconds.get("scores")
        return self.seconds.get(self._key(sparsity, ablation == "invert"))

    def chosen(self, ablation, sparsity):
        """The mask's chosen_by_score (utils.pruning): the share of removed weights the score
        decided; shuffle and reinit carry the original's, whose per-layer counts they keep. None
        until the mask was made with these settings."""
        return self.shares.get(self._key(sparsity, ablation == "invert"))

    def _save_meta(self):
        save_json({"settings": self.settings, "seconds": self.seconds, "chosen_by_score": self.shares},
                  self.meta_path)
        self.valid = True

    def _start_over(self):
        """Other settings than the kept files': they no longer describe what is computed now."""
        if not self.valid:
            self.meta_path.unlink(missing_ok=True)
            self.seconds, self.shares = {}, {}

    def _one_shot_scores(self):
        if self.scores is None:
            path = self.folder / "scores.pt"
            if self.valid and "scores" in self.seconds and path.is_file():
                self.scores = load_torch(path, fix=f"delete {path} to score again")
            else:
                self._start_over()
                t0 = time.perf_counter()
                batch = self.batch() if self.method in ("snip", "grasp") else None
                self.scores = one_shot_scores(self.method, self.init_model, batch, self.seed, self.score_batch_size)
                self.seconds["scores"] = time.perf_counter() - t0
                save_torch(self.scores, path)
                self._save_meta()
        return self.scores

    def _synflow_mask(self, sparsity, invert):
        path = self.folder / "masks.pt"
        if self.masks is None:
            self.masks = load_torch(path, fix=f"delete {path} to score again") \
                if self.valid and path.is_file() else {}
        key = self._key(sparsity, invert)
        if key not in self.masks or key not in self.seconds:
            self._start_over()
            t0, choice = time.perf_counter(), ScoreChoice()
            mask, scores = synflow_mask(self.init_model, sparsity, self.iterations, invert=invert, choice=choice)
            self.seconds[key] = time.perf_counter() - t0
            self.shares[key] = choice.share
            self.masks[key] = {n: m.bool() for n, m in mask.items()}
            save_torch(self.masks, path)
            highest = max((k for k in self.masks if not k.endswith("_invert")), key=lambda k: float(k.split("_")[1]))
            if key == highest:
                save_torch(scores, self.folder / "scores.pt")
            self._save_meta()
        return {n: m.float() for n, m in self.masks[key].items()}

    def mask(self, ablation, sparsity):
        """The mask of (`ablation`, `sparsity`): the method's own (original, reinit), each layer
        shuffled, or the other end pruned (invert; SynFlow: in every round)."""
        invert = ablation == "invert"
        if self.method == "synflow":
            mask = self._synflow_mask(sparsity, invert)
        else:
            scores = self._one_shot_scores()
            mask = one_shot_mask(self.method, scores, sparsity, invert=invert)
            key = self._key(sparsity, invert)
            if key not in self.shares:
                self.shares[key] = chosen_by_score(scores, mask, prune_highest=prunes_highest(self.method, invert))
                self._save_meta()
        if ablation == "shuffle":
            return shuffled(mask, shuffle_generator(self.seed, self.method, sparsity))
        return mask


# ---------------------------------------------------------------------------------------------
# One subnetwork's run and the summary table.

def run_folder(run_name, method, ablation, sparsity):
    return Path(run_name) / method / ablation / pct_name(sparsity, "sparsity")


def run_config(config, method, ablation, sparsity):
    return dict(config, method=method, ablation=ablation, sparsity=sparsity)


def subnetwork_plan(setup, run_name, method, ablation, sparsity, config):
    """(plan_run's Plan, whether the run needs its mask made): a finished run, or an interrupted
    one whose mask.pt is there, keeps the mask it started with."""
    folder = run_folder(run_name, method, ablation, sparsity)
    plan = plan_run(setup.checkpoint_dir / folder, setup.results_dir / folder,
                    run_config(config, method, ablation, sparsity), RUN_OUTPUTS, setup.run.force)
    keeps_mask = plan.action in ("skip", "resume") and (setup.checkpoint_dir / folder / "mask.pt").is_file()
    return plan, not keeps_mask


def train_subnetwork(setup, *, run_name, method, ablation, sparsity, make_mask, init_ckpt, arch, config,
                     share=lambda: None, checkpoint_extra=None):
    """Train one masked subnetwork in its folders; return its summary.csv row (bar score_seconds).

    summary.json records the mask's `collapsed_layers`, `classifier_collapsed` and
    `chosen_by_score` (utils.pruning); the row joins the empty layers' names with ";".

    checkpoints/<run>/<method>/<ablation>/sparsity_<s>/{mask.pt,start.pt,final.pt},
    results/<run>/…/{trajectory.csv,summary.json,sparsity_report.json}. A finished run is
    skipped and an interrupted one resumes with the mask.pt it started with (`plan_run` decides);
    `make_mask()` is called only for a run that starts, so a rerun computes no score;
    `share()` gives the mask's chosen_by_score (None when unknown).
    """
    folder = run_folder(run_name, method, ablation, sparsity)
    classifier = classifier_weight_name(model_from_checkpoint(init_ckpt, "cpu"))
    ckpt_dir, results_dir = setup.checkpoint_dir / folder, setup.results_dir / folder
    plan, needs_mask = subnetwork_plan(setup, run_name, method, ablation, sparsity, config)
    config = run_config(config, method, ablation, sparsity)
    mask_path = ckpt_dir / "mask.pt"
    if not needs_mask:
        # The run keeps the mask it started with. Its inputs are pinned by the config (init
        # fingerprint, score settings, data); SNIP/GraSP scores recomputed with another thread
        # count can differ in the last fp32 bits and flip near-ties, which must not stop a rerun.
        mask = load_torch(mask_path, "delete it, or rerun with --force to redo this run")
    else:
        mask = make_mask()
        write_mask(mask_path, mask, force=True)
    chosen = share()  # known once the mask is (a finished run keeps its own, below)
    epochs = setup.hp.epochs
    model = None if plan.skip else start_model(init_ckpt, mask, ablation, setup.run.seed, setup.device)
    summary = train_run(
        model, setup.train, setup.test, setup.hp, arch=arch, config=config, ckpt_dir=ckpt_dir,
        results_dir=results_dir, seed=setup.run.seed, force=plan.fresh, outputs=RUN_OUTPUTS,
        save_as=[(0, "start.pt"), (epochs, "final.pt")], mask=mask, checkpoint_extra=checkpoint_extra,
        desc=f"{method} {ablation} {100 * sparsity:g}%",
        callbacks=[SummaryFields(chosen_by_score=chosen)], **setup.train_kwargs())
    report = sparsity_report(mask)
    facts = mask_facts(mask, classifier)  # of the mask the run trained with
    chosen = summary.get("chosen_by_score", chosen)  # a finished run keeps its own
    save_json(report, results_dir / "sparsity_report.json")
    return {"method": method, "ablation": ablation, "sparsity": sparsity,
            "start_acc": summary["start_test_acc"], "final_acc": summary["test_acc"],
            "zeros": report["overall"]["zeros"], "prunable": report["overall"]["total"],
            "epochs": summary["epochs"],
            "collapsed_layers": ";".join(facts["collapsed_layers"]),
            "classifier_collapsed": facts["classifier_collapsed"],
            "chosen_by_score": "" if chosen is None else chosen}


def write_summary(rows, path):
    """summary.csv; rows of (method, ablation, sparsity) not run this time are kept from the old file."""
    path = Path(path)
    key = lambda r: (r["method"], r["ablation"], float(r["sparsity"]))  # noqa: E731
    ran = {key(r) for r in rows}
    kept = [r for r in load_csv(path) if key(r) not in ran] if path.is_file() else []
    methods = {m: i for i, m in enumerate((DENSE_METHOD,) + METHODS)}
    ablations = {a: i for i, a in enumerate(ABLATIONS)}
    merged = sorted(kept + rows, key=lambda r: (methods.get(r["method"], len(methods)),
                                                ablations.get(r["ablation"], len(ablations)),
                                                float(r["sparsity"])))
    save_csv(merged, path, SUMMARY_COLUMNS)
    return merged
