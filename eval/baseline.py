"""The original implementation's CPU path, kept only as a benchmark baseline.

Three parts of the original's cost are reproduced at equal numerics:
- resampling: its `upfirdn2d_native` runs the FIR filter as one single-channel convolution over an
  (N*C, 1, H, W) view of the activations, after materialising the inserted zeros; its numbers equal
  ours, its backward is far slower on the CPU. `original_resampling()` swaps it in for `ops.upfirdn2d`'s
  reference path.
- AdaGN: the original adds the time bias, normalises, scales, shifts and applies SiLU as five eager passes,
  where our CPU kernel makes one; `original_ops()` swaps them in, with its resampling.
- the iteration: its `train_ddgan.py` builds G's graph in the D step (D's fake loss backpropagates into
  G, whose gradients are then zeroed), runs the real loss and the R1 penalty as two backward passes,
  always asks for the gradient of the real x_t, and steps Adam and the EMA parameter by parameter (on
  the CPU torch's Adam does not default to its foreach kernels). `run_original_iteration()` does that
  work on a `Trainer`'s state and ends in the same state as `Trainer.run_iteration`.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

import ops.adaptive_group_norm as adaptive_group_norm_module
import ops.upfirdn2d as upfirdn2d_module
from ddgan.diffusion import losses


def single_channel_upfirdn2d(x, f, up, down, padding, flip_filter, gain) -> torch.Tensor:
    """upfirdn2d as the original's CPU path computes it: zeros inserted, then a 1-channel conv over N*C images."""
    n, c, h, w = x.shape
    (upx, upy), (downx, downy) = up, down
    f = torch.ones([1, 1]) if f is None else f
    f = f.to(dtype=x.dtype, device=x.device)
    f = f.ger(f) if f.ndim == 1 else f
    x = x.reshape(n * c, 1, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n * c, 1, h * upy, w * upx)
    x = upfirdn2d_module._pad_or_crop(x, padding)
    weight = f if flip_filter else f.flip([0, 1])  # conv2d cross-correlates
    x = F.conv2d(x, (weight * gain)[None, None])
    x = x[:, :, ::downy, ::downx]
    return x.reshape(n, c, x.shape[2], x.shape[3])


@contextmanager
def original_resampling():
    """Within the block, the networks resample the original implementation's way (same numbers, its cost)."""
    saved = upfirdn2d_module._upfirdn2d_ref
    upfirdn2d_module._upfirdn2d_ref = single_channel_upfirdn2d
    try:
        yield
    finally:
        upfirdn2d_module._upfirdn2d_ref = saved


def eager_adaptive_group_norm(x, num_groups: int, gamma, beta, bias, eps: float, act: str) -> torch.Tensor:
    """AdaGN as the original computes it: each step its own eager op."""
    if bias is not None:
        x = x + bias[:, :, None, None]
    y = gamma[:, :, None, None] * F.group_norm(x, num_groups, eps=eps) + beta[:, :, None, None]
    return F.silu(y) if act == "silu" else y


@contextmanager
def original_adaptive_group_norm():
    """Within the block, AdaGN runs as the original's eager ops, never our CPU kernel (same numbers, its cost)."""
    saved = adaptive_group_norm_module._kernel_applies, adaptive_group_norm_module._adaptive_group_norm_ref
    adaptive_group_norm_module._kernel_applies = lambda *args: False
    adaptive_group_norm_module._adaptive_group_norm_ref = eager_adaptive_group_norm
    try:
        yield
    finally:
        adaptive_group_norm_module._kernel_applies, adaptive_group_norm_module._adaptive_group_norm_ref = saved


@contextmanager
def original_ops():
    """Within the block, resampling and AdaGN run the original's way."""
    with ExitStack() as stack:
        stack.enter_context(original_resampling())
        stack.enter_context(original_adaptive_group_norm())
        yield


@contextmanager
def per_parameter_adam(*optimizers: torch.optim.Optimizer):
    """Within the block the optimizers step one parameter at a time, as torch's Adam does by default on the CPU."""
    saved = [[(group.get("foreach"), group.get("fused")) for group in opt.param_groups] for opt in optimizers]
    for opt in optimizers:
        for group in opt.param_groups:
            group["foreach"], group["fused"] = False, False
    try:
        yield
    finally:
        for opt, flags in zip(optimizers, saved, strict=True):
            for group, (foreach, fused) in zip(opt.param_groups, flags, strict=True):
                group["foreach"], group["fused"] = foreach, fused


def run_original_iteration(trainer, x0: torch.Tensor) -> dict:
    """One iteration doing the original's work (fp32, one process); same draws and result as `trainer.run_iteration`."""
    if trainer.amp_dtype is not None or trainer.context.distributed:
        raise ValueError("the original-iteration baseline is the fp32 single-process path: use --amp=none, one process")
    c, G, D = trainer.config, trainer.G, trainer.D
    x0 = trainer.prepare_batch(x0)
    trainer.set_learning_rates()

    with per_parameter_adam(trainer.opt_D, trainer.opt_G):
        D.requires_grad_(True)
        trainer.opt_D.zero_grad(set_to_none=True)
        t, x_t, x_next = trainer._random_pairs(x0)
        x_t.requires_grad_(True)
        real_logits = D(x_t, t, x_next).view(-1)
        loss_real = losses.d_loss_real(real_logits)
        loss_real.backward(retain_graph=True)
        if trainer.r1_due():
            losses.gradient_penalty(real_logits, x_t, c.r1_gamma).backward()
        x_fake = trainer._fake_sample(G, x_next, t, ())[0].sample  # with G's graph, as the original builds it
        loss_fake = losses.d_loss_fake(D(x_fake, t, x_next).view(-1))
        loss_fake.backward()
        trainer.opt_D.step()

        D.requires_grad_(False)
        trainer.opt_G.zero_grad(set_to_none=True)
        t, _, x_next = trainer._random_pairs(x0)
        x_fake = trainer._fake_sample(G, x_next, t, ())[0].sample
        loss_G = losses.g_loss(D(x_fake, t, x_next).view(-1))
        loss_G.backward()
        trainer.opt_G.step()

    decay = c.ema_decay if c.use_ema else 0.0
    with torch.no_grad():
        for ema, param in zip(trainer.G_ema.parameters(), G.parameters(), strict=True):
            ema.mul_(decay).add_(param, alpha=1.0 - decay)
        for ema_buffer, buffer in zip(trainer.G_ema.buffers(), G.buffers(), strict=True):
            ema_buffer.copy_(buffer)
    trainer.step += 1
    trainer.images_seen += x0.shape[0]
    return {"loss/D": (loss_real + loss_fake).detach(), "loss/G": loss_G.detach()}
