"""In-memory minibatching: the registry's arrays are read once and sliced per minibatch.

scvi-tools' ``AnnDataLoader`` re-reads every registry field from the AnnData for every
minibatch; on matrices that fit in memory that bookkeeping costs more than the model's own
arithmetic. Here each field is converted once (small dense matrices straight to a torch
tensor, wide sparse ones kept as CSR and handed to the model sparse), and the order of cells
comes from an explicit, seeded :class:`torch.Generator`, so training does not depend on any
global random state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterator

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
        Seed of the shuffling.
    sparse_keys
        Keys handed to the model as sparse CSR tensors.
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
    ):
        self.arrays = arrays
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.sparse_keys = sparse_keys
        self._epoch = 0

    def __len__(self) -> int:
        return int(np.ceil(len(self.indices) / self.batch_size))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        idx = self.indices
        if self.shuffle:
            gen = torch.Generator()
            if self.seed is None:
                gen.seed()
            else:
                gen.manual_seed(int(self.seed) * 100_003 + self._epoch)
            idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
            self._epoch += 1
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
        self.sparse_keys = frozenset(sparse_keys)
        self.arrays = registry_arrays(adata_manager, self.sparse_keys)

    def train_dataloader(self) -> MinibatchIterable:
        """Shuffled minibatches of the training cells."""
        return MinibatchIterable(
            self.arrays,
            self.train_idx,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
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
        )
