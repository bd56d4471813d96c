"""Time-embedded MLP networks: a generator and a discriminator that take the same arguments as NCSN++ and the
image discriminators, so the image trainer trains them unchanged. They serve the 2-D mixture of `ddgan toy` and,
with --net_type=mlp and --discriminator=mlp, small images, which they see flattened: on a CPU an MLP over the
768 numbers of a 16 px RGB image runs about ten times as many images per second as the smallest NCSN++.

G(x_{t+1}, t, z) -> x'_0 and D(x_t, t, x_{t+1}) -> logit, as in the paper's image networks; the step index t
enters both through a sinusoidal embedding followed by a learned layer.

With `fourier_features`, each network sees its points through fixed random Fourier features as well (Tancik et
al., NeurIPS 2020): an MLP on raw coordinates learns the mixture's small, sharply separated modes slowly (its
spectral bias), and sines of random projections give it the higher frequencies from the start.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def step_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] of the integer step indices t (the Transformer's positional encoding)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def mlp(inputs: int, width: int, depth: int, outputs: int) -> nn.Sequential:
    """`depth` hidden layers of `width` units with LeakyReLU(0.2), then a linear output layer."""
    layers, size = [], inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.LeakyReLU(0.2)]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, outputs))


class FourierFeatures(nn.Module):
    """x -> [x, sin(2 pi x B), cos(2 pi x B)] with a fixed B ~ N(0, scale^2) of shape [dim, count]."""

    def __init__(self, dim: int, count: int, scale: float):
        super().__init__()
        # A buffer, so that checkpoints hold the projection the network was trained with.
        self.register_buffer("projection", 2 * math.pi * scale * torch.randn(dim, count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x @ self.projection
        return torch.cat([x, angles.sin(), angles.cos()], dim=1)


def point_features(dim: int, count: int, scale: float) -> nn.Module:
    """Fourier features of points, or the points themselves when count is 0."""
    if count < 0 or (count and scale <= 0):
        raise ValueError(f"Fourier features need a count >= 0 and a positive scale (ddgan toy's --fourier_features, "
                         f"--fourier_scale_g, --fourier_scale_d), got {count} and {scale}")
    return FourierFeatures(dim, count, scale) if count else nn.Identity()


class StepEmbedding(nn.Module):
    """t -> a learned projection of its sinusoidal features."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.project = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.project(step_embedding(t, self.dim))


class MLPGenerator(nn.Module):
    """G(x_{t+1}, t, z) -> x'_0 for points of `data_dim` coordinates (or images of that many numbers)."""

    def __init__(self, data_dim: int = 2,  # coordinates of a point (C * H * W of an image)
                 nz: int = 2,  # dimension of the noise code z
                 width: int = 128,  # units of each hidden layer
                 depth: int = 3,  # hidden layers
                 t_emb_dim: int = 32,  # width of the step embedding
                 fourier_features: int = 0,  # random Fourier features of x_{t+1} (0: the coordinates only)
                 fourier_scale: float = 0.5):  # their frequencies' std, in cycles per unit of x
        super().__init__()
        self.nz = nz
        self.embed = StepEmbedding(t_emb_dim)
        self.features = point_features(data_dim, fourier_features, fourier_scale)
        self.net = mlp(data_dim + 2 * fourier_features + nz + t_emb_dim, width, depth, data_dim)

    def forward(self, x_next: torch.Tensor, t: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None = None):
        if y is not None:
            raise ValueError("the MLP generator is unconditional; train it without --cond")
        x0 = self.net(torch.cat([self.features(x_next.flatten(1)), z, self.embed(t)], dim=1))
        return x0.view(x_next.shape)


class MLPDiscriminator(nn.Module):
    """D(x_t, t, x_{t+1}) -> one logit per pair of points (or of images)."""

    def __init__(self, data_dim: int = 2,  # coordinates of a point (C * H * W of an image)
                 width: int = 128,  # units of each hidden layer
                 depth: int = 3,  # hidden layers
                 t_emb_dim: int = 32,  # width of the step embedding
                 fourier_features: int = 0,  # random Fourier features of x_t and x_{t+1} (one projection)
                 fourier_scale: float = 0.25):  # their frequencies' std, in cycles per unit of x
        super().__init__()
        self.embed = StepEmbedding(t_emb_dim)
        self.features = point_features(data_dim, fourier_features, fourier_scale)
        self.net = mlp(2 * (data_dim + 2 * fourier_features) + t_emb_dim, width, depth, 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_next: torch.Tensor, y: torch.Tensor | None = None,
                batches: int = 1, class_logits: bool = False):
        # `batches` (stacked real and fake batches) matters to the image D's minibatch statistics only.
        if y is not None or class_logits:
            raise ValueError("the MLP discriminator is unconditional; train it without --cond or --class_loss")
        pair = [self.features(x.flatten(1)) for x in (x_t, x_next)]
        return self.net(torch.cat([*pair, self.embed(t)], dim=1))
