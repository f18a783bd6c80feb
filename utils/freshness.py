"""Outputs made from the results folder alone (figures, report, code.zip) are made again only
when what they are made from changed.

Their inputs are every file under results/ (logs and the outputs themselves aside), the tracked
source code (the analysis, the figures' code, what code.zip holds) and the command's own settings.
A stamp file beside the outputs keeps the SHA-256 of those inputs; a rerun that finds the same
digest and every output in place writes nothing and says so.
"""
import hashlib
import json
from pathlib import Path

from utils.code_zip import source_files
from utils.io import load_json, save_json

REPO = Path(__file__).resolve().parents[1]
# what make_report.py writes into the results folder: made from the results, never an input
REPORT_FILES = ("report.pdf", "report.md", "code.zip", ".report_inputs.json")


def results_inputs(results_dir, leave_out=()):
    """Every file under `results_dir` but logs, the report's files and the files or folders in
    `leave_out`, sorted."""
    results_dir = Path(results_dir)
    leave_out = [Path(p).resolve() for p in [*leave_out, *(results_dir / name for name in REPORT_FILES)]]

    def kept(p):
        resolved = p.resolve()
        return "logs" not in p.relative_to(results_dir).parts and not any(
            resolved == out or out in resolved.parents for out in leave_out)
    return sorted(p for p in results_dir.rglob("*") if p.is_file() and kept(p))


def inputs_digest(results_dir, leave_out=(), settings=None, extra=()):
    """SHA-256 over the results files (name and bytes), the tracked source, `extra` files and
    the JSON of `settings`."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    results_dir = Path(results_dir)
    named = [(f"results/{p.relative_to(results_dir).as_posix()}", p) for p in results_inputs(results_dir, leave_out)]
    named += [(f"code/{n}", REPO / n) for n in source_files(REPO)]
    named += [(f"extra/{Path(p).name}", Path(p)) for p in extra if Path(p).is_file()]
    for name, path in named:
        data = path.read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def up_to_date(stamp, digest):
    """True when `stamp` records `digest` and every output it lists (beside it) is there."""
    stamp = Path(stamp)
    if not stamp.is_file():
        return False
    record = load_json(stamp, fix=f"delete {stamp}")
    return record.get("inputs_sha256") == digest and all(
        (stamp.parent / name).is_file() for name in record.get("outputs", []))


def mark_up_to_date(stamp, digest, outputs):
    """Record that `outputs` (paths beside `stamp`) were made from the inputs of `digest`."""
    stamp = Path(stamp)
    save_json({"inputs_sha256": digest, "outputs": sorted(str(Path(p).relative_to(stamp.parent)) for p in outputs)},
              stamp)
