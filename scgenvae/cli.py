"""Command line: ``scgenvae fit`` and ``scgenvae demo``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)


def _read(path: Path):
    """Read an .h5ad or .h5mu file with a clear error for missing or unreadable files."""
    import anndata as ad
    import h5py

    if not path.exists():
        msg = f"input file {path} does not exist."
        raise SystemExit(msg)
    if path.is_dir():
        msg = f"input {path} is a folder; pass an .h5ad or .h5mu file."
        raise SystemExit(msg)
    kind = "h5mu" if path.suffix == ".h5mu" else "h5ad"
    try:
        with h5py.File(path, "r") as f:
            looks_right = "mod" in f if kind == "h5mu" else "obs" in f and "var" in f
    except OSError as err:
        msg = (
            f"could not read {path} as {kind}: it is not an HDF5 file, or it is truncated "
            f"({err}). Write it with `adata.write_h5ad(...)` / `mdata.write_h5mu(...)`."
        )
        raise SystemExit(msg) from err
    if not looks_right:
        need = "a 'mod' group" if kind == "h5mu" else "'obs' and 'var' groups"
        msg = (
            f"could not read {path} as {kind}: the HDF5 file lacks {need}, so it was not "
            f"written by {'mudata' if kind == 'h5mu' else 'anndata'}."
        )
        raise SystemExit(msg)
    try:
        if kind == "h5mu":
            import mudata as md

            return md.read_h5mu(path)
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as err:
        msg = f"could not read {path} as {kind}: {err}"
        raise SystemExit(msg) from err


def _check_output(path: Path) -> None:
    """Fail before training, not after, when the output cannot be written."""
    if path.is_dir():
        msg = f"`--output {path}` is a folder; pass a file name (e.g. {path / 'out.h5ad'})."
        raise SystemExit(msg)
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        msg = f"`--output {path}`: cannot write into {parent}."
        raise SystemExit(msg)


def _positive_int(text: str) -> int:
    """Integer of at least 1 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _fit(args: argparse.Namespace) -> int:
    from mudata import MuData

    from scgenvae.model import PoissonVAE

    _check_output(Path(args.output))
    data = _read(Path(args.input))
    train_kwargs = {"max_epochs": args.max_epochs, "seed": args.seed}
    if isinstance(data, MuData):
        from scgenvae.model import MultiVAE

        MultiVAE.setup_mudata(
            data,
            rna_mod=args.rna_mod,
            atac_mod=args.atac_mod,
            rna_layer=args.layer,
            batch_key=args.batch_key,
        )
        model = MultiVAE(data, n_latent=args.n_latent)
    else:
        PoissonVAE.setup_anndata(data, layer=args.layer, batch_key=args.batch_key)
        model = PoissonVAE(data, n_latent=args.n_latent)
    model.train(**train_kwargs, enable_progress_bar=not args.quiet)
    if not args.quiet:
        from scgenvae.model._health import format_report

        print(format_report(model.training_report, include_stop=False))
    model.export_latent(data, key_added=args.key_added)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, MuData):
        data.write_h5mu(out)
    else:
        data.write_h5ad(out)
    if args.save_model:
        model.save(args.save_model, overwrite=True)
    logger.info("wrote %s", out)
    print(f"wrote {out} (latent in obsm[{args.key_added!r}])")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from scgenvae._demo import run_demo

    paths = run_demo(Path(args.output), max_epochs=args.max_epochs, seed=args.seed)
    for p in paths:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scgenvae`` command."""
    parser = argparse.ArgumentParser(
        prog="scgenvae", description="Variational autoencoders for single-cell data."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser(
        "fit",
        help="train a model on an .h5ad (PoissonVAE) or .h5mu with RNA + ATAC (MultiVAE)",
    )
    fit.add_argument("input", help="input .h5ad or .h5mu")
    fit.add_argument("--output", "-o", required=True, help="output file (same format as input)")
    fit.add_argument("--layer", default=None, help="layer with raw counts (default .X)")
    fit.add_argument("--batch-key", default=None, help="obs column with the batch")
    fit.add_argument(
        "--n-latent", type=_positive_int, default=10, help="latent dimension (default 10)"
    )
    fit.add_argument(
        "--max-epochs", type=_positive_int, default=None, help="epochs (default: by data size)"
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--key-added", default="X_scgenvae", help="obsm key of the latent")
    fit.add_argument("--rna-mod", default="rna", help="RNA modality of a MuData (default rna)")
    fit.add_argument("--atac-mod", default="atac", help="ATAC modality of a MuData (default atac)")
    fit.add_argument("--save-model", default=None, help="folder to save the trained model in")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(func=_fit)
    demo = sub.add_parser("demo", help="run the main job on the bundled data")
    demo.add_argument("--output", "-o", default="demo_output", help="output folder")
    demo.add_argument("--max-epochs", type=_positive_int, default=None, help="override the epochs")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scgenvae`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"scgenvae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
