"""The torch module on raw tensor dicts (no AnnData)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Poisson

from scgenvae.distributions import BernoulliLogits
from scgenvae.module import ModalitySpec, MultiModalVAEModule
from scgenvae.nn import Dropout


def _tensors(n=16, n_genes=30, n_peaks=40, *, sparse=True):
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((n, n_genes), 2.0), generator=g)
    a = (torch.rand(n, n_peaks, generator=g) < 0.2).float()
    return {
        "X": x,
        "atac": a.to_sparse_csr() if sparse else a,
        "batch": torch.randint(0, 2, (n, 1), generator=g),
    }


@pytest.mark.parametrize("likelihood", ["poisson", "nb", "zinb"])
def test_single_modality_loss_is_finite_and_backpropagates(likelihood):
    mod = MultiModalVAEModule({"rna": ModalitySpec("X", 30, likelihood)}, n_batch=2, n_latent=4)
    t = _tensors()
    _, gen, loss = mod(t)
    assert loss.reconstruction_loss["rna"].shape == (16,)
    assert torch.isfinite(loss.loss)
    loss.loss.backward()
    grads = [p.grad for p in mod.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(gr).all() for gr in grads)
    assert any(gr.abs().sum() > 0 for gr in grads)


def test_poisson_rate_is_library_times_scale():
    mod = MultiModalVAEModule({"rna": ModalitySpec("X", 30, "poisson")}, n_latent=4)
    mod.eval()
    t = _tensors()
    inf, gen, _ = mod(t)
    px = gen["rna"]["px"]
    assert isinstance(px, Poisson)
    torch.testing.assert_close(px.scale.sum(-1), torch.ones(16))
    torch.testing.assert_close(px.rate.sum(-1), t["X"].sum(-1))


def test_sparse_and_dense_atac_give_the_same_loss():
    mods = {"rna": ModalitySpec("X", 30), "atac": ModalitySpec("atac", 40, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_batch=2, n_latent=4)
    mod.eval()
    torch.manual_seed(0)
    _, _, dense = mod(_tensors(sparse=False))
    torch.manual_seed(0)
    _, _, sparse = mod(_tensors(sparse=True))
    torch.testing.assert_close(dense.loss, sparse.loss)


def test_bernoulli_sparse_log_prob_matches_torch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=g)
    x = (torch.rand(5, 7, generator=g) < 0.3).float()
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    d = BernoulliLogits(logits)
    torch.testing.assert_close(d.log_prob_sum(x), ref)
    torch.testing.assert_close(d.log_prob_sum(x.to_sparse_csr()), ref)
    torch.testing.assert_close(d.log_prob_sum(x.to_sparse()), ref)


def test_product_of_experts_ignores_missing_modality():
    mods = {"rna": ModalitySpec("X", 30), "atac": ModalitySpec("atac", 40, "bernoulli")}
    mod = MultiModalVAEModule(mods, n_latent=4)
    mod.eval()
    t = _tensors(sparse=False)
    t["atac"][:4] = 0.0  # four cells without ATAC
    inf = mod.inference(**mod._get_inference_input(t))
    rna_only = mod.inference(**mod._get_inference_input(t), use_modalities=("rna",))
    torch.testing.assert_close(inf["qz"].loc[:4], rna_only["qz"].loc[:4])
    assert not torch.allclose(inf["qz"].loc[4:], rna_only["qz"].loc[4:])
    assert inf["observed"]["atac"][:4].sum() == 0


def test_transform_batch_changes_decoding_only_through_batch():
    mod = MultiModalVAEModule({"rna": ModalitySpec("X", 30)}, n_batch=2, n_latent=4)
    with torch.no_grad():
        for emb in mod.decoders["rna"].trunk.injections[0].embeddings:
            emb.weight.normal_()
    mod.eval()
    t = _tensors()
    inf = mod.inference(**mod._get_inference_input(t))
    gin = mod._get_generative_input(t, inf)
    a = mod.generative(**gin, transform_batch=torch.tensor([[0]]))["rna"]["px"].scale
    b = mod.generative(**gin, transform_batch=torch.tensor([[1]]))["rna"]["px"].scale
    assert not torch.allclose(a, b)
    gin["cat_covs"] = [torch.zeros(16, 1, dtype=torch.long)]
    c = mod.generative(**gin)["rna"]["px"].scale
    torch.testing.assert_close(a, c)


def test_sampled_bernoulli_likelihood_is_unbiased():
    from scgenvae.distributions import FactorisedBernoulli

    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 8, generator=g)
    w = torch.randn(500, 8, generator=g) * 0.3
    b = torch.randn(500, generator=g) - 3
    depth = torch.randn(6, 1, generator=g) * 0.2
    rd = torch.ones(500)
    px = FactorisedBernoulli(h, w, b, depth, rd)
    x = (torch.rand(6, 500, generator=g) < px.probs).float().to_sparse_csr()
    exact = px.log_prob_sum(x)
    torch.testing.assert_close(exact, BernoulliLogits(px.logits).log_prob_sum(x.to_dense()))
    torch.manual_seed(0)
    est = torch.stack([px.log_prob_sum(x, n_sampled=50) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(est, exact, rtol=0.01, atol=0.5)
    assert not torch.allclose(px.log_prob_sum(x, n_sampled=50), exact)


def test_loading_prior_as_weight_decay_equals_the_prior_in_the_loss():
    """One Adam step with the prior in the loss = one step with it as coupled weight decay."""
    from scgenvae.model._plan import fused_adam

    mods = {"rna": ModalitySpec("X", 30), "atac": ModalitySpec("atac", 40, "bernoulli")}
    t = _tensors()
    params = {}
    for in_loss in (True, False):
        torch.manual_seed(0)
        mod = MultiModalVAEModule(mods, n_batch=2, n_latent=4, loading_prior_sd=0.1, n_obs=50)
        decay = {} if in_loss else {id(p): c for p, c in mod.loading_prior_decay()}
        opt = fused_adam(mod.parameters(), lr=0.1, extra_decay=decay)
        torch.manual_seed(1)
        _, _, loss = mod(t, loss_kwargs={"loading_prior_in_loss": in_loss})
        assert ("loading_prior" in loss.extra_metrics) == in_loss
        loss.loss.backward()
        opt.step()
        params[in_loss] = mod.decoders["atac"].head.weight.detach().clone()
    ((_, coef),) = MultiModalVAEModule(
        mods, n_latent=4, loading_prior_sd=0.1, n_obs=50
    ).loading_prior_decay()
    assert coef == pytest.approx(1 / (0.1**2 * 50))
    torch.testing.assert_close(params[True], params[False])
    # and the prior does change the step (the test would pass trivially otherwise)
    torch.manual_seed(0)
    mod = MultiModalVAEModule(mods, n_batch=2, n_latent=4)
    opt = fused_adam(mod.parameters(), lr=0.1)
    torch.manual_seed(1)
    mod(t)[2].loss.backward()
    opt.step()
    assert not torch.allclose(mod.decoders["atac"].head.weight, params[True])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_zeroes_a_fraction_p_and_keeps_the_mean(p):
    drop = Dropout(p)
    x = torch.ones(512, 257)  # an odd width: the mask is cut from whole 64-bit draws
    torch.manual_seed(0)
    y = drop(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - drop.effective_p)))
    assert abs(y.double().mean().item() - 1.0) < 0.02
    assert abs(drop.effective_p - p) < 2**-16
    # the columns of the mask are independent draws (no lane repeats another)
    assert not torch.equal(y[:, 0], y[:, 1])
    torch.manual_seed(0)
    torch.testing.assert_close(drop(x), y)  # global generator: seeded runs repeat
    drop.eval()
    assert drop(x) is x


def test_dropout_gradient_is_the_mask():
    drop = Dropout(0.3)
    x = torch.randn(64, 32, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / (1 - drop.effective_p))


def test_dropout_rejects_bad_rates():
    with pytest.raises(ValueError, match="dropout_rate"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="dropout_rate"):
        Dropout(-0.1)
