"""Shared parameter documentation, inserted into docstrings by :func:`doc_params`.

A docstring line that holds only ``{name}`` is replaced by the snippet ``name``, indented like
the placeholder (the role docrep plays in scvi-tools, without its dependency).
"""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

_PLACEHOLDER = re.compile(r"^(?P<indent>\s*)\{(?P<name>\w+)\}\s*$")


def doc_params(**snippets: str) -> Callable[[T], T]:
    """Replace ``{name}`` placeholder lines of the decorated object's docstring by snippets."""
    cleaned = {k: textwrap.dedent(v).strip("\n") for k, v in snippets.items()}

    def decorate(obj: T) -> T:
        doc = obj.__doc__ or ""
        lines = []
        for line in doc.split("\n"):
            match = _PLACEHOLDER.match(line)
            if match is None:
                lines.append(line)
                continue
            indent = match.group("indent")
            snippet = cleaned[match.group("name")]  # a KeyError names the missing snippet
            lines.extend(indent + part if part else part for part in snippet.split("\n"))
        obj.__doc__ = "\n".join(lines)
        return obj

    return decorate


adata = """\
adata
    AnnData (MuData for MultiVAE) set up like the training data; ``None`` for the training
    data. New cells are accepted, their batch and covariate categories mapped as in training."""

mdata = """\
mdata
    MuData (or Cell Ranger ARC AnnData) set up like the training data; ``None`` for the
    training data. New cells are accepted, their categories mapped as in training."""

indices = """\
indices
    Cells to use: a boolean mask, integer positions or obs names (default all)."""

batch_size = """\
batch_size
    Minibatch size for inference."""

transform_batch = """\
transform_batch
    Decode every cell as if it came from this training batch (batch correction)."""

train_intro = """\
Training can run on several devices or machines through Lightning's distributed data
parallel strategies (``strategy="ddp"``, ``devices=N``, ``num_nodes=M``; see the user
guide's page on distributed training): each process trains on its share of the cells
and the model is trained in the launching process afterwards. In notebooks and
interactive sessions use ``strategy="ddp_notebook"``; ``"ddp_spawn"`` is not supported."""

train = """\
max_epochs
    Number of passes over the data; by default scvi-tools' heuristic
    ``min(400, round(400 * 20000 / n_cells))``.
batch_size
    Minibatch size.
accelerator, devices
    Passed to the Lightning trainer (``"auto"`` uses a GPU when there is one).
train_size, validation_size
    Fractions of cells for training and validation (scvi-tools' ``DataSplitter``).
early_stopping
    Stop when the validation ELBO has not improved for ``early_stopping_patience``
    epochs (default 30; a keyword of ``trainer_kwargs``), counting only after the KL
    warm-up. ``None`` (default): on with 1,000 cells or more (10% of them are then held
    out for validation, unless ``train_size`` says otherwise), off below that, with
    ``train_size=1.0`` and under distributed training. A line at the end of training
    says when and why it stopped (``model.training_report["stop"]``).
seed
    Seed for torch/Lightning; ``None`` uses ``scgenvae.settings.seed``.
n_epochs_kl_warmup
    Epochs over which the KL weight rises from 0 to 1 (default: a quarter of the
    epochs, at most 100 for PoissonVAE and 50 for MultiVAE).
lr
    Adam learning rate.
plan_kwargs
    More arguments for the training plan (:class:`~scgenvae.model.ScgenvaeTrainingPlan`);
    keys it does not take are refused by name.
checkpoint_dir
    Folder for a training checkpoint (``last.ckpt``, replaced atomically every
    ``checkpoint_every`` epochs and after the last one). If it already holds a checkpoint
    of this kind of model, training resumes from it: with the same ``seed``, the result
    is the same as that of an uninterrupted run. A checkpoint of another model (other
    class or dimensions) raises a ``ValueError``. ``None``: no checkpoints.
checkpoint_every
    Epochs between checkpoints.
load_in_memory
    Hold the count matrices in memory during training. ``None`` (default): yes for
    in-memory data, no for backed data (``anndata.read_h5ad(path, backed="r")``,
    ``mudata.read_h5mu(path, backed=True)``), whose minibatches are then streamed from
    disk in blocks of ``block_size`` rows, so memory does not grow with the number of
    cells. ``True`` reads a backed matrix into memory once (faster epochs when it fits);
    ``False`` streams in-memory data the same way as backed data.
block_size
    Rows read at a time when streaming: the blocks are visited in a random order and
    the cells of each block shuffled (seeded by ``seed`` and the epoch).
shuffle_set_split
    Shuffle the cells before splitting them into training and validation sets
    (``False``: the last cells are the validation set).
n_steps_kl_warmup
    KL warm-up in training steps (minibatches) instead of epochs; it replaces
    ``n_epochs_kl_warmup``.
datasplitter_kwargs
    More arguments for the data splitter; only ``shuffle_set_split`` is accepted (the
    others of scvi-tools' splitter do not apply to scgenvae's minibatches).
plan_config, trainer_config
    scvi-tools' names for ``plan_kwargs`` and ``trainer_kwargs`` (merged into them).
**trainer_kwargs
    More arguments for :class:`scvi.train.Trainer` (for instance
    ``enable_progress_bar=False``, ``strategy="ddp"``, ``num_nodes=2``). scvi-tools'
    ``load_sparse_tensor`` and ``datamodule`` do not apply and are refused."""

