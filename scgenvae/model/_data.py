"""In-memory minibatching: the registry's arrays are read once and sliced per minibatch.

scvi-tools' ``AnnDataLoader`` re-reads every registry field from the AnnData for every
minibatch; on matrices that fit in memory that bookkeeping costs more than the model's own
arithmetic. Here each field is converted once (small dense matrices straight to a torch
tensor, wide sparse ones kept as CSR and handed to the model sparse), and the order of cells
comes from an explicit :class:`torch.Generator` seeded from ``(seed, epoch)``, so the order of
an epoch depends neither on any global random state nor on the epochs before it: a run resumed
from a checkpoint sees the same minibatches as an uninterrupted one.

Under distributed data parallel training (Lightning's ``ddp`` strategies) every process draws the
same permutation and takes every ``world_size``-th cell of it, padded as
:class:`torch.utils.data.DistributedSampler` does so that all processes step equally often.

Matrices too large for memory (a backed AnnData/MuData) are streamed instead
(:class:`MinibatchIterable` with row sources): rows are read from disk in contiguous blocks, the order of
blocks and the order of cells within each block are shuffled by the same ``(seed, epoch)``
generator design, and only one block is in memory at a time. The small per-cell fields (batch
codes, covariates) stay in memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from scipy import sparse

from ._validate import read_rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from scvi.data import AnnDataManager

    from ._validate import MatrixScan

#: dense copies up to this many entries are made once (bigger matrices are sliced per batch)
_DENSIFY_LIMIT = 50_000_000
#: rows read from disk at a time when streaming (``train(block_size=...)``)
DEFAULT_BLOCK_SIZE = 32_768
#: a dense block holds at most this many entries (its rows are capped accordingly)
_DENSE_BLOCK_ENTRIES = 2**26


def _as_torch(value, *, keep_sparse: bool):
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    if hasattr(value, "to_memory"):  # backed sparse dataset
        value = value.to_memory()
    if sparse.issparse(value):
        value = sparse.csr_matrix(value)  # shares the arrays of a CSR input
        if keep_sparse or value.shape[0] * value.shape[1] > _DENSIFY_LIMIT:
            if value.dtype != np.float32 or not value.has_sorted_indices:
                # a sorted float32 copy: sorting in place would reorder the caller's matrix
                value = value.astype(np.float32)
                value.sort_indices()
            return value
        value = value.toarray()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(value), dtype=np.float32))


def _take(value, idx: np.ndarray, *, keep_sparse: bool) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value[torch.from_numpy(idx)]
    return _to_tensor(value[idx], keep_sparse=keep_sparse)


class MinibatchIterable:
    """Iterable of minibatch dicts over ``indices``, from memory or streamed from row sources.

    The epoch's order of cells (:meth:`order`): the blocks of ``block_size`` rows that hold
    ``indices`` in a random order, and within each block its cells in a random order, both drawn
    from a :class:`torch.Generator` seeded by ``seed`` and the epoch number, so that the order
    of an epoch depends neither on global random state nor on the epochs before it.
    Minibatches are consecutive runs of this order, so each block is read once per epoch.
    Matrices in memory are the one-block case: without ``sources`` every cell is in one block
    and the order is a plain permutation of ``indices``. Without ``shuffle`` the cells come in
    the order of ``indices`` (sorted indices read each block once).

    Parameters
    ----------
    arrays
        Registry key -> torch tensor or scipy CSR matrix, indexed by cell (in memory).
    indices
        Cells to iterate over.
    sources
        Registry key -> :class:`RowSource` of matrices streamed from disk block by block
        (their keys in ``arrays``, if any, are ignored).
    block_size
        Rows per block read from the sources (default :data:`DEFAULT_BLOCK_SIZE`).
    batch_size
        Cells per minibatch.
    shuffle
        Shuffle each epoch with a generator seeded by ``seed`` and the epoch number.
    seed
        Seed of the shuffling (``None``: a fresh seed per iterable).
    sparse_keys
        Keys handed to the model as sparse CSR tensors.
    epoch
        Returns the number of the epoch being iterated (for instance the trainer's
        ``current_epoch``); without it epochs are counted from 0 by this iterable.
    rank, world_size
        This process's shard: every ``world_size``-th cell of the (shuffled) order starting at
        ``rank``, padded by wrapping around so that each shard has the same length.
    keep_order
        Hand out each minibatch's cells in the order of ``indices`` (inference for a user's
        selection of cells); otherwise they are grouped by block and sorted when some key is
        handed out sparse, which reads and slices faster.
    """

    def __init__(
        self,
        arrays: dict,
        indices: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
        keep_order: bool = False,
        sources: dict[str, RowSource] | None = None,
        block_size: int | None = None,
        seed: int | None = 0,
        sparse_keys: frozenset[str] = frozenset(),
        epoch: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.arrays = arrays
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        # seed=None: fresh entropy from the OS (the global random state is left alone)
        self.seed = int(np.random.default_rng(seed).integers(2**31 - 1)) if seed is None else seed
        self.sparse_keys = sparse_keys
        self.epoch = epoch
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._count = 0
        self.keep_order = bool(keep_order)
        self.sources = dict(sources or {})
        if self.sources:
            self.block_size = block_rows(self.sources, block_size or DEFAULT_BLOCK_SIZE)
            self.n_rows = next(iter(self.sources.values())).shape[0]
        else:  # in memory: one block holds every cell
            self.n_rows = int(self.indices.max()) + 1 if self.indices.size else 0
            self.block_size = max(self.n_rows, 1)

    def _shard_size(self) -> int:
        return math.ceil(len(self.indices) / self.world_size) if len(self.indices) else 0

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Every cell of ``indices`` once, grouped by block, in the order of ``epoch``."""
        idx = self.indices
        if not self.shuffle:
            return idx
        gen = torch.Generator()
        gen.manual_seed(self.seed * 100_003 + int(epoch))
        # the cells' permutation is drawn first, as in MinibatchIterable: with a single block
        # the order (and so training) is the same as that of the in-memory path
        within = idx[torch.randperm(len(idx), generator=gen).numpy()]
        ids = np.unique(idx // self.block_size)
        rank = np.empty(int(ids[-1]) + 1 if len(ids) else 0, dtype=np.int64)
        rank[ids] = torch.randperm(len(ids), generator=gen).numpy()
        # a stable sort on the block's rank keeps the random order of cells within each block
        return within[np.argsort(rank[within // self.block_size], kind="stable")]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = 0
        if self.shuffle:
            epoch = self.epoch() if self.epoch is not None else self._count
            self._count += 1
        idx = self.order(epoch)
        if self.world_size > 1:
            # pad by wrapping around, then every world_size-th cell (DistributedSampler's rule)
            idx = np.resize(idx, self._shard_size() * self.world_size)[
                self.rank :: self.world_size
            ]
        cached: tuple[int, dict] | None = None
        for start in range(0, len(idx), self.batch_size):
            chunk = self._arrange(idx[start : start + self.batch_size])
            bids = chunk // self.block_size
            pieces: dict[str, list] = {key: [] for key in self.sources}
            positions = []
            for b in dict.fromkeys(bids.tolist()):
                if cached is None or cached[0] != b:
                    cached = None  # release the previous block before reading the next
                    lo, hi = b * self.block_size, min((b + 1) * self.block_size, self.n_rows)
                    cached = (b, {k: s.read(lo, hi) for k, s in self.sources.items()})
                in_block = bids == b
                positions.append(np.flatnonzero(in_block))
                for key, block in cached[1].items():
                    pieces[key].append(block[chunk[in_block] - b * self.block_size])
            out = {
                key: _take(value, chunk, keep_sparse=key in self.sparse_keys)
                for key, value in self.arrays.items()
                if key not in self.sources
            }
            restore = np.argsort(np.concatenate(positions)) if len(positions) > 1 else None
            for key, parts in pieces.items():
                rows = _stack(parts)
                if restore is not None:  # rows back in the order of the chunk
                    rows = rows[restore]
                out[key] = _to_tensor(rows, keep_sparse=key in self.sparse_keys)
            yield out

    def _arrange(self, chunk: np.ndarray) -> np.ndarray:
        """A minibatch's cells grouped by block, sorted within when some key is handed out sparse.

        Blocks in order of first appearance (each block is read once per epoch); sorted rows
        slice CSR matrices faster. With ``keep_order`` the cells keep the order asked for.
        """
        if self.keep_order:
            return chunk
        if not self.sources:  # in memory: one block
            return np.sort(chunk) if self.sparse_keys else chunk
        bids = chunk // self.block_size
        first = {b: i for i, b in reversed(list(enumerate(bids.tolist())))}
        block_rank = np.array([first[b] for b in bids.tolist()])
        within = chunk if self.sparse_keys else np.zeros_like(chunk)
        return chunk[np.lexsort((within, block_rank))]


def _stack(parts: list):
    """Rows read from several blocks, stacked (CSR or dense)."""
    if len(parts) == 1:
        return parts[0]
    if sparse.issparse(parts[0]):
        return sparse.vstack(parts, format="csr")
    return np.concatenate(parts)


def registry_arrays(
    adata_manager: AnnDataManager,
    sparse_keys: frozenset[str],
    *,
    skip: frozenset[str] | set[str] = frozenset(),
) -> dict:
    """Every registered field of the manager's AnnData (except ``skip``), converted once."""
    return {
        key: _as_torch(adata_manager.get_from_registry(key), keep_sparse=key in sparse_keys)
        for key in adata_manager.data_registry
        if key not in skip
    }


class RowSource:
    """Rows of a cells x features matrix, read block by block (from disk when it is backed).

    Parameters
    ----------
    matrix
        A backed CSR sparse dataset, a dense HDF5 dataset, or an in-memory matrix.
    scan
        Its per-cell and per-feature sums (:func:`~scgenvae.model._validate.scan_matrix`);
        only needed for :meth:`row_totals` and :meth:`col_means`.
    binarize
        Hand out ``value > 0`` instead of the values (Bernoulli likelihood on counts).
    """

    def __init__(self, matrix, *, scan: MatrixScan | None = None, binarize: bool = False):
        self.matrix = matrix
        self.scan = scan
        self.binarize = binarize
        self.shape = tuple(int(d) for d in matrix.shape)
        self.dense = not (hasattr(matrix, "to_memory") or sparse.issparse(matrix))

    def read(self, start: int, stop: int):
        """Rows ``start:stop`` as float32 CSR (sparse matrices) or a dense float32 array."""
        block = read_rows(self.matrix, start, stop)
        if sparse.issparse(block):
            block = block.astype(np.float32, copy=False)
            if self.binarize:
                block.data = (block.data > 0).astype(np.float32)
            block.sort_indices()
            return block
        block = np.asarray(block, dtype=np.float32)
        return (block > 0).astype(np.float32) if self.binarize else block

    def row_totals(self) -> np.ndarray:
        """Per-cell totals (of the binarised values with ``binarize``)."""
        return (self.scan.row_nnz if self.binarize else self.scan.row_sums).astype(np.float64)

    def col_means(self) -> np.ndarray:
        """Per-feature means (of the binarised values with ``binarize``)."""
        sums = self.scan.col_nnz if self.binarize else self.scan.col_sums
        return np.asarray(sums, dtype=np.float64) / max(self.shape[0], 1)

    def to_memory(self):
        """The whole matrix in memory (CSR for sparse matrices)."""
        return self.read(0, self.shape[0])


def column_means(x, *, binarize: bool = False, chunk: int = 1 << 24) -> np.ndarray:
    """Per-column means of a dense or sparse matrix (of ``x > 0`` with ``binarize``).

    Works through ``chunk`` stored values at a time, so the temporary memory is bounded
    whatever the size of ``x`` (``(x > 0).astype(float)`` on a wide ATAC matrix would copy it
    twice over).
    """
    n_obs, n_vars = x.shape
    sums = np.zeros(n_vars, dtype=np.float64)
    if sparse.issparse(x):
        x = sparse.csr_matrix(x) if x.format not in ("csr", "csc") else x
        # CSR: the stored values' column is `indices`; CSC: expand `indptr` block by block
        for start in range(0, x.nnz, chunk):
            stop = min(start + chunk, x.nnz)
            values = x.data[start:stop]
            if x.format == "csr":
                cols = x.indices[start:stop]
            else:
                cols = np.searchsorted(x.indptr, np.arange(start, stop), side="right") - 1
            weights = (values > 0).astype(np.float64) if binarize else values.astype(np.float64)
            sums += np.bincount(cols, weights=weights, minlength=n_vars)
    else:
        rows = max(1, chunk // max(n_vars, 1))
        for start in range(0, n_obs, rows):
            block = np.asarray(x[start : start + rows])
            sums += (block > 0).sum(0) if binarize else block.sum(0, dtype=np.float64)
    return sums / max(n_obs, 1)


def stand_in(n_obs: int, n_vars: int) -> sparse.csr_matrix:
    """An all-zero CSR matrix of the right shape (no entries; its size is O(n_obs))."""
    return sparse.csr_matrix((n_obs, n_vars), dtype=np.float32)


def block_rows(sources: dict[str, RowSource], block_size: int) -> int:
    """Rows per block: ``block_size``, fewer where a dense source would make a block too big."""
    rows = int(block_size)
    for source in sources.values():
        if source.dense:
            rows = min(rows, max(1, _DENSE_BLOCK_ENTRIES // max(source.shape[1], 1)))
    return max(rows, 1)


def _to_tensor(rows, *, keep_sparse: bool) -> torch.Tensor:
    if not sparse.issparse(rows):
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    if keep_sparse:
        return torch.sparse_csr_tensor(
            torch.from_numpy(rows.indptr.astype(np.int64)),
            torch.from_numpy(rows.indices.astype(np.int64)),
            torch.from_numpy(rows.data),
            size=rows.shape,
        )
    return torch.from_numpy(rows.toarray())


class CellDataSplitter(LightningDataModule):
    """Train/validation/test split of cells; minibatches from memory or streamed from disk.

    Drop-in for :class:`scvi.dataloaders.DataSplitter` (same leading arguments, and the
    ``train_idx``/``val_idx``/``test_idx``/``n_train``/``n_val`` attributes scvi-tools reads).

    Parameters
    ----------
    adata_manager
        The registered manager.
    train_size, validation_size
        Fractions of cells; ``train_size=None`` means 0.9 (scvi-tools' default).
    batch_size
        Cells per minibatch.
    shuffle_set_split
        Shuffle cells before splitting.
    seed
        Seed of the split and of the per-epoch shuffling.
    sparse_keys
        Registry keys handed to the model as sparse CSR tensors.
    streams
        Registry key -> :class:`RowSource` of matrices streamed from disk block by block
        (:class:`MinibatchIterable` with row sources) instead of read into memory.
    load_in_memory
        Read the ``streams`` into memory once instead (when they fit).
    block_size
        Rows per block when streaming.
    **kwargs
        Arguments of scvi-tools' splitter that do not apply here (ignored).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        train_size: float | None = None,
        validation_size: float | None = None,
        batch_size: int = 128,
        shuffle_set_split: bool = True,  # noqa: FBT001, FBT002 - scvi-tools' signature
        *,
        seed: int | None = 0,
        sparse_keys: frozenset[str] = frozenset(),
        streams: dict[str, RowSource] | None = None,
        load_in_memory: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        **kwargs,
    ):
        super().__init__()
        del kwargs  # load_sparse_tensor, distributed_sampler: handled by sparse_keys / Lightning
        from scvi.dataloaders._data_splitting import validate_data_split

        n = adata_manager.adata.n_obs
        train_size = 0.9 if train_size is None else float(train_size)
        self.n_train, self.n_val = validate_data_split(n, train_size, validation_size, batch_size)
        order = np.arange(n)
        if shuffle_set_split:
            order = np.random.default_rng(seed).permutation(n)
        self.train_idx = order[: self.n_train]
        self.val_idx = order[self.n_train : self.n_train + self.n_val]
        self.test_idx = order[self.n_train + self.n_val :]
        self.batch_size = batch_size
        self.seed = seed
        self._shuffle_seed = seed
        self.sparse_keys = frozenset(sparse_keys)
        self.streams = dict(streams or {})
        self.block_size = int(block_size)
        self.arrays = registry_arrays(adata_manager, self.sparse_keys, skip=set(self.streams))
        if load_in_memory:
            for key, source in self.streams.items():
                self.arrays[key] = _as_torch(
                    source.to_memory(), keep_sparse=key in self.sparse_keys
                )
            self.streams = {}

    def _iterable(self, indices: np.ndarray, **kwargs) -> MinibatchIterable:
        if self.streams and not kwargs.get("shuffle"):
            indices = np.sort(indices)  # one read of each block
        return MinibatchIterable(
            self.arrays, indices, sources=self.streams, block_size=self.block_size, **kwargs
        )

    def _shard(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None:
            return {"rank": 0, "world_size": 1}
        return {"rank": trainer.global_rank, "world_size": trainer.world_size}

    def _current_epoch(self) -> int:
        return 0 if self.trainer is None else self.trainer.current_epoch

    def setup(self, stage: str | None = None) -> None:
        """Make every process of a distributed run use the same split and shuffling seed.

        Processes started by ``torchrun``/``srun`` or Lightning's ``ddp`` launcher each build
        their own splitter; rank 0's split and seed are broadcast to the others.
        """
        del stage
        trainer = self.trainer
        if self.seed is None:
            self._shuffle_seed = int(np.random.default_rng().integers(2**31 - 1))
        if trainer is None or trainer.world_size == 1:
            return
        shared = (self.train_idx, self.val_idx, self.test_idx, self._shuffle_seed)
        self.train_idx, self.val_idx, self.test_idx, self._shuffle_seed = (
            trainer.strategy.broadcast(shared, src=0)
        )

    def train_dataloader(self) -> MinibatchIterable:
        """Shuffled minibatches of the training cells (this process's shard of them)."""
        return self._iterable(
            self.train_idx,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self._shuffle_seed,
            sparse_keys=self.sparse_keys,
            epoch=self._current_epoch,
            **self._shard(),
        )

    def all_train_cells(self, batch_size: int | None = None) -> MinibatchIterable:
        """Every training cell in order, unsharded (for computations over the whole set)."""
        return self._iterable(
            self.train_idx,
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            sparse_keys=self.sparse_keys,
        )

    def val_dataloader(self) -> MinibatchIterable | list:
        """Minibatches of the validation cells (none when there are none)."""
        if not self.n_val:
            return []
        return self._iterable(
            self.val_idx,
            batch_size=self.batch_size,
            shuffle=False,
            sparse_keys=self.sparse_keys,
            **self._shard(),
        )
