"""Lottery tickets (Task 3): the IMP round schedule, rewinding, the controls, one ticket's run.

A ticket is (mask, start weights): the mask comes from trained weights' magnitudes (exact global
top-k, `utils.pruning`), the start weights are a rewind checkpoint (`init.pt`, or an early epoch
for late rewinding) with the pruned entries zeroed. BatchNorm parameters, buffers and biases come
from the rewind checkpoint unchanged. Everything here is deterministic: the same checkpoints and
seed give the same masks, so an interrupted IMP rerun regenerates exactly the masks it had.
"""
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from models import get_model, model_from_checkpoint, prunable_weights, read_checkpoint
from utils.errors import UserError
from utils.experiment import pct_name
from utils.io import load_csv, load_json, load_torch, save_csv, save_torch
from utils.pruning import apply_mask, collapsed_layers, global_magnitude_mask, num_to_prune, random_mask_like
from utils.train import SummaryFields, cpu_generator, plan_run, seeded, train_run

METHODS = ("oneshot", "imp", "reinit", "random")
CONTROLS = ("reinit", "random")
SUMMARY_COLUMNS = ["method", "sparsity", "round", "dense_acc", "ticket_acc", "retrained_acc",
                   "collapsed_layers", "chosen_by_score"]
TOL = 1e-9  # float slack when deciding that a full IMP step reaches a target
DENSE_HINT = "python train_dense.py"
TICKET_OUTPUTS = ("mask.pt", "start.pt", "final.pt")  # what a finished ticket's folder holds


# ---------------------------------------------------------------------------------------------
# The IMP round schedule (pure functions).

def imp_schedule(targets, rate):
    """Sparsity after each IMP round: full steps of `rate`, landing exactly on every target.

    From sparsity s a full round goes to 1 − (1 − s)(1 − rate); when that would reach or pass the
    next target, the round stops at the target instead (a partial round). So no round removes
    more than `rate` of the weights alive before it, and every target is some round's sparsity.
    imp_schedule([0.5], 0.2) = [0.2, 0.36, 0.488, 0.5]. Target 0 needs no round.
    """
    if not 0 < rate < 1:
        raise UserError(f"--imp-rate takes a fraction in (0, 1) (0.2 = a round removes 20% of "
                        f"the surviving weights), got {rate}")
    schedule, s = [], 0.0
    for t in sorted(set(targets)):
        while s < t - TOL:
            full = 1 - (1 - s) * (1 - rate)
            # round(.., 12): 1 − 0.8² is 0.3599999…; the names and counts should see 0.36
            s = t if full >= t - TOL else round(full, 12)
            schedule.append(s)
    return schedule


def imp_zero_counts(schedule, targets, n, rate):
    """Pruned-weight count after each round, for `n` prunable weights.

    Targets are exact: round(t·n), as every other mask in the project. A non-target round takes
    round(s·n) but never more than floor(rate · alive): rounding to whole weights must not let a
    full round remove one weight more than `rate` allows.
    """
    targets = set(targets)
    counts, zeros = [], 0
    for s in schedule:
        want = num_to_prune(s, n)
        if s not in targets:
            want = min(want, zeros + math.floor(rate * (n - zeros) + TOL))
        counts.append(want)
        zeros = want
    return counts


# ---------------------------------------------------------------------------------------------
# Checkpoints, masks, rewinding and the controls.

def load_inputs(from_path, rewind_path):
    """(from_ckpt, rewind_ckpt), checked to be the same architecture."""
    from_ckpt = read_checkpoint(from_path, hint=DENSE_HINT)
    rewind_ckpt = read_checkpoint(rewind_path, hint=DENSE_HINT)
    a, b = from_ckpt["model"], rewind_ckpt["model"]
    shapes_differ = a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a)
    if from_ckpt["arch"] != rewind_ckpt["arch"] or shapes_differ:
        raise UserError(f"--from {from_path} ({from_ckpt['arch']}) and --rewind {rewind_path} "
                        f"({rewind_ckpt['arch']}) are not the same network; take both from one "
                        f"run of {DENSE_HINT}")
    return from_ckpt, rewind_ckpt


