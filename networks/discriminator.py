"""Time-conditioned discriminators D(x_t, t, x_{t+1}) of Denoising Diffusion GANs.

D judges whether x_t is a real denoising of x_{t+1} (named `x_next`, as in `ddgan.diffusion`). The
candidate x_t and the condition x_{t+1} are concatenated along channels (in that order) and run
through residual blocks with FIR downsampling, each receiving a time embedding as a per-channel bias;
a minibatch-stddev feature and a final conv follow, and the logit is a linear map of the spatial sum. A
class-conditional D(x_t, t, x_{t+1}, y) adds an embedding of the class y to the time embedding, so that
every block's features depend on the class, and the inner product of that sum with another embedding of
y to the logit (a projection discriminator, Miyato & Koyama 2018).
Numbers and initialisation follow the original implementation (every layer has the original `dense`
init, fan="out" in `networks.layers`); `networks.reference` converts weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from networks.layers import SQRT2, ClassEmbedding, Resample, check_class_labels, conv2d, linear, positional_embedding
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


class DiscriminatorTimeEmbedding(nn.Module):
    """Sinusoidal embedding of the step index followed by a 2-layer MLP (t_emb_dim throughout)."""

    def __init__(self, t_emb_dim: int, act: Activation):
        super().__init__()
        self.t_emb_dim = t_emb_dim
        self.dense_0 = linear(t_emb_dim, t_emb_dim, fan="out")
        self.act = act
        self.dense_1 = linear(t_emb_dim, t_emb_dim, fan="out")

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
        self.conv_0 = conv2d(in_ch, out_ch, 3, fan="out")
        self.conv_1 = conv2d(out_ch, out_ch, 3, fan="out", init_scale=0.0)
        self.dense_t = linear(t_emb_dim, out_ch, fan="out")
        self.skip = conv2d(in_ch, out_ch, 1, fan="out", bias=False)
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
                 final_init_scale: float, num_classes: int = 0, class_head: bool = False):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be 0 (unconditional) or a number of classes, got {num_classes}")
        self.num_classes = num_classes
        self.act = Activation(act) if not isinstance(act, Activation) else act
        self.time_embed = DiscriminatorTimeEmbedding(t_emb_dim, self.act)
        self.input_conv = conv2d(nc, widths[0][0] * ngf, 1, fan="out")
        self.blocks = nn.ModuleList(
            DownConvBlock(i * ngf, o * ngf, t_emb_dim, self.act, downsample=down) for i, o, down in widths
        )
        top = widths[-1][1] * ngf
        self.final_conv = conv2d(top + 1, top, 3, fan="out", init_scale=final_init_scale)
        self.head = linear(top, 1, fan="out")
        # Last, so that every layer above draws the same initial numbers as in the unconditional network.
        self.class_embed = ClassEmbedding(num_classes, top) if num_classes > 0 else None
        # The class also joins the time embedding that biases every block: with the projection alone, D's
        # features could ignore the class (on blocky data they judged the blocks; BENCHMARKS.md).
        self.class_temb = ClassEmbedding(num_classes, t_emb_dim) if num_classes > 0 else None
        # An auxiliary classifier (AC-GAN) on the same pooled features, for --class_loss; after the layers above
        # for the same reason.
        self.class_head = linear(top, num_classes, fan="out") if class_head and num_classes > 0 else None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_next: torch.Tensor,
                y: torch.Tensor | None = None, batches: int = 1, class_logits: bool = False):
        """Logits [B, 1] that the candidate x_t is a real denoising of x_next = x_{t+1} at step t (of class y).

        batches: how many equal batches the inputs stack (a real and a fake one judged in one pass); each
        gets its own minibatch-stddev groups, so the logits equal those of separate calls.
        class_logits: also return the class head's logits [B, num_classes] (a network built with class_head).
        """
        check_class_labels(y, self.num_classes, x_t.shape[0])
        temb = self.time_embed(t)
        if self.class_temb is not None:
            temb = temb + self.class_temb(y).to(temb.dtype)
        temb = self.act(temb)
        h = self._from_images(torch.cat([x_t, x_next], dim=1))
        for block in self.blocks:
            h = block(h, temb)
        h = self.act(self.final_conv(minibatch_stddev(h, self.stddev_group, batches)))
        pooled = h.sum(dim=(2, 3))
        logits = self.head(pooled)
        if self.class_embed is not None:
            # Projection: the class enters as <embed(y), pooled>, in the features' dtype as the head computes.
            logits = logits + (self.class_embed(y).to(pooled.dtype) * pooled).sum(dim=1, keepdim=True)
        if class_logits:
            if self.class_head is None:
                raise ValueError("class_logits=True needs a discriminator built with class_head=True")
            return logits, self.class_head(pooled)
        return logits

    def _from_images(self, x: torch.Tensor) -> torch.Tensor:
        """The input conv, in float32 on the CPU under autocast.

        R1's double backward runs this 1x1 conv's weight gradient as a convolution with the batch as its input
        channels, and oneDNN's AMX bf16 matmul divides by zero choosing a blocking for it at a D batch of 256
        (6 channels; SIGFPE kills the process, torch 2.14.1 on an Intel Xeon with AMX). In float32 oneDNN
        takes another kernel; the conv costs 1.5 MFLOP an image at 32x32.
        """
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self.input_conv(x.float())
        return self.input_conv(x)


class DiscriminatorSmall(Discriminator):
    """Discriminator for 32x32 images (CIFAR-10, StackMNIST): 4 blocks, 3 downsamplings (or the first num_layers)."""

    def __init__(
        self,
        nc: int = 6,  # input channels: the candidate x_t and the condition x_{t+1}, concatenated
        ngf: int = 64,  # base width; the blocks have 2, 4 and 8 times as many channels
        t_emb_dim: int = 128,  # width of the time embedding
        act="lrelu",  # activation: a name for ops.bias_act, or the original's nn.LeakyReLU instance
        num_classes: int = 0,  # number of class labels y to condition on (projection head); 0: unconditional
        num_layers: int = 4,  # residual blocks used, from the first (WaveDiff's num_disc_layers)
        class_head: bool = False,  # a linear head naming the class from D's pooled features (--class_loss)
    ):
        widths = [(2, 2, False), (2, 4, True), (4, 8, True), (8, 8, True)]
        super().__init__(nc, ngf, t_emb_dim, act, first_blocks(widths, num_layers, "DiscriminatorSmall"),
                         final_init_scale=0.0, num_classes=num_classes, class_head=class_head)


class DiscriminatorLarge(Discriminator):
    """Discriminator for 256x256 images (CelebA-HQ, LSUN): 6 downsampling blocks (or the first num_layers)."""

    def __init__(
        self,
        nc: int = 6,  # input channels: the candidate x_t and the condition x_{t+1}, concatenated
        ngf: int = 32,  # base width; the blocks have 2, 4 and 8 times as many channels
        t_emb_dim: int = 128,  # width of the time embedding
        act="lrelu",  # activation: a name for ops.bias_act, or the original's nn.LeakyReLU instance
        num_classes: int = 0,  # number of class labels y to condition on (projection head); 0: unconditional
        num_layers: int = 6,  # residual blocks used, from the first (WaveDiff's num_disc_layers)
        class_head: bool = False,  # a linear head naming the class from D's pooled features (--class_loss)
    ):
        widths = [(2, 4, True), (4, 8, True)] + [(8, 8, True)] * 4
        super().__init__(nc, ngf, t_emb_dim, act, first_blocks(widths, num_layers, "DiscriminatorLarge"),
                         final_init_scale=1.0, num_classes=num_classes, class_head=class_head)


def first_blocks(widths: list, num_layers: int, name: str) -> list:
    """The first num_layers block widths. WaveDiff's D sees half-size wavelet tensors, so it stops a
    downsampling earlier; the final conv and the head take the width of the last block used."""
    if not isinstance(num_layers, int) or not 1 <= num_layers <= len(widths):
        raise ValueError(f"num_layers (num_disc_layers) of {name} must be 1..{len(widths)}, got {num_layers!r}")
    return widths[:num_layers]


def minibatch_stddev(x: torch.Tensor, group_size: int, batches: int = 1) -> torch.Tensor:
    """Append one channel: the feature stddev across each group of samples, averaged (StyleGAN).

    batches: x stacks this many equal batches, each grouped on its own (as if passed separately).
    """
    total, channels, height, width = x.shape
    if total % batches != 0:
        raise ValueError(f"{total} samples cannot be {batches} equal batches")
    batch = total // batches
    group = min(batch, group_size)
    if batch % group != 0:
        raise ValueError(f"batch size ({batch}) must be a multiple of the minibatch-stddev group "
                         f"({group}); use a batch size divisible by {group}")
    # Sample b of a batch belongs to group b % (batch // group), as in the original's view/repeat. In
    # float32: in fp16 both the 1e-8 and a small variance round to 0, and sqrt's gradient at 0 is infinite.
    grouped = x.float().view(batches, group, -1, channels, height, width)
    stddev = torch.sqrt(grouped.var(1, unbiased=False) + 1e-8)
    stddev = stddev.mean(dim=(2, 3, 4), keepdim=True).unsqueeze(1).expand(batches, group, -1, 1, height, width)
    return torch.cat([x, stddev.reshape(total, 1, height, width).to(x.dtype)], dim=1)
