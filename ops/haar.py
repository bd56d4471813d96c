"""Single-level orthonormal 2-D Haar transform of NCHW tensors, in plain PyTorch.

For each 2x2 block a = x[2i, 2j], b = x[2i, 2j+1], c = x[2i+1, 2j], d = x[2i+1, 2j+1] (row, column):

    LL = (a + b + c + d) / 2        LH = (a - b + c - d) / 2
    HL = (a + b - c - d) / 2        HH = (a - b - c + d) / 2

LH is low-pass along rows (H) and high-pass along columns (W), HL the reverse: the band order of WaveDiff's
bundled DWT_IDWT layers (pytorch_wavelets names the two the other way round). The transform is orthonormal,
so the inverse uses the same matrix:

    a = (LL + LH + HL + HH) / 2     b = (LL - LH + HL - HH) / 2
    c = (LL + LH - HL - HH) / 2     d = (LL - LH - HL + HH) / 2

Only strided slicing, sums and exact scalings by 1/2 are used: any float dtype, any device, either memory
format, differentiable by autograd, and idwt(*dwt(x)) == x up to rounding of the sums.
"""

from __future__ import annotations

import torch

__all__ = ["dwt", "idwt", "lowpass"]


def _check_even(x: torch.Tensor) -> None:
    """Raise ValueError unless x is [..., H, W] with even H and W."""
    if x.ndim < 2 or x.shape[-2] % 2 or x.shape[-1] % 2:
        size = "x".join(str(s) for s in x.shape[-2:])
        raise ValueError(f"the Haar transform needs an even height and width, got {size} (shape {list(x.shape)})")


def _keep_format(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`out` in channels_last when `like` is (and is not also plain contiguous)."""
    if (like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous()
            and not out.is_contiguous(memory_format=torch.channels_last)):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def _row_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(even rows + odd rows, even rows - odd rows) of x [..., H, W]."""
    top, bottom = x[..., 0::2, :], x[..., 1::2, :]
    return top + bottom, top - bottom


def dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bands (LL, LH, HL, HH), each [..., H/2, W/2], of x [..., H, W] with even H and W."""
    _check_even(x)
    low, high = _row_sums(x)
    bands = (
        (low[..., 0::2] + low[..., 1::2]) * 0.5,
        (low[..., 0::2] - low[..., 1::2]) * 0.5,
        (high[..., 0::2] + high[..., 1::2]) * 0.5,
        (high[..., 0::2] - high[..., 1::2]) * 0.5,
    )
    return tuple(_keep_format(band, x) for band in bands)


def lowpass(x: torch.Tensor) -> torch.Tensor:
    """The LL band of dwt(x) alone, without computing the other three."""
    _check_even(x)
    low = x[..., 0::2, :] + x[..., 1::2, :]
    return _keep_format((low[..., 0::2] + low[..., 1::2]) * 0.5, x)


def _interleave(even: torch.Tensor, odd: torch.Tensor, dim: int) -> torch.Tensor:
    """Alternate slices of `even` and `odd` along dim (-1 or -2), doubling its size."""
    stacked = torch.stack([even, odd], dim=dim)
    shape = list(even.shape)
    shape[dim] *= 2
    return stacked.reshape(shape)


def idwt(ll: torch.Tensor, lh: torch.Tensor, hl: torch.Tensor, hh: torch.Tensor) -> torch.Tensor:
    """Inverse of dwt: x [..., 2H, 2W] from four bands [..., H, W]."""
    if any(band.shape != ll.shape for band in (lh, hl, hh)):  # not a set of shapes: traced sizes do not hash
        raise ValueError(f"the four Haar bands must have one shape, got {[list(b.shape) for b in (ll, lh, hl, hh)]}")
    if ll.ndim < 2:
        raise ValueError(f"Haar bands must be [..., H, W] tensors, got shape {list(ll.shape)}")
    # Undo the column step first, giving the row sums and differences of dwt, then the row step.
    low = _interleave(ll + lh, ll - lh, dim=-1)
    high = _interleave(hl + hh, hl - hh, dim=-1)
    x = _interleave((low + high) * 0.5, (low - high) * 0.5, dim=-2)
    return _keep_format(x, ll)