def checkpoint_label(path):
    """'dense/epoch_160.pt': names an input in a run's config without depending on the cwd."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def source_weights(ckpt):
    """The prunable weights (name -> tensor, CPU) stored in a checkpoint: a mask's source."""
    return {n: w.detach().clone() for n, w in prunable_weights(model_from_checkpoint(ckpt)).items()}


def magnitude_mask_with_zeros(weights, zeros, prev_mask=None):
    """Global top-k mask pruning exactly `zeros` weights; `prev_mask`'s zeros stay pruned."""
    n = sum(w.numel() for w in weights.values())
    if prev_mask is not None:
        prev = sum(int((m == 0).sum()) for m in prev_mask.values())
        if zeros < prev:
            raise ValueError(f"a nested mask cannot prune {zeros} < {prev} weights")
    # zeros / n maps back to exactly `zeros` under num_to_prune's round(s·n)
    return global_magnitude_mask(weights, zeros / n, mask=prev_mask)


def rewound(ckpt, mask, device="cpu"):
    """The rewind checkpoint's model with the pruned weights zeroed (everything else as saved)."""
    return apply_mask(model_from_checkpoint(ckpt, device), mask)


def reinitialised(ckpt, mask, seed, device="cpu"):
    """The reinit control: the same architecture freshly initialised (own seed stream), masked."""
    config = ckpt.get("config") or {}
    model = seeded(lambda: get_model(ckpt["arch"], shortcut=config.get("shortcut", "B"),
                                     widths=ckpt.get("widths")), seed, stream="reinit")
    return apply_mask(model.to(device), mask)


def random_control_mask(mask, seed, sparsity):
    """The random control: a random mask with `mask`'s per-layer zero counts (own seed stream)."""
    return random_mask_like(mask, cpu_generator(seed, f"random_mask:{pct_name(sparsity, 'sparsity')}"))


def masks_equal(a, b):
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    return a.keys() == b.keys() and all(torch.equal(a[n].float().cpu(), b[n].float().cpu()) for n in a)


def write_mask(path, mask, force):
    """Save mask.pt unless it already holds this mask; a saved mask that differs from the one
    derived now is stale, and a damaged or foreign one is not this project's: refuse both."""
    path = Path(path)
    if path.is_file() and not force:
        old = load_torch(path, "delete it, or rerun with --force to redo the ticket")
        if masks_equal(old, mask):
            return  # a rerun writes nothing
        raise UserError(f"{path} differs from the mask derived now (did --from, --rewind or "
                        "the dense run change?); rerun with --force to redo it")
    save_torch(mask, path)


# ---------------------------------------------------------------------------------------------
# One ticket's run and the summary table.

def ticket_folder(run_name, method, sparsity):
    """<run_name>/<method>/sparsity_<100·s %g>, under both --checkpoint-dir and --results-dir."""
    return Path(run_name) / method / pct_name(sparsity, "sparsity")


def check_imp_history(setup, run_name, schedule, rate):
    """Refuse, before any training, to reuse IMP round folders made by another schedule.

    A round's mask depends on every round before it, so a folder like imp/sparsity_50 from
    another --sparsities or --imp-rate is another experiment; mixing the two would be silent.
    """
    if setup.run.force:
        return
    for r, s in enumerate(schedule, start=1):
        folder = ticket_folder(run_name, "imp", s)
        saved = None
        summary_path = setup.results_dir / folder / "summary.json"
        resume_path = setup.checkpoint_dir / folder / "resume.pt"
        if summary_path.is_file():
            saved = load_json(summary_path, f"delete {summary_path} to redo that round, or rerun "
                                            "with --force").get("config") or {}
        elif resume_path.is_file():
            state = load_torch(resume_path, f"delete {resume_path} to start that round over, or "
                                            "rerun with --force")
            saved = state.get("config") or {}
        if saved is None:
            continue
        old = saved.get("imp_schedule")
        if old != schedule[:r] or saved.get("imp_rate") != rate:
            steps = ", ".join(f"{100 * x:g}%" for x in old or [])
            raise UserError(f"{setup.results_dir / folder} belongs to another IMP schedule ({steps}; "
                            f"--imp-rate {saved.get('imp_rate')}); rerun with the same --sparsities "
                            "and --imp-rate, pass another --run-name, or add --force to redo it")


