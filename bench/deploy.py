"""Speed and size targets of the deployed networks, checked on a quiet machine.

    python deploy.py --force --repeats 30 --warmup 5 && python bench/deploy.py --results-dir results

Reads results/deploy/summary.csv (every seed_<s>/ replicate of a several-seed folder) and checks,
per replicate: every compact (channel-pruned) network is smaller on disk than the dense network
and no slower at batch 128 on the CPU (its median, timed in turns with the dense network, at most
`--margin` above the dense median); every 90%-sparse masked network's CSR file is at most a third
of the dense file. Prints one line per check and exits 1 when one fails. Timings are only
meaningful on a machine nothing else runs on (docs/deploy.md).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.plots.common import read_csv  # noqa: E402
from utils.replicates import seed_folders  # noqa: E402


def checks(rows, margin):
    """[(ok, line)] of the targets over one replicate's rows."""
    dense = next(r for r in rows if r["form"] == "dense" and r["device"] == "cpu")
    out = []
    for r in rows:
        if r["device"] != "cpu":
            continue
        if r["form"] == "compact":
            out.append((r["disk_mb"] < dense["disk_mb"], f"{r['source']}: compact {r['disk_mb']:.3f} MB "
                                                         f"< dense {dense['disk_mb']:.3f} MB"))
            out.append((r["latency_ms_b128"] <= (1 + margin) * r["dense_latency_ms_b128"],
                        f"{r['source']}: compact {r['latency_ms_b128']:.1f} ms at b128 <= {1 + margin:g} x dense "
                        f"{r['dense_latency_ms_b128']:.1f} ms (same turns)"))
        if r["form"] == "sparse_csr" and abs(r["sparsity"] - 0.9) < 1e-6:
            out.append((r["disk_mb"] <= dense["disk_mb"] / 3, f"{r['source']}: CSR {r['disk_mb']:.3f} MB "
                                                               f"<= dense {dense['disk_mb']:.3f} MB / 3"))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--margin", type=float, default=0.0, help="allowed slow-down of a compact net (0.05 = 5%%)")
    args = parser.parse_args(argv)
    roots = list(seed_folders(args.results_dir).values()) or [Path(args.results_dir)]
    failed = 0
    for root in roots:
        rows = read_csv(root / "deploy" / "summary.csv")
        if not rows:
            sys.exit(f"{root}/deploy/summary.csv not found: run python deploy.py --results-dir {args.results_dir}")
        for ok, line in checks(rows, args.margin):
            print(("ok   " if ok else "FAIL ") + f"{root.name}: {line}")
            failed += not ok
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
