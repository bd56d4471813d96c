"""Upsample, FIR-filter and downsample 2-D feature maps in one operation (upfirdn2d).

upfirdn2d(x) = downsample(convolve(pad(upsample(x)), f)): the resampling step of the NCSN++ generator
and the discriminators. Two implementations share one interface: a plain PyTorch reference (grouped
convolutions, differentiable to any order by autograd) and a fused CUDA kernel whose autograd Function
computes its gradient with the same kernel, so that double backward (R1 penalty) still works.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ops import custom_ops

IntPair = int | Sequence[int]
CPU = torch.device("cpu")
LOW_PRECISION = (torch.bfloat16, torch.float16)

# ---------------------------------------------------------------------------------------------------------
# Argument parsing.


def _parse_scaling(scaling: IntPair, name: str) -> tuple[int, int]:
    """Turn `up` / `down` (int or (x, y)) into (sx, sy), each at least 1."""
    sx, sy = _as_pair(scaling, name)
    if sx < 1 or sy < 1:
        raise ValueError(f"{name} must be >= 1 along both axes, got {scaling!r}")
    return sx, sy


def _parse_padding(padding: IntPair) -> tuple[int, int, int, int]:
    """Turn `padding` (int, (x, y) or (x0, x1, y0, y1)) into (x0, x1, y0, y1)."""
    if isinstance(padding, int | np.integer):
        return (int(padding),) * 4
    values = [int(p) for p in padding]
    if len(values) == 2:
        px, py = values
        return px, px, py, py
    if len(values) == 4:
        return values[0], values[1], values[2], values[3]
    raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding!r}")


def _as_pair(value: IntPair, name: str) -> tuple[int, int]:
    """Turn an int or a length-2 sequence into an (x, y) pair of ints."""
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    values = [int(v) for v in value]
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or an (x, y) pair, got {value!r}")
    return values[0], values[1]


def _as_filter(f) -> torch.Tensor | None:
    """Accept a filter as a tensor, array or nested list."""
    if f is None or isinstance(f, torch.Tensor):
        return f
    return torch.as_tensor(f, dtype=torch.float32)


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """Return (width, height) of a 1-D (separable) or 2-D filter; an absent filter is 1x1."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"f must be a 1-D (separable) or 2-D filter, got {f.ndim} dimensions")
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


def _check_input(x: torch.Tensor) -> None:
    """Require an NCHW tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a 4-D NCHW tensor, got {shape}")


def _output_size(size: int, up: int, down: int, pad0: int, pad1: int, taps: int) -> int:
    """Length of one axis after upsampling, padding, valid filtering and downsampling."""
    return (size * up + pad0 + pad1 - taps) // down + 1


def _check_output_size(x, f, up, down, padding) -> tuple[int, int]:
    """Return the output (height, width), raising if either would be empty."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = padding
    ow = _output_size(x.shape[3], up[0], down[0], px0, px1, fw)
    oh = _output_size(x.shape[2], up[1], down[1], py0, py1, fh)
    if ow < 1 or oh < 1:
        raise ValueError(
            f"padding {padding} leaves an empty output for input {tuple(x.shape[2:])}, up={up}, "
            f"down={down} and a {fh}x{fw} filter; use less negative padding"
        )
    return oh, ow


def _kernel_can_index(x_shape, out_h: int, out_w: int) -> bool:
    """Whether every tensor the kernel touches (input, two-pass intermediate, output, gradients) has < 2^31 elements."""
    n, c, h, w = x_shape
    return n * c * max(h, out_h) * max(w, out_w) < 2**31


# ---------------------------------------------------------------------------------------------------------
# Filters.


