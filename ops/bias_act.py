"""Fused bias + activation + gain + clamp: y = clamp(gain * act(x + b), -clamp, clamp).

Two implementations share one interface: a plain PyTorch reference (differentiable to any order by
autograd) and a fused CUDA kernel. The kernel's autograd Function recomputes everything it needs from the
saved input, and its gradient is itself a Function, so double backward (R1 penalty) works.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ops import custom_ops


@dataclass(frozen=True)
class ActivationSpec:
    """How bias_act computes one activation: its function, default slope and gain, and CUDA kernel id."""

    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    cuda_idx: int


# Gains of sqrt(2) keep the second moment of ReLU-like activations of unit-variance inputs at 1. The
# smooth activations default to gain 1 (unlike StyleGAN's table) because NCSN++ uses plain SiLU.
# `alpha` is the negative slope of lrelu and is ignored by the others.
ACTIVATIONS: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, alpha: x, 0.0, 1.0, 1),
    "relu": ActivationSpec(lambda x, alpha: F.relu(x), 0.0, math.sqrt(2), 2),
    "lrelu": ActivationSpec(lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2), 3),
    "tanh": ActivationSpec(lambda x, alpha: torch.tanh(x), 0.0, 1.0, 4),
    "sigmoid": ActivationSpec(lambda x, alpha: torch.sigmoid(x), 0.0, 1.0, 5),
    "elu": ActivationSpec(lambda x, alpha: F.elu(x), 0.0, 1.0, 6),
    "selu": ActivationSpec(lambda x, alpha: F.selu(x), 0.0, 1.0, 7),
    "softplus": ActivationSpec(lambda x, alpha: F.softplus(x), 0.0, 1.0, 8),
    "silu": ActivationSpec(lambda x, alpha: F.silu(x), 0.0, 1.0, 9),
    "swish": ActivationSpec(lambda x, alpha: F.silu(x), 0.0, 1.0, 9),
}


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "cuda",
) -> torch.Tensor:
    """Add bias b along `dim`, apply `act`, scale by `gain` and clip to [-clamp, clamp]."""
    spec = _activation(act)
    _check_args(x, b, dim, clamp)
    dim = dim % x.ndim
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp) if clamp is not None else -1.0
    if (custom_ops.use_plugin(x, impl) and custom_ops.get_plugin() is not None
            and custom_ops.self_checked("bias_act", x, _self_check_runs)):
        if b is None:
            b = x.new_empty([0])
        return _bias_act_cuda(dim, act, alpha, gain, clamp).apply(x, b)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _activation(act: str) -> ActivationSpec:
    """Look up an activation by name."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
    return ACTIVATIONS[act]


def _check_args(x: torch.Tensor, b: torch.Tensor | None, dim: int, clamp: float | None) -> None:
    """Validate the tensor, bias, dim and clamp arguments."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be in [{-x.ndim}, {x.ndim - 1}] for a {x.ndim}-D x, got {dim}")
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(
                f"b must be 1-D with x.shape[dim] = {x.shape[dim]} entries, got shape {tuple(b.shape)}"
            )
    if clamp is not None and clamp < 0:
        raise ValueError(f"clamp must be >= 0 or None, got {clamp}")


def _bias_act_ref(x, b, dim: int, spec: ActivationSpec, alpha: float, gain: float, clamp: float):
    """Reference bias_act from differentiable PyTorch ops."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------------------
# CUDA implementation.


def _sum_to_bias(dx: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor | None:
    """Reduce a gradient w.r.t. x+b to the gradient w.r.t. b."""
    if b.numel() == 0:
        return None
    dims = [i for i in range(dx.ndim) if i != dim]
    return dx.sum(dims).to(b.dtype)


@functools.cache
def _bias_act_cuda(dim: int, act: str, alpha: float, gain: float, clamp: float):
    """Autograd Functions (cached per configuration) running bias_act with the fused CUDA kernel."""
    spec = ACTIVATIONS[act]
    # A linear unclamped op needs nothing from the forward pass to compute its gradient.
    needs_x = act != "linear" or clamp >= 0

    def kernel(x, b, dy, grad: int):
        """Run the kernel: grad=0 gives y, 1 gives dy * dy/dx, 2 gives dy * d2y/dx2."""
        plugin = custom_ops.get_plugin()
        return plugin.bias_act(x, b, dy, grad, dim, spec.cuda_idx, alpha, gain, clamp)

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            y = kernel(x, b, x.new_empty([0]), 0)
            ctx.save_for_backward(x if needs_x else x.new_empty([0]), b)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, b = ctx.saved_tensors
            dx = BiasActGradCuda.apply(dy, x, b)
            db = _sum_to_bias(dx, b, dim) if ctx.needs_input_grad[1] else None
            return dx, db

    class BiasActGradCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, b):
            dx = kernel(x, b, dy, 1) if needs_x else dy * gain
            ctx.save_for_backward(dy if needs_x else dy.new_empty([0]), x, b)
            return dx

        @staticmethod
        @once_differentiable  # the curvature kernel has no derivative of its own: third order raises
        def backward(ctx, d_dx):
            dy, x, b = ctx.saved_tensors
            d_dy = BiasActGradCuda.apply(d_dx, x, b) if ctx.needs_input_grad[0] else None
            d_x = d_b = None
            if needs_x and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                # Curvature term: only non-linear activations have one; the clamp's mask is flat.
                d_x = kernel(x, b, d_dx * dy, 2)
                d_b = _sum_to_bias(d_x, b, dim) if ctx.needs_input_grad[2] else None
            return d_dy, d_x, d_b

    return BiasActCuda


# The activations the networks run (SiLU in G, leaky ReLU in D), with a bias along the channels.
SELF_CHECK_ACTIVATIONS = ("silu", "lrelu")


def _self_check_runs(like: torch.Tensor) -> custom_ops.CheckRuns:
    """The kernel's and the reference's outputs and gradients (x and b) on a small input of like's kind."""
    generator = torch.Generator().manual_seed(0)  # its own stream: the caller's random numbers stay as they were
    z = torch.randn([2, 4, 3, 3], generator=generator)
    z += 0.1 * torch.sign(z)  # x + b kept off the kink at 0, where rounding may rightly pick either side
    b = torch.randn([4], generator=generator)
    dy = torch.randn([2, 4, 3, 3], generator=generator)
    memory_format = torch.channels_last if custom_ops.is_channels_last(like) else torch.contiguous_format

    def placed(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=like.device, dtype=like.dtype).contiguous(memory_format=memory_format)

    x, dy, b = placed(z - b[:, None, None]), placed(dy), b.to(device=like.device, dtype=like.dtype)

    def run(kernel: bool) -> list[torch.Tensor]:
        results = []
        for act in SELF_CHECK_ACTIVATIONS:
            spec = ACTIVATIONS[act]
            x_in, b_in = x.detach().requires_grad_(), b.detach().requires_grad_()
            if kernel:
                y = _bias_act_cuda(1, act, spec.def_alpha, spec.def_gain, -1.0).apply(x_in, b_in)
            else:
                y = _bias_act_ref(x_in, b_in, 1, spec, spec.def_alpha, spec.def_gain, -1.0)
            # A scalar's gradient, not grad(y, ..., dy): torch imports sympy (0.5 s) on its first given dy.
            results += [y, *torch.autograd.grad((y * dy).sum(), (x_in, b_in))]
        return results

    return functools.partial(run, True), functools.partial(run, False)
