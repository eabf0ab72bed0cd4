"""The thread count of training and inference is chosen from measured step times."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scgenvae
from scgenvae._threads import ThreadTuner, restore_threads


def idle() -> float:
    return 1.0  # this process alone


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def _threads_back():
    with restore_threads():
        yield


def _steps(tuner, clock, cost, n):
    used = []
    for step in range(n):
        tuner.before_step()
        threads = torch.get_num_threads()
        used.append(threads)
        clock.t += cost(threads, step)
        tuner.after_step()
    return used


def test_busy_node_keeps_one_thread_after_a_single_slow_step():
    # measured: 2 threads beside a busy process were 17x slower than 1
    clock = FakeClock()
    tuner = ThreadTuner((1, 2), load=idle, clock=clock, reprobe_s=30.0)
    used = _steps(tuner, clock, lambda th, _: 0.01 if th == 1 else 0.17, 400)
    assert tuner.chosen == 1
    assert used[:2] == [1, 1]  # the warm-up runs with the fewest threads
    # the hopeless count is dropped after one probe step, and tried again only after a backoff
    assert used.count(2) <= 2
    assert sum(0.17 for th in used if th == 2) < 0.1 * sum(0.01 for th in used if th == 1)


def test_idle_node_uses_the_cores_when_they_are_faster():
    clock = FakeClock()
    tuner = ThreadTuner((1, 2), load=idle, clock=clock)
    used = _steps(tuner, clock, lambda th, _: 0.016 if th == 1 else 0.010, 200)
    assert tuner.chosen == 2
    assert used.count(2) > 0.9 * len(used)


def test_more_threads_must_be_clearly_faster():
    clock = FakeClock()
    tuner = ThreadTuner((1, 2), load=idle, clock=clock)
    _steps(tuner, clock, lambda th, _: 0.010 if th == 1 else 0.0095, 50)
    assert tuner.chosen == 1  # 5% is within the noise: the fewer threads are kept


def test_a_node_that_becomes_busy_is_noticed_within_a_few_steps():
    clock = FakeClock()
    tuner = ThreadTuner(
        (1, 2), load=idle, clock=clock, reprobe_s=1e9
    )  # only the slowdown can trigger

    def cost(threads, step):
        if step < 100:
            return 0.016 if threads == 1 else 0.010
        return 0.020 if threads == 1 else 0.300  # another process started

    used = _steps(tuner, clock, cost, 150)
    assert used[90:100] == [2] * 10
    assert used[-30:] == [1] * 30
    assert used[100:].count(2) <= 10


def test_a_node_that_becomes_idle_is_noticed_at_the_next_probe():
    clock = FakeClock()
    tuner = ThreadTuner((1, 2), load=idle, clock=clock, reprobe_s=1.0)

    def cost(threads, step):
        if step < 200:
            return 0.010 if threads == 1 else 0.200
        return 0.016 if threads == 1 else 0.010

    used = _steps(tuner, clock, cost, 2000)
    assert used[-50:] == [2] * 50


def test_a_loaded_node_is_not_probed_with_more_threads():
    # another process keeps one of two cores busy: the 1-minute load is 2 with ours
    clock = FakeClock()
    tuner = ThreadTuner((1, 2), clock=clock, reprobe_s=1.0, load=lambda: 2.0)
    used = _steps(tuner, clock, lambda th, _: 0.01 if th == 1 else 0.17, 1000)
    assert used == [1] * 1000


def test_more_threads_are_probed_once_the_load_drops():
    clock = FakeClock()
    load = {"value": 2.0}
    tuner = ThreadTuner((1, 2), clock=clock, reprobe_s=1.0, load=lambda: load["value"])

    def cost(threads, step):
        if step == 300:
            load["value"] = 1.0  # the other process ended
        return 0.016 if threads == 1 else 0.010

    used = _steps(tuner, clock, cost, 800)
    assert set(used[:300]) == {1}
    assert tuner.chosen == 2
    assert used[-100:].count(2) >= 90  # the rest: re-probes of one thread every second


def test_fixed_count_is_used_as_given():
    clock = FakeClock()
    tuner = ThreadTuner((2,), load=idle, clock=clock)
    used = _steps(tuner, clock, lambda th, _: 0.01 if th == 1 else 1.0, 20)
    assert used == [2] * 20


def test_candidates_are_checked():
    with pytest.raises(ValueError, match="positive integers"):
        ThreadTuner((0, 2))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_num_threads_setting_is_checked(bad):
    with pytest.raises(ValueError, match="settings.num_threads"):
        scgenvae.settings.num_threads = bad


def test_training_uses_the_fixed_count_and_restores_torchs(adata, monkeypatch):
    from scgenvae.model import _callbacks

    seen = []
    original = _callbacks.ThreadTuning.on_train_batch_end

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_callbacks.ThreadTuning, "on_train_batch_end", spy)
    monkeypatch.setattr(scgenvae.settings, "_num_threads", 2)
    torch.set_num_threads(1)
    scgenvae.model.PoissonVAE.setup_anndata(adata)
    model = scgenvae.model.PoissonVAE(adata, n_latent=2, n_hidden=8)
    model.train(max_epochs=2, batch_size=16, enable_progress_bar=False)
    assert seen
    assert set(seen) == {2}
    assert torch.get_num_threads() == 1
    assert np.isfinite(model.get_latent_representation()).all()
    assert torch.get_num_threads() == 1
