"""Command line: ``scgenvae fit`` and ``scgenvae demo``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def _kind(path: Path) -> str:
    """``"h5mu"`` for an .h5mu file, else ``"h5ad"``: the format ``fit`` reads and writes."""
    return "h5mu" if path.suffix == ".h5mu" else "h5ad"


def _check_key(key: str | None, flag: str, *, uns: bool = False) -> None:
    """Refuse a key that an .h5ad/.h5mu file cannot hold, before anything is read or trained.

    HDF5 reads ``/`` as a group separator and ``.`` as the group itself, so a key that contains
    ``/``, is ``.`` or is empty gives a file that anndata/mudata cannot read back. With ``uns``
    the key also names ``uns[key without a leading "X_"]`` (as ``export_latent`` does), which
    must be valid too.
    """
    if key is None:
        return
    names = [key, key.removeprefix("X_")] if uns else [key]
    for name in names:
        if "/" in name or name in {"", "."}:
            where = "" if name == key else f" (its parameters go to uns[{name!r}])"
            example = key.replace("/", "_") if "/" in key else "X_scgenvae"
            msg = (
                f"`{flag} {key!r}`{where}: a key in an .h5ad/.h5mu file cannot contain '/', "
                f"be empty or be '.', or the file cannot be read back; "
                f"pass another name, e.g. `{flag} {example}`."
            )
            raise SystemExit(msg)


def _check_input(path: Path) -> str:
    """Refuse a missing or unreadable .h5ad/.h5mu without loading it; return its kind."""
    import h5py

    if not path.exists():
        msg = f"input file {path} does not exist."
        raise SystemExit(msg)
    if path.is_dir():
        msg = f"input {path} is a folder; pass an .h5ad or .h5mu file."
        raise SystemExit(msg)
    kind = _kind(path)
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
    return kind


def _read(path: Path):
    """Read an .h5ad or .h5mu file with a clear error for missing or unreadable files."""
    import anndata as ad

    kind = _check_input(path)
    try:
        if kind == "h5mu":
            import mudata as md

            return md.read_h5mu(path)
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as err:
        msg = f"could not read {path} as {kind}: {err}"
        raise SystemExit(msg) from err


def _check_writable(flag: str, path: Path) -> None:
    """Refuse a path whose nearest existing parent is not a writable folder."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        msg = f"`{flag} {path}`: cannot write into {parent}."
        raise SystemExit(msg)


def _check_output(path: Path, kind: str, *, overwrite: bool) -> None:
    """Fail before training, not after, when the output cannot or must not be written."""
    if path.is_dir():
        msg = f"`--output {path}` is a folder; pass a file name (e.g. {path / f'out.{kind}'})."
        raise SystemExit(msg)
    if path.suffix != f".{kind}":
        msg = (
            f"`--output {path}`: the input is {kind}, and `fit` writes the format of its input; "
            f"name the output {path.with_suffix(f'.{kind}')}."
        )
        raise SystemExit(msg)
    if path.exists() and not overwrite:
        msg = f"`--output {path}` exists; pass --overwrite to replace it, or choose another name."
        raise SystemExit(msg)
    _check_writable("--output", path)


def _check_model_dir(path: Path, output: Path, *, overwrite: bool) -> None:
    """Fail before training when the model folder cannot or must not be written."""
    if path.resolve() == output.resolve():
        msg = f"`--save-model {path}` is the --output file; pass a folder of its own."
        raise SystemExit(msg)
    if path.exists() and not path.is_dir():
        msg = f"`--save-model {path}` is a file; pass a folder name."
        raise SystemExit(msg)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        msg = (
            f"`--save-model {path}` exists and is not empty; pass --overwrite to replace the "
            f"model in it, or choose another folder."
        )
        raise SystemExit(msg)
    _check_writable("--save-model", path)


def _write(data, out: Path) -> None:
    """Write ``data`` to ``out`` atomically: a temporary file in the same folder, then a rename.

    A failure (or Ctrl-C) during the write leaves no partial file and an existing ``out``
    intact.
    """
    from mudata import MuData

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        if isinstance(data, MuData):
            data.write_h5mu(tmp)
        else:
            data.write_h5ad(tmp)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes the file private; give it a new file's mode
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


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


def _check_fit_args(args: argparse.Namespace) -> None:
    """Every refusal that needs no loaded data: keys, input, output file, model folder."""
    _check_key(args.key_added, "--key-added", uns=True)
    for flag in ("--layer", "--batch-key", "--rna-mod", "--atac-mod"):
        _check_key(getattr(args, flag.removeprefix("--").replace("-", "_")), flag)
    kind = _check_input(Path(args.input))
    output = Path(args.output)
    _check_output(output, kind, overwrite=args.overwrite)
    if args.save_model is not None:
        _check_model_dir(Path(args.save_model), output, overwrite=args.overwrite)


def _fit(args: argparse.Namespace) -> int:
    _check_fit_args(args)
    data = _read(Path(args.input))

    from mudata import MuData

    from scgenvae.model import PoissonVAE

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
    from scgenvae._settings import settings

    shown = settings.progress_bar
    settings.progress_bar = shown and not args.quiet  # --quiet: no bar while encoding either
    try:
        model.export_latent(data, key_added=args.key_added)
    finally:
        settings.progress_bar = shown
    out = Path(args.output)
    _write(data, out)
    print(f"wrote {out} (latent in obsm[{args.key_added!r}])")
    if args.save_model is not None:
        model.save(args.save_model, overwrite=args.overwrite)
        print(f"wrote the model to {args.save_model}")
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
    fit.add_argument(
        "--output", "-o", required=True, help="output .h5ad or .h5mu (the format of the input)"
    )
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
    fit.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output file and the model in an existing --save-model folder",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
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
    except (ValueError, KeyError, TypeError, OSError) as err:
        print(f"scgenvae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
