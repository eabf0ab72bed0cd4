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
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from scvi.data import AnnDataManager

#: dense copies up to this many entries are made once (bigger matrices are sliced per batch)
_DENSIFY_LIMIT = 50_000_000


def _as_torch(value, *, keep_sparse: bool):
    if isinstance(value, pd.DataFrame):
        value = value.to_numpy()
    if hasattr(value, "to_memory"):  # backed sparse dataset
        value = value.to_memory()
    if sparse.issparse(value):
        value = sparse.csr_matrix(value)
        if keep_sparse or value.shape[0] * value.shape[1] > _DENSIFY_LIMIT:
            value.sort_indices()
            return value.astype(np.float32, copy=False)
        value = value.toarray()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(value), dtype=np.float32))


def _take(value, idx: np.ndarray, *, keep_sparse: bool) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value[torch.from_numpy(idx)]
    rows = value[idx]
    if keep_sparse:
        return torch.sparse_csr_tensor(
            torch.from_numpy(rows.indptr.astype(np.int64)),
            torch.from_numpy(rows.indices.astype(np.int64)),
            torch.from_numpy(rows.data),
            size=rows.shape,
        )
    return torch.from_numpy(rows.toarray())


class MinibatchIterable:
    """Iterable of minibatch dicts over ``indices`` of in-memory registry arrays.

    Parameters
    ----------
    arrays
        Registry key -> torch tensor or scipy CSR matrix.
    indices
        Cells to iterate over.
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
    """

    def __init__(
        self,
        arrays: dict,
        indices: np.ndarray,
        *,
        batch_size: int,
        shuffle: bool,
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

    def _shard_size(self) -> int:
        return math.ceil(len(self.indices) / self.world_size) if len(self.indices) else 0

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        idx = self.indices
        if self.shuffle:
            epoch = self.epoch() if self.epoch is not None else self._count
            self._count += 1
            gen = torch.Generator()
            gen.manual_seed(self.seed * 100_003 + int(epoch))
            idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
        if self.world_size > 1:
            # pad by wrapping around, then every world_size-th cell (DistributedSampler's rule)
            idx = np.resize(idx, self._shard_size() * self.world_size)[
                self.rank :: self.world_size
            ]
        for start in range(0, len(idx), self.batch_size):
            chunk = idx[start : start + self.batch_size]
            if self.sparse_keys:  # sorted rows slice CSR matrices faster
                chunk = np.sort(chunk)
            yield {
                key: _take(value, chunk, keep_sparse=key in self.sparse_keys)
                for key, value in self.arrays.items()
            }


def registry_arrays(adata_manager: AnnDataManager, sparse_keys: frozenset[str]) -> dict:
    """Every registered field of the manager's AnnData, converted once."""
    return {
        key: _as_torch(adata_manager.get_from_registry(key), keep_sparse=key in sparse_keys)
        for key in adata_manager.data_registry
    }


class InMemoryDataSplitter(LightningDataModule):
    """Train/validation/test split of cells with in-memory minibatches.

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
        self.arrays = registry_arrays(adata_manager, self.sparse_keys)

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
        return MinibatchIterable(
            self.arrays,
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
        return MinibatchIterable(
            self.arrays,
            self.train_idx,
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            sparse_keys=self.sparse_keys,
        )

    def val_dataloader(self) -> MinibatchIterable | list:
        """Minibatches of the validation cells (none when there are none)."""
        if not self.n_val:
            return []
        return MinibatchIterable(
            self.arrays,
            self.val_idx,
            batch_size=self.batch_size,
            shuffle=False,
            sparse_keys=self.sparse_keys,
            **self._shard(),
        )