def setup_filter(
    f,
    device: torch.device = CPU,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Make a float32 FIR filter from a list/array/tensor: normalised, scaled; 1-D stays separable."""
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2):
        raise ValueError(f"f must be a 1-D or 2-D filter, got {f.ndim} dimensions")
    if f.numel() == 0:
        raise ValueError("f must have at least one tap")
    if separable is None:
        separable = f.ndim == 1
    if f.ndim == 1 and separable is False:
        f = f.ger(f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    # A separable filter is applied twice, so each pass carries the square root of the gain.
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ---------------------------------------------------------------------------------------------------------
# Public operations.


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: IntPair = 1,
    down: IntPair = 1,
    padding: IntPair = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with f and keep every down-th sample of an NCHW tensor."""
    _check_input(x)
    f = _as_filter(f)
    _filter_size(f)
    up_xy = _parse_scaling(up, "up")
    down_xy = _parse_scaling(down, "down")
    pad = _parse_padding(padding)
    out_h, out_w = _check_output_size(x, f, up_xy, down_xy, pad)
    if (custom_ops.use_plugin(x, impl) and (f is None or not f.requires_grad)
            and _kernel_can_index(x.shape, out_h, out_w)):
        plugin = custom_ops.get_plugin()
        if plugin is not None and custom_ops.self_checked("upfirdn2d", x, _self_check_runs):
            if f is None:
                f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
            return _upfirdn2d_cuda(up_xy, down_xy, pad, bool(flip_filter), float(gain)).apply(x, f)
    return _upfirdn2d_ref(x, f, up_xy, down_xy, pad, flip_filter, gain)


def filter2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    padding: IntPair = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Filter an NCHW tensor with f, keeping its size (padding widens it further)."""
    f = _as_filter(f)
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: IntPair = 2,
    padding: IntPair = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Upsample an NCHW tensor by `up` with the FIR filter f; the output is exactly up times larger."""
    upx, upy = _parse_scaling(up, "up")
    f = _as_filter(f)
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    # Centre the filter on the zero-inserted grid; the split of (taps - up) decides the odd extra tap.
    pad = [
        px0 + (fw + upx - 1) // 2,
        px1 + (fw - upx) // 2,
        py0 + (fh + upy - 1) // 2,
        py1 + (fh - upy) // 2,
    ]
    # Zero insertion keeps one sample in up*up, so scale back to preserve the mean.
    return upfirdn2d(
        x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl
    )


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    down: IntPair = 2,
    padding: IntPair = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "cuda",
) -> torch.Tensor:
    """Downsample an NCHW tensor by `down` with the FIR filter f; the output is exactly down times smaller."""
    downx, downy = _parse_scaling(down, "down")
    f = _as_filter(f)
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    pad = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


# ---------------------------------------------------------------------------------------------------------
# Reference implementation: differentiable PyTorch ops only.


