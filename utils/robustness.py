"""The robustness experiments' bookkeeping (robustness.py): which checkpoints the other tasks saved,
how sparse each is, one cached summary row per checkpoint, and the summary and ticket tables.

The attack maths (FGSM, PGD, robust evaluation, PGD training) lives in utils/attacks.py.
"""
from pathlib import Path

from models import count_params, get_model, load_checkpoint, prunable_weights
from utils.attacks import robust_evaluate
from utils.io import load_csv, load_json, save_json

TRAININGS = ("natural", "pgd")
MASK_SOURCES = ("natural", "pgd")
SUMMARY_COLUMNS = ["model", "arch", "training", "sparsity", "clean_acc", "fgsm_acc", "pgd_acc",
                   "mask_from", "params", "experiment", "eps", "step", "eval_steps", "images",
                   "seed", "checkpoint", "collapsed_layers", "chosen_by_score"]
ATTACK_KEYS = ("eps", "step", "eval_steps", "images", "seed")
# (mask source, training) -> column prefix of tickets.csv
TICKET_KINDS = {("natural", "natural"): "natural_ticket",
                ("pgd", "natural"): "pgd_mask_natural_training",
                ("natural", "pgd"): "natural_mask_pgd_training",
                ("pgd", "pgd"): "boosting_ticket"}
TICKET_COLUMNS = (["arch", "sparsity"]
                  + [f"{k}_{m}" for k in TICKET_KINDS.values() for m in ("clean_acc", "pgd_acc")]
                  + ["mask_gain_pgd_acc"])


def _epoch_of(path):
    digits = path.stem.removeprefix("epoch_")
    return int(digits) if digits.isdigit() else None


def find_checkpoints(root):
    """(model name, path) of every dense and pruned network the tasks saved under `root`.

    Dense runs (train_dense.py's layout, a folder with epoch_EEE.pt files): the highest epoch,
    named by the folder (`dense`). Pruned and retrained networks: every `final.pt`, named by its
    folder relative to `root` (`magnitude/sparsity_50`, `lottery/imp/sparsity_90`,
    `early_bird/epoch_010/ratio_30`). robustness/ (this task's own runs) is left out, and so are
    ticket_transfer/ (MNIST LeNets, which CIFAR-10 attacks do not apply to) and three_regime/
    (hundreds of retrained copies on the paper grid; their question is connectivity, not robustness).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    skip = ("robustness", "ticket_transfer", "three_regime")
    for run in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip):
        epochs = [p for p in run.glob("epoch_*.pt") if _epoch_of(p) is not None]
        if epochs:
            found.append((run.name, max(epochs, key=_epoch_of)))
    for path in sorted(root.rglob("final.pt")):
        rel = path.parent.relative_to(root)
        if rel.parts and rel.parts[0] not in skip:
            found.append((rel.as_posix(), path))
    return found


def checkpoint_sparsity(model, ckpt):
    """Fraction of the full architecture's prunable weights that are gone.

    Unstructured (a `mask`): the masked-out fraction. Compact channel-pruned networks (`widths`):
    the weights the removed channels took with them. Both together when a checkpoint has both.
    """
    config = ckpt.get("config") or {}
    full = get_model(ckpt["arch"], shortcut=config.get("shortcut", "B"))
    total = sum(w.numel() for w in prunable_weights(full).values())
    mask = ckpt.get("mask") or {}
    kept = sum(int(mask[n].count_nonzero()) if n in mask else w.numel()
               for n, w in prunable_weights(model).items())
    return 1.0 - kept / total


def cached_robust_row(name, path, cache_path, test, attack, device, force=False, batch_size=500,
                      **extra):
    """The summary row of one checkpoint: robust_evaluate on `test`, cached in `cache_path`.

    The cache is used only for the same attack settings, device and checkpoint file (size and
    modification time), so a retrained checkpoint is evaluated again.
    """
    path, cache_path = Path(path), Path(cache_path)
    stat = path.stat() if path.is_file() else None
    key = dict(attack, checkpoint=str(path), device=str(device),
               size=stat and stat.st_size, mtime_ns=stat and stat.st_mtime_ns)
    if not force and stat and cache_path.is_file():
        cached = load_json(cache_path)
        if cached.get("key") == key:
            return cached["row"]
    model, ckpt = load_checkpoint(path, device)
    r = robust_evaluate(model, test, attack["eps"], attack["step"], attack["eval_steps"],
                        attack["seed"], batch_size, attack["eval_subset"])
    config = ckpt.get("config") or {}
    row = {"model": name, "arch": ckpt["arch"],
           "training": "pgd" if config.get("adv_train") else "natural",
           "sparsity": round(checkpoint_sparsity(model, ckpt), 4), "clean_acc": r["clean_acc"],
           "fgsm_acc": r["fgsm_acc"], "pgd_acc": r["pgd_acc"], "mask_from": "",
           "params": count_params(model), "eps": attack["eps"], "step": attack["step"],
           "eval_steps": attack["eval_steps"], "images": r["images"], "seed": attack["seed"],
           "checkpoint": str(path), **extra}
    save_json({"key": key, "row": row}, cache_path)
    return row


def _same_attack(a, b):
    try:
        return all(float(a[k]) == float(b[k]) for k in ATTACK_KEYS)
    except (KeyError, TypeError, ValueError):
        return False


def merge_summary(path, rows):
    """This run's rows plus the rows of an earlier summary.csv for other models, kept only if
    they were attacked the same way (so one table never mixes attack strengths)."""
    path = Path(path)
    old = load_csv(path) if path.is_file() else []
    new_models = {r["model"] for r in rows}
    kept = [r for r in old if r.get("model") not in new_models
            and (not rows or _same_attack(r, rows[0]))]
    order = {"evaluate": 0, "adversarial": 1, "size": 2}
    return sorted(kept + rows, key=lambda r: (order.get(r.get("experiment"), 3), r["model"]))


def ticket_table(summary):
    """One row per (arch, sparsity) of the adversarial/size experiments: clean and PGD accuracy
    of the four tickets (mask source x training). At sparsity 0 the dense networks fill in (the
    mask source is moot there). mask_gain_pgd_acc = boosting − natural-mask-PGD-trained: what
    drawing the mask from the adversarially trained network adds."""
    table = {}
    for r in summary:
        if r.get("experiment") not in ("adversarial", "size"):
            continue
        arch, sparsity, training = r["arch"], round(float(r["sparsity"]), 4), r["training"]
        sources = [r["mask_from"]] if r.get("mask_from") else list(MASK_SOURCES)
        out = table.setdefault((arch, sparsity), {"arch": arch, "sparsity": sparsity})
        for source in sources:
            kind = TICKET_KINDS[(source, training)]
            out[f"{kind}_clean_acc"] = float(r["clean_acc"])
            out[f"{kind}_pgd_acc"] = float(r["pgd_acc"])
    for out in table.values():
        a, b = out.get("boosting_ticket_pgd_acc"), out.get("natural_mask_pgd_training_pgd_acc")
        out["mask_gain_pgd_acc"] = None if a is None or b is None else a - b
    return [table[k] for k in sorted(table)]
