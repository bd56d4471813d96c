"""Images <-> WaveDiff's wavelet tensors: one Haar level, the four bands stacked along channels.

WaveDiff (Phung, Dao & Tran, CVPR 2023) runs DDGAN on `cat(LL, LH, HL, HH) / 2`: an image [B, C, H, W] in
[-1, 1] becomes [B, 4C, H/2, W/2], again in [-1, 1], and a sample goes back by the inverse transform of twice
the tensor. Its recipes use two Haar implementations that disagree on which detail band comes second, so a
model is tied to its `order`:
  - "bundled": WaveDiff's own DWT_IDWT layers (celeba_256, celeba_1024), LH = (a - b + c - d) / 2;
  - "pytorch_wavelets": the pytorch_wavelets package (cifar10, stl10, celeba_512, lsun), with LH and HL swapped.
`ops.haar` gives the formulas. `WaveletSpace` (below) is the space a wavelet model diffuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ddgan.spaces.base import Space
from ops.haar import dwt, idwt

if TYPE_CHECKING:
    from ddgan.config import Config

ORDERS = ("bundled", "pytorch_wavelets")


def _check_order(order: str) -> None:
    """Raise ValueError for an unknown band order."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(repr(o) for o in ORDERS)} (the Haar implementation "
                         f"whose band order the model was trained with), got {order!r}")


def to_wavelet(images: torch.Tensor, order: str) -> torch.Tensor:
    """Wavelet tensor [B, 4C, H/2, W/2] = cat(LL, LH, HL, HH) / 2 of images [B, C, H, W], bands in `order`."""
    _check_order(order)
    if images.ndim != 4:
        raise ValueError(f"images must be a [B, C, H, W] batch, got shape {list(images.shape)}")
    height, width = images.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f"image_size must be even in wavelet space (one Haar level halves it), got {height}x{width}")
    ll, lh, hl, hh = dwt(images)
    if order == "pytorch_wavelets":
        lh, hl = hl, lh
    return torch.cat([ll, lh, hl, hh], dim=1) / 2


def from_wavelet(w: torch.Tensor, order: str) -> torch.Tensor:
    """Images [B, C, 2H, 2W] = IDWT(2 w) of a wavelet tensor w [B, 4C, H, W] with bands in `order`."""
    _check_order(order)
    if w.ndim != 4 or w.shape[1] % 4:
        raise ValueError(f"a wavelet tensor is [B, 4C, H, W] (bands LL, LH, HL, HH of C channels each), "
                         f"got shape {list(w.shape)}")
    ll, lh, hl, hh = (2 * w).chunk(4, dim=1)
    if order == "pytorch_wavelets":
        lh, hl = hl, lh
    return idwt(ll, lh, hl, hh)


class WaveletSpace(Space):
    """WaveDiff's one-level Haar tensor cat(LL, LH, HL, HH) / 2, bands in the config's `wavelet_order`."""

    name = "wavelet"
    card_tags = ("wavediff",)
    diffuses = "WaveDiff's Haar wavelet tensors"
    takes_wavelet_generator = True
    original_code = "WaveDiff"

    @staticmethod
    def config_problem(config: Config) -> str:
        if config.image_size % 2:
            return f"--image_size={config.image_size} must be even in wavelet space (the Haar transform halves it)"
        return ""

    @staticmethod
    def shape_of(config: Config) -> tuple[int, int, int]:
        return 4 * config.num_channels, config.image_size // 2, config.image_size // 2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return to_wavelet(images, self.config.wavelet_order)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return from_wavelet(x.float(), self.config.wavelet_order).clamp(-1, 1)

    @property
    def saved(self) -> dict:
        return {"wavelet_order": self.config.wavelet_order}

    def describe(self) -> str:
        return f"wavelet space ({self.config.wavelet_order} bands)"