def _pad_or_crop(x: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
    """Zero-pad by the positive entries of (x0, x1, y0, y1), then crop by the negative ones."""
    px0, px1, py0, py1 = padding
    if max(padding) > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(padding) < 0:
        h, w = x.shape[2], x.shape[3]
        x = x[:, :, max(-py0, 0) : h - max(-py1, 0), max(-px0, 0) : w - max(-px1, 0)]
    return x


def _fold_separable(f: torch.Tensor) -> torch.Tensor:
    """Fold a short separable filter into its 2-D outer product: one pass over memory beats two."""
    if f.ndim == 1 and f.numel() <= 8:
        return f.ger(f)
    return f


def _depthwise_taps(f: torch.Tensor, channels: int, gain: float) -> list[torch.Tensor]:
    """Grouped-conv weights, one per pass: [C,1,fh,fw] for 2-D f, or a row then a column if separable."""
    # Contiguous copies: oneDNN rejects stride-0 (expanded) weights and falls back to a conv ~4x slower.
    if f.ndim == 2:
        return [(f * gain)[None, None].expand(channels, 1, *f.shape).contiguous()]
    # The gain rides on the first pass only, so it is applied once in total.
    row = (f * gain)[None, None, None, :].expand(channels, 1, 1, f.numel()).contiguous()
    column = f[None, None, :, None].expand(channels, 1, f.numel(), 1).contiguous()
    return [row, column]


def _filter_down(x: torch.Tensor, f: torch.Tensor, down, gain: float) -> torch.Tensor:
    """Valid true convolution with f, evaluated only at every down-th output (a strided grouped conv)."""
    dtype = _cpu_low_precision(x)
    if dtype is not None and torch.is_grad_enabled() and x.requires_grad:
        # The forward is fast in bf16, but the CPU's bf16 grouped-convolution backward is ~20x slower than
        # float32's (a third of a bf16 training iteration's convolution backward).
        return _in_float32(_strided_taps, x, f, down, gain, dtype=dtype)
    return _strided_taps(x, f, down, gain)


def _strided_taps(x: torch.Tensor, f: torch.Tensor, down, gain: float) -> torch.Tensor:
    """_filter_down as strided grouped convolutions in x's dtype."""
    # conv2d cross-correlates; flipping the taps turns it into a true convolution.
    weights = _depthwise_taps(f.flip(list(range(f.ndim))), x.shape[1], gain)
    strides = [(down[1], down[0])] if f.ndim == 2 else [(1, down[0]), (down[1], 1)]
    for weight, stride in zip(weights, strides, strict=True):
        x = F.conv2d(x, weight, stride=stride, groups=x.shape[1])
    return x


def _filter_up(x: torch.Tensor, f: torch.Tensor, up, gain: float) -> torch.Tensor:
    """Full true convolution of the zero-inserted x with f, without materialising the zeros."""
    dtype = _cpu_low_precision(x)
    if dtype is not None:
        # The CPU has no bf16/fp16 grouped transposed convolution: ATen loops over the C groups, 40-80x
        # slower than float32's (60% of a bf16 sampling pass).
        return _in_float32(_transposed_taps, x, f, up, gain, dtype=dtype)
    return _transposed_taps(x, f, up, gain)


def _transposed_taps(x: torch.Tensor, f: torch.Tensor, up, gain: float) -> torch.Tensor:
    """_filter_up as grouped transposed convolutions in x's dtype."""
    weights = _depthwise_taps(f, x.shape[1], gain)
    strides = [(up[1], up[0])] if f.ndim == 2 else [(1, up[0]), (up[1], 1)]
    for weight, stride in zip(weights, strides, strict=True):
        x = F.conv_transpose2d(x, weight, stride=stride, groups=x.shape[1])
    return x


def _cpu_low_precision(x: torch.Tensor) -> torch.dtype | None:
    """bf16 or fp16 when a convolution of CPU tensor x would run in it (x's dtype or autocast's), else None."""
    if x.device.type != "cpu":
        return None
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in LOW_PRECISION:
        return torch.get_autocast_dtype("cpu")
    return x.dtype if x.dtype in LOW_PRECISION else None


def _in_float32(taps, x: torch.Tensor, f: torch.Tensor, scaling, gain: float, dtype: torch.dtype) -> torch.Tensor:
    """taps(x, f, ...) in float32 out of autocast, rounded to dtype: the values of a low-precision run, which
    also accumulates in float32 and rounds once (tests/test_upfirdn2d.py), on the CPU's faster kernels."""
    with torch.autocast("cpu", enabled=False):
        return taps(x.float(), f.float(), scaling, gain).to(dtype)


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain) -> torch.Tensor:
    """Reference upfirdn2d from grouped (transposed) convolutions and slicing, all differentiable."""
    if f is None:
        f = torch.ones([1, 1])
    f = _fold_separable(f.to(dtype=x.dtype, device=x.device))
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    if up == (1, 1):
        return _filter_down(_pad_or_crop(x, padding), f, down, gain)
    # The transposed conv yields the full convolution, which starts fw-1 samples before the valid one
    # and lacks the up-fw trailing samples that touch only inserted zeros; shift the padding to match.
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = padding
    (upx, upy), (downx, downy) = up, down
    shift = [px0 - fw + 1, px1 + upx - fw, py0 - fh + 1, py1 + upy - fh]
    x = _pad_or_crop(_filter_up(x, f, up, gain), shift)
    if down != (1, 1):
        x = x[:, :, ::downy, ::downx]
    return x


# ---------------------------------------------------------------------------------------------------------
# CUDA implementation.


