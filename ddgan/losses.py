"""The adversarial losses of DDGAN: non-saturating GAN loss on denoising pairs and the R1 penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss_real(logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(real pair)), averaged: pushes D's logits on q's pairs up."""
    return F.softplus(-logits.float()).mean()


def d_loss_fake(logits: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake pair)), averaged: pushes D's logits on generated pairs down."""
    return F.softplus(logits.float()).mean()


def g_loss(logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss softplus(-D(fake pair)), averaged."""
    return F.softplus(-logits.float()).mean()


def reconstruction(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of G's x'_0 against the real x_0 (WaveDiff's --rec_loss)."""
    return F.l1_loss(x0_pred.float(), x0.float())


def r1_penalty(logits: torch.Tensor, x_t: torch.Tensor, gamma: float,
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """gamma/2 * E ||grad_{x_t} D(x_t, t, x_{t+1})||^2 on real pairs, differentiable for D's update.

    With an enabled (fp16) scaler the inner backward runs on the scaled sum, so that small fp16
    gradients do not underflow, and the gradient is unscaled before it is squared.
    """
    total = logits.float().sum()
    if scaler is not None and scaler.is_enabled():
        (scaled_grad,) = torch.autograd.grad(scaler.scale(total), x_t, create_graph=True)
        grad = scaled_grad.float() / scaler.get_scale()  # a host sync, on fp16 R1 steps only
    else:
        (grad,) = torch.autograd.grad(total, x_t, create_graph=True)
    return gamma / 2 * grad.float().square().flatten(1).sum(1).mean()
