"""The GAN losses and the R1 penalty, checked against closed forms and finite differences."""

import math

import pytest
import torch

from ddgan.diffusion import losses
from ddgan.training.trainer import cosine_lr


def test_softplus_losses_closed_form():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    assert losses.d_loss_real(logits).item() == pytest.approx(sum(math.log1p(math.exp(-v)) for v in (-2, 0, 3)) / 3)
    assert losses.d_loss_fake(logits).item() == pytest.approx(sum(math.log1p(math.exp(v)) for v in (-2, 0, 3)) / 3)
    assert losses.g_loss(logits).item() == losses.d_loss_real(logits).item()


class TinyCritic(torch.nn.Module):
    """A smooth nonlinear critic of (x_t, t, x_{t+1}) with parameters, for checking R1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(2 * 3 * 4 * 4, dtype=torch.float64))

    def forward(self, x_t, t, x_next):
        h = torch.cat([x_t, x_next], 1).flatten(1)
        return torch.tanh(h * self.w).sum(1, keepdim=True) + 0.1 * t.double().unsqueeze(1)


def test_r1_matches_finite_differences():
    critic = TinyCritic()
    x_t = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    x_next, t = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    gamma = 0.7
    penalty = losses.gradient_penalty(critic(x_t, t, x_next).view(-1), x_t, gamma)

    # Finite-difference gradient of sum_i D(x_t[i]) with respect to x_t, element by element.
    eps, flat = 1e-6, x_t.detach().clone().flatten()
    grad = torch.zeros_like(flat)
    for k in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[k] += eps
        minus[k] -= eps
        f = lambda v: critic(v.view_as(x_t), t, x_next).sum().item()
        grad[k] = (f(plus) - f(minus)) / (2 * eps)
    expected = gamma / 2 * grad.view(2, -1).square().sum(1).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)

    # The penalty is differentiable in D's parameters (R1 trains D through a double backward).
    (dw,) = torch.autograd.grad(penalty, critic.w)
    assert torch.isfinite(dw).all() and dw.abs().sum() > 0


def test_r1_with_a_loss_scaler_is_the_unscaled_penalty():
    """fp16 runs take the inner gradient of the scaled sum; the penalty and its gradient must not change."""
    critic = TinyCritic()
    x_t = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    x_next, t = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    results = []
    for used in (None, scaler):
        penalty = losses.gradient_penalty(critic(x_t, t, x_next).view(-1), x_t, 0.7, used)
        (dw,) = torch.autograd.grad(penalty, critic.w)
        results.append((penalty, dw))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_cosine_schedule_endpoints():
    assert cosine_lr(1e-3, 1e-5, 0.0) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 1e-5, 0.5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_lr(1e-3, 1e-5, 1.0) == pytest.approx(1e-5)
    assert cosine_lr(1e-3, 1e-5, 7.0) == pytest.approx(1e-5)
