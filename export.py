"""Export a trained network in its deployable form: files that load with plain PyTorch.

    python export.py --run magnitude/sparsity_90                 # a masked network: every form
    python export.py --run early_bird/epoch_010/ratio_50         # a channel-pruned one: the compact net
    python export.py --checkpoint checkpoints/dense/epoch_160.pt --out exports/dense

For the network in --run's final.pt (or --checkpoint) it writes, into --out, each form of
utils/deploy.py the network has: `<form>.pt2` (torch.export: the graph and its weights, any
batch size; load with torch.export.load(path).module()) for the dense, compact and dense-with-
zeros forms; `<form>.pt` (torch.load(path, weights_only=True): the weights and `model_args`) for
every stored form, `sparse_csr.pt` holding every Conv2d/Linear weight as a CSR matrix; and, for
ResNets, `cifar_resnet.py`, a copy of models/resnet.py (it needs nothing but torch) that builds
the architecture a `.pt` file's weights load into. Each written file is loaded back and checked
to reproduce the masked network's logits. See docs/export.md.
"""
import utils.runtime  # noqa: F401  (first: CPU threads and OpenMP wait policy, set before torch loads)

import shutil
from pathlib import Path

import torch

from models import read_checkpoint
from utils.config import make_parser
from utils.deploy import deployable, densified_state, forms_of, masked_network, model_args, saved_bytes
from utils.errors import UserError, cli_main
from utils.io import _atomic_write, save_torch

REPO = Path(__file__).resolve().parent
STORED = ("dense", "compact", "dense_zeros", "sparse_csr")  # the forms that are files
GRAPH_FORMS = ("dense", "compact", "dense_zeros")  # the forms torch.export writes as a graph too
TOLERANCE = 1e-4  # largest |logit difference| a reloaded file may show (float32 rounding only)


def parse_args(argv):
    parser = make_parser(__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a run folder under --checkpoint-dir (its final.pt), e.g. magnitude/sparsity_90")
    source.add_argument("--checkpoint", help="a checkpoint file (e.g. checkpoints/dense/epoch_160.pt)")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="where --run's folder is")
    parser.add_argument("--out", default=None, help="output folder (default: exports/<run>, or exports/<file name>)")
    parser.add_argument("--forms", nargs="+", default=None, choices=STORED,
                        help="the forms to write (default: every form the network has)")
    parser.add_argument("--no-graph", action="store_true", help="write the .pt files only, no torch.export .pt2")
    return parser.parse_args(argv)


def export_graph(model, path):
    """torch.export the eval-mode network with a dynamic batch size; save it as `path` (.pt2)."""
    x = torch.rand(2, 3, 32, 32)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    _atomic_write(path, lambda f: torch.export.save(program, f))


def reloaded(path, args):
    """The network a written file holds, loaded back with plain torch (and cifar_resnet.py)."""
    if path.suffix == ".pt2":
        return torch.export.load(path).module()
    from models import get_model  # the same class cifar_resnet.py holds
    stored = torch.load(path, weights_only=True)
    net = get_model(args["arch"], args["num_classes"], shortcut=args["shortcut"], widths=args["widths"])
    net.load_state_dict(densified_state(stored))
    return net.eval()


@cli_main
def main(argv=None):
    args = parse_args(argv)
    path = Path(args.checkpoint) if args.checkpoint else Path(args.checkpoint_dir) / args.run / "final.pt"
    ckpt = read_checkpoint(path, hint="the script that trains it (see python export.py --help)")
    out = Path(args.out) if args.out else Path("exports") / (args.run or path.stem)
    forms = [f for f in forms_of(ckpt) if f in STORED and (args.forms is None or f in args.forms)]
    if not forms:
        raise UserError(f"{path} has none of the forms {' '.join(args.forms)} (it has "
                        f"{' '.join(f for f in forms_of(ckpt) if f in STORED)}); drop --forms or pick one of those")
    model, margs = masked_network(ckpt), model_args(ckpt)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x)
    written = []
    for form in forms:
        stored = deployable(model, form, margs)
        written.append(out / f"{form}.pt")
        save_torch(stored, written[-1])
        if form in GRAPH_FORMS and not args.no_graph:
            net = masked_network(ckpt)
            net.load_state_dict(densified_state(stored))
            written.append(out / f"{form}.pt2")
            export_graph(net, written[-1])
    if margs["arch"].startswith("resnet"):
        shutil.copyfile(REPO / "models" / "resnet.py", out / "cifar_resnet.py")
    for f in written:
        with torch.inference_mode():
            diff = float((reloaded(f, margs)(x) - expected).abs().max())
        if diff > TOLERANCE:
            raise UserError(f"{f} reloaded gives logits {diff:.2g} away from the masked network's "
                            f"(tolerance {TOLERANCE:g}); report this with the checkpoint {path}")
        print(f"{f}: {f.stat().st_size / 2 ** 20:.3f} MB, reloaded: logits within {diff:.1g} of the masked network")
    print(f"export: {path} -> {out}/ ({', '.join(forms)}); the stored weights take "
          f"{min(saved_bytes(deployable(model, f, margs)) for f in forms) / 2 ** 20:.3f} MB at the smallest")


if __name__ == "__main__":
    main()
