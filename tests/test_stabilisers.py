"""The stabilisers later GAN work proved, as options of the trainer: the relativistic pairing loss with R1 and R2
(R3GAN) and adaptive augmentation of D's pairs (ADA). Each is off in every published preset."""

import math

import pytest
import torch

from ddgan.config import PRESETS, make_config
from ddgan.diffusion import losses
from ddgan.models import checkpoint
from ddgan.training import augment
from ddgan.training.augment import AdaptiveAugment, augment_pairs
from tests.helpers import assert_resumes_exactly, tiny


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_relativistic_losses_by_hand():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    # D: softplus(-(r - f)) per pair, averaged; G: softplus(-(f - r)).
    d = (softplus(-(2.0 - 0.5)) + softplus(-(-1.0 - 1.0))) / 2
    g = (softplus(-(0.5 - 2.0)) + softplus(-(1.0 + 1.0))) / 2
    assert losses.d_loss_relativistic(real, fake).item() == pytest.approx(d, rel=1e-6)
    assert losses.g_loss_relativistic(fake, real).item() == pytest.approx(g, rel=1e-6)
    # Shifting every logit by the same amount changes nothing: only the pairs' differences count.
    assert losses.d_loss_relativistic(real + 7, fake + 7).item() == pytest.approx(d, rel=1e-6)


def test_r2_is_the_gradient_penalty_on_fakes_as_autograd_computes_it():
    torch.manual_seed(0)
    weight = torch.randn(1, 3, 4, 4)
    fakes = torch.randn(5, 3, 4, 4, requires_grad=True)

    def critic(x):
        return (torch.tanh(x) * weight).flatten(1).sum(1)

    gamma = 0.3
    penalty = losses.gradient_penalty(critic(fakes), fakes, gamma)
    (grad,) = torch.autograd.grad(critic(fakes).sum(), fakes)
    assert penalty.item() == pytest.approx(gamma / 2 * grad.square().flatten(1).sum(1).mean().item(), rel=1e-5)
    by_hand = weight * (1 - torch.tanh(fakes.detach()) ** 2)  # d tanh = 1 - tanh^2
    assert penalty.item() == pytest.approx(gamma / 2 * by_hand.square().flatten(1).sum(1).mean().item(), rel=1e-5)
    penalty.backward()  # differentiable for D's update
    assert fakes.grad is not None and torch.isfinite(fakes.grad).all()


def test_ada_p_rises_while_d_separates_and_falls_otherwise():
    ada = AdaptiveAugment(target=0.6, speed_kimg=1.0, batch_images=50)
    step = 50 * augment.INTERVAL / 1000  # 0.2 per adjustment
    for _ in range(augment.INTERVAL):
        ada.observe(torch.tensor([3.0, 1.0, 2.0, -1.0]))  # r_t = 0.5: below the target
    assert ada.p == 0.0 and ada.last_rt == 0.5  # p cannot go below 0
    for _ in range(2 * augment.INTERVAL):
        ada.observe(torch.tensor([3.0, 1.0, 2.0, 0.5]))  # every real pair called real: r_t = 1
    assert ada.p == pytest.approx(2 * step) and ada.last_rt == 1.0
    for _ in range(augment.INTERVAL - 1):
        ada.observe(torch.tensor([-1.0, -2.0]))
    assert ada.p == pytest.approx(2 * step)  # adjusted every INTERVAL steps only
    ada.observe(torch.tensor([-1.0, -2.0]))
    assert ada.p == pytest.approx(step)
    for _ in range(20 * augment.INTERVAL):
        ada.observe(torch.ones(3))
    assert ada.p == augment.MAX_P  # never past the point where augmentations leak
    again = AdaptiveAugment(target=0.6, speed_kimg=1.0, batch_images=50)
    again.load_state_dict(ada.state_dict())
    assert again.p == ada.p and again.steps == ada.steps


def test_both_images_of_a_pair_get_the_same_augmentation():
    torch.manual_seed(1)
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    out, out_next = augment_pairs(x, x.clone(), 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(out, out_next)  # the same transform for x_t and x_{t+1}
    changed = (out - x).flatten(1).abs().amax(1) > 1e-6
    assert changed.all()  # at p = 1 every pair is transformed, each by its own draw
    assert not torch.allclose(out[0] - x[0], out[1] - x[1])
    same, _ = augment_pairs(x, x, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(same, x)  # p = 0: nothing changes
    # A pair of two different images: a geometric transform moves both alike.
    gradient = torch.arange(64.0).view(1, 1, 8, 8).expand(4, 3, 8, 8) / 63
    a, b = augment_pairs(gradient, 1 - gradient, 1.0, torch.Generator().manual_seed(5))
    order_a = a.mean(1).flatten(1).argsort(1)
    order_b = (1 - b).mean(1).flatten(1).argsort(1)
    assert torch.equal(order_a, order_b)
    # Gradients reach the pixels (G learns through D's augmented view of its fakes).
    fake = x.clone().requires_grad_(True)
    augment_pairs(fake, x, 1.0, torch.Generator().manual_seed(3))[0].sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_every_published_preset_keeps_the_stabilisers_off():
    for name in PRESETS:
        config = make_config(name, **({"autoencoder": "x"} if name.endswith("_latent") else {}))
        assert (config.loss, config.r2_gamma, config.ada_target) == ("ns", 0.0, 0.0), name


def test_ada_is_refused_where_d_sees_no_images(tmp_path):
    with pytest.raises(ValueError, match="--ada_target augments images"):
        make_config("cifar10_wavelet", ada_target=0.6)


@pytest.mark.slow
def test_exact_resume_with_every_stabiliser_on(tmp_path):
    config = tiny("demo", tmp_path, loss="relativistic", r1_gamma=0.2, r2_gamma=0.2, lazy_reg=2, ada_target=0.05,
                  ada_kimg=0.05, kimg=0.04, cond=True)  # 10 steps of 4 images; p moves every 4 steps
    whole = assert_resumes_exactly(config, stop_after=5, total_steps=10)
    state = checkpoint.load(whole)
    assert state["config"]["loss"] == "relativistic" and state["config"]["ada_target"] == 0.05
    assert 0 < state["augment"]["p"] <= augment.MAX_P
    resumed = checkpoint.load(sorted(tmp_path.glob("*/ckpt-*.pt"))[-1])
    assert resumed["augment"]["p"] == state["augment"]["p"]
    assert torch.equal(resumed["augment"]["signs"], state["augment"]["signs"])
