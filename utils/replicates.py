"""Several seeds of one pipeline: find the replicates, average their tables, write aggregate.csv.

`run_all.py --seeds 0 1 2` writes one complete replicate per seed under `<results>/seed_<s>/`.
Here each table a task writes (its `summary.csv`, a run's `summary.json` or `trajectory.csv`) is
matched row by row across seeds by its *key* columns (what identifies a row: method, sparsity,
round, ...) and every other numeric column is averaged. `MeanRow` is such a row: a dict of means
that also carries the sample standard deviation (`row.sd[c]`, n - 1 in the denominator) and the
number of seeds (`row.n[c]`) of each averaged column, so code written for one seed reads the
means unchanged and figures add error bars from `.sd`.

`aggregate.csv` (one per task, `<results>/<task>/aggregate.csv`) is the same in long form: the
key columns, then `column`, `mean`, `std`, `n` for each averaged column.
"""
import re
import statistics
from collections import Counter
from pathlib import Path

from utils.io import save_csv

SEED_FOLDER = re.compile(r"seed_(\d+)")

# The columns that identify a row of each task's summary.csv (the rest are measurements). Measured
# fractions (e.g. Early-Bird's weight sparsity, a transferred ticket's density) are not keys: they
# may differ a little between seeds.
SUMMARY_KEYS = {
    "dense": [],
    "magnitude": ["sparsity", "scope", "epochs"],
    "lottery": ["method", "sparsity", "round"],
    "early_bird": ["ticket_epoch", "ratio", "retrain_from", "speed_device"],
    "robustness": ["model", "arch", "training", "experiment", "mask_from", "eps", "step", "eval_steps", "images"],
    "prune_at_init": ["method", "ablation", "sparsity", "epochs"],
    "earlycrop": ["method", "structured", "sparsity"],
    "three_regime": ["axis", "temperature", "density"],
    "ticket_transfer": ["experiment", "arch", "ticket", "mask_from", "trained_on", "round"],
    "deploy": ["source", "form", "device"],
}
# Other tables (trajectories, curves): these columns, and every non-numeric one, are keys.
GENERIC_KEYS = ["epoch", "alpha", "step", "round", "sparsity", "ratio", "density", "temperature"]
# Per-replicate bookkeeping, neither key nor measurement (paths hold the seed folder).
NOT_AVERAGED = {"seed", "checkpoint", "source", "seconds_start"}


def seed_folders(root):
    """{seed: folder} of the `seed_<s>` folders directly under `root`, by seed; {} if none."""
    root = Path(root)
    if not root.is_dir():
        return {}
    found = {int(m.group(1)): p for p in root.iterdir()
             if p.is_dir() and (m := SEED_FOLDER.fullmatch(p.name))}
    return dict(sorted(found.items()))


class MeanRow(dict):
    """A row of means; `.sd[c]` (None below two seeds) and `.n[c]` per averaged column."""

    def __init__(self, values, sd, n):
        super().__init__(values)
        self.sd, self.n = sd, n


def sd_of(row, column):
    """The seed-to-seed standard deviation of `column` in `row`, None for a one-seed row."""
    return getattr(row, "sd", {}).get(column)


def n_of(row, column):
    """How many seeds `row`'s `column` averages (1 for a one-seed row)."""
    return getattr(row, "n", {}).get(column, 1)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summary_task(folder):
    """The task whose summary.csv a results folder holds: its name, or the task it starts with
    when `--run-name` gave it a suffix ('lottery_rewind_010' -> 'lottery',
    'early_bird_dense2' -> 'early_bird'); None for an unknown folder."""
    if folder in SUMMARY_KEYS:
        return folder
    prefixes = [t for t in SUMMARY_KEYS if t and folder.startswith(t + "_")]
    return max(prefixes, key=len) if prefixes else None


def key_columns(table_name, columns, rows):
    """The columns that identify a row of `table_name` ('lottery/summary.csv', ...)."""
    parts = Path(table_name).parts
    task = summary_task(parts[0]) if parts else None
    if parts and parts[-1] == "summary.csv" and task is not None:
        return [c for c in columns if c in SUMMARY_KEYS[task]]
    return [c for c in columns if c in GENERIC_KEYS
            or any(r.get(c) is not None and not _is_number(r.get(c)) for r in rows)]


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    sd = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), sd, len(values)


