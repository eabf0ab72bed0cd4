"""Why our frozen CellBench mapping mixes the protocols less than scvi-tools': query-side variants.

Hold-out discipline (issue 18): this runs on the **reverse** split of ``mapping.py`` (reference:
Drop-seq cells; query: CEL-seq2 cells with 10% of the reference's genes removed) with **H1975**
held out of the reference, never on the issue's split (CEL-seq2 reference, HCC827 held out).

The reference is trained once per seed at the defaults; each variant maps the query from it and
is scored with ``mapping.py``'s figures (accuracy on the known lines, held-out uncertainty and its
AUROC, kNN mixing of the protocols, cell-line ARI) plus the query model's training ELBO (per
cell, 100 epochs before the end and at the end: is it still falling?). Variants:

- ``base``: ``load_query_data(freeze=True)`` and ``train()`` at the defaults;
- ``kl_all``: KL warm-up over the whole query training (400 epochs; scvi-tools' default);
- ``lr1e-2``: ten times the default learning rate;
- ``unfrozen``: ``load_query_data(freeze=False)`` (every weight trains; the reference moves);
- ``nopad``: frozen, on a query that keeps all genes (what the zero padding costs);
- ``offset``: frozen plus a trained per-gene log-rate offset in the decoder for the query's
  cells (experiment, patched in here: a decoder that can fit the protocol's gene effects);
- ``in_scale``: frozen plus a trained per-gene scale and shift of the encoder's input for the
  query's cells (experiment, patched in here);
- ``enc_delta``: frozen plus a trained query-only change of the encoder's whole first layer
  (experiment, patched in here);
- ``mask_padded``: frozen, with the padded genes left out of the query's likelihood (their
  logits pushed to -1e4 in the query model's decoder, so the softmax covers the measured
  genes only; experiment, patched in here). For the patched encoder variants the reference's latent is the
  reference model's (the patch applies to query cells only).

Usage::

    python benchmarks/mapping_diagnosis.py base kl_all lr1e-2 unfrozen offset in_scale enc_delta
    python benchmarks/mapping_diagnosis.py nopad --no-gene-removal
    python benchmarks/mapping_diagnosis.py base --model-kwargs '{"n_layers": 2, "dropout_rate": 0.2}'
    python benchmarks/mapping_diagnosis.py base --model-kwargs '{"gene_likelihood": "nb"}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import scgenvae
from scgenvae.model import PoissonVAE

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mapping as bm

VARIANTS = {
    "base": {},
    "kl_all": {"n_epochs_kl_warmup": 400},
    "lr1e-2": {"lr": 0.01},
    "unfrozen": {"freeze": False},
    "nopad": {},
    "offset": {"patch": "offset"},
    "in_scale": {"patch": "in_scale"},
    "enc_delta": {"patch": "enc_delta"},
    "mask_padded": {"patch": "mask_padded"},
}


class _DecoderOffset(torch.nn.Module):
    """The decoder's output layer plus a trained per-gene offset (the query's cells only)."""

    def __init__(self, lin: torch.nn.Linear):
        super().__init__()
        self.lin = lin
        self.offset = torch.nn.Parameter(torch.zeros(lin.out_features))

    def forward(self, h):
        return self.lin(h) + self.offset


class _DecoderMask(torch.nn.Module):
    """The decoder's output layer with the padded genes' logits pushed to -1e4 (query only).

    The softmax then spreads each cell's library over the genes the query measured, and a
    padded gene (a zero the query never observed) no longer counts as an observed zero.
    """

    def __init__(self, lin: torch.nn.Linear, padded: np.ndarray):
        super().__init__()
        self.lin = lin
        self.register_buffer(
            "shift", torch.as_tensor(np.where(padded, -1e4, 0.0), dtype=torch.float32)
        )

    def forward(self, h):
        return self.lin(h) + self.shift


class _EncoderInput(torch.nn.Module):
    """The encoder's first layer with a trained query-only change (scale/shift, or a delta)."""

    def __init__(self, lin, kind: str):
        super().__init__()
        self.lin, self.kind = lin, kind
        if kind == "enc_delta":
            self.dw = torch.nn.Parameter(torch.zeros_like(lin.weight))
        else:
            self.a = torch.nn.Parameter(torch.zeros(lin.weight.shape[0]))
            self.b = torch.nn.Parameter(torch.zeros(lin.weight.shape[0]))

    def forward(self, x):
        if x.layout != torch.strided:
            x = x.to_dense()
        if self.kind == "enc_delta":
            return torch.addmm(self.lin.bias, x, self.lin.weight + self.dw)
        return self.lin(x * self.a.exp() + self.b)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gene-removal", action="store_true")
    parser.add_argument(
        "--model-kwargs", type=json.loads, default={}, help="JSON: the reference's PoissonVAE()"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    bm.HELD_OUT = "H1975"
    seed = args.seed
    adata = bm._data("Drop-seq")
    ref, query = bm._split(adata, "held-out line", seed, reference="Drop-seq")
    if args.no_gene_removal:
        query = adata[(adata.obs["protocol"] != "Drop-seq").to_numpy()].copy()
    scgenvae.settings.seed = seed
    PoissonVAE.setup_anndata(ref, batch_key="protocol")
    model = PoissonVAE(ref, **args.model_kwargs)
    model.train(seed=seed, enable_progress_bar=False)
    z_ref = model.get_latent_representation(ref)
    prepared = PoissonVAE.prepare_query_anndata(query, model)
    for name in args.variants:
        kw = dict(VARIANTS[name])
        freeze, patch = kw.pop("freeze", True), kw.pop("patch", None)
        q = PoissonVAE.load_query_data(prepared.copy(), model, freeze=freeze)
        if patch == "offset":
            dec = q.module.decoders["rna"]
            dec.head = _DecoderOffset(dec.head)
        elif patch == "mask_padded":
            dec = q.module.decoders["rna"]
            dec.head = _DecoderMask(dec.head, ~ref.var_names.isin(query.var_names))
        elif patch is not None:
            net = q.module.encoders["rna"].net
            net.linears[0] = _EncoderInput(net.linears[0], patch)
        t0 = time.perf_counter()
        q.train(seed=seed, enable_progress_bar=False, **kw)
        seconds = time.perf_counter() - t0
        z_query = q.get_latent_representation(prepared)
        z_ref_q = z_ref if patch in ("in_scale", "enc_delta") else q.get_latent_representation(ref)
        figs = bm._figures(ref, query, z_ref_q, z_query, seed)
        elbo = q.history["elbo_train"].to_numpy().ravel()
        row = {
            "variant": name,
            "seed": seed,
            **{k: round(v, 4) for k, v in figs.items()},
            "ref. latent change": float(np.abs(z_ref_q - z_ref).max()),
            "query ELBO at -100 / end": [round(float(elbo[-100]), 1), round(float(elbo[-1]), 1)],
            "train s": round(seconds),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
