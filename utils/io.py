"""Atomic file writes (temporary name, then rename), guarded reads, small CSV/JSON helpers.

Reading: `load_json` and `load_torch` are the one way this project reads a JSON or torch file it
wrote. A damaged or foreign file is a `UserError` naming the file, what is wrong with it and the
fix (the caller's `fix`, e.g. "rerun with --force"), never a traceback.
Writing: text files whose content is unchanged are not rewritten, so rerunning a finished command
leaves every file (and its modification time) as it was.
"""
import csv
import io
import json
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from utils.errors import UserError

DEFAULT_FIX = "delete it, or rerun with --force"


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
    """Write `text` atomically; a file that already holds exactly this text is left untouched."""
    data = text.encode()
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    _atomic_write(path, lambda f: f.write(data))


def save_json(obj, path):
    save_text(json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n", path)


def _json_default(x):
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (tuple, set)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def load_json(path, fix=DEFAULT_FIX, kind=dict):
    """The JSON object in `path`; a missing, damaged or foreign file is a UserError saying `fix`.

    `kind` is the type the top level must have (None: any).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged (not valid JSON: {str(e).splitlines()[0][:80]}); "
                        f"{fix}") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror}); {fix}") from None
    if kind is not None and not isinstance(obj, kind):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not the {kind.__name__} this "
                        f"project writes there; {fix}")
    return obj


def load_torch(path, fix=DEFAULT_FIX, map_location="cpu", kind=dict):
    """torch.load(path, weights_only=True), every failure a one-line UserError saying `fix`.

    A file that is not a PyTorch zip archive is "not a PyTorch checkpoint"; a zip archive torch
    cannot read is damaged (e.g. truncated by a full disk); `kind` is the type the loaded object
    must have (None: any).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; {fix}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise UserError(f"{path} is unreadable: not a PyTorch checkpoint (a file of another kind); {fix}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is unreadable: a damaged PyTorch file (truncated, its zip "
                        f"directory is missing); {fix}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on odd files
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types: RuntimeError, UnpicklingError, KeyError...
        text = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise UserError(f"{path} is unreadable: a damaged PyTorch file ({text}); {fix}") from None
    if kind is not None and not isinstance(obj, kind):
        raise UserError(f"{path} holds a {type(obj).__name__}, not the {kind.__name__} this "
                        f"project writes there; {fix}")
    return obj


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
