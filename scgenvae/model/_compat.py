"""scvi-tools' inherited model API, made to work on scgenvae models or refused by name.

scvi-tools' methods read the model's registered AnnData, which in scgenvae is an internal object
(features named ``'0'``, ``'1'``, ...; the user's object is never registered). The methods
below answer with the user's feature names and set-up arguments instead, or say plainly why
they do not apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os

    import pandas as pd


class ScviCompatMixin:
    """Overrides of :class:`scvi.model.base.BaseModelClass` methods for scgenvae models."""

    def get_var_names(self, legacy_mudata_format: bool = False) -> Any:  # noqa: FBT001, FBT002
        """Feature names the model was trained on.

        An :class:`pandas.Index` for a one-modality model (PoissonVAE), else a dict modality ->
        Index (MultiVAE). ``legacy_mudata_format`` is scvi-tools' and has no effect here.
        """
        del legacy_mudata_format
        names: dict[str, pd.Index] = self.feature_names
        return next(iter(names.values())) if len(names) == 1 else names

    def view_anndata_setup(
        self,
        adata=None,
        hide_state_registries: bool = False,  # noqa: FBT001, FBT002 - scvi-tools' signature
    ) -> None:
        """Print the set-up: its arguments, cells, features and categories (user's names).

        Parameters
        ----------
        adata
            Not used: the set-up shown is the model's (``None``).
        hide_state_registries
            Leave out the categories of batch and covariates.
        """
        if adata is not None:
            msg = (
                "`view_anndata_setup(adata)` is not supported: scgenvae does not register the "
                "user's objects. Call it without arguments to see the model's set-up."
            )
            raise ValueError(msg)
        print(self._setup_summary(show_categories=not hide_state_registries))

    def _setup_summary(self, *, show_categories: bool = True) -> str:
        lines = [f"{type(self).__name__} set up with `{self._setup_method}`:"]
        lines += [f"  {k}: {v!r}" for k, v in self._setup_args.items()]
        lines.append(f"  cells: {self.adata.n_obs:,}")
        for mod, names in self.feature_names.items():
            head = ", ".join(map(str, names[:3])) + (", ..." if len(names) > 3 else "")
            lines.append(f"  {mod}: {len(names):,} features ({head})")
        if show_categories:
            for key, state in self.adata_manager._registry["field_registries"].items():
                mapping = state.get("state_registry", {}).get("categorical_mapping")
                column = state.get("state_registry", {}).get("original_key")
                if mapping is not None and column is not None and column != "_scvi_" + key:
                    lines.append(f"  {key} ({column!r}): {list(map(str, mapping))}")
        return "\n".join(lines)

    @classmethod
    def view_setup_args(cls, dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the set-up arguments of a saved model.

        Parameters
        ----------
        dir_path
            Folder given to ``save``.
        prefix
            Not used by scgenvae's files; must be ``None``.
        """
        from ._io import read_meta

        if prefix is not None:
            msg = "`prefix` is not used by scgenvae model files; pass the folder only."
            raise ValueError(msg)
        meta = read_meta(dir_path)
        print(f"{meta['model_class']} set-up arguments:")
        for key, value in meta["setup_args"].items():
            print(f"  {key}: {value!r}")

    def transfer_fields(self, adata, **kwargs) -> None:
        """Not used by scgenvae: pass new data to the getters directly (they map categories)."""
        del adata, kwargs
        msg = (
            "`transfer_fields` is not used by scgenvae: the getters take new data directly "
            "(`model.get_latent_representation(adata)`), mapping its categories as in training, "
            "and nothing is written into it."
        )
        raise NotImplementedError(msg)

    def get_from_registry(self, adata, registry_key: str):
        """The matrix or column the model reads under ``registry_key``, for ``adata``.

        Parameters
        ----------
        adata
            Data set up like the training data (``None``: the training data).
        registry_key
            A key of ``model.adata_manager.data_registry`` (e.g. ``"X"``, ``"batch"``).
        """
        if registry_key not in self.adata_manager.data_registry:
            msg = (
                f"`registry_key={registry_key!r}` is not registered; choose one of "
                f"{list(self.adata_manager.data_registry)}."
            )
            raise KeyError(msg)
        internal, sources = self._internal(adata)
        if registry_key in sources:
            return sources[registry_key].to_memory()
        manager = self.get_anndata_manager(internal, required=True)
        return manager.get_from_registry(registry_key)

    def differential_abundance(self, *args, **kwargs):
        """Not available in scgenvae yet."""
        del args, kwargs
        msg = (
            f"differential_abundance is not available for {type(self).__name__}: scgenvae "
            "does not implement it yet."
        )
        raise NotImplementedError(msg)