def run_ticket(setup, *, method, sparsity, round_no, mask, model, arch, config, run_name,
               extra_config=None, checkpoint_extra=None, chosen_by_score=None):
    """Train one ticket (`model` already masked) in its own folders; return its summary row.
    `chosen_by_score` (utils.pruning.ScoreChoice) goes into summary.json beside the mask's
    `collapsed_layers`; the row has both (the empty layers joined by ";").

    Folders: <checkpoint-dir>/<run_name>/<method>/sparsity_<s>/{mask.pt,start.pt,final.pt} and
    <results-dir>/<run_name>/<method>/sparsity_<s>/trajectory.csv (row 0 = the untrained ticket).
    A finished run is skipped (its summary.json), an interrupted one resumes (its resume.pt).
    """
    folder = ticket_folder(run_name, method, sparsity)
    ckpt_dir, results_dir = setup.checkpoint_dir / folder, setup.results_dir / folder
    run_config = dict(config, method=method, sparsity=sparsity, round=round_no, **(extra_config or {}))
    # finished -> skip, interrupted -> resume, an output lost (e.g. final.pt, which the next IMP
    # round needs) -> redo: plan_run decides; mask.pt is checked against the mask derived now
    plan = plan_run(ckpt_dir, results_dir, run_config, TICKET_OUTPUTS, setup.run.force)
    write_mask(ckpt_dir / "mask.pt", mask, setup.run.force or plan.fresh)
    epochs = setup.hp.epochs
    summary = train_run(
        model, setup.train, setup.test, setup.hp, arch=arch, config=run_config,
        ckpt_dir=ckpt_dir, results_dir=results_dir, seed=setup.run.seed, force=plan.fresh,
        save_as=[(0, "start.pt"), (epochs, "final.pt")], mask=mask, outputs=TICKET_OUTPUTS,
        checkpoint_extra=checkpoint_extra, desc=f"{method} round {round_no} {100 * sparsity:g}%",
        callbacks=[SummaryFields(chosen_by_score=chosen_by_score)], **setup.train_kwargs())
    chosen = summary.get("chosen_by_score", chosen_by_score)
    return {"method": method, "sparsity": sparsity, "round": round_no,
            "ticket_acc": summary["start_test_acc"], "retrained_acc": summary["test_acc"],
            "collapsed_layers": ";".join(collapsed_layers(mask)), "chosen_by_score": "" if chosen is None else chosen}


def write_summary(rows, path, dense_acc):
    """Write summary.csv; rows of the methods not run this time are kept from the old file."""
    path = Path(path)
    ran = {r["method"] for r in rows}
    kept = [r for r in load_csv(path) if r["method"] not in ran] if path.is_file() else []
    new = [dict(r, dense_acc=dense_acc) for r in rows]
    order = {m: i for i, m in enumerate(METHODS)}
    merged = sorted(kept + new, key=lambda r: (order.get(r["method"], len(order)),
                                               float(r["sparsity"]), int(r["round"])))
    save_csv(merged, path, SUMMARY_COLUMNS)
    return merged


def print_table(rows, dense_acc, out=tqdm.write):
    out(f"dense (--from) test accuracy: {dense_acc:.2f}%")
    out(f"{'method':<8} {'sparsity':>9} {'round':>5} {'ticket':>8} {'retrained':>9}")
    for r in rows:
        out(f"{r['method']:<8} {100 * float(r['sparsity']):>8.4g}% {int(r['round']):>5} "
            f"{float(r['ticket_acc']):>7.2f}% {float(r['retrained_acc']):>8.2f}%")