def _gradient_padding(x_size, y_size, f_size, up, down, padding) -> list[int]:
    """Padding that makes upfirdn2d(dy, up=down, down=up, flipped f) the exact gradient w.r.t. x."""
    (ih, iw), (oh, ow), (fw, fh) = x_size, y_size, f_size
    (upx, upy), (downx, downy) = up, down
    px0, _, py0, _ = padding
    # Leading pad: the flipped filter must reach the first input sample; trailing pad: stop at the last.
    return [
        fw - px0 - 1,
        iw * upx - ow * downx + px0 - upx + 1,
        fh - py0 - 1,
        ih * upy - oh * downy + py0 - upy + 1,
    ]


@functools.cache
def _upfirdn2d_cuda(up, down, padding, flip_filter: bool, gain: float):
    """Autograd Function (cached per configuration) running upfirdn2d with the fused CUDA kernel."""

    class Upfirdn2dCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):
            plugin = custom_ops.get_plugin()
            f = f.to(device=x.device)
            f2 = _fold_separable(f)
            if f2.ndim == 2:
                y = plugin.upfirdn2d(x, f2, *up, *down, *padding, flip_filter, gain)
            else:
                # Long separable filters: two 1-D passes cost fewer taps than one dense 2-D pass.
                px0, px1, py0, py1 = padding
                y = plugin.upfirdn2d(x, f2[None, :], up[0], 1, down[0], 1, px0, px1, 0, 0, flip_filter, gain)
                y = plugin.upfirdn2d(y, f2[:, None], 1, up[1], 1, down[1], 0, 0, py0, py1, flip_filter, 1.0)
            ctx.save_for_backward(f)
            ctx.x_size = (x.shape[2], x.shape[3])
            ctx.y_size = (y.shape[2], y.shape[3])
            return y

        @staticmethod
        def backward(ctx, dy):
            (f,) = ctx.saved_tensors
            dx = None
            if ctx.needs_input_grad[0]:
                fw, fh = _filter_size(f)
                pad = _gradient_padding(ctx.x_size, ctx.y_size, (fw, fh), up, down, padding)
                grad_fn = _upfirdn2d_cuda(down, up, tuple(pad), not flip_filter, gain)
                dx = grad_fn.apply(dy, f)
            return dx, None

    return Upfirdn2dCuda


# The resamplings the networks run: 2x up and 2x down with a 4-tap filter; (up, down, padding) each.
# Their backward passes run the kernel with up and down swapped and the filter flipped.
SELF_CHECK_CASES = (((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1)))


def _self_check_runs(like: torch.Tensor) -> custom_ops.CheckRuns:
    """The kernel's and the reference's outputs and input gradients on a small input of like's kind."""
    generator = torch.Generator().manual_seed(0)  # its own stream: the caller's random numbers stay as they were
    memory_format = torch.channels_last if custom_ops.is_channels_last(like) else torch.contiguous_format
    x = torch.randn([2, 3, 8, 8], generator=generator)
    f = setup_filter([1, 3, 3, 1], device=like.device)
    gradients = []
    for up, down, padding in SELF_CHECK_CASES:
        out_h, out_w = _check_output_size(x, f, up, down, padding)
        gradients.append(torch.randn([2, 3, out_h, out_w], generator=generator))

    def placed(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=like.device, dtype=like.dtype).contiguous(memory_format=memory_format)

    x, gradients = placed(x), [placed(dy) for dy in gradients]

    def run(kernel: bool) -> list[torch.Tensor]:
        results = []
        for (up, down, padding), dy in zip(SELF_CHECK_CASES, gradients, strict=True):
            x_in = x.detach().requires_grad_()
            if kernel:
                y = _upfirdn2d_cuda(up, down, padding, False, 1.0).apply(x_in, f)
            else:
                y = _upfirdn2d_ref(x_in, f, up, down, padding, False, 1.0)
            # A scalar's gradient, not grad(y, x_in, dy): torch imports sympy (0.5 s) on its first given dy.
            (dx,) = torch.autograd.grad((y * dy).sum(), x_in)
            results += [y, dx]
        return results

    return functools.partial(run, True), functools.partial(run, False)
