"""NCSN++ generator of Denoising Diffusion GANs: x'_0 = G(x_t, t, z), or G(x_t, t, z, y) for a class y.

A U-Net (Song et al., 2021) of BigGAN-style residual blocks whose group norms are modulated by a noise
code z through a mapping network (adaptive group norm, AdaGN), as in Xiao, Kreis & Vahdat (2022). A
class-conditional network also feeds an embedding of the label to the mapping network, as conditional
StyleGAN2-ADA does (Karras et al., 2020), so every AdaGN layer sees the class, and adds a second one to
the time embedding, as ADM does (Dhariwal & Nichol, 2021), so every residual block gets a class bias.
Numbers and initialisation follow the original implementation; `networks.reference` converts weights
to and from its flat `all_modules` layout.

One file of about 470 lines on purpose: the blocks and the U-Net that wires them read top to bottom as the
paper's architecture; the wavelet variant (`networks.wavelet_generator`) builds on these classes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from networks.layers import (
    SQRT2,
    ClassEmbedding,
    ConvDownsample,
    GaussianFourierProjection,
    Resample,
    ResnetBlockBigGAN,
    SelfAttention,
    check_class_labels,
    conv2d,
    group_norm,
    linear,
    positional_embedding,
    variance_scaling_,
)

RESBLOCK_TYPES = ("biggan",)
PROGRESSIVE = ("none", "output_skip")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE_METHODS = ("sum", "cat")
EMBEDDING_TYPES = ("positional", "fourier")


def normalize_2nd_moment(x: torch.Tensor) -> torch.Tensor:
    """Scale each row of [B, C] to unit root mean square (StyleGAN's PixelNorm of z)."""
    return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z (and a class label) -> z_emb: PixelNorm, then n_mlp + 1 dense layers each followed by SiLU."""

    def __init__(self, nz: int, z_emb_dim: int, n_mlp: int):
        super().__init__()
        self.nz = nz
        widths = [nz] + [z_emb_dim] * (n_mlp + 1)
        self.layers = nn.ModuleList(linear(i, o, fan="out") for i, o in zip(widths[:-1], widths[1:], strict=True))
        self.class_embed: ClassEmbedding | None = None

    def add_class_input(self, num_classes: int) -> None:
        """Condition on a class label: embed it (width nz) and widen the first dense layer to read it too."""
        # A step of its own, so that the generator can take it after building all its other layers: those
        # then draw the same initial numbers as in an unconditional network.
        self.class_embed = ClassEmbedding(num_classes, self.nz)
        first = self.layers[0]
        # fan="out" depends on the output width only, so new columns drawn with the layer's own init make it
        # distributed as linear(2 nz, z_emb_dim, fan="out") while its z columns keep their numbers.
        extra = variance_scaling_(torch.empty(first.out_features, self.nz), fan="out")
        first.weight = nn.Parameter(torch.cat([first.weight.detach(), extra], dim=1))
        first.in_features += self.nz

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Map codes z [B, nz] (and class indices y [B], when conditional) to style vectors [B, z_emb_dim]."""
        h = normalize_2nd_moment(z)
        if self.class_embed is not None:
            # Normalised like z, so that the label and z enter the first layer on an equal footing.
            h = torch.cat([h, normalize_2nd_moment(self.class_embed(y))], dim=1)
        for layer in self.layers:
            h = F.silu(layer(h))
        return h


class TimeEmbedding(nn.Module):
    """Sinusoidal (step index) or Gaussian-Fourier (log time) features, then a 2-layer MLP to 4 nf."""

    def __init__(self, nf: int, embedding_type: str, fourier_scale: float, conditional: bool):
        super().__init__()
        self.nf = nf
        self.fourier = GaussianFourierProjection(nf, fourier_scale) if embedding_type == "fourier" else None
        features = 2 * nf if self.fourier is not None else nf
        self.dense_0 = linear(features, 4 * nf, fan="avg") if conditional else None
        self.dense_1 = linear(4 * nf, 4 * nf, fan="avg") if conditional else None

    def forward(self, t: torch.Tensor) -> torch.Tensor | None:
        """Embed a 1-D batch of times; None for an unconditional network."""
        if self.dense_0 is None:
            return None
        if self.fourier is None:
            temb = positional_embedding(t, self.nf)
        elif not torch.is_floating_point(t):
            raise ValueError(f"t must be a positive float time for the fourier embedding, got dtype {t.dtype}")
        else:
            # Fourier features see log(t) of a continuous time (positional ones the integer step index).
            temb = self.fourier(torch.log(t))
        return self.dense_1(F.silu(self.dense_0(temb)))


class InputSkip(nn.Module):
    """progressive_input='input_skip': FIR-downsample the image and merge it in with a 1x1 conv."""

    def __init__(self, image_channels: int, channels: int, method: str, fir: bool, fir_kernel):
        super().__init__()
        self.method = method
        self.downsample = Resample(up=False, fir=fir, fir_kernel=fir_kernel)
        self.conv = conv2d(image_channels, channels, 1, fan="avg")

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (downsampled image, features combined with it)."""
        pyramid = self.downsample(pyramid)
        merged = self.conv(pyramid)
        return pyramid, (torch.cat([merged, h], dim=1) if self.method == "cat" else merged + h)


class ResidualInputPyramid(nn.Module):
    """progressive_input='residual': a strided-conv path from the image, summed into the features."""

    def __init__(self, in_ch: int, out_ch: int, skip_rescale: bool, fir: bool, fir_kernel,
                 down: nn.Module | None = None):
        super().__init__()
        self.skip_rescale = skip_rescale
        # `down` replaces the strided conv: the wavelet generator halves the image by a Haar transform instead.
        self.down = down if down is not None else ConvDownsample(in_ch, out_ch, fir=fir, fir_kernel=fir_kernel)

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the new pyramid level, which also replaces the features."""
        pyramid = self.down(pyramid) + h
        pyramid = pyramid / SQRT2 if self.skip_rescale else pyramid
        return pyramid, pyramid


class OutputSkip(nn.Module):
    """progressive='output_skip': each decoder level adds its own image to the upsampled coarser one."""

    def __init__(self, channels: int, image_channels: int, fir: bool, fir_kernel):
        super().__init__()
        self.norm = group_norm(channels)
        self.conv = conv2d(channels, image_channels, 3, fan="avg", init_scale=0.0)
        self.upsample = Resample(up=True, fir=fir, fir_kernel=fir_kernel)

    def forward(self, h: torch.Tensor, pyramid: torch.Tensor | None) -> torch.Tensor:
        """Return this level's output image (the coarsest level starts the pyramid)."""
        image = self.conv(F.silu(self.norm(h)))
        return image if pyramid is None else self.upsample(pyramid) + image


class EncoderLevel(nn.Module):
    """One resolution of the contracting path: residual blocks (+attention), then a down block."""

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module], down: nn.Module | None,
                 input_pyramid: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions)
        self.down = down
        self.input_pyramid = input_pyramid

    def forward(self, h, pyramid, temb, zemb, skips: list[torch.Tensor], *resample_args):
        """Advance (features, image pyramid) by one level, appending every output to `skips`.

        `resample_args` go to the down block (the wavelet generator's list of high-band skips).
        """
        for block, attention in zip(self.blocks, self.attentions, strict=True):
            h = attention(block(h, temb, zemb))
            skips.append(h)
        if self.down is not None:
            h = self.down(h, temb, zemb, *resample_args)
            if self.input_pyramid is not None:
                pyramid, h = self.input_pyramid(pyramid, h)
            skips.append(h)
        return h, pyramid


