"""Time-conditioned discriminators D(x_{t-1}, t, x_t) of Denoising Diffusion GANs.

The candidate x_{t-1} and the condition x_t are concatenated along channels (in that order) and run
through residual blocks with FIR downsampling, each receiving a time embedding as a per-channel bias;
a minibatch-stddev feature and a final conv follow, and the logit is a linear map of the spatial sum.
Numbers and initialisation follow the original implementation; `networks.reference` converts weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from networks.layers import SQRT2, Resample, dense, dense_init_, positional_embedding
from ops.bias_act import bias_act


class Activation(nn.Module):
    """Element-wise activation through the fused bias_act op, with unit gain (as nn.LeakyReLU)."""

    def __init__(self, act: str | nn.Module = "lrelu", alpha: float = 0.2):
        super().__init__()
        if isinstance(act, nn.LeakyReLU):  # the original passes an nn.LeakyReLU(0.2) instance
            act, alpha = "lrelu", act.negative_slope
        if not isinstance(act, str):
            raise ValueError(f"act must be an activation name for ops.bias_act or nn.LeakyReLU, got {act!r}")
        self.act, self.alpha = act, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation."""
        return bias_act(x, act=self.act, alpha=self.alpha, gain=1.0)

    def extra_repr(self) -> str:
        return f"act={self.act!r}, alpha={self.alpha}"


def conv2d(in_ch: int, out_ch: int, kernel_size: int, bias: bool = True,
           init_scale: float = 1.0) -> nn.Conv2d:
    """'Same' convolution with the original discriminator's init (fan_out) and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)
    dense_init_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the step index followed by a 2-layer MLP (t_emb_dim throughout)."""

    def __init__(self, t_emb_dim: int, act: Activation):
        super().__init__()
        self.t_emb_dim = t_emb_dim
        self.dense_0 = dense(t_emb_dim, t_emb_dim)
        self.act = act
        self.dense_1 = dense(t_emb_dim, t_emb_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed a 1-D batch of step indices."""
        return self.dense_1(self.act(self.dense_0(positional_embedding(t, self.t_emb_dim))))


class DownConvBlock(nn.Module):
    """Pre-activation residual block with a time bias and optional FIR downsampling, rescaled by 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, t_emb_dim: int, act: Activation, downsample: bool = False,
                 fir_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.act = act
        # Declared in the original's order, so parameters() lines up with its optimizer states.
        self.conv_0 = conv2d(in_ch, out_ch, 3)
        self.conv_1 = conv2d(out_ch, out_ch, 3, init_scale=0.0)
        self.dense_t = dense(t_emb_dim, out_ch)
        self.skip = conv2d(in_ch, out_ch, 1, bias=False)
        self.downsample = Resample(up=False, fir_kernel=fir_kernel) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Apply the block; `temb` is the already-activated time embedding."""
        h = self.act(self.conv_0(self.act(x)) + self.dense_t(temb)[:, :, None, None])
        if self.downsample is not None:
            h = self.downsample(h)
            x = self.downsample(x)
        return (self.conv_1(h) + self.skip(x)) / SQRT2


class Discriminator(nn.Module):
    """Shared body of both discriminators; subclasses choose the block widths and resampling."""

    stddev_group = 4

    def __init__(self, nc: int, ngf: int, t_emb_dim: int, act, widths: Sequence[tuple[int, int, bool]],
                 final_init_scale: float):
        super().__init__()
        self.act = Activation(act) if not isinstance(act, Activation) else act
        self.time_embed = TimestepEmbedding(t_emb_dim, self.act)
        self.input_conv = conv2d(nc, widths[0][0] * ngf, 1)
        self.blocks = nn.ModuleList(
            DownConvBlock(i * ngf, o * ngf, t_emb_dim, self.act, downsample=down) for i, o, down in widths
        )
        top = widths[-1][1] * ngf
        self.final_conv = conv2d(top + 1, top, 3, init_scale=final_init_scale)
        self.head = dense(top, 1)

    def forward(self, x_prev: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """Logits [B, 1] that x_prev is a real denoising of x_t at step t."""
        temb = self.act(self.time_embed(t))
        h = self.input_conv(torch.cat([x_prev, x_t], dim=1))
        for block in self.blocks:
            h = block(h, temb)
        h = self.act(self.final_conv(minibatch_stddev(h, self.stddev_group)))
        return self.head(h.sum(dim=(2, 3)))


class DiscriminatorSmall(Discriminator):
    """Discriminator for 32x32 images (CIFAR-10, StackMNIST): 4 blocks, 3 downsamplings."""

    def __init__(self, nc: int = 6, ngf: int = 64, t_emb_dim: int = 128, act="lrelu"):
        widths = [(2, 2, False), (2, 4, True), (4, 8, True), (8, 8, True)]
        super().__init__(nc, ngf, t_emb_dim, act, widths, final_init_scale=0.0)


class DiscriminatorLarge(Discriminator):
    """Discriminator for 256x256 images (CelebA-HQ, LSUN): 6 downsampling blocks."""

    def __init__(self, nc: int = 6, ngf: int = 32, t_emb_dim: int = 128, act="lrelu"):
        widths = [(2, 4, True), (4, 8, True)] + [(8, 8, True)] * 4
        super().__init__(nc, ngf, t_emb_dim, act, widths, final_init_scale=1.0)


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one channel: the feature stddev across each group of samples, averaged (StyleGAN)."""
    batch, channels, height, width = x.shape
    group = min(batch, group_size)
    if batch % group != 0:
        raise ValueError(f"batch size ({batch}) must be a multiple of the minibatch-stddev group "
                         f"({group}); use a batch size divisible by {group}")
    # Sample b belongs to group b % (batch // group), as in the original's view/repeat. In float32: in
    # fp16 both the 1e-8 and a small variance round to 0, and sqrt's gradient at 0 is infinite.
    grouped = x.float().view(group, -1, channels, height, width)
    stddev = torch.sqrt(grouped.var(0, unbiased=False) + 1e-8)
    stddev = stddev.mean(dim=(1, 2, 3), keepdim=True).repeat(group, 1, height, width)
    return torch.cat([x, stddev.to(x.dtype)], dim=1)
