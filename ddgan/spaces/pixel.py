"""Pixel space: the model diffuses the images themselves, as DDGAN does."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ddgan.spaces.base import Space

if TYPE_CHECKING:
    from ddgan.config import Config


class PixelSpace(Space):
    """The images themselves, as DDGAN."""

    name = "pixel"
    named_in_summaries = False
    augmentable = True

    @staticmethod
    def shape_of(config: Config) -> tuple[int, int, int]:
        return config.num_channels, config.image_size, config.image_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().clamp(-1, 1)