class DecoderLevel(nn.Module):
    """One resolution of the expanding path: residual blocks fed by skips, attention, up block."""

    def __init__(self, blocks: list[nn.Module], attention: nn.Module, output_skip: nn.Module | None,
                 up: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attention = attention
        self.output_skip = output_skip
        self.up = up

    def forward(self, h, pyramid, temb, zemb, skips: list[torch.Tensor], *resample_args):
        """Advance (features, output pyramid) by one level, consuming skips from the end of `skips`.

        `resample_args` go to the up block, as in EncoderLevel.
        """
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), temb, zemb)
        h = self.attention(h)
        if self.output_skip is not None:
            pyramid = self.output_skip(h, pyramid)
        if self.up is not None:
            h = self.up(h, temb, zemb, *resample_args)
        return h, pyramid


class Encoder(nn.Module):
    """Contracting path; `levels[i]` works at resolution image_size / 2**i."""

    def __init__(self, levels: list[EncoderLevel]):
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def forward(self, h, image, temb, zemb, *resample_args) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the bottom features and the skip connections (input conv output first)."""
        skips = [h]
        pyramid = image
        for level in self.levels:
            h, pyramid = level(h, pyramid, temb, zemb, skips, *resample_args)
        return h, skips


class Middle(nn.Module):
    """Bottleneck at the lowest resolution: residual block, attention, residual block."""

    def __init__(self, block_0: nn.Module, attention: nn.Module, block_1: nn.Module):
        super().__init__()
        self.block_0 = block_0
        self.attention = attention
        self.block_1 = block_1

    def forward(self, h, temb, zemb) -> torch.Tensor:
        """Apply the bottleneck."""
        return self.block_1(self.attention(self.block_0(h, temb, zemb)), temb, zemb)


class Decoder(nn.Module):
    """Expanding path; `levels[i]` works at resolution image_size / 2**i and runs from i = L-1 to 0."""

    def __init__(self, levels: list[DecoderLevel]):
        super().__init__()
        self.levels = nn.ModuleList(levels)

    def forward(self, h, skips, temb, zemb, *resample_args) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the top features and the output-skip image (None without progressive output)."""
        pyramid = None
        for level in reversed(self.levels):
            h, pyramid = level(h, pyramid, temb, zemb, skips, *resample_args)
        if skips:
            raise RuntimeError(f"{len(skips)} skip connections left unused")
        return h, pyramid


