"""One image as the model sees it: decoded pixels fitted to the size and channels, as a tensor in [-1, 1]."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps


def fit_image(image: Image.Image | np.ndarray, size: int, num_channels: int,
              warn_small: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Convert channels, resize the shorter side to `size`, center-crop: uint8 (H, W[, C]).

    `warn_small(width, height)` is told of an image smaller than `size`, which is upscaled.
    """
    if isinstance(image, np.ndarray):
        if image.shape == (size, size, num_channels):
            return image
        image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    image = to_channels(image, num_channels)
    if min(image.size) < size and warn_small is not None:
        warn_small(*image.size)
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(image)


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels (H, W[, C]) as the float32 tensor (C, H, W) in [-1, 1] the diffusion trains on."""
    tensor = from_uint8(torch.from_numpy(np.asarray(pixels, dtype=np.float32)))
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def to_channels(image: Image.Image, num_channels: int) -> Image.Image:
    """Convert any PIL mode (grayscale, palette, RGBA, 16-bit...) to 'L' for 1 channel or 'RGB' for 3."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit PNGs decode to these modes, and convert() would clip them at 255; rescale to 8 bits instead.
        pixels = (np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
    mode = "L" if num_channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def check_image_args(image_size: int, num_channels: int) -> None:
    """Reject resolutions and channel counts the pipeline cannot produce."""
    if not isinstance(image_size, int | np.integer) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}: expected a positive integer (pixels per side)")
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels={num_channels!r}: expected 1 (grayscale) or 3 (RGB)")


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 as floats in [-1, 1] (u / 127.5 - 1, which `ddgan.sampling.to_uint8` inverts exactly)."""
    return pixels.float() / 127.5 - 1
