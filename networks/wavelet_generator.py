"""WaveDiff's frequency-aware NCSN++ generator (Phung, Dao & Tran, CVPR 2023): NCSNpp resampling by Haar wavelets.

WaveDiff runs DDGAN on the wavelet tensor of an image (`ddgan.spaces.wavelet`); its generator is our NCSNpp with
three components that work in the wavelet domain, each with a switch of the original to turn it off:
  - frequency-aware resampling (`no_use_freq`): a down block keeps the low band of a Haar transform (DWT) and
    passes the three high bands of its features to the matching up block, which puts them back through a
    grouped 3x3 conv and the inverse transform (IDWT), instead of FIR filtering;
  - a wavelet input pyramid (`no_use_residual`): the image path is halved by DWT and a 3x3 conv instead of a
    FIR-filtered strided conv;
  - a frequency bottleneck (`no_use_fbn`): the bottleneck's residual blocks also run on the low band.
With all three switches on it is NCSNpp, parameter for parameter and bit for bit. With `patch_size` p it
folds p x p pixel patches into channels before the U-Net and unfolds them after, in WaveDiff's channel orders.
The transforms are always WaveDiff's bundled Haar band order (`ops.haar`), whatever order the data uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from networks.generator import Middle, NCSNpp, ResidualInputPyramid
from networks.layers import ResnetBlockBigGAN, conv2d, variance_scaling_
from ops.haar import dwt, idwt, lowpass

# High bands (LH, HL, HH) of a down block's features, one entry per down block, consumed last-in first-out.
Bands = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class WaveletResnetBlock(ResnetBlockBigGAN):
    """A resampling ResnetBlockBigGAN whose FIR filter is replaced by the Haar transform.

    Both convs of the main path and the 1x1 shortcut run before the resolution changes. Down: h and the
    shortcut keep LL / 2 of their DWT and h's high bands go onto `bands`. Up: the bands of the matching
    down block pass through `conv_h`, a 3x3 conv with one group per band (as `conv_h(cat / 2) * 2`), and both
    h and the shortcut come back through IDWT(2 * low, bands).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        z_emb_dim: int = 256,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.0,
        skip_rescale: bool = True,
        band_channels: int | None = None,  # up only: channels of the high bands the matching down block stored
    ):
        if up == down:
            raise ValueError("a WaveletResnetBlock resamples: pass up=True or down=True (a block that keeps the "
                             "resolution is a ResnetBlockBigGAN)")
        if up and not band_channels:
            raise ValueError("an up WaveletResnetBlock needs band_channels, the width of its down block")
        super().__init__(in_ch, out_ch, temb_dim, z_emb_dim, up=up, down=down, dropout=dropout,
                         skip_rescale=skip_rescale)
        self.resample = None  # the Haar transform resamples
        self.up = up
        self.conv_h = None
        if up:
            out_ch = self.conv_0.out_channels
            self.conv_h = nn.Conv2d(3 * band_channels, 3 * out_ch, 3, padding=1, groups=3)
            # DDPM's init over the grouped weight's own fans, as the original's conv helper computes them.
            variance_scaling_(self.conv_h.weight, fan="avg")
            nn.init.zeros_(self.conv_h.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None, zemb: torch.Tensor, bands: Bands) -> torch.Tensor:
        """Apply the block; a down block pushes its high bands onto `bands`, an up block pops its own."""
        h = self.conv_0(self.norm_0(x, zemb, act="silu"))
        x = self.skip(x)
        if self.up:
            lh, hl, hh = (self.conv_h(torch.cat(bands.pop(), dim=1) / 2) * 2).chunk(3, dim=1)
            h, x = idwt(2 * h, lh, hl, hh), idwt(2 * x, lh, hl, hh)
        else:
            ll, lh, hl, hh = dwt(h)
            bands.append((lh, hl, hh))
            # The halving keeps the low band (a 2x2 sum over 2) at the features' scale.
            h, x = ll / 2, lowpass(x) / 2
        return self._finish(h, x, temb, zemb)

    def extra_repr(self) -> str:
        return f"up={self.up}"


class WaveletDownsample(nn.Module):
    """Halve an image path by DWT: cat(LL, LH, HL, HH) / 2, then a 3x3 conv (stride 1) to out_ch channels."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv2d(4 * in_ch, out_ch, 3, fan="avg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_ch, H, W] -> [B, out_ch, H/2, W/2]."""
        return self.conv(torch.cat(dwt(x), dim=1) / 2)


