"""Samples as pictures: uint8 conversion, grids, PNG files written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddgan.config import Config
from ddgan.runtime.files import atomic_write

MAX_GRID_CLASSES = 16  # grids show one row per class up to this many, then an evenly spaced subset


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255], same layout.

    Computes floor((x + 1) * 127.5 + 0.5), i.e. rounds half up, as torchvision's save_image does for
    (x + 1) / 2; it inverts the data pipeline's u / 127.5 - 1 exactly for every uint8 u.
    """
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def grid_image(images: np.ndarray, nrow: int | None = None, scale: int = 1) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images into one image, `nrow` per row (default near-square), each upscaled
    `scale` times (nearest neighbour, so small images stay crisp)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images: expected uint8 (N, H, W, C) with N >= 1 and C in (1, 3), got {images.dtype} "
                         f"{images.shape}")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    canvas = np.zeros((math.ceil(n / nrow) * h, nrow * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, nrow)
        canvas[row * h:(row + 1) * h, col * w:(col + 1) * w] = image
    return canvas


def readable_scale(image_size: int) -> int:
    """How many times a grid enlarges images smaller than 32 px (16 px -> 4x), so that one can see them."""
    return max(1, 64 // image_size) if image_size < 32 else 1


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None, scale: int = 1) -> Path:
    """Write uint8 (N, H, W, C) images as one grid PNG (see grid_image), atomically."""
    return write_png(grid_image(images, nrow, scale), path)


def grid_classes(config: Config) -> list[int]:
    """The classes a grid shows, one row each: all of them, or an evenly spaced MAX_GRID_CLASSES of them."""
    if config.num_classes <= MAX_GRID_CLASSES:
        return list(range(config.num_classes))
    return [round(i * (config.num_classes - 1) / (MAX_GRID_CLASSES - 1)) for i in range(MAX_GRID_CLASSES)]


def grid_layout(config: Config, count: int) -> tuple[list[int], list[int] | None, int | None]:
    """(seeds, labels, images per row) of a fixed-seed grid of about `count` images: for a conditional model
    one row per class, each row seeds 0..columns-1; else seeds 0..count-1, near-square."""
    if config.num_classes == 0:
        return list(range(count)), None, None
    classes = grid_classes(config)
    columns = max(1, count // len(classes))
    return list(range(columns)) * len(classes), [c for c in classes for _ in range(columns)], columns


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 (H, W, C) image as PNG atomically, so readers never see half of it."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    # No fsync: a folder of 50 000 sample PNGs would wait on the disk 50 000 times, and they can be redrawn.
    return atomic_write(path, lambda f: pil.save(f, format="PNG"), durable=False)
