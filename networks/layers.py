"""Building blocks shared by the NCSN++ generator and the discriminators.

Initialisation follows the original Denoising Diffusion GAN code exactly, because a freshly built
network must start from the same parameter statistics. Every layer draws U(-b, b) with
b = sqrt(3 * scale / fan). The original uses two fans, and `conv2d` and `linear` take the fan as a required
keyword, so every layer says which init it has:
  - fan="avg" is DDPM's variance-scaling init (fan = mean(fan_in, fan_out)), used by the generator's
    convolutions, NIN layers and time-embedding dense layers;
  - fan="out" is the init of the original `dense_layer.dense/conv2d` helpers (mapping network, AdaGN
    styles and the whole discriminator). They ask for fan_avg, but PyTorch's fan helper they call returns
    fan_out for every mode other than fan_in, so the bound is really sqrt(3 * scale / max(1, fan_out)).
A scale of 0 means 1e-10 in both, so "zero-initialised" layers still carry a tiny random signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ops.adaptive_group_norm import adaptive_group_norm
from ops.upfirdn2d import downsample2d, setup_filter, upfirdn2d, upsample2d

SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------------------
# Initialisation.


def _fans(weight: torch.Tensor) -> tuple[float, float]:
    """(fan_in, fan_out) of a Linear [out, in] or Conv2d [out, in, kh, kw] weight."""
    receptive_field = weight[0][0].numel() if weight.ndim > 2 else 1
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


def variance_scaling_(weight: torch.Tensor, scale: float = 1.0, *, fan: str) -> torch.Tensor:
    """Fill `weight` with U(-b, b), b = sqrt(3 * scale / n): n = mean(fan_in, fan_out) for fan="avg"
    (DDPM), max(1, fan_out) for fan="out" (the original `dense`)."""
    fan_in, fan_out = _fans(weight)
    if fan == "avg":
        n = (fan_in + fan_out) / 2
    elif fan == "out":
        n = max(1.0, fan_out)
    else:
        raise ValueError(f"fan must be 'avg' (DDPM init) or 'out' (the original dense init), got {fan!r}")
    scale = 1e-10 if scale == 0 else scale
    bound = math.sqrt(3.0 * scale / n)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel_size: int = 3, *, fan: str, init_scale: float = 1.0,
           stride: int = 1, padding: int | None = None, bias: bool = True) -> nn.Conv2d:
    """Convolution with variance-scaling init over `fan` and zero bias ('same' padding unless given)."""
    padding = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)
    variance_scaling_(conv.weight, init_scale, fan=fan)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int, *, fan: str, init_scale: float = 1.0) -> nn.Linear:
    """Dense layer with variance-scaling init over `fan` and zero bias."""
    layer = nn.Linear(in_features, out_features)
    variance_scaling_(layer.weight, init_scale, fan=fan)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with NCSN++'s group count (a group per 4 channels, at most 32) and eps."""
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6, affine=affine)


# ---------------------------------------------------------------------------------------------------------
# Time embeddings.


