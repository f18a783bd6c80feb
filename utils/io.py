"""Atomic file writes (temporary name, then rename) and small CSV/JSON helpers."""
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import torch


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files private (0600)


def _atomic_write(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj, path):
    _atomic_write(path, lambda f: torch.save(obj, f))


def save_text(text, path):
    _atomic_write(path, lambda f: f.write(text.encode()))


def save_json(obj, path):
    save_text(json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n", path)


def _json_default(x):
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (tuple, set)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def load_json(path):
    with open(path) as f:
        return json.load(f)


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def save_csv(rows, path, columns=None):
    """Write a list of dicts; columns default to the keys of the first row, in order."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    save_text(buf.getvalue(), path)


def load_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