#: the parameters the getters share, for ``@doc_params(**getter)``
getter = {
    "adata": adata,
    "mdata": mdata,
    "indices": indices,
    "batch_size": batch_size,
    "transform_batch": transform_batch,
    "gene_list": """\
gene_list
    Names of the genes to return, in this order (``None``: all). The full rows are computed
    (each gene's share needs every gene) and then subset.""",
    "return_numpy": """\
return_numpy
    Return the array (as scvi-tools' argument of that name) instead of a DataFrame.""",
}

#: the parameters of differential expression and accessibility, for ``@doc_params(**de)``
de = {
    "adata": adata,
    "mdata": mdata,
    "groupby": """\
groupby
    obs column of the groups to compare (of ``mdata.obs`` for a MuData).""",
    "group1": """\
group1
    Group(s) of ``groupby`` to test, each against ``group2``. ``None``: every group with
    cells (except ``group2``), one comparison each.""",
    "group2": """\
group2
    Reference group of ``groupby``; ``None``: each group of ``group1`` against all other cells
    (the rest).""",
    "idx1": """\
idx1
    Cells of the first group instead of ``groupby``: a boolean mask, integer positions or obs
    names.""",
    "idx2": """\
idx2
    Cells of the second group (as ``idx1``); ``None``: all cells not in ``idx1``. The groups
    must be disjoint.""",
    "mode": """\
mode
    ``"change"``: posterior probability that the change exceeds ``delta`` in absolute value,
    with FDR control; ``"vanilla"``: posterior probability that the group mean is higher in
    group 1 (``proba_m1``), no FDR column.""",
    "batch_correction": """\
batch_correction
    Decode every cell under each training batch and average (``False``: under its own batch
    only, so batch effects confounded with the groups are tested too).""",
    "fdr_target": """\
fdr_target
    Target of the posterior expected false discovery rate: the features called form the
    largest set whose mean ``1 - proba`` is at most this.""",
    "n_samples": """\
n_samples
    Posterior draws of the two group means (each: one latent sample per cell and one
    Bayesian-bootstrap weighting of the cells). Each cell is decoded at 10 latent samples
    (fewer if ``n_samples`` is smaller) and draw ``s`` uses sample ``s % 10``, so the decoding
    time does not grow with ``n_samples``; the probabilities have a resolution of
    ``1 / n_samples``.""",
    "all_stats": """\
all_stats
    Add the observed statistics of the two groups (means, fractions of non-zero values).""",
    "key_added": """\
key_added
    Also write the result into ``uns[key_added]`` of the data (of the tested modality's
    AnnData for a MuData) in scanpy's ``rank_genes_groups`` layout, for
    ``sc.get.rank_genes_groups_df`` and ``sc.pl.rank_genes_groups_*``. Needs ``groupby``. An
    existing entry is replaced only if this method wrote it.""",
    "modality": """\
modality
    Posterior used: ``"joint"`` (every observed modality), or one modality's encoder alone.""",
    "batch_size": """\
batch_size
    Most cells decoded at once (fewer with many features and samples, to bound memory).""",
    "rng": """\
rng
    Seed or :class:`numpy.random.Generator` of the posterior draws (``None``: fresh
    entropy).""",
}
