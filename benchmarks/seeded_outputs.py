"""Seeded outputs of both models, to check that a refactoring leaves results bit-identical.

Usage::

    git stash / checkout the old commit;  python benchmarks/seeded_outputs.py before.npz
    back on the new code;                 python benchmarks/seeded_outputs.py after.npz --compare before.npz

Trains PoissonVAE (Poisson, NB, ZINB, discrete latent) and MultiVAE (Bernoulli and Poisson ATAC)
for a few epochs on seeded synthetic data, one torch thread, and saves their latents and cluster
probabilities. ``--compare`` reports, per array, whether it is bit-identical to the saved one
(issue 16: the model-layer redesign kept all six identical to commit b65c781).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def outputs() -> dict[str, np.ndarray]:
    from scgenvae.datasets import synthetic_multiome, synthetic_rna
    from scgenvae.model import MultiVAE, PoissonVAE

    res = {}
    for lik in ("poisson", "nb", "zinb"):
        a = synthetic_rna(n_obs=300, n_vars=60, rng=0)
        PoissonVAE.setup_anndata(a, batch_key="batch")
        m = PoissonVAE(a, n_latent=5, gene_likelihood=lik)
        m.train(max_epochs=3, seed=0, **QUIET)
        res[f"pvae_{lik}"] = m.get_latent_representation()
    a = synthetic_rna(n_obs=300, n_vars=60, rng=0)
    PoissonVAE.setup_anndata(a, batch_key="batch")
    m = PoissonVAE(a, n_latent=5, n_clusters=3)
    m.train(max_epochs=4, seed=0, **QUIET)
    res["pvae_clusters"] = m.get_cluster_probabilities()
    for atac in ("bernoulli", "poisson"):
        md = synthetic_multiome(n_obs=300, n_genes=50, n_peaks=80, rng=0)
        MultiVAE.setup_mudata(md, batch_key="batch")
        m = MultiVAE(md, n_latent=5, atac_likelihood=atac)
        m.train(max_epochs=3, seed=0, **QUIET)
        res[f"mvae_{atac}"] = m.get_latent_representation()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help=".npz file to write")
    parser.add_argument("--compare", default=None, help=".npz of another run to compare with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    res = outputs()
    np.savez(args.output, **res)
    if args.compare:
        old = np.load(args.compare)
        for key in old.files:
            same = key in res and np.array_equal(old[key], res[key])
            print(f"{key}: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
