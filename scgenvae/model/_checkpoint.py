"""Training checkpoints: ``train(checkpoint_dir=...)`` writes and resumes ``last.ckpt``.

A checkpoint is Lightning's (module and optimizer state, loops), plus our entry under
``"scgenvae"``: the model class, the seed and the logged history as plain lists, so that it
loads with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects) and is checked
before Lightning resumes from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from lightning.pytorch import Callback

logger = logging.getLogger(__name__)

#: file of the training checkpoint in ``train(checkpoint_dir=...)``
CHECKPOINT_FILE = "last.ckpt"
#: our entry in a Lightning checkpoint
CKPT_KEY = "scgenvae"
#: version of our entry in a checkpoint
CHECKPOINT_FORMAT_VERSION = 1


def plain_history(history: dict | None) -> dict:
    """Logged history as plain lists (a checkpoint loads without unpickling pandas)."""
    out = {}
    for key, frame in (history or {}).items():
        out[key] = {
            "index": [int(i) for i in frame.index],
            "index_name": frame.index.name,
            "values": [float(v) for v in frame.iloc[:, 0]],
        }
    return out


def history_frames(history: dict) -> dict[str, pd.DataFrame]:
    out = {}
    for key, rec in history.items():
        frame = pd.DataFrame({key: rec["values"]}, index=rec["index"], dtype=object)
        frame.index.name = rec["index_name"]
        out[key] = frame
    return out


class EpochCheckpoint(Callback):
    """Save ``dir_path/last.ckpt`` every ``every`` epochs and after the last, atomically.

    Written at the end of an epoch, where Lightning's own ``ModelCheckpoint`` writes (a state
    Lightning resumes from exactly). The logged history goes with it, including the values of
    the epoch just finished, which Lightning hands to the logger only after this hook.
    """

    def __init__(self, dir_path: Path, *, every: int) -> None:
        super().__init__()
        self.dir_path = Path(dir_path)
        self.every = int(every)
        self._pending: dict[str, float] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        if done % self.every and done < (trainer.max_epochs or 0):
            return
        target = self.dir_path / CHECKPOINT_FILE
        tmp = self.dir_path / f".{CHECKPOINT_FILE}.tmp"
        self._pending = _pending_epoch_log(trainer)
        try:
            trainer.save_checkpoint(tmp)  # every process calls it; rank 0 writes
        finally:
            self._pending = {}
        if trainer.is_global_zero:
            tmp.replace(target)
        trainer.strategy.barrier("scgenvae_checkpoint")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        logged = getattr(trainer.logger, "history", None)  # not a dict on ranks other than 0
        history = {k: v.copy() for k, v in logged.items()} if isinstance(logged, dict) else {}
        for key, value in self._pending.items():
            if key not in history:
                history[key] = pd.DataFrame(columns=[key])
                history[key].index.name = "epoch"
            history[key].loc[trainer.current_epoch, key] = value
        checkpoint.setdefault(CKPT_KEY, {})["history"] = plain_history(history)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        history = checkpoint.get(CKPT_KEY, {}).get("history")
        experiment = getattr(trainer.logger, "experiment", None)
        if history and isinstance(getattr(experiment, "data", None), dict):
            experiment.data.update(history_frames(history))


def _pending_epoch_log(trainer) -> dict[str, float]:
    """Epoch-level metrics that Lightning hands to the logger after the epoch-end hooks.

    Read from Lightning's logger connector (not public API); empty if that ever moves, which
    only leaves the checkpointed epoch out of a resumed run's history.
    """
    connector = getattr(trainer, "_logger_connector", None)
    try:
        logged = connector.metrics["log"]
    except (AttributeError, AssertionError, KeyError, TypeError):  # Lightning internals moved
        return {}
    return {k: float(v) for k, v in logged.items() if k not in ("epoch", "step")}


def check_checkpoint(path: Path, dir_path: Path, module: torch.nn.Module, model_name: str):
    """Raise a clear error when ``path`` was written by another kind of model."""
    fix = f"Pass another `checkpoint_dir` or delete {dir_path} to start afresh."
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = f"`checkpoint_dir={str(dir_path)!r}` holds an unreadable checkpoint ({err}). {fix}"
        raise ValueError(msg) from err
    meta = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
    if meta is None or meta.get("model_class") != model_name:
        got = None if meta is None else meta.get("model_class")
        msg = (
            f"`checkpoint_dir={str(dir_path)!r}` holds a checkpoint of "
            f"{got or 'something other than scgenvae'}, not of a {model_name}. {fix}"
        )
        raise ValueError(msg)
    expected = {f"module.{k}": tuple(v.shape) for k, v in module.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if saved != expected:
        diff = sorted(k for k in expected.keys() | saved.keys() if expected.get(k) != saved.get(k))
        detail = ", ".join(
            f"{k.removeprefix('module.')}: saved {saved.get(k)}, model {expected.get(k)}"
            for k in diff[:3]
        )
        msg = (
            f"`checkpoint_dir={str(dir_path)!r}` holds a checkpoint of a {model_name} with other "
            f"dimensions (architecture or data differ: {detail}). {fix}"
        )
        raise ValueError(msg)
    return meta


def resume_from(
    checkpoint_dir, *, every: int, module: torch.nn.Module, model_name: str, seed: int | None
) -> tuple[str | None, Callback]:
    """The checkpoint to resume from (if ``checkpoint_dir`` holds one) and the writing callback.

    Raises a ``ValueError`` naming the folder when it holds a checkpoint of another model.
    """
    if int(every) < 1:
        msg = f"`checkpoint_every` must be a positive number of epochs, got {every}."
        raise ValueError(msg)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = checkpoint_dir / CHECKPOINT_FILE
    ckpt_path = None
    if last.exists():
        meta = check_checkpoint(last, checkpoint_dir, module, model_name)
        if meta.get("seed") != seed:
            logger.warning(
                "resuming from %s, saved by a run with seed %s (this one: %s); the result will "
                "differ from an uninterrupted run.",
                last,
                meta.get("seed"),
                seed,
            )
        logger.info("resuming training from %s", last)
        ckpt_path = str(last)
    return ckpt_path, EpochCheckpoint(checkpoint_dir, every=every)
