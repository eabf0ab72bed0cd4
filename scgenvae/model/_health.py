"""What a fit looks like from the outside: why it stopped, and checks for the usual failures.

After every ``train()`` the model measures, on its training cells:

- *divergence*: the largest ratio of an epoch's training loss to the lowest loss of the epochs
  before it. A stable fit only falls (the KL warm-up lifts it by a few percent at most).
- *posterior collapse*: the number of active latent dimensions, those whose posterior mean
  varies across cells with variance above 0.01 (Burda, Grosse & Salakhutdinov 2016,
  "Importance weighted autoencoders", section 5.2).
- *an ignored modality* (several modalities): FOSCTTM between the latents of paired cells
  from each modality alone, on the validation cells when there are (a model can memorise the
  pairing of cells it trained on), else on training cells. 0 is a perfect match, 0.5 is chance: the joint latent does not
  tie the modalities together.
- *non-finite values* in the training history, the latent or the parameters.

The figures go to ``model.training_report``; each failure also raises a
:class:`TrainingHealthWarning` that says what to try.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scgenvae import metrics

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

#: an epoch's loss above this multiple of the best earlier epoch counts as a divergence
DIVERGENCE_RATIO = 1.5
#: variance across cells of a dimension's posterior mean above which it is active (Burda et al.)
ACTIVE_VARIANCE = 0.01
#: cross-modal FOSCTTM at or above this: the latent barely ties the modalities (0.5 is chance)
IGNORED_MODALITY_FOSCTTM = 0.4
#: training cells sampled for the latent checks
N_CHECK_CELLS = 2000


class TrainingHealthWarning(UserWarning):
    """A trained model failed one of the checks of :func:`health_report`."""


def _loss_curve(history: dict | None) -> np.ndarray:
    history = history or {}
    frame = history.get("train_loss", history.get("train_loss_epoch"))
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        return np.empty(0)
    return np.asarray(frame.iloc[:, 0], dtype=np.float64)


def divergence_ratio(loss: np.ndarray) -> float:
    """Largest ``loss[e] / min(loss[:e])`` over epochs ``e >= 1`` (1.0 for a falling curve).

    Non-finite losses give ``inf``.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if loss.size == 0:
        return 1.0
    if not np.isfinite(loss).all():
        return float("inf")
    if loss.size < 2:
        return 1.0
    best_before = np.minimum.accumulate(loss)[:-1]
    # losses can be negative (Gaussian or Bernoulli densities are not bounded): compare the
    # rise with the size of the best loss so far
    rise = (loss[1:] - best_before) / np.abs(best_before).clip(min=1e-12)
    return float(1.0 + max(0.0, rise.max()))


def active_dimensions(means: np.ndarray) -> int:
    """Number of latent dimensions whose posterior mean has variance > 0.01 across cells."""
    means = np.asarray(means, dtype=np.float64)
    if means.shape[0] < 2:
        return 0
    return int((means.var(axis=0) > ACTIVE_VARIANCE).sum())