class NCSNpp(nn.Module):
    """NCSN++ with AdaGN: predicts x_0 from (x_t, t), a latent z ~ N(0, I) and optionally a class label y.

    Argument names follow the original code, except `nf` (its `num_channels_dae`).
    """

    def __init__(
        self,
        image_size: int = 32,  # height = width of the images, divisible by 2**(len(ch_mult)-1)
        num_channels: int = 3,  # image channels
        nf: int = 128,  # base width; level i has nf * ch_mult[i] channels
        ch_mult: Sequence[int] = (1, 2, 2, 2),  # width multiplier of each resolution level
        num_res_blocks: int = 2,  # residual blocks per encoder level (one more per decoder level)
        attn_resolutions: Sequence[int] = (16,),  # resolutions (px) that get self-attention
        dropout: float = 0.0,  # dropout inside every residual block
        # Kept for the original's configs, which carry either value: BigGAN blocks resample inside
        # themselves, so in the original too it has no effect (`ddgan train` refuses False).
        resamp_with_conv: bool = True,
        conditional: bool = True,  # embed the time t (off: the network ignores t)
        fir: bool = True,  # resample through the FIR filter fir_kernel instead of a box filter
        fir_kernel: Sequence[int] = (1, 3, 3, 1),  # the FIR filter taps
        skip_rescale: bool = True,  # divide residual sums by sqrt(2)
        resblock_type: str = "biggan",  # only BigGAN blocks: 'ddpm' crashes in the original
        progressive: str = "none",  # output path: 'none' or 'output_skip' (an image pyramid summed up)
        progressive_input: str = "residual",  # input pyramid: 'none', 'input_skip' or 'residual'
        progressive_combine: str = "sum",  # how input_skip merges the pyramid: 'sum' or 'cat'
        embedding_type: str = "positional",  # 'positional' (integer step) or 'fourier' (log of float time)
        fourier_scale: float = 16.0,  # std of the fixed Fourier frequencies
        not_use_tanh: bool = False,  # return the raw output instead of tanh of it
        nz: int = 100,  # latent size
        z_emb_dim: int = 256,  # width of the mapping network and its style vectors
        n_mlp: int = 3,  # mapping network depth: n_mlp + 1 dense layers
        centered: bool = True,  # inputs in [-1, 1]; off: [0, 1], rescaled first
        num_classes: int = 0,  # number of class labels y to condition on; 0: unconditional
    ):
        super().__init__()
        progressive, progressive_input = progressive.lower(), progressive_input.lower()
        progressive_combine, embedding_type = progressive_combine.lower(), embedding_type.lower()
        check_generator_args(image_size, ch_mult, attn_resolutions, resblock_type, progressive, progressive_input,
                             progressive_combine, embedding_type)
        self.resolutions = level_resolutions(image_size, len(ch_mult))
        self.image_size = image_size
        self.num_channels = num_channels
        self.nf = nf
        self.ch_mult = tuple(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.conditional = conditional
        self.centered = centered
        self.not_use_tanh = not_use_tanh
        self.progressive = progressive
        self.progressive_input = progressive_input
        self.progressive_combine = progressive_combine
        self.embedding_type = embedding_type
        self.fir = fir
        self.fir_kernel = tuple(fir_kernel)
        self.skip_rescale = skip_rescale
        self.nz = nz
        if num_classes < 0:
            raise ValueError(f"num_classes must be 0 (unconditional) or a number of classes, got {num_classes}")
        self.num_classes = num_classes

        self.time_embed = TimeEmbedding(nf, embedding_type, fourier_scale, conditional)
        self.z_mapping = MappingNetwork(nz, z_emb_dim, n_mlp)
        # Every block owns a time projection, even when unconditional (as in the original layout).
        block = functools.partial(ResnetBlockBigGAN, temb_dim=4 * nf, z_emb_dim=z_emb_dim, dropout=dropout,
                                  fir=fir, fir_kernel=fir_kernel, skip_rescale=skip_rescale)
        self.input_conv = conv2d(num_channels, nf, fan="avg")
        self.encoder, skip_channels = self._build_encoder(block)
        self.middle = self._middle(block, skip_channels[-1])
        self.decoder, top = self._build_decoder(block, skip_channels)
        if progressive == "output_skip":
            self.output_norm, self.output_conv = None, None
        else:
            self.output_norm = group_norm(top)
            self.output_conv = conv2d(top, num_channels, fan="avg", init_scale=0.0)
        # Last, so that every layer above draws the same initial numbers as in the unconditional network.
        self.class_temb = None
        if num_classes > 0:
            self.z_mapping.add_class_input(num_classes)
            # The class also joins the time embedding, which biases every residual block (as ADM's label
            # embedding does). Beside D's class in its time embedding, it lifted the weakest class on real
            # digits; alone it hardly helped (BENCHMARKS.md).
            self.class_temb = ClassEmbedding(num_classes, 4 * nf)

    # Construction hooks: a variant (networks.wavelet_generator) swaps in its own resampling blocks, input
    # pyramid and bottleneck, while the rest of the U-Net, its module names and its init order stay these.

    def _down_block(self, block, channels: int) -> nn.Module:
        """The residual block that halves the resolution at the end of an encoder level."""
        return block(channels, down=True)

    def _up_block(self, block, channels: int, down_channels: int) -> nn.Module:
        """The residual block that doubles the resolution; `down_channels` is the width of its down block."""
        return block(channels, up=True)

    def _residual_input_pyramid(self, in_ch: int, out_ch: int) -> nn.Module:
        """progressive_input='residual': the image path from in_ch to out_ch channels, half the resolution."""
        return ResidualInputPyramid(in_ch, out_ch, self.skip_rescale, self.fir, self.fir_kernel)

    def _middle(self, block, channels: int) -> nn.Module:
        """The bottleneck."""
        return Middle(block(channels), SelfAttention(channels, self.skip_rescale), block(channels))

    def _attention(self, level: int, channels: int) -> nn.Module:
        """Self-attention where the level's resolution is listed in attn_resolutions, else identity."""
        if self.resolutions[level] in self.attn_resolutions:
            return SelfAttention(channels, self.skip_rescale)
        return nn.Identity()

    def _build_encoder(self, block) -> tuple[Encoder, list[int]]:
        """Contracting path, and the channel count of every skip connection it produces."""
        levels, skip_channels = [], [self.nf]
        in_ch, pyramid_ch = self.nf, self.num_channels
        for i, mult in enumerate(self.ch_mult):
            out_ch = self.nf * mult
            blocks = [block(in_ch if j == 0 else out_ch, out_ch) for j in range(self.num_res_blocks)]
            attentions = [self._attention(i, out_ch) for _ in range(self.num_res_blocks)]
            skip_channels += [out_ch] * self.num_res_blocks
            in_ch = out_ch
            down = input_pyramid = None
            if i != len(self.ch_mult) - 1:
                down = self._down_block(block, in_ch)
                if self.progressive_input == "input_skip":
                    input_pyramid = InputSkip(pyramid_ch, in_ch, self.progressive_combine, self.fir,
                                              self.fir_kernel)
                    in_ch *= 2 if self.progressive_combine == "cat" else 1
                elif self.progressive_input == "residual":
                    input_pyramid = self._residual_input_pyramid(pyramid_ch, in_ch)
                    pyramid_ch = in_ch
                skip_channels.append(in_ch)
            levels.append(EncoderLevel(blocks, attentions, down, input_pyramid))
        return Encoder(levels), skip_channels

    def _build_decoder(self, block, skip_channels: list[int]) -> tuple[Decoder, int]:
        """Expanding path (consumes a copy of skip_channels) and its output channel count."""
        skip_channels = list(skip_channels)
        in_ch = skip_channels[-1]
        levels = {}
        for i in reversed(range(len(self.ch_mult))):
            out_ch = self.nf * self.ch_mult[i]
            blocks = []
            for _ in range(self.num_res_blocks + 1):
                blocks.append(block(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            output_skip = None
            if self.progressive == "output_skip":
                output_skip = OutputSkip(in_ch, self.num_channels, self.fir, self.fir_kernel)
            up = self._up_block(block, in_ch, self.nf * self.ch_mult[i - 1]) if i != 0 else None
            levels[i] = DecoderLevel(blocks, self._attention(i, in_ch), output_skip, up)
        return Decoder([levels[i] for i in range(len(self.ch_mult))]), in_ch

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict x_0 from x_t [B, C, H, W], time t [B] (int step, or float for fourier), z [B, nz], class y [B]."""
        check_class_labels(y, self.num_classes, x.shape[0])
        zemb = self.z_mapping(z, y)
        temb = self.time_embed(t)
        if self.class_temb is not None:
            temb = self.class_temb(y) if temb is None else temb + self.class_temb(y)
        # Every residual block reads act(temb): compute it once.
        temb = F.silu(temb) if temb is not None else None
        if not self.centered:
            x = 2 * x - 1.0
        h, pyramid = self._unet(x, temb, zemb)
        h = pyramid if self.output_conv is None else self.output_conv(F.silu(self.output_norm(h)))
        return h if self.not_use_tanh else torch.tanh(h)


    def _unet(self, x: torch.Tensor, temb: torch.Tensor | None, zemb: torch.Tensor, *resample_args):
        """(top features, output-skip image or None) of the encoder, bottleneck and decoder.

        `resample_args` go to every down and up block (see EncoderLevel).
        """
        h, skips = self.encoder(self.input_conv(x), x, temb, zemb, *resample_args)
        h = self.middle(h, temb, zemb)
        return self.decoder(h, skips, temb, zemb, *resample_args)


def level_resolutions(image_size: int, num_levels: int) -> list[int]:
    """Resolution of every level of the U-Net, from image_size down."""
    return [image_size // 2**i for i in range(num_levels)]


def check_generator_args(image_size: int, ch_mult: Sequence[int], attn_resolutions: Sequence[int],
                         resblock_type: str, progressive: str, progressive_input: str, progressive_combine: str,
                         embedding_type: str) -> None:
    """Raise ValueError, naming the flag and the fix, for an architecture the original cannot build.

    The one check of these settings: NCSNpp runs it, and so does `ddgan.config.validate` before training.
    """
    levels = len(ch_mult)
    if levels < 1:
        raise ValueError("--ch_mult needs at least one level, e.g. --ch_mult='[1,2,2,2]'")
    if image_size < 1:
        raise ValueError(f"--image_size must be a positive number of pixels, got {image_size}")
    factor = 2 ** (levels - 1)
    if image_size % factor != 0:
        raise ValueError(f"--image_size={image_size} must be divisible by 2**(len(ch_mult)-1)={factor} for "
                         f"--ch_mult={list(ch_mult)}; change one of them")
    resolutions = level_resolutions(image_size, levels)
    for res in attn_resolutions:
        if res not in resolutions:
            raise ValueError(f"--attn_resolutions contains {res}, which never occurs; the feature maps are "
                             f"{resolutions} px for --image_size={image_size} and --ch_mult={list(ch_mult)}; "
                             "list some of those, or none")
    # The original accepts these two values but crashes when it builds or runs them.
    if str(resblock_type).lower() == "ddpm":
        raise ValueError("--resblock_type=ddpm is not supported: it crashes in the original implementation; "
                         "use --resblock_type=biggan")
    if str(progressive).lower() == "residual":
        raise ValueError("--progressive=residual is not supported: it crashes in the original implementation; "
                         "use --progressive=none or --progressive=output_skip")
    for name, value, allowed in [
        ("resblock_type", resblock_type, RESBLOCK_TYPES),
        ("progressive", progressive, PROGRESSIVE),
        ("progressive_input", progressive_input, PROGRESSIVE_INPUT),
        ("progressive_combine", progressive_combine, COMBINE_METHODS),
        ("embedding_type", embedding_type, EMBEDDING_TYPES),
    ]:
        if str(value).lower() not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
