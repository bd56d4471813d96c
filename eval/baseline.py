"""The original implementation's CPU resampling, kept only as a benchmark baseline.

The original's `upfirdn2d_native` runs the FIR filter as one single-channel convolution over an
(N*C, 1, H, W) view of the activations, after materialising the inserted zeros. Its numbers equal ours;
its cost does not (its backward is far slower on the CPU). `original_resampling()` swaps it in for
`ops.upfirdn2d`'s reference path, so `ddgan bench --baseline=original` times the same networks the way
the original code runs them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

import ops.upfirdn2d as upfirdn2d_module


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
