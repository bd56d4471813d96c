"""The adversarial losses of DDGAN: the non-saturating GAN loss on denoising pairs (the original's), the
relativistic pairing loss (RpGAN, as R3GAN trains with it), and the zero-centred gradient penalties R1 (on real
pairs) and R2 (on fake ones)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("ns", "relativistic")


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


def reconstruction_weight(schedule: str, progress: float, weight: float = 1.0) -> float:
    """The weight of the --rec_loss term at `progress` (0 to 1) through the run: `weight`, or LDDGAN's sigmoid.

    LDDGAN weighs it by 1 - sigmoid(beta[epoch]), beta = linspace(-6, 6, epochs + 1): near 1 at first, 1/2 at
    half time, near 0 at the end, so G first learns to reconstruct and then only to fool D. Here beta runs
    over the images seen, so the weight does not depend on the data's size or the batch.
    """
    if schedule == "constant":
        return weight
    if schedule != "sigmoid":
        raise ValueError(f"--rec_loss_schedule must be constant or sigmoid, got {schedule!r}")
    beta = -6.0 + 12.0 * min(max(progress, 0.0), 1.0)
    return weight * (1.0 - 1.0 / (1.0 + math.exp(-beta)))


def d_loss_relativistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-(D(real pair) - D(fake pair))), averaged over pairs: D ranks each real pair above its fake."""
    return F.softplus(fake_logits.float() - real_logits.float()).mean()


def g_loss_relativistic(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-(D(fake pair) - D(real pair))), averaged: G raises each fake pair above its real one."""
    return F.softplus(real_logits.float() - fake_logits.float()).mean()


def gradient_penalty(logits: torch.Tensor, inputs: torch.Tensor, gamma: float,
                     scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """gamma/2 * E ||grad_{inputs} D||^2, differentiable for D's update: R1 with real pairs' x_t, R2 with fake ones'.

    With an enabled (fp16) scaler the inner backward runs on the scaled sum, so that small fp16
    gradients do not underflow, and the gradient is unscaled before it is squared.
    """
    total = logits.float().sum()
    if scaler is not None and scaler.is_enabled():
        (scaled_grad,) = torch.autograd.grad(scaler.scale(total), inputs, create_graph=True)
        grad = scaled_grad.float() / scaler.get_scale()  # a host sync, on fp16 penalty steps only
    else:
        (grad,) = torch.autograd.grad(total, inputs, create_graph=True)
    return gamma / 2 * grad.float().square().flatten(1).sum(1).mean()


def class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of D's class head against the labels (--class_loss, AC-GAN), averaged."""
    return F.cross_entropy(class_logits.float(), labels)
