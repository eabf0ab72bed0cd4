"""Where a training step's time goes: torch.profiler over steps of epoch 2, by kind of work.

Issue 19 asks for the profile that shows what is left of the speed goals. A sampling profiler
(py-spy) attributes most of a step to ``Adam.step``: Lightning's automatic optimisation runs
the forward and backward passes inside ``optimizer.step(closure)``. Here each torch operator's
*self* CPU time is summed into kinds (matrix products, sparse gather-sums, the optimiser's
kernel, element-wise and reductions, copies and views), and what no operator accounts for is
the step's wall time minus the operators' time, plus the self time of annotated regions
(``Optimizer.step#Adam.step``): Python (Lightning, scvi-tools, our module) and the dispatcher.
The profiler's own cost per operator is counted there too, so that share is an upper bound.

Data: workload 1 of ``make bench`` (``synthetic_multiome(6000, 1000, 8000, n_batches=3,
peak_density=0.05, rng=0)``), n_latent 20, n_layers 1. One torch thread (the default chooses 1
at batch 128 on 2 cores, ``RESULTS.md``), so that an operator's self time is its work.

Usage::

    python benchmarks/profile_step.py                       # both models, n_hidden 128, batch 128
    python benchmarks/profile_step.py --models PoissonVAE --n-hidden 256 --batch-size 1024
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

import scgenvae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

#: operator names (substrings, lower case) of each kind, checked in this order
KINDS = {
    "matrix products": (
        "addmm",
        "aten::mm",
        "bmm",
        "matmul",
        "linear",
        "sparse_mm",
        "_sparse_addmm",
    ),
    "sparse gather-sums": ("embedding_bag", "index_add", "segment_reduce"),
    "optimiser kernel": ("_fused_adam", "_foreach_", "adam"),
    "copies, views, indexing": (
        "copy_",
        "to_copy",
        "aten::to",
        "view",
        "reshape",
        "index",
        "gather",
        "select",
        "slice",
        "cat",
        "empty",
        "zeros",
        "detach",
        "contiguous",
        "expand",
        "transpose",
        "aten::t",
        "as_strided",
        "clone",
        "fill_",
        "zero_",
    ),
}


#: kind of the self time of annotated regions (``Optimizer.step#Adam.step`` and the like):
#: the Python that runs inside them, outside any operator
PYTHON = "Python, dispatch, Lightning"


def kind_of(name: str) -> str:
    """The kind of an operator name (``element-wise, reductions`` when no other matches).

    A region annotated with ``record_function`` (``Optimizer.step#Adam.step``, whose closure
    runs the forward and backward passes) is not an operator: its self time is Python.
    """
    if "#" in name or name.startswith(("Optimizer.", "ProfilerStep")):
        return PYTHON
    low = name.lower()
    for kind, keys in KINDS.items():
        if any(k in low for k in keys):
            return kind
    return "element-wise, reductions"


class _Profile(Callback):
    """Profile ``n_steps`` training steps of epoch ``epoch``; wall time from batch start to end."""

    def __init__(self, epoch: int, n_steps: int):
        self.epoch, self.n_steps = epoch, n_steps
        self.prof = None
        self.wall = 0.0
        self.steps = 0
        self._t0 = 0.0

    def _active(self, trainer) -> bool:
        return trainer.current_epoch == self.epoch and self.steps < self.n_steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._active(trainer):
            return
        if self.prof is None:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.prof is None or not self._active(trainer):
            return
        self.wall += time.perf_counter() - self._t0
        self.steps += 1
        if self.steps == self.n_steps:
            self.prof.__exit__(None, None, None)


def profile(model_name: str, mdata, *, n_hidden: int, batch_size: int, n_steps: int) -> dict:
    """Shares of a step's wall time by kind, and ms per step."""
    if model_name == "MultiVAE":
        data = mdata.copy()
        scgenvae.model.MultiVAE.setup_mudata(data, batch_key="batch")
        model = scgenvae.model.MultiVAE(data, n_latent=20, n_hidden=n_hidden, n_layers=1)
    else:
        data = mdata.mod["rna"].copy()
        scgenvae.model.PoissonVAE.setup_anndata(data, batch_key="batch")
        model = scgenvae.model.PoissonVAE(data, n_latent=20, n_hidden=n_hidden, n_layers=1)
    cb = _Profile(epoch=1, n_steps=n_steps)
    model.train(
        max_epochs=2,
        batch_size=batch_size,
        seed=0,
        early_stopping=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
    )
    by_kind: dict[str, float] = {}
    by_op: dict[str, float] = {}
    for ev in cb.prof.key_averages():
        seconds = ev.self_cpu_time_total / 1e6
        by_kind[kind_of(ev.key)] = by_kind.get(kind_of(ev.key), 0.0) + seconds
        by_op[ev.key] = seconds
    ops = sum(by_kind.values())
    # the profiler's own cost inflates the wall time; the share of Python is an upper bound
    by_kind[PYTHON] = by_kind.get(PYTHON, 0.0) + max(cb.wall - ops, 0.0)
    return {
        "model": model_name,
        "ms_per_step": 1e3 * cb.wall / cb.steps,
        "shares": {k: v / cb.wall for k, v in by_kind.items()},
        "top_ops": sorted(by_op.items(), key=lambda kv: -kv[1])[:12],
        "wall": cb.wall,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["PoissonVAE", "MultiVAE"])
    parser.add_argument("--n-hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    scgenvae.settings.num_threads = 1
    torch.set_num_threads(1)
    mdata = scgenvae.datasets.synthetic_multiome(
        6000, 1000, 8000, n_batches=3, peak_density=0.05, rng=0
    )
    print(
        f"CPU: {cpu_model()}; torch {torch.__version__}; 1 thread; n_hidden {args.n_hidden}, "
        f"batch {args.batch_size}; {args.steps} steps of epoch 2 under torch.profiler\n"
    )
    for name in args.models:
        r = profile(
            name, mdata, n_hidden=args.n_hidden, batch_size=args.batch_size, n_steps=args.steps
        )
        print(f"## {name}: {r['ms_per_step']:.2f} ms a step (profiled)\n")
        print("| kind | share of the step |\n|---|---|")
        for kind, share in sorted(r["shares"].items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {100 * share:.1f}% |")
        print(
            "\nlargest operators (self CPU, share of the step): "
            + ", ".join(f"`{op}` {100 * s / r['wall']:.1f}%" for op, s in r["top_ops"])
            + "\n"
        )


if __name__ == "__main__":
    main()