class FrequencyBottleneck(Middle):
    """NCSN++'s bottleneck with its residual blocks also run on the low band.

    block_0 sees only LL / 2 of the features, and IDWT(2 * out, highs) restores the resolution; attention
    runs at full bottleneck resolution; block_1 runs twice with the same weights, on the features and then
    on the low band of its own output.
    """

    def forward(self, h, temb, zemb) -> torch.Tensor:
        """Apply the bottleneck."""
        h = self.attention(self._on_low_band(self.block_0, h, temb, zemb))
        return self._on_low_band(self.block_1, self.block_1(h, temb, zemb), temb, zemb)

    @staticmethod
    def _on_low_band(block: nn.Module, h: torch.Tensor, temb, zemb) -> torch.Tensor:
        """IDWT(2 * block(LL / 2), LH, HL, HH) of DWT(h)."""
        ll, lh, hl, hh = dwt(h)
        return idwt(2 * block(ll / 2, temb, zemb), lh, hl, hh)


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C, H*p, W*p] -> [N, p*p*C, H, W] at channel (p1*p + p2)*C + c ('n c (h p1) (w p2) -> n (p1 p2 c) h w')."""
    if patch_size == 1:
        return x
    n, c, height, width = x.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch_size={patch_size} must divide the input's height and width, got {height}x{width}")
    p = patch_size
    x = x.reshape(n, c, height // p, p, width // p, p).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, p * p * c, height // p, width // p)


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[N, C*p*p, H, W] -> [N, C, H*p, W*p], reading channel c*p*p + p1*p + p2 (einops 'n (c p1 p2) h w -> ...').

    Not the inverse of patchify, whose channels are patch-major: WaveDiff pairs the two, so a trained model
    has learned this mismatch and both orders must be kept as they are.
    """
    if patch_size == 1:
        return x
    n, channels, height, width = x.shape
    p = patch_size
    x = x.reshape(n, channels // (p * p), p, p, height, width).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, channels // (p * p), height * p, width * p)


class WaveletNCSNpp(NCSNpp):
    """WaveDiff's generator: predicts the wavelet tensor of x_0 from that of x_t, time t, latent z (and class y).

    Takes every NCSNpp argument, under the same names; these change meaning or are new.
    """

    def __init__(
        self,
        image_size: int = 16,  # height = width of the input, in wavelet space (half the pixel size)
        num_channels: int = 12,  # input channels: 4 bands x the image channels
        patch_size: int = 1,  # fold p x p patches into channels: the U-Net runs at image_size / p
        no_use_fbn: bool = False,  # ablation: plain NCSN++ bottleneck instead of the frequency bottleneck
        no_use_freq: bool = False,  # ablation: FIR-resampling blocks instead of the Haar ones (no high-band skips)
        no_use_residual: bool = False,  # ablation: FIR strided-conv input pyramid instead of the wavelet one
        ch_mult: Sequence[int] = (1, 2, 2, 2),  # width multiplier of each resolution level
        **ncsnpp_kwargs,  # every other NCSNpp argument (nf, num_res_blocks, attn_resolutions, nz, num_classes, ...)
    ):
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size} (the wavelet-space size)")
        inner = image_size // patch_size
        if not no_use_fbn and inner % 2 ** len(ch_mult):
            raise ValueError(f"the frequency bottleneck halves the lowest resolution again: image_size / patch_size "
                             f"= {inner} must be divisible by 2**len(ch_mult) = {2 ** len(ch_mult)} for "
                             f"ch_mult={list(ch_mult)}; change them, or set no_use_fbn")
        # Read by the construction hooks, which run inside NCSNpp.__init__.
        self.patch_size = patch_size
        self.no_use_fbn, self.no_use_freq, self.no_use_residual = no_use_fbn, no_use_freq, no_use_residual
        super().__init__(image_size=inner, num_channels=num_channels * patch_size**2, ch_mult=ch_mult,
                         **ncsnpp_kwargs)
        # The sizes of the tensors forward takes; `resolutions` stays the U-Net's own.
        self.image_size, self.num_channels = image_size, num_channels

    @staticmethod
    def _block_options(block) -> dict:
        """The shared options of NCSNpp's block factory that a WaveletResnetBlock takes (not the FIR ones)."""
        return {k: v for k, v in block.keywords.items() if k not in ("fir", "fir_kernel")}

    def _down_block(self, block, channels: int) -> nn.Module:
        if self.no_use_freq:
            return super()._down_block(block, channels)
        return WaveletResnetBlock(channels, down=True, **self._block_options(block))

    def _up_block(self, block, channels: int, down_channels: int) -> nn.Module:
        if self.no_use_freq:
            return super()._up_block(block, channels, down_channels)
        return WaveletResnetBlock(channels, up=True, band_channels=down_channels, **self._block_options(block))

    def _residual_input_pyramid(self, in_ch: int, out_ch: int) -> nn.Module:
        if self.no_use_residual:
            return super()._residual_input_pyramid(in_ch, out_ch)
        return ResidualInputPyramid(in_ch, out_ch, self.skip_rescale, self.fir, self.fir_kernel,
                                    down=WaveletDownsample(in_ch, out_ch))

    def _middle(self, block, channels: int) -> nn.Module:
        middle = super()._middle(block, channels)
        if self.no_use_fbn:
            return middle
        return FrequencyBottleneck(middle.block_0, middle.attention, middle.block_1)

    def _unet(self, x: torch.Tensor, temb: torch.Tensor | None, zemb: torch.Tensor, *resample_args):
        if self.no_use_freq:
            return super()._unet(x, temb, zemb, *resample_args)
        bands: Bands = []
        out = super()._unet(x, temb, zemb, bands, *resample_args)
        if bands:
            raise RuntimeError(f"{len(bands)} high-band skips left unused")
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict x_0 [B, C, H, W] in wavelet space from x_t [B, C, H, W], t [B], z [B, nz] and class y [B]."""
        # tanh and the centring are elementwise, so they commute with the rearrangements.
        return unpatchify(super().forward(patchify(x, self.patch_size), t, z, y), self.patch_size)

    def extra_repr(self) -> str:
        switches = ", ".join(f"{name}=True" for name in ("no_use_fbn", "no_use_freq", "no_use_residual")
                             if getattr(self, name))
        return f"image_size={self.image_size}, patch_size={self.patch_size}" + (f", {switches}" if switches else "")
