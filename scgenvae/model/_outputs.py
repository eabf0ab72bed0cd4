"""What the getters decode: posterior means through the decoders, named and subset.

:class:`OutputsMixin` is inherited by :class:`~scgenvae.model.BaseScgenvaeModel`: it turns the
inference loop (``_iter_inference``) into decoded means of one modality (``_decode``), only
the columns asked where the likelihood head allows it, sparse above a threshold, NaN for cells
that lack the input, and names them (``_named``); ``decode_latent`` decodes given latent points.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from scgenvae._constants import MODULE_KEYS, REGISTRY_KEYS

if TYPE_CHECKING:
    from collections.abc import Sequence

#: values (cells x features) decoded at once by the getters (4 MiB of float32 per temporary).
#: A549, 52,761 peaks, dense accessibility: 19 rows at a time. With a threshold the Bernoulli
#: head decodes only the peaks a chunk's cells can lift to it: 0.21 s CPU and 51 MiB at 0.5
#: on a default-trained model (benchmarks/results_outputs.md)
DECODE_CHUNK_VALUES = 2**20


def _row_slice(inputs: dict, rows: slice) -> dict:
    """The generative inputs of some rows (tensors, dicts and lists of tensors, or None)."""

    def cut(v):
        if v is None:
            return None
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [cut(x) for x in v]
        return v[rows]

    return {k: cut(v) for k, v in inputs.items()}


class OutputsMixin:
    """Decoding for the getters of :class:`~scgenvae.model.BaseScgenvaeModel`."""

    def _lacking_input(self, inf: dict, use_modalities: tuple[str, ...] | None) -> torch.Tensor:
        """Cells of a minibatch that have none of the modalities an output is computed from.

        Only a restricted encoding (``use_modalities``) of a multi-modal model can lack its
        input; its posterior for such cells is the prior, not an estimate.
        """
        observed = inf[MODULE_KEYS.OBSERVED_KEY]
        first = next(iter(observed.values()))
        if use_modalities is None or len(self.module.modalities) < 2:
            return torch.zeros_like(first)
        seen = torch.zeros_like(first)
        for m in use_modalities:
            seen = seen | observed[m]
        return ~seen

    @staticmethod
    def _warn_lacking(
        n_lacking: int,
        n_cells: int,
        use_modalities: tuple[str, ...],
        what: str,
        *,
        stacklevel: int = 3,
    ) -> None:
        """One warning for the cells whose output is NaN for lack of input."""
        if not n_lacking:
            return
        names = " or ".join(repr(m) for m in use_modalities)
        warnings.warn(
            f"{n_lacking:,} of {n_cells:,} cells have no {names} data (absent from the modality, "
            f"or no counts): their {what} are NaN, as they are computed from {names} alone. "
            "Use `modality='joint'` for an estimate from what each cell has, or pass "
            "`indices` to leave them out.",
            UserWarning,
            stacklevel=stacklevel,
        )

    def _batch_code(self, transform_batch: str | None) -> torch.Tensor | None:
        if transform_batch is None:
            return None
        mapping = list(
            self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        )
        if transform_batch not in mapping:
            msg = f"`transform_batch={transform_batch!r}` is not a training batch; choose one of {mapping}."
            raise ValueError(msg)
        return torch.tensor([[mapping.index(transform_batch)]])

    def _feature_positions(
        self, modality: str, names: Sequence[str] | None, arg: str
    ) -> np.ndarray | None:
        """Positions of the features ``names`` of ``modality`` (``None``: all), in that order."""
        if names is None:
            return None
        if isinstance(names, str):
            names = [names]
        features = self._features[modality]
        pos = features.get_indexer(pd.Index(list(names)))
        if (pos < 0).any():
            missing = [n for n, p in zip(names, pos, strict=True) if p < 0]
            msg = (
                f"{len(missing):,} names of `{arg}` are not {modality} features of the model, "
                f"for instance {missing[:3]}; use names of `model.feature_names[{modality!r}]`."
            )
            raise ValueError(msg)
        return pos

    def _decode_widths(
        self, target: str, columns: np.ndarray | None
    ) -> tuple[int, torch.Tensor | None, int]:
        """Columns returned, columns the head decodes (``None``: all) and values per row."""
        n_input = self.module.modalities[target].n_input
        n_cols = n_input if columns is None else len(columns)
        if columns is None or not self.module.modalities[target].head.column_subset:
            return n_cols, None, n_input
        return n_cols, torch.as_tensor(columns, dtype=torch.long), n_cols

    def _decode(
        self,
        data=None,
        *,
        target: str,
        indices=None,
        transform_batch: str | None = None,
        use_modalities: tuple[str, ...] | None = None,
        batch_size: int | None = None,
        observed_library: bool = False,
        columns: np.ndarray | None = None,
        threshold: float | None = None,
        what: str = "estimates",
    ) -> np.ndarray | sparse.csr_matrix:
        """Decoded means of modality ``target`` from the posterior mean (cells x features).

        Only ``target``'s decoder runs, on the ``columns`` asked where the head allows it (else
        full rows, subset). With ``threshold``: a CSR matrix of the values at or above it, built
        per minibatch. Cells lacking every modality of ``use_modalities``: NaN (empty) rows and
        one warning.
        """
        code = self._batch_code(transform_batch)
        head = self.module.modalities[target].head
        n_cols, decode_cols, width = self._decode_widths(target, columns)
        prepared = self._internal(data)
        n_cells = prepared[0].n_obs if indices is None else len(self._cell_indices(indices, data))
        out = None if threshold is not None else np.empty((n_cells, n_cols), dtype=np.float32)
        blocks: list[sparse.csr_matrix] = []
        start, n_lacking = 0, 0
        for tensors, inf in self._iter_inference(
            data,
            indices=indices,
            batch_size=batch_size,
            use_modalities=use_modalities,
            n_outputs=n_cols,
            prepared=prepared,
        ):
            gen_in = self.module._get_generative_input(tensors, inf)
            gen_in[MODULE_KEYS.Z_KEY] = inf[MODULE_KEYS.QZ_KEY].loc
            if decode_cols is not None:
                decode_cols = decode_cols.to(gen_in[MODULE_KEYS.Z_KEY].device)
            seen = inf[MODULE_KEYS.OBSERVED_KEY][target]
            lacking_all = self._lacking_input(inf, use_modalities)
            n_lacking += int(lacking_all.sum())
            n = len(seen)
            # a few rows at a time: small temporaries (logits, quadrature) for wide outputs
            step = max(1, DECODE_CHUNK_VALUES // width)
            for lo in range(0, n, step):
                rows_ = slice(lo, min(n, lo + step))
                gen = self.module.generative(
                    **_row_slice(gen_in, rows_),
                    transform_batch=code,
                    observed_library=observed_library,
                    modalities=(target,),
                    columns=None if decode_cols is None else {target: decode_cols},
                )
                unseen = ~seen[rows_] if observed_library else torch.ones_like(seen[rows_])
                lacking = lacking_all[rows_].cpu()
                part = self._decoded_rows(
                    gen[target],
                    head,
                    unseen=unseen,
                    lacking=lacking,
                    columns=columns,
                    subset_decoded=decode_cols is not None,
                    threshold=threshold,
                    n_cols=n_cols,
                )
                if threshold is None:
                    out[start : start + len(lacking)] = part
                else:
                    blocks.append(part)
                start += len(lacking)
        if use_modalities is not None:
            self._warn_lacking(n_lacking, n_cells, use_modalities, what, stacklevel=4)
        if threshold is None:
            return out
        blocks = blocks or [sparse.csr_matrix((0, n_cols), dtype=np.float32)]
        return sparse.vstack(blocks, format="csr", dtype=np.float32)

    @staticmethod
    def _decoded_rows(
        decoded,
        head,
        *,
        unseen: torch.Tensor,
        lacking: torch.Tensor,
        columns: np.ndarray | None,
        subset_decoded: bool,
        threshold: float | None,
        n_cols: int,
    ) -> np.ndarray | sparse.csr_matrix:
        """Predictive means of some decoded rows (``n_cols`` features).

        Dense, with NaN rows where ``lacking``; or, with ``threshold``, a CSR block of the values
        at or above it (empty rows where ``lacking``).
        """
        n_rows = len(lacking)
        if threshold is not None and (columns is None or subset_decoded):
            # only the entries above the threshold (the head may skip the others)
            r, c, v = head.predictive_mean_at_least(decoded, threshold, unobserved_depth=unseen)
            r, c, v = r.cpu(), c.cpu(), v.float().cpu()
            ok = ~lacking[r]
            return sparse.csr_matrix(
                (v[ok].numpy(), (r[ok].numpy(), c[ok].numpy())), shape=(n_rows, n_cols)
            )
        values = head.predictive_mean(decoded, unobserved_depth=unseen)
        if columns is not None and not subset_decoded:
            values = values[:, torch.as_tensor(columns, device=values.device)]
        values = values.float().cpu()
        if threshold is None:
            if lacking.any():
                values = values.masked_fill(lacking.unsqueeze(-1), float("nan"))
            return values.numpy()
        keep = (values >= threshold) & ~lacking.unsqueeze(-1)
        r, c = keep.nonzero(as_tuple=True)
        return sparse.csr_matrix(
            (values[r, c].numpy(), (r.numpy(), c.numpy())), shape=(n_rows, n_cols)
        )

    def _named(
        self,
        values: np.ndarray | sparse.csr_matrix,
        *,
        data,
        indices,
        modality: str,
        columns: np.ndarray | None,
    ) -> pd.DataFrame:
        """``values`` as a DataFrame indexed by the cells' obs names, with feature columns."""
        names = self._obs_names if data is None else pd.Index(data.obs_names)
        positions = self._cell_indices(indices, data)
        index = names if positions is None else names[positions]
        features = self._features[modality]
        cols = features if columns is None else features[columns]
        if sparse.issparse(values):
            return pd.DataFrame.sparse.from_spmatrix(values, index=index, columns=cols)
        return pd.DataFrame(values, index=index, columns=cols, copy=False)

    def decode_latent(
        self,
        z: np.ndarray,
        *,
        transform_batch: str | None = None,
        batch_size: int = 1024,
    ) -> dict[str, np.ndarray]:
        """Decode latent points into each modality's mean (points x features).

        RNA (count likelihoods) is returned as normalised expression (rows sum to 1), ATAC with
        the Bernoulli likelihood as accessibility probabilities at the training depth. Used by
        :func:`scgenvae.tl.latent_traversal`.

        Parameters
        ----------
        z
            Latent points (points x ``n_latent``).
        transform_batch
            Batch category to decode under (default the first batch).
        batch_size
            Points per forward pass.
        """
        with torch.inference_mode():
            self._check_if_trained(warn=False)
            z = np.asarray(z, dtype=np.float32)
            if z.ndim != 2 or z.shape[1] != self.module.n_latent:
                msg = f"`z` must have shape (points, {self.module.n_latent}), got {z.shape}."
                raise ValueError(msg)
            self.module.eval()
            code = self._batch_code(transform_batch)
            dims = self._summary_dims()
            device = next(self.module.parameters()).device
            out: dict[str, list] = {m: [] for m in self.module.modalities}
            for start in range(0, len(z), batch_size):
                zb = torch.from_numpy(z[start : start + batch_size]).to(device)
                n = zb.shape[0]
                cats = [torch.zeros(n, 1, dtype=torch.long, device=device)] + [
                    torch.zeros(n, 1, dtype=torch.long, device=device)
                    for _ in dims["n_cats_per_cov"]
                ]
                cont = (
                    torch.zeros(n, dims["n_continuous_cov"], device=device)
                    if dims["n_continuous_cov"]
                    else None
                )
                gen = self.module.generative(
                    zb, None, cats, cont, transform_batch=code, observed_library=False
                )
                for m in out:
                    out[m].append(
                        self.module.modalities[m]
                        .head.predictive_mean(
                            gen[m], unobserved_depth=torch.ones(len(zb), dtype=torch.bool)
                        )
                        .cpu()
                        .numpy()
                    )
            return {m: np.concatenate(v) for m, v in out.items()}
