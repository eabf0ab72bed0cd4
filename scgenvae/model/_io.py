"""Model files that load without running code: tensors in ``model.pt``, the rest in JSON.

A saved model is a folder with two files:

- ``model.pt``: the module's ``state_dict`` and nothing else, read with
  ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only (a
  crafted file fails to load instead of running its payload);
- ``model.json``: everything else (model class, constructor arguments, set-up arguments, data
  registry, feature names, history, training report), as plain JSON. NumPy arrays and tuples
  are tagged (``{"__ndarray__": ..., "dtype": ...}``, ``{"__tuple__": [...]}``) and rebuilt from
  numeric, boolean or string values only. It records the SHA-256 of ``model.pt``, so a folder
  whose two files do not belong together (an interrupted save, an edited file) is refused.

Models saved by scgenvae 0.1 (format 1: one pickled ``model.pt``) load only by unpickling,
which can run code; :func:`convert_legacy` converts such a folder once, for a user who states
that they trust it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

#: tensors of the module (``torch.load(weights_only=True)``)
MODEL_FILE = "model.pt"
#: everything else, JSON
META_FILE = "model.json"
#: the layout written by this version
FORMAT_VERSION = 2
#: dtypes an ``__ndarray__`` entry may have (no object arrays of arbitrary Python objects)
_ARRAY_KINDS = frozenset("biufUO")
_SPEC_TAG = "__modality_spec__"


def _version() -> str:
    from scgenvae import __version__

    return __version__


# ------------------------------------------------------------------------------ JSON encoding
def to_jsonable(obj: Any) -> Any:
    """Plain JSON values for ``obj``; arrays, tuples and modality specs are tagged."""
    from scgenvae.module import ModalitySpec

    if isinstance(obj, ModalitySpec):
        return {_SPEC_TAG: {k: to_jsonable(v) for k, v in asdict(obj).items()}}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_jsonable(v) for v in obj]}
    if isinstance(obj, list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, pd.Index):
        obj = obj.to_numpy()
    if isinstance(obj, np.ndarray):
        values = [_plain_scalar(v) for v in obj.ravel().tolist()]
        return {"__ndarray__": values, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    if is_dataclass(obj):
        return to_jsonable(asdict(obj))
    msg = f"cannot store a {type(obj).__name__} in a model file."
    raise TypeError(msg)


def _plain_scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable`; builds only arrays, tuples, specs and plain values."""
    from scgenvae.module import ModalitySpec

    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _SPEC_TAG in obj:
        return ModalitySpec(**{k: from_jsonable(v) for k, v in obj[_SPEC_TAG].items()})
    if "__tuple__" in obj:
        return tuple(from_jsonable(v) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        dtype = np.dtype(str(obj["dtype"]))
        if dtype.kind not in _ARRAY_KINDS:
            msg = f"a model file array has dtype {dtype}, which scgenvae does not write."
            raise ValueError(msg)
        values = obj["__ndarray__"]
        if not all(v is None or isinstance(v, str | bool | int | float) for v in values):
            msg = "a model file array holds values other than numbers and strings."
            raise ValueError(msg)
        return np.array(values, dtype=dtype).reshape([int(d) for d in obj["shape"]])
    return {k: from_jsonable(v) for k, v in obj.items()}


# ------------------------------------------------------------------------------ write / read
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(target: Path, write) -> None:
    """Call ``write(tmp_path)``, then move the temporary file onto ``target`` (same folder)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        Path(tmp).replace(target)
    finally:
        if Path(tmp).exists():
            Path(tmp).unlink()


def write_model(
    dir_path: str | os.PathLike,
    *,
    meta: dict,
    state_dict: dict[str, torch.Tensor],
    overwrite: bool = False,
) -> None:
    """Write ``model.pt`` (tensors) and ``model.json`` (``meta``) into ``dir_path``.

    Each file is written to a temporary name and renamed. ``model.json``, renamed last, holds
    the digest of ``model.pt``: after an interrupted save the folder is refused by
    :func:`read_model`, never read half old, half new.
    """
    path = Path(dir_path)
    if path.exists() and not path.is_dir():
        msg = f"`dir_path={str(path)!r}` is a file; pass a folder."
        raise NotADirectoryError(msg)
    existing = [path / name for name in (MODEL_FILE, META_FILE) if (path / name).exists()]
    if existing and not overwrite:
        msg = f"{existing[0]} exists; pass `overwrite=True` to replace the model in {path}."
        raise FileExistsError(msg)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic_write(path / MODEL_FILE, lambda tmp: torch.save(tensors, tmp))
    header = {
        "format_version": FORMAT_VERSION,
        "scgenvae_version": _version(),
        "tensors_sha256": _sha256(path / MODEL_FILE),
    }
    text = json.dumps({**header, **to_jsonable(meta)}, indent=1, allow_nan=True)
    _atomic_write(path / META_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_meta(dir_path: str | os.PathLike) -> dict:
    """The metadata of a saved model (``model.json``), checked; no tensor is read."""
    path = Path(dir_path)
    meta_file, tensor_file = path / META_FILE, path / MODEL_FILE
    if not meta_file.exists():
        if tensor_file.exists():
            msg = (
                f"{path} holds a model in scgenvae's first file format (a pickled {MODEL_FILE} "
                "without model.json). Such a file runs code when it is read, so it is not loaded. "
                "If you trust its origin, convert it once with "
                f"`scgenvae.model.convert_legacy_model({str(path)!r}, new_folder, "
                "trust_file=True)` and load the new folder."
            )
            raise ValueError(msg)
        msg = f"no saved model in {path}; pass the folder given to `model.save(...)`."
        raise FileNotFoundError(msg)
    try:
        raw = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        msg = f"{meta_file} is not a readable scgenvae model file ({err})."
        raise ValueError(msg) from err
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        got = raw.get("format_version") if isinstance(raw, dict) else None
        msg = (
            f"{meta_file} has model format version {got}; this scgenvae ({_version()}) reads "
            f"version {FORMAT_VERSION}. Load it with the scgenvae that saved it."
        )
        raise ValueError(msg)
    return from_jsonable(raw)


def read_model(dir_path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(metadata, state_dict)`` of a saved model; nothing in the files can run code."""
    path = Path(dir_path)
    meta = read_meta(path)
    tensor_file = path / MODEL_FILE
    if not tensor_file.exists():
        msg = f"{tensor_file} is missing (the model's tensors); save the model again."
        raise FileNotFoundError(msg)
    if _sha256(tensor_file) != meta.get("tensors_sha256"):
        msg = (
            f"{tensor_file} is not the file {path / META_FILE} was saved with (an interrupted "
            "save, or a file replaced or edited since); save the model again."
        )
        raise ValueError(msg)
    try:
        state = torch.load(tensor_file, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = f"{tensor_file} is not a readable tensor file ({type(err).__name__}: {err})."
        raise ValueError(msg) from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        msg = f"{tensor_file} does not hold a mapping of parameter names to tensors."
        raise ValueError(msg)
    return meta, state


def history_to_json(history: dict[str, pd.DataFrame] | None) -> dict:
    """Logged history (one frame per metric, indexed by epoch) as plain lists."""
    out = {}
    for key, frame in (history or {}).items():
        out[key] = {
            "index": [int(i) for i in frame.index],
            "values": [float(v) for v in frame.iloc[:, 0]],
        }
    return out


def history_from_json(history: dict) -> dict[str, pd.DataFrame]:
    """Inverse of :func:`history_to_json` (frames as scvi-tools' logger keeps them)."""
    out = {}
    for key, rec in history.items():
        frame = pd.DataFrame({key: rec["values"]}, index=rec["index"])
        frame.index.name = "epoch"
        out[key] = frame
    return out


def convert_legacy(
    dir_path: str | os.PathLike,
    output_dir_path: str | os.PathLike,
    *,
    trust_file: bool = False,
    overwrite: bool = False,
) -> None:
    """Convert a model folder of scgenvae's first format into the current one.

    The old ``model.pt`` is one pickle, and reading it runs whatever code it holds: only
    convert files whose origin you trust. The folder ``dir_path`` is left as it is.

    Parameters
    ----------
    dir_path
        Folder with the old ``model.pt``.
    output_dir_path
        Folder to write the converted model to.
    trust_file
        Must be ``True``: you state that the file comes from a source you trust.
    overwrite
        Replace a model already in ``output_dir_path``.
    """
    source = Path(dir_path) / MODEL_FILE
    if not trust_file:
        msg = (
            f"converting {source} unpickles it, which runs any code it holds. If you trust its "
            "origin, pass `trust_file=True`."
        )
        raise ValueError(msg)
    if not source.exists():
        msg = f"no model file at {source}."
        raise FileNotFoundError(msg)
    if (Path(dir_path) / META_FILE).exists():
        msg = f"{dir_path} already holds a model in the current format; load it directly."
        raise ValueError(msg)
    payload = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format_version") != 1:
        msg = f"{source} is not a model file of scgenvae's first format."
        raise ValueError(msg)
    history = {k: pd.DataFrame(v) for k, v in (payload.get("history") or {}).items()}
    meta = {
        "model_class": payload["model_class"],
        "init_params": payload["init_params"],
        "module_kwargs": payload["module_kwargs"],
        "setup_args": payload["setup_args"],
        "registry": payload["registry"],
        "features": payload["features"],
        "is_trained": payload["is_trained"],
        "history": history_to_json(history),
        "training_report": payload.get("training_report"),
        "train_seed": None,
    }
    write_model(output_dir_path, meta=meta, state_dict=payload["state_dict"], overwrite=overwrite)


class SaveLoadMixin:
    """``save``/``load`` of scgenvae models in the format above, and scvi-tools' file helpers."""

    def save(self, dir_path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save the model into the folder ``dir_path`` (``model.pt`` and ``model.json``).

        ``model.pt`` holds the module's tensors only and ``model.json`` everything else, so a
        model file never runs code when it is loaded (see the user guide's page on saving
        models). Both files are written atomically.

        Parameters
        ----------
        dir_path
            Folder to write; created if missing.
        overwrite
            Replace an existing model in ``dir_path``.
        """
        meta = {
            "model_class": type(self).__name__,
            "init_params": self._init_kwargs,
            "module_kwargs": self._module_kwargs,
            "setup_args": self._setup_args,
            "registry": self.adata_manager._registry,
            "features": {m: list(v) for m, v in self._features.items()},
            "is_trained": bool(self.is_trained_),
            "history": history_to_json(self.history_),
            "training_report": self.training_report,
            "train_seed": getattr(self, "_train_seed", None),
        }
        write_model(dir_path, meta=meta, state_dict=self.module.state_dict(), overwrite=overwrite)

    @classmethod
    def load(cls, dir_path: str | os.PathLike, data, *, accelerator: str = "cpu"):
        """Load a model saved with :meth:`save` and attach it to ``data``.

        ``data`` must have the training features; categories of batch and covariates are mapped
        as in training. The user's object is not modified. Reading the files runs no code from
        them; a folder saved by scgenvae 0.1 is refused with the way to convert it.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        data
            AnnData/MuData to attach (set up with the saved arguments automatically).
        accelerator
            ``"cpu"`` or ``"gpu"``: where to put the module.
        """
        meta, state = read_model(dir_path)
        target = Path(dir_path) / META_FILE
        if meta.get("model_class") != cls.__name__:
            msg = f"{target} holds a {meta.get('model_class')}; load it with that class."
            raise ValueError(msg)
        getattr(cls, cls._setup_method)(data, **meta["setup_args"])
        features = cls._feature_names(data, meta["setup_args"])
        for m, names in meta["features"].items():
            if list(features[m]) != list(names):
                msg = (
                    f"{m}: the saved model expects {len(names):,} features in the trained order, "
                    f"the data has {len(features[m]):,} (or other names/order); subset with "
                    "`data[:, names]`."
                )
                raise ValueError(msg)
        cls._remember_setup(data, meta["setup_args"], source_registry=meta["registry"])
        model = cls(data, **meta["init_params"])
        # constants of the training data, not tensors: the loaded data must not replace them
        # (the depth centres place the predicted library size of an unobserved modality)
        for key in ("library_log_means", "n_obs"):
            if key in meta.get("module_kwargs", {}) and key in model._module_kwargs:
                model._module_kwargs[key] = meta["module_kwargs"][key]
                setattr(model.module, key, meta["module_kwargs"][key])
        try:
            model.module.load_state_dict(state)
        except RuntimeError as err:
            msg = f"{Path(dir_path) / MODEL_FILE} does not fit the saved architecture ({err})."
            raise ValueError(msg) from err
        model.module.to("cuda" if accelerator == "gpu" else "cpu")
        model.module.eval()
        model.is_trained_ = bool(meta["is_trained"])
        model.history_ = history_from_json(meta.get("history") or {})
        model.training_report = meta.get("training_report")
        model._train_seed = meta.get("train_seed")
        return model

    @classmethod
    def load_registry(cls, dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """The data registry of a saved model (as scvi-tools' ``load_registry``).

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        prefix
            Not used by scgenvae's files; must be ``None``.
        """
        if prefix is not None:
            msg = "`prefix` is not used by scgenvae model files; pass the folder only."
            raise ValueError(msg)
        return read_meta(dir_path)["registry"]

    @classmethod
    def convert_legacy_save(
        cls,
        dir_path: str | os.PathLike,
        output_dir_path: str | os.PathLike,
        overwrite: bool = False,  # noqa: FBT001, FBT002 - scvi-tools' signature
        prefix: str | None = None,
        *,
        trust_file: bool = False,
    ) -> None:
        """Convert a model saved by scgenvae 0.1 (see :func:`scgenvae.model.convert_legacy_model`).

        Parameters
        ----------
        dir_path
            Folder of the old model.
        output_dir_path
            Folder to write the converted model to.
        overwrite
            Replace a model already in ``output_dir_path``.
        prefix
            Not used by scgenvae's files; must be ``None``.
        trust_file
            Must be ``True``: the old file is unpickled, which runs any code it holds.
        """
        if prefix is not None:
            msg = "`prefix` is not used by scgenvae model files; pass the folder only."
            raise ValueError(msg)
        convert_legacy(dir_path, output_dir_path, trust_file=trust_file, overwrite=overwrite)