def positional_embedding(t: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Transformer sinusoidal embedding [sin | cos] of a 1-D batch of (integer) times."""
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D batch of times, got shape {tuple(t.shape)}")
    half = dim // 2
    exponent = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -exponent)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin | cos](2 pi x W) with fixed W ~ N(0, scale^2)."""

    def __init__(self, embedding_size: int, scale: float = 1.0):
        super().__init__()
        # Fixed, never trained: a buffer, so it is saved but not handed to the optimiser.
        self.register_buffer("W", torch.randn(embedding_size) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a 1-D batch of scalars."""
        proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Class labels.


class ClassEmbedding(nn.Module):
    """A learned vector per class: a bias-free dense layer applied to the one-hot label, looked up directly."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a class embedding needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        # The weight and init of linear(num_classes, dim, fan="out"): with a one-hot input, fan_in would count
        # classes, not signal, so the bound sqrt(3 / dim) comes from the width and each class vector starts
        # with unit expected squared norm, whatever the number of classes.
        self.weight = nn.Parameter(variance_scaling_(torch.empty(dim, num_classes), fan="out"))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, dim] of class indices y [B]."""
        return F.embedding(y, self.weight.t())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.weight.shape[0]}"


def check_class_labels(y: torch.Tensor | None, num_classes: int, batch: int) -> None:
    """Raise ValueError unless y suits a network with `num_classes` classes (0: unconditional) and a batch."""
    if num_classes == 0:
        if y is not None:
            raise ValueError("class labels y were given to an unconditional network (num_classes=0): pass y=None, "
                             "or build the network with num_classes > 0")
        return
    if y is None:
        raise ValueError(f"the network is class-conditional (num_classes={num_classes}): pass class labels y, "
                         f"an int64 tensor [B] of indices in 0..{num_classes - 1}")
    if y.dtype not in (torch.int64, torch.int32) or y.shape != (batch,):
        raise ValueError(f"class labels y must be an int64 tensor of shape [{batch}] (one index per sample), "
                         f"got dtype {y.dtype} and shape {list(y.shape)}")
    # A range check needs the values on the host; skip it on accelerators to keep steps sync-free, and
    # while torch.compile or torch.export (the ONNX sampler) traces, where the values are unknown.
    if (y.device.type == "cpu" and not torch.compiler.is_compiling() and y.numel()
            and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise ValueError(f"class labels y must lie in 0..{num_classes - 1} for num_classes={num_classes}, "
                         f"got {y.tolist()}")


# ---------------------------------------------------------------------------------------------------------
# Resampling.


class Resample(nn.Module):
    """Factor-2 up- or downsampling with a FIR filter (a box filter when `fir` is off)."""

    def __init__(self, up: bool, fir: bool = True, fir_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.up = up
        # The box filter [1, 1] turns the same ops into nearest-neighbour upsampling / 2x2 average pooling.
        self.register_buffer("filter", setup_filter(list(fir_kernel) if fir else [1, 1]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resample NCHW `x` by a factor 2."""
        return upsample2d(x, self.filter) if self.up else downsample2d(x, self.filter)

    def extra_repr(self) -> str:
        return f"up={self.up}, taps={self.filter.shape[-1]}"


class ConvDownsample(nn.Module):
    """3x3 convolution with stride 2, anti-aliased by the FIR filter when `fir` is on (StyleGAN2)."""

    def __init__(self, in_ch: int, out_ch: int, fir: bool = True, fir_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.fir = fir
        self.conv = conv2d(in_ch, out_ch, 3, fan="avg", stride=2, padding=0)
        if fir:
            self.register_buffer("filter", setup_filter(list(fir_kernel)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the resolution of NCHW `x`."""
        if self.fir:
            # Filter once at full resolution, padded so the strided 3x3 conv keeps exactly H/2 outputs.
            pad = self.filter.shape[-1] - 2 + self.conv.kernel_size[0] - 1
            x = upfirdn2d(x, self.filter, padding=((pad + 1) // 2, pad // 2, (pad + 1) // 2, pad // 2))
        else:
            # TensorFlow 'SAME' padding of the original code: one extra row/column at the end.
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


# ---------------------------------------------------------------------------------------------------------
# Normalisation and attention.


class AdaptiveGroupNorm(nn.Module):
    """AdaGN: GroupNorm whose per-channel scale and shift are predicted from the latent embedding."""

    def __init__(self, channels: int, z_emb_dim: int):
        super().__init__()
        self.norm = group_norm(channels, affine=False)
        self.style = linear(z_emb_dim, 2 * channels, fan="out")
        with torch.no_grad():
            # Start as the identity: gamma = 1, beta = 0.
            self.style.bias[:channels] = 1

    def forward(self, x: torch.Tensor, zemb: torch.Tensor, bias: torch.Tensor | None = None,
                act: str = "linear") -> torch.Tensor:
        """act(gamma * GroupNorm(x + bias) + beta) with (gamma, beta) = style(zemb); bias [B, C] or None."""
        gamma, beta = self.style(zemb).chunk(2, dim=1)
        # One op for the bias, the norm, the modulation and the activation: on the CPU a fused kernel.
        return adaptive_group_norm(x, self.norm.num_groups, gamma, beta, bias=bias, eps=self.norm.eps, act=act)


class SelfAttention(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection (DDPM's AttnBlock)."""

    def __init__(self, channels: int, skip_rescale: bool = True):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.norm = group_norm(channels)
        self.q = conv2d(channels, channels, 1, fan="avg", init_scale=0.1)
        self.k = conv2d(channels, channels, 1, fan="avg", init_scale=0.1)
        self.v = conv2d(channels, channels, 1, fan="avg", init_scale=0.1)
        self.proj_out = conv2d(channels, channels, 1, fan="avg", init_scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the H*W positions of `x`."""
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        h = self.proj_out(h.transpose(1, 2).reshape(batch, channels, height, width))
        return (x + h) / SQRT2 if self.skip_rescale else x + h


# ---------------------------------------------------------------------------------------------------------
# Residual block.


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block of NCSN++ with AdaGN, time bias and optional FIR up/down resampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        z_emb_dim: int = 256,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.0,
        fir: bool = True,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
        skip_rescale: bool = True,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a residual block resamples up or down, not both")
        out_ch = out_ch or in_ch
        self.skip_rescale = skip_rescale
        self.norm_0 = AdaptiveGroupNorm(in_ch, z_emb_dim)
        self.resample = Resample(up, fir, fir_kernel) if up or down else None
        self.conv_0 = conv2d(in_ch, out_ch, fan="avg")
        self.dense_t = linear(temb_dim, out_ch, fan="avg") if temb_dim is not None else None
        self.norm_1 = AdaptiveGroupNorm(out_ch, z_emb_dim)
        self.dropout = nn.Dropout(dropout)
        # Zero-init of the last conv makes a fresh block (almost) the identity.
        self.conv_1 = conv2d(out_ch, out_ch, fan="avg", init_scale=0.0)
        self.skip = conv2d(in_ch, out_ch, 1, fan="avg") if in_ch != out_ch or up or down else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None, zemb: torch.Tensor) -> torch.Tensor:
        """Apply the block; `temb` is the already-activated time embedding (or None)."""
        h = self.norm_0(x, zemb, act="silu")
        if self.resample is not None:
            h = self.resample(h)
            x = self.resample(x)
        h = self.conv_0(h)
        if self.skip is not None:
            x = self.skip(x)
        return self._finish(h, x, temb, zemb)

    def _finish(self, h: torch.Tensor, x: torch.Tensor, temb: torch.Tensor | None,
                zemb: torch.Tensor) -> torch.Tensor:
        """The block after conv_0 and the shortcut conv, whatever resamples between them: time bias, AdaGN,
        conv_1, and the residual sum of the path h and shortcut x."""
        time_bias = self.dense_t(temb) if temb is not None else None
        h = self.norm_1(h, zemb, bias=time_bias, act="silu")
        h = self.conv_1(self.dropout(h))
        return (x + h) / SQRT2 if self.skip_rescale else x + h
