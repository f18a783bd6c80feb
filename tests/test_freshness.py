"""Figures and report are made again only when their inputs changed (utils/freshness.py)."""
from utils.freshness import inputs_digest, mark_up_to_date, up_to_date


def test_digest_follows_the_results_and_the_stamp_its_outputs(tmp_path):
    res, out = tmp_path / "results", tmp_path / "plots"
    (res / "dense").mkdir(parents=True)
    (res / "logs").mkdir()
    (res / "dense" / "summary.json").write_text('{"test_acc": 91.2}')
    (res / "logs" / "train_dense.log").write_text("attempt 1")
    digest = inputs_digest(res, settings={"plots_dir": str(out)})
    out.mkdir()
    (out / "a.png").write_bytes(b"png")
    stamp = out / ".inputs.json"
    assert not up_to_date(stamp, digest)  # never made
    mark_up_to_date(stamp, digest, [out / "a.png"])
    assert up_to_date(stamp, digest)
    # a log, the report (made from the results) or a file left out change nothing
    (res / "logs" / "train_dense.log").write_text("attempt 2")
    (res / "report.pdf").write_bytes(b"%PDF")
    (res / "notes.txt").write_text("mine")
    assert inputs_digest(res, leave_out=[res / "notes.txt"], settings={"plots_dir": str(out)}) == digest
    # a result's content, another setting: other inputs
    assert inputs_digest(res, settings={"plots_dir": "elsewhere"}) != digest
    (res / "dense" / "summary.json").write_text('{"test_acc": 91.3}')
    assert inputs_digest(res, leave_out=[res / "notes.txt"], settings={"plots_dir": str(out)}) != digest
    # an output gone: not up to date, whatever the digest
    (res / "dense" / "summary.json").write_text('{"test_acc": 91.2}')
    (out / "a.png").unlink()
    assert not up_to_date(stamp, digest)
