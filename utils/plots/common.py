"""What every figure module shares: reading results/ (one reader per file format the project
writes), the figure description (`FigureSpec`), saving, and small drawing helpers.

A figure builder takes a `Results` and returns a matplotlib Figure, or None when its inputs are
missing; each task module's `FIGURES` lists its builders with the files they need and the
command that makes those, so plot_results.py and make_report.py skip a missing figure with one
line naming that command.
"""
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, same output everywhere
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.errors import UserError  # noqa: E402
from utils.io import _atomic_write, load_json  # noqa: E402
from utils.replicates import mean_json, mean_rows, sd_of, seed_folders  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Reading results/
# ---------------------------------------------------------------------------------------------

def _num(v):
    """CSV cell -> float when it is a number, None when empty, else the string."""
    if v is None or v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def read_csv(path):
    """Rows of a CSV as dicts of floats (empty cells None); [] when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def folder_fraction(name):
    """'sparsity_50' -> 0.5, 'ratio_30' -> 0.3, 'epoch_010' -> 10 (the number after '_')."""
    value = float(name.split("_", 1)[1])
    return int(value) if name.startswith("epoch_") else value / 100


def ratio_key(fraction):
    """The key detection.json uses for a ratio: %g format ('0.3')."""
    return f"{fraction:g}"


@dataclass
class Results:
    """Everything under one results folder that the figures and the report read.

    A folder of `seed_<s>` replicates (run_all.py --seeds) reads as their average: `csv`, `json`,
    `trajectories` and `runs` return `MeanRow`s (means, with `.sd` and `.n` per averaged column;
    utils/replicates.py), so code written for one seed reads the means unchanged. `replicates` are
    the per-seed `Results` ([self] for a one-seed folder) and `per_seed(fn)` applies `fn` to each,
    in seed order: the paired values a comparison needs (utils/noise.py).
    """

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        folders = seed_folders(self.root)
        self.seeds = list(folders)
        self.replicates = [Results(p) for p in folders.values()] or [self]

    @property
    def multi_seed(self):
        return bool(self.seeds)

    def per_seed(self, fn):
        """[fn(replicate) for each seed's Results]; [fn(self)] for a one-seed folder."""
        return [fn(r) for r in self.replicates]

    def path(self, *parts):
        return self.root.joinpath(*parts)

    def json(self, *parts):
        if self.multi_seed:
            return mean_json([r.json(*parts) for r in self.replicates])
        p = self.path(*parts)
        return load_json(p) if p.is_file() else None

    def csv(self, *parts):
        if self.multi_seed:
            return mean_rows([r.csv(*parts) for r in self.replicates], "/".join(parts))
        return read_csv(self.path(*parts))

    def trajectories(self, pattern):
        """{relative folder: rows} for every trajectory.csv matching `pattern` (a glob)."""
        if self.multi_seed:
            per_seed = [r.trajectories(pattern) for r in self.replicates]
            folders = dict.fromkeys(f for t in per_seed for f in t)
            return {f: mean_rows([t[f] for t in per_seed if f in t], "trajectory.csv") for f in folders}
        out = {}
        for p in sorted(self.root.glob(f"{pattern}/trajectory.csv")):
            rows = read_csv(p)
            if rows:
                out[p.parent.relative_to(self.root).as_posix()] = rows
        return out

    # The contract's files, one accessor each.
    @property
    def dense_trajectory(self):
        return self.csv("dense", "trajectory.csv")

    @property
    def dense_summary(self):
        return self.json("dense", "summary.json")

    @property
    def magnitude(self):
        return sorted(self.csv("magnitude", "summary.csv"), key=lambda r: r["sparsity"])

    @property
    def lottery(self):
        return self.csv("lottery", "summary.csv")

    @property
    def early_bird(self):
        return sorted(self.csv("early_bird", "summary.csv"), key=lambda r: (r["ratio"], r["ticket_epoch"]))

    @property
    def detection(self):
        """early_bird/detection.json (several seeds: the first seed's, like `mask_distances`: each
        seed's detector fires at its own epoch, and an averaged epoch indexes nothing)."""
        if self.multi_seed:
            return self.replicates[0].detection
        return self.json("early_bird", "detection.json")

    @property
    def robustness(self):
        return self.csv("robustness", "summary.csv")

    def mask_distances(self):
        """{ratio (fraction): (epochs, matrix)} from every early_bird/mask_distance*.csv (several
        seeds: the first seed's, since each seed's detector sees its own epochs)."""
        if self.multi_seed:
            return self.replicates[0].mask_distances()
        out = {}
        for p in sorted(self.path("early_bird").glob("mask_distance*.csv")):
            m = re.search(r"(\d+(?:\.\d+)?)", p.stem)
            ratio = float(m.group(1)) / 100 if m else None
            epochs, matrix = read_matrix(p)
            if matrix.size:
                out[ratio] = (epochs, matrix)
        return out

    def runs(self, task):
        """{folder: summary.json} of every finished run under results/<task>/."""
        if self.multi_seed:
            per_seed = [r.runs(task) for r in self.replicates]
            folders = dict.fromkeys(f for runs in per_seed for f in runs)
            return {f: mean_json([runs.get(f) for runs in per_seed]) for f in folders}
        return {p.parent.relative_to(self.root).as_posix(): load_json(p)
                for p in sorted(self.path(task).rglob("summary.json"))} if self.path(task).is_dir() else {}


def read_matrix(path):
    """An early_bird/mask_distance_ratio_<r>.csv -> (epoch labels, epoch x epoch matrix).

    The one layout early_bird.py writes (utils.early_bird.write_detection): a header `epoch,0,1,...`
    naming the column epochs, then one row per epoch, its epoch first. Anything else is a UserError.
    """
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        return [], np.zeros((0, 0))
    header, body = rows[0], rows[1:]
    try:
        if header[0] != "epoch" or any(len(r) != len(header) for r in body):
            raise ValueError
        columns = [int(c) for c in header[1:]]
        epochs = [int(r[0]) for r in body]
        matrix = np.array([[float(c) if c != "" else np.nan for c in r[1:]] for r in body], dtype=float)
    except ValueError:
        raise UserError(f"{path} is not an epoch x epoch mask-distance table as early_bird.py writes it "
                        "(header epoch,0,1,...); delete it and rerun python early_bird.py --detect-only") from None
    if columns != epochs:
        raise UserError(f"{path}: the column epochs {columns} differ from the row epochs {epochs}; delete it "
                        "and rerun python early_bird.py --detect-only")
    return epochs, matrix.reshape(len(body), len(columns))


# ---------------------------------------------------------------------------------------------
# Figure helpers
# ---------------------------------------------------------------------------------------------

def col(rows, key):
    return [r.get(key) for r in rows]


def pct(fraction):
    return f"{100 * fraction:g}%"


def seeds_note(res):
    """What a title adds for several seeds: ' (mean ± sd over n = 3 seeds)'; '' for one seed."""
    return f" (mean ± sd over n = {len(res.seeds)} seeds)" if res.multi_seed else ""


def _xs(rows, x):
    """x values: a column name, a function of a row, or the values themselves."""
    if isinstance(x, str):
        return col(rows, x)
    if callable(x):
        return [x(r) for r in rows]
    return list(x)


def errorbar(ax, rows, x, y, fmt="o-", **kw):
    """Plot column `y` of `rows` against `x` (see `_xs`): with error bars of ± the seed-to-seed sd
    where the rows average several seeds (utils/replicates.py), else a plain line as for one seed.
    Returns the artist (ErrorbarContainer or Line2D)."""
    xs, ys = _xs(rows, x), col(rows, y)
    sds = [sd_of(r, y) for r in rows]
    if not any(sd is not None for sd in sds):
        return ax.plot(xs, ys, fmt, **kw)[0]
    return ax.errorbar(xs, ys, yerr=[sd or 0.0 for sd in sds], fmt=fmt, capsize=3, **kw)


def band(ax, rows, x, y, fmt="-", **kw):
    """A line of column `y` against `x` with a shaded band of ± the seed-to-seed sd where the rows
    average several seeds; a plain line for one seed. Returns the line."""
    xs, ys = _xs(rows, x), col(rows, y)
    line = ax.plot(xs, ys, fmt, **kw)[0]
    sds = [sd_of(r, y) for r in rows]
    if any(sd is not None for sd in sds):
        pairs = [(a, m, s or 0.0) for a, m, s in zip(xs, ys, sds) if m is not None]
        ax.fill_between([a for a, _, _ in pairs], [m - s for _, m, s in pairs], [m + s for _, m, s in pairs],
                        color=line.get_color(), alpha=0.2, lw=0)
    return line


def hline(ax, row, column, **kw):
    """A horizontal reference line at `row[column]`, with a band of ± its sd over seeds if any."""
    value = row[column]
    line = ax.axhline(value, **kw)
    sd = sd_of(row, column)
    if sd:
        ax.axhspan(value - sd, value + sd, color=line.get_color(), alpha=0.12, lw=0)
    return line


def save_figure(fig, stem):
    """Write `stem`.png and `stem`.pdf atomically; return the two paths."""
    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        path = Path(f"{stem}.{ext}")
        _atomic_write(path, lambda f: f.write(buf.getvalue()))
        paths.append(path)
    return paths


def trajectory_grid(runs, title, label_fn=lambda k: k, cmap="viridis"):
    """2x2 panels (loss / accuracy x train / test) with one line per run (several seeds: the mean
    with a band of ± sd; the title should say n, `seeds_note`)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    colors = plt.get_cmap(cmap)(np.linspace(0, 0.9, max(len(runs), 1)))
    for color, (name, rows) in zip(colors, runs.items()):
        for j, split in enumerate(("train", "test")):
            band(axes[0, j], rows, "epoch", f"{split}_loss", color=color, label=label_fn(name))
            band(axes[1, j], rows, "epoch", f"{split}_acc", color=color, label=label_fn(name))
    for j, split in enumerate(("training", "test")):
        axes[0, j].set_title(f"{split} loss")
        axes[1, j].set_title(f"{split} accuracy")
        axes[0, j].set_ylabel("cross-entropy loss (nats)")
        axes[1, j].set_ylabel("accuracy (%)")
        axes[1, j].set_xlabel("epoch (0 = before training)")
        for i in range(2):
            axes[i, j].grid(alpha=0.3)
    axes[1, 1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def arch_name(arch):
    """'resnet20' -> 'ResNet-20'; anything else as it is."""
    m = re.fullmatch(r"resnet(\d+)", str(arch))
    return f"ResNet-{m.group(1)}" if m else str(arch)


def arch_label(res, task="dense"):
    """The architecture the runs of results/<task>/ used (their summary.json), else the dense run's,
    as a title names it ('ResNet-20'); 'the network' when no run says."""
    for summary in list(res.runs(task).values()) + [res.dense_summary or {}]:
        arch = (summary.get("config") or {}).get("arch")
        if arch:
            return arch_name(arch)
    return "the network"


def sparsity_label(folder):
    return "sparsity " + pct(folder_fraction(folder.rsplit("/", 1)[-1]))


@dataclass
class FigureSpec:
    name: str
    build: object
    needs: str  # the input file(s), for the skip message
    command: str  # what makes them


def build_figure(spec, res):
    """(figure or None, one-line skip message or None)."""
    fig = spec.build(res)
    if fig is None:
        return None, f"skipped {spec.name}: no {res.root / spec.needs} (run: {spec.command})"
    return fig, None


COLLAPSE_VERDICT = "not a test of the score"


def collapse_note(summary):
    """'' for a mask with no empty layer; otherwise the phrase every table and sentence uses in
    place of better/worse: "layer collapse (classifier empty): not a test of the score"."""
    empty = summary.get("collapsed_layers") or []
    if isinstance(empty, str):  # a summary.csv cell: the names joined by ";"
        empty = empty.split(";")
    if not empty:
        return ""
    what = "classifier empty" if summary.get("classifier_collapsed") in (True, "True") else \
        f"{len(empty)} layer{'s' if len(empty) > 1 else ''} empty"
    return f"layer collapse ({what}): {COLLAPSE_VERDICT}"


def mark_collapse(ax, rows, y, x="sparsity"):
    """A black ✕ on every point whose mask left a layer empty (`collapsed_layers`, utils.pruning),
    labelled with its chosen_by_score: those runs are not a test of their score. x is 100·row[x]."""
    hit = [r for r in rows if collapse_note(r)]
    if not hit:
        return
    label = "layer collapse: not a test of the score"
    first = label not in ax.get_legend_handles_labels()[1]
    ax.scatter([100 * r[x] for r in hit], [r[y] for r in hit], marker="x", s=90, color="black", zorder=5,
               label=label if first else None)
    for r in hit:
        chosen = r.get("chosen_by_score")
        if isinstance(chosen, float):
            ax.annotate(f"by score {chosen:.2f}", (100 * r[x], r[y]), fontsize=6, xytext=(3, -9),
                        textcoords="offset points")