def health_report(
    *,
    history: dict | None,
    get_latent: Callable[..., np.ndarray],
    modalities: list[str],
    paired_indices: np.ndarray | None,
    paired_cells: str = "training",
    n_obs: int,
    parameters_finite: bool,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure a trained model and list what looks wrong, in words, with what to try.

    Parameters
    ----------
    history
        ``model.history``.
    get_latent
        ``model.get_latent_representation`` (called with ``indices=`` and ``modality=``).
    modalities
        The model's modalities.
    paired_indices
        Cells observed in every modality (several modalities only) for the cross-modal check.
    paired_cells
        Which cells those are (``"validation"`` or ``"training"``), for the report.
    n_obs
        Number of training cells.
    parameters_finite
        Whether every parameter of the module is finite.
    seed
        Seed of the cell sample.
    """
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {}
    problems: list[str] = []

    loss = _loss_curve(history)
    report["n_epochs"] = int(loss.size)
    report["train_loss_first"] = float(loss[0]) if loss.size else None
    report["train_loss_last"] = float(loss[-1]) if loss.size else None
    report["divergence_ratio"] = divergence_ratio(loss)
    history_finite = bool(np.isfinite(loss).all())

    sample = np.sort(rng.choice(n_obs, size=min(n_obs, N_CHECK_CELLS), replace=False))
    z = np.asarray(get_latent(indices=sample), dtype=np.float64)
    latent_finite = bool(np.isfinite(z).all())
    report["n_latent"] = int(z.shape[1])
    report["active_dimensions"] = active_dimensions(z) if latent_finite else 0
    report["latent_sd"] = [float(v) for v in np.nan_to_num(z.std(axis=0), nan=0.0)]

    report["finite"] = history_finite and latent_finite and parameters_finite
    problems += _fit_problems(
        report,
        finite={
            "training loss": history_finite,
            "latent": latent_finite,
            "parameters": parameters_finite,
        },
    )

    report["modality_foscttm"] = None
    report["modality_foscttm_cells"] = None
    if len(modalities) > 1 and report["finite"]:
        problem = _check_modalities(
            report, get_latent, modalities, paired_indices, paired_cells, rng
        )
        if problem:
            problems.append(problem)
    report["problems"] = problems
    return report


def warn_problems(report: dict[str, Any], *, stacklevel: int = 3) -> None:
    """One :class:`TrainingHealthWarning` per problem of the report."""
    for problem in report.get("problems", []):
        warnings.warn(f"training check: {problem}", TrainingHealthWarning, stacklevel=stacklevel)


def format_report(report: dict[str, Any], *, include_stop: bool = True) -> str:
    """The report as a few plain lines (``scgenvae fit`` prints them).

    ``include_stop=False`` leaves out the line on why training stopped (``train`` has printed
    it under its progress bar).
    """
    lines = [report["stop"]["message"]] if include_stop and "stop" in report else []
    first, last = report.get("train_loss_first"), report.get("train_loss_last")
    if first is not None and last is not None:
        lines.append(
            f"training loss {first:.6g} -> {last:.6g} over {report['n_epochs']} epochs; "
            f"largest rise {report['divergence_ratio']:.3g}x the best earlier epoch "
            f"(diverged above {DIVERGENCE_RATIO})"
        )
    lines.append(
        f"active latent dimensions: {report['active_dimensions']} of {report['n_latent']} "
        f"(variance of the posterior mean across cells > {ACTIVE_VARIANCE})"
    )
    if report.get("modality_foscttm") is not None:
        lines.append(
            f"cross-modal FOSCTTM on {report['modality_foscttm_cells']} cells: "
            f"{report['modality_foscttm']:.3f} (0 perfect, 0.5 chance; warned at "
            f">= {IGNORED_MODALITY_FOSCTTM})"
        )
    lines.append("finite: yes" if report.get("finite") else "finite: NO")
    problems = report.get("problems") or []
    lines += [f"problem: {p}" for p in problems] or ["problems: none"]
    return "\n".join(lines)


def stop_message(
    *, epochs_run: int, max_epochs: int, early_stopping: dict[str, Any] | None
) -> str:
    """The plain line that says when and why training stopped."""
    if early_stopping and early_stopping.get("stopped"):
        return (
            f"training stopped early at epoch {epochs_run} of at most {max_epochs}: the "
            f"validation ELBO had not improved for {early_stopping['patience']} epochs (best "
            f"{early_stopping['best']:.6g} at epoch {early_stopping['best_epoch']}); the "
            "parameters of that epoch are kept."
        )
    line = f"training ran its {epochs_run} of {max_epochs} epochs (max_epochs reached)."
    best = (early_stopping or {}).get("best_epoch")
    if early_stopping and early_stopping.get("restored_best") and best != epochs_run:
        line += f" The parameters of epoch {best}, the best validation ELBO, are kept."
    return line


__all__ = [
    "TrainingHealthWarning",
    "active_dimensions",
    "divergence_ratio",
    "format_report",
    "health_report",
    "stop_message",
    "warn_problems",
]


def _check_modalities(
    report: dict, get_latent, modalities, paired_indices, paired_cells: str, rng
) -> str | None:
    """Cross-modal FOSCTTM of paired cells into ``report``; the problem it shows, if any."""
    paired = np.asarray(paired_indices if paired_indices is not None else [], dtype=np.int64)
    if paired.size < 10:
        return None
    if paired.size > N_CHECK_CELLS:
        paired = np.sort(rng.choice(paired, size=N_CHECK_CELLS, replace=False))
    a, b = (get_latent(indices=paired, modality=m) for m in modalities[:2])
    report["modality_foscttm"] = float(metrics.foscttm(a, b))
    report["modality_foscttm_cells"] = paired_cells
    if report["modality_foscttm"] < IGNORED_MODALITY_FOSCTTM:
        return None
    return (
        f"the modalities are not tied together: FOSCTTM between the {modalities[0]} "
        f"and {modalities[1]} latents of paired {paired_cells} cells is "
        f"{report['modality_foscttm']:.3f} (0 is a perfect match, 0.5 chance), so "
        "the joint latent follows one modality and cross-modal predictions are not "
        "to be trusted. Check that the modalities' cells are paired by the same "
        "obs names, then train longer or raise `alignment_weight`."
    )


def _fit_problems(report: dict, *, finite: dict[str, bool]) -> list[str]:
    """Non-finite values, divergence and posterior collapse, in words with what to try."""
    problems = []
    if not report["finite"]:
        where = [name for name, ok in finite.items() if not ok]
        problems.append(
            f"non-finite values in the {', '.join(where)}. Check the input for extreme values "
            "and retrain with a lower learning rate (e.g. `lr=1e-4`)."
        )
    elif report["divergence_ratio"] > DIVERGENCE_RATIO:
        problems.append(
            f"training diverged: an epoch's loss reached {report['divergence_ratio']:.3g} times "
            "the best loss before it (a stable fit only falls). Retrain with a lower learning "
            "rate (e.g. `lr=1e-4`) and check `model.history['train_loss']`."
        )
    if report["finite"] and report["active_dimensions"] < min(2, report["n_latent"]):
        problems.append(
            f"posterior collapse: {report['active_dimensions']} of {report['n_latent']} latent "
            f"dimensions vary across cells (variance of the posterior mean > {ACTIVE_VARIANCE}), "
            "so the latent carries almost nothing about the cells. Train longer, or with a "
            "longer KL warm-up (`n_epochs_kl_warmup`), and check that the input holds raw counts."
        )
    return problems