def _consensus(values):
    """A non-numeric measured value (e.g. a regime's name): the most common, first seed on ties."""
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def mean_rows(tables, table_name=""):
    """Rows of several seeds' copies of one table, matched on the key columns, as `MeanRow`s in
    the order rows first appear. A row missing from some seeds averages the seeds that have it."""
    columns = list(dict.fromkeys(c for rows in tables for r in rows for c in r))
    keys = key_columns(table_name, columns, [r for rows in tables for r in rows])
    groups = {}
    for rows in tables:
        for r in rows:
            groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for group in groups.values():
        values, sd, n = {}, {}, {}
        for c in columns:
            cells = [r.get(c) for r in group]
            if c in keys:
                values[c] = cells[0]
            elif c in NOT_AVERAGED:
                continue
            elif all(v is None or _is_number(v) for v in cells):
                values[c], sd[c], n[c] = _stats(cells)
            else:
                values[c] = _consensus(cells)
        out.append(MeanRow(values, sd, n))
    return out


def mean_json(documents):
    """Several seeds' copies of one JSON document: numbers averaged (`.sd`, `.n` as in MeanRow,
    nested dicts recursively), anything else taken from the first copy."""
    documents = [d for d in documents if d is not None]
    if not documents:
        return None
    first = documents[0]
    if not isinstance(first, dict):
        return first
    values, sd, n = {}, {}, {}
    for k, v in first.items():
        cells = [d.get(k) for d in documents if isinstance(d, dict)]
        if _is_number(v):
            values[k], sd[k], n[k] = _stats([c if _is_number(c) else None for c in cells])
        elif isinstance(v, dict) and k != "config":
            values[k] = mean_json([c for c in cells if isinstance(c, dict)])
        else:
            values[k] = v
    return MeanRow(values, sd, n)


def aggregate_long(tables, table_name=""):
    """`mean_rows` in the long form of aggregate.csv: (rows, columns)."""
    merged = mean_rows(tables, table_name)
    columns = list(dict.fromkeys(c for rows in tables for r in rows for c in r))
    keys = key_columns(table_name, columns, [r for rows in tables for r in rows])
    out = []
    for row in merged:
        for c, n in row.n.items():
            if not n:  # a column no seed measured (all cells empty): nothing to average
                continue
            out.append({**{k: row.get(k) for k in keys}, "column": c, "mean": row[c], "std": row.sd[c], "n": n})
    return out, keys + ["column", "mean", "std", "n"]


def write_aggregates(root):
    """Write `<root>/<task>/aggregate.csv` for every task the `seed_*` replicates under `root` hold;
    return the paths written ([] for a one-seed results folder).

    A task's table is its summary.csv where it writes one (three_regime: one per axis), else its
    runs' summary.json files (one row per run folder, key `run`)."""
    from utils.plots.common import Results  # the readers (utils.plots imports this module)

    seeds = seed_folders(root)
    if not seeds:
        return []
    replicates = [Results(p) for p in seeds.values()]
    tasks = sorted({p.name for r in replicates for p in r.root.iterdir() if p.is_dir() and p.name != "logs"})
    written = []
    for task in tasks:
        summaries = sorted({p.relative_to(r.root).as_posix() for r in replicates
                            for p in r.path(task).rglob("summary.csv")})
        if summaries:
            rows, columns = [], []
            for name in summaries:
                part, cols = aggregate_long([r.csv(*name.split("/")) for r in replicates], name)
                rows += [dict(r, table=name) for r in part]
                columns += [c for c in ["table"] + cols if c not in columns]
        else:
            tables = [[{"run": folder, **{k: v for k, v in s.items() if _is_number(v)}}
                       for folder, s in r.runs(task).items()] for r in replicates]
            if not any(tables):
                continue
            rows, columns = aggregate_long(tables, f"{task}/runs")
            rows = [dict(r) for r in rows]
        if len(summaries) == 1:  # one table: no need to name it on every row
            rows = [{k: v for k, v in r.items() if k != "table"} for r in rows]
            columns = [c for c in columns if c != "table"]
        path = Path(root) / task / "aggregate.csv"
        save_csv(rows, path, columns)
        written.append(path)
    return written

