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
  reference model's (the patch applies to query cells only);
- ``untrained``: ``load_query_data()`` without ``train()``: the query's new batch rows stay
  at the mean of the reference's rows (with one reference batch: that batch's rows), so the
  encoder reads the query as the reference's batch;
- ``ref_prior``: frozen, with the reference cells' aggregate posterior (the mean of their
  ``q(z|x)``) as the query's prior instead of ``N(0, I)`` (experiment, patched in here);
- ``mmd30`` / ``mmd100`` / ``mmd300``: frozen, plus that weight times the squared MMD (Gaussian
  kernels of variance 0.25, 1 and 4) between each minibatch's latent sample and 256 reference
  latent means drawn at random, added to the query's loss (experiment, patched in here; ``mmd``
  takes its weight from ``--mmd-weight``).

``--split issue`` runs the issue's split instead (CEL-seq2 reference, HCC827 held out): only to
report a variant chosen on the reverse split, never to choose one. ``--scenario "all lines"``
keeps every line in the reference. Held-out rows also give ``AUROC fit held-out``: how well
the query model's own fit (each query cell's negative ELBO per count) flags the held-out line,
beside the label transfer's uncertainty. ``--ref-train-kwargs`` passes arguments to the reference's
``train()`` (e.g. a KL warm-up over all 400 epochs, scvi-tools' default); each row records how
many latent dimensions the reference uses (variance of its cells' posterior means above 0.01).

Usage::

    python benchmarks/mapping_diagnosis.py base kl_all lr1e-2 unfrozen offset in_scale enc_delta
    python benchmarks/mapping_diagnosis.py nopad --no-gene-removal
    python benchmarks/mapping_diagnosis.py base --model-kwargs '{"n_layers": 2, "dropout_rate": 0.2}'
    python benchmarks/mapping_diagnosis.py base --model-kwargs '{"gene_likelihood": "nb"}'
    python benchmarks/mapping_diagnosis.py base mmd30 mmd100 mmd300 --scenario "all lines"
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
from sklearn.metrics import roc_auc_score

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
    "ref_prior": {"patch": "ref_prior"},
    "mmd": {"patch": "mmd"},
    "untrained": {"untrained": True},
    "mmd30": {"patch": "mmd", "weight": 30.0},
    "mmd100": {"patch": "mmd", "weight": 100.0},
    "mmd300": {"patch": "mmd", "weight": 300.0},
}


def _mmd(a, b, widths=(0.25, 1.0, 4.0)):
    """Squared MMD of two point sets with a sum of Gaussian kernels."""

    def k(x, y):
        d = torch.cdist(x, y).square()
        return sum(torch.exp(-d / (2 * w)) for w in widths)

    return k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()


def _add_mmd(module, bank, weight):
    loss = module.loss

    def patched(tensors, inference_outputs, generative_outputs, **kw):
        out = loss(tensors, inference_outputs, generative_outputs, **kw)
        z = inference_outputs["z"]
        idx = torch.randint(0, bank.shape[0], (min(256, bank.shape[0]),))
        term = weight * _mmd(z, bank[idx])
        out.loss = out.loss + term
        return out

    module.loss = patched


class _ReferencePrior(torch.nn.Module):
    """The reference cells' aggregate posterior as the query's prior (experiment).

    ``p(z) = mean_i N(z; m_i, s_i^2)`` over the reference cells' posteriors; the query's KL is
    the one-sample estimate ``log q(z|x) - log p(z)``.
    """

    n_clusters = None

    def __init__(self, loc, scale):
        super().__init__()
        self.register_buffer("loc", torch.as_tensor(loc, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def infer_cluster(self, qz):
        return {}

    def log_prob(self, z):
        comp = torch.distributions.Normal(self.loc, self.scale)
        lp = comp.log_prob(z.unsqueeze(-2)).sum(-1)
        return torch.logsumexp(lp, -1) - np.log(self.loc.shape[0])

    def kl(self, qz, z, inference_outputs, tau=None):
        return {"kl_z": qz.log_prob(z).sum(-1) - self.log_prob(z)}


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
    parser.add_argument("--mmd-weight", type=float, default=100.0)
    parser.add_argument(
        "--ref-train-kwargs", type=json.loads, default={}, help="JSON: the reference's train()"
    )
    parser.add_argument("--split", choices=["reverse", "issue"], default="reverse")
    parser.add_argument(
        "--scenario", choices=["held-out line", "all lines"], default="held-out line"
    )
    parser.add_argument(
        "--model-kwargs", type=json.loads, default={}, help="JSON: the reference's PoissonVAE()"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    reference = "Drop-seq" if args.split == "reverse" else "CEL-seq2"
    bm.HELD_OUT = "H1975" if args.split == "reverse" else "HCC827"
    seed = args.seed
    adata = bm._data(reference)
    ref, query = bm._split(adata, args.scenario, seed, reference=reference)
    if args.no_gene_removal:
        query = adata[(adata.obs["protocol"] != reference).to_numpy()].copy()
    scgenvae.settings.seed = seed
    PoissonVAE.setup_anndata(ref, batch_key="protocol")
    model = PoissonVAE(ref, **args.model_kwargs)
    model.train(seed=seed, enable_progress_bar=False, **args.ref_train_kwargs)
    z_ref = model.get_latent_representation(ref)
    # latent dimensions the reference uses: variance over its cells of the posterior mean > 0.01
    active = int((z_ref.var(0) > 0.01).sum())
    prepared = PoissonVAE.prepare_query_anndata(query, model)
    for name in args.variants:
        kw = dict(VARIANTS[name])
        freeze, patch = kw.pop("freeze", True), kw.pop("patch", None)
        weight = kw.pop("weight", args.mmd_weight)
        untrained = kw.pop("untrained", False)
        q = PoissonVAE.load_query_data(prepared.copy(), model, freeze=freeze)
        if patch == "offset":
            dec = q.module.decoders["rna"]
            dec.head = _DecoderOffset(dec.head)
        elif patch == "mask_padded":
            dec = q.module.decoders["rna"]
            dec.head = _DecoderMask(dec.head, ~ref.var_names.isin(query.var_names))
        elif patch == "mmd":
            _add_mmd(q.module, torch.as_tensor(z_ref), weight)
        elif patch == "ref_prior":
            locs, scales = [], []
            for _, inf in model._iter_inference(ref):
                locs.append(inf["qz"].loc.detach())
                scales.append(inf["qz"].scale.detach())
            q.module.prior = _ReferencePrior(torch.cat(locs), torch.cat(scales))
        elif patch is not None:
            net = q.module.encoders["rna"].net
            net.linears[0] = _EncoderInput(net.linears[0], patch)
        t0 = time.perf_counter()
        if not untrained:
            q.train(seed=seed, enable_progress_bar=False, **kw)
        seconds = time.perf_counter() - t0
        z_query = q.get_latent_representation(prepared)
        z_ref_q = z_ref if patch in ("in_scale", "enc_delta") else q.get_latent_representation(ref)
        figs = bm._figures(ref, query, z_ref_q, z_query, seed)
        held = (query.obs["cell_line"].astype(str) == bm.HELD_OUT).to_numpy()
        if held.any() and bm.HELD_OUT not in set(ref.obs["cell_line"]):
            # the model's own fit as a novelty score: the query cells' negative ELBO per count
            neg_elbo = -np.asarray(q.get_elbo(prepared, return_mean=False))
            counts = np.asarray(prepared.X.sum(1)).ravel()
            figs["AUROC fit held-out"] = float(roc_auc_score(held, neg_elbo / counts))
        elbo = [np.nan] if untrained else q.history["elbo_train"].to_numpy().ravel()
        row = {
            "variant": name,
            "split": args.split,
            "scenario": args.scenario,
            "seed": seed,
            **{k: round(v, 4) for k, v in figs.items()},
            "ref. latent change": float(np.abs(z_ref_q - z_ref).max()),
            "active dims": active,
            "query ELBO at -100 / end": [
                round(float(elbo[-min(100, len(elbo))]), 1),
                round(float(elbo[-1]), 1),
            ],
            "train s": round(seconds),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
