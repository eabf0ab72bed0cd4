"""Public behaviours without a test elsewhere (issue 15): each assertion fails if the code is wrong.

Already tested elsewhere, not repeated here: metrics.* by hand (tests/test_metrics.py,
tests/test_mutants.py), MultiVAE(rna_likelihood="nb") against scipy and
atac_likelihood="poisson" (test_mutants.py), transform_batch, give_mean=False, a numeric
library_size and train_size (test_mutants.py), early stopping (test_health.py), settings.verbosity
"INFO" (test_mutants.py), nn.Dropout (test_module.py), nn.csr_matmul (test_properties.py).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import scgenvae
from scgenvae import cli
from scgenvae.module import StandardNormalPrior, log_library_mean
from scgenvae.nn import CovariateInjection, FCLayers, GaussianEncoder, SparseLinear, reparameterize


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- nn
def test_covariate_injection_adds_the_row_of_each_category_and_the_continuous_effect():
    inj = CovariateInjection(5, n_cats_per_cov=(3, 1, 2), n_continuous_cov=2)
    # a covariate with one category carries no information and gets no embedding
    assert len(inj.embeddings) == 2
    h = torch.randn(4, 5, generator=_gen())
    cats = [
        torch.tensor([[0], [2], [1], [2]]),
        torch.zeros(4, 1),
        torch.tensor([[1], [0], [0], [1]]),
    ]
    cont = torch.randn(4, 2, generator=_gen(1))
    with torch.no_grad():
        out = inj(h, cats, cont)
    e0, e2 = inj.embeddings[0].weight, inj.embeddings[1].weight
    expected = h + e0[cats[0].ravel()] + e2[cats[2].ravel()] + cont @ inj.continuous.weight.T
    torch.testing.assert_close(out, expected)
    # cells that differ only in the batch differ by the difference of the two rows
    with torch.no_grad():
        a = inj(h[:1], [torch.tensor([[0]]), torch.zeros(1, 1), torch.tensor([[0]])], None)
        b = inj(h[:1], [torch.tensor([[2]]), torch.zeros(1, 1), torch.tensor([[0]])], None)
    torch.testing.assert_close(b - a, (e0[2] - e0[0]).unsqueeze(0))


def test_sparse_linear_equals_dense_product_for_dense_sparse_and_nearly_dense_input():
    layer = SparseLinear(20, 6)
    x = torch.poisson(torch.full((8, 20), 0.2), generator=_gen())  # ~18% non-zero
    expected = x @ layer.weight + layer.bias
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x.to_sparse_csr()), expected, rtol=1e-5, atol=1e-6)
    very_sparse = x * (torch.rand(x.shape, generator=_gen(2)) < 0.3)
    torch.testing.assert_close(
        layer(very_sparse.to_sparse_csr()),
        very_sparse @ layer.weight + layer.bias,
        rtol=1e-5,
        atol=1e-6,
    )
    # gradients reach the weights through the sparse path as through the dense one
    layer(very_sparse.to_sparse_csr()).sum().backward()
    torch.testing.assert_close(
        layer.weight.grad, very_sparse.sum(0, keepdim=True).T.expand(20, 6).contiguous()
    )


def test_fc_layers_are_linear_then_covariates_then_norm_then_relu():
    torch.manual_seed(0)
    net = FCLayers(7, 5, n_layers=2, n_cats_per_cov=(3,), dropout_rate=0.0).eval()
    x = torch.randn(6, 7, generator=_gen())
    batch = torch.tensor([[0], [1], [2], [0], [1], [2]])
    with torch.no_grad():
        out = net(x, [batch])
        h = x
        for linear, inj, norm in zip(net.linears, net.injections, net.norms, strict=True):
            h = torch.relu(norm(linear(h) + inj.embeddings[0].weight[batch.ravel()]))
    torch.testing.assert_close(out, h)
    assert (out >= 0).all()
    assert len(net.linears) == 2
    # sparse input gives the same output
    with torch.no_grad():
        torch.testing.assert_close(net(x.to_sparse_csr(), [batch]), out)
    with pytest.raises(ValueError, match="n_layers"):
        FCLayers(7, 5, n_layers=0)
    # dropout acts in training mode only
    drop = FCLayers(7, 50, dropout_rate=0.5).train()
    with torch.no_grad():
        assert (drop(x) == 0).float().mean() > 0.6  # ReLU zeros plus about half of the rest


def test_gaussian_encoder_returns_mean_positive_variance_and_hidden():
    torch.manual_seed(0)
    enc = GaussianEncoder(10, 3, n_hidden=16, var_eps=1e-4).eval()
    x = torch.randn(5, 10, generator=_gen())
    with torch.no_grad():
        mean, var, hidden = enc(x)
        h = enc.net(x)
        torch.testing.assert_close(hidden, h)
        torch.testing.assert_close(mean, enc.mean(h))
        torch.testing.assert_close(var, torch.exp(enc.log_var(h)) + 1e-4)
    assert mean.shape == var.shape == (5, 3)
    assert (var >= 1e-4).all()
    # an extreme log-variance is clamped, never inf or 0
    with torch.no_grad():
        enc.log_var.bias.fill_(1e4)
        assert torch.isfinite(enc(x)[1]).all()
        enc.log_var.bias.fill_(-1e4)
        assert (enc(x)[1] >= 1e-4).all()


def test_reparameterize_draws_from_the_posterior_with_gradients():
    loc = torch.tensor([1.0, -2.0], requires_grad=True)
    scale = torch.tensor([0.5, 2.0], requires_grad=True)
    torch.manual_seed(0)
    z = reparameterize(Normal(loc.expand(20000, 2), scale.expand(20000, 2)))
    torch.testing.assert_close(z.mean(0), loc.detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), scale.detach(), atol=0.03, rtol=0)
    z.sum().backward()
    torch.testing.assert_close(loc.grad, torch.full((2,), 20000.0))
    assert scale.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- module
def test_standard_normal_prior_kl_equals_torch_kl():
    prior = StandardNormalPrior()
    q = Normal(torch.randn(6, 3, generator=_gen()), torch.rand(6, 3, generator=_gen(1)) + 0.1)
    out = prior.kl(q, q.rsample(), {})
    expected = kl_divergence(q, Normal(torch.zeros(3), torch.ones(3))).sum(-1)
    torch.testing.assert_close(out["kl_z"], expected)
    assert prior.infer_cluster(q) == {}
    assert prior.n_clusters is None
    # zero exactly at the prior
    zero = prior.kl(Normal(torch.zeros(2, 3), torch.ones(2, 3)), None, {})["kl_z"]
    torch.testing.assert_close(zero, torch.zeros(2))


def test_log_library_mean_skips_empty_cells():
    assert log_library_mean(np.array([np.e, np.e**3, 0.0])) == pytest.approx(2.0)
    assert log_library_mean(np.array([[10.0], [1000.0]])) == pytest.approx(np.log(100.0))
    assert log_library_mean(np.zeros(4)) == 0.0


# ---------------------------------------------------------------------------- settings
@pytest.mark.usefixtures("_restore_verbosity")
def test_verbosity_levels_filter_records_and_one_handler_is_attached(capsys):
    logger = logging.getLogger("scgenvae.test")
    scgenvae.settings.verbosity = "info"
    logger.info("first info")
    scgenvae.settings.verbosity = logging.WARNING  # an int works as well as a name
    assert scgenvae.settings.verbosity == logging.WARNING
    logger.info("hidden info")
    logger.warning("a warning")
    scgenvae.settings.verbosity = "ERROR"
    logger.warning("hidden warning")
    err = capsys.readouterr().err
    assert "INFO: first info" in err
    assert "WARNING: a warning" in err
    assert "hidden" not in err
    # setting the level three times attached one handler, so each record prints once
    assert err.count("a warning") == 1


# ---------------------------------------------------------------------------- scgenvae demo
def test_demo_subcommand_runs_every_part_and_lists_the_files(tmp_path, capsys, monkeypatch):
    """``scgenvae demo -o DIR --max-epochs N --seed S``: the three parts, with N and S passed."""
    import scgenvae._demo as demo

    calls = []

    def part(name):
        def run(out, *, max_epochs, seed):
            calls.append((name, out, max_epochs, seed))
            path = out / f"{name}.txt"
            path.write_text(name)
            return [path]

        return run

    for name in ("run_cellbench", "run_a549", "run_fucci"):
        monkeypatch.setattr(demo, name, part(name))
    out = tmp_path / "new" / "demo"
    assert cli.main(["demo", "-o", str(out), "--max-epochs", "3", "--seed", "7"]) == 0
    assert [c[0] for c in calls] == ["run_cellbench", "run_a549", "run_fucci"]
    assert all(c[1] == out and c[2] == 3 and c[3] == 7 for c in calls)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"wrote {out / n}.txt" for n in ("run_cellbench", "run_a549", "run_fucci")]
    # defaults: demo_output in the working directory, the parts' own epochs, seed 0
    calls.clear()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo"]) == 0
    assert {(c[1].resolve(), c[2], c[3]) for c in calls} == {(tmp_path / "demo_output", None, 0)}
    with pytest.raises(SystemExit):
        cli.main(["demo", "--max-epochs", "0"])


def test_demo_fucci_part_writes_the_aligned_cells_and_figures(tmp_path):
    """The demo's FUCCI part (not run elsewhere): cells with an angle, two figures (1 epoch)."""
    import anndata as ad

    import scgenvae._demo as demo

    with warnings.catch_warnings():
        # a 1-epoch latent holds no clean cycle: align_cell_cycle says so (ellipse fit not
        # converged, direction weakly determined); the files must be written all the same
        warnings.filterwarnings("ignore", "align_cell_cycle: ")
        paths = demo.run_fucci(tmp_path, max_epochs=1, seed=0)
    assert [p.name for p in paths] == [
        "fucci_cell_cycle.h5ad",
        "fucci_cell_cycle.png",
        "fucci_cell_cycle_traversal.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
    back = ad.read_h5ad(paths[0])
    angle = back.obs["cell_cycle_angle"].to_numpy()
    assert np.isfinite(angle).all()
    assert ((angle >= 0) & (angle < 2 * np.pi)).all()
    assert back.obsm["X_scgenvae"].shape == (back.n_obs, 10)


# ---------------------------------------------------------------------------- MultiVAE nb
def test_multivae_nb_learns_a_gene_wise_dispersion_and_scores_with_scvi_nb():
    """rna_likelihood="nb": a dispersion per gene, learned, and the loss is scvi's NB log_prob."""
    from scvi.distributions import NegativeBinomial

    from scgenvae._constants import MODULE_KEYS, REGISTRY_KEYS
    from scgenvae.datasets import synthetic_multiome
    from scgenvae.model import MultiVAE

    mdata = synthetic_multiome(n_obs=60, n_genes=30, n_peaks=40, rng=3)
    MultiVAE.setup_mudata(mdata, batch_key="batch")
    poisson = MultiVAE(mdata, n_latent=4, n_hidden=16)
    assert not hasattr(poisson.module.decoders["rna"], "log_theta")
    model = MultiVAE(mdata, n_latent=4, n_hidden=16, rna_likelihood="nb")
    log_theta = model.module.decoders["rna"].log_theta
    assert log_theta.shape == (30,)
    assert log_theta.requires_grad
    model.train(max_epochs=3, seed=0, enable_progress_bar=False, enable_model_summary=False)
    module = model.module.eval()
    x = torch.as_tensor(mdata.mod["rna"].X.toarray(), dtype=torch.float32)
    # the dispersion of every gene with counts moved from its start (0) during training
    assert log_theta.detach()[x.sum(0) > 0].abs().min() > 0
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.as_tensor(
            mdata.obs["batch"].cat.codes.to_numpy().astype(np.int64).reshape(-1, 1)
        ),
        REGISTRY_KEYS.ATAC_KEY: torch.as_tensor(
            mdata.mod["atac"].X.toarray(), dtype=torch.float32
        ),
    }
    with torch.no_grad():
        _, gen, losses = module.forward(tensors, compute_loss=True)
        px = gen["rna"][MODULE_KEYS.PX_KEY]
        expected = -NegativeBinomial(mu=px.mu, theta=log_theta.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(losses.reconstruction_loss["rna"], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(px.theta.expand_as(x), log_theta.exp().expand_as(x))
