"""Real handwritten digits for class-conditional checks: scikit-learn's 1 797 8x8 digits, upscaled.

The digits ship inside scikit-learn (no download), ten classes of real, varied handwriting: the demo
shapes are so unlike each other that a model can hardly mix them up, these are not. They are 8x8 with
17 grey levels; `make-data` upscales them to the model's resolution either `nearest` (each pixel a
block: blocky, pixel-art-like data) or `bilinear` (smooth), white ink on black, labels as `y`.

    python -m eval.digits make-data digits-nearest.npz --upscale=nearest
    ddgan train --preset=demo --data=digits-nearest.npz --num_channels=1 --hflip=False
    python -m eval.modes accuracy RUN --classifier=digits
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

UPSCALINGS = ("nearest", "bilinear")
CLASSES = tuple(str(d) for d in range(10))
HELD_OUT = 297  # digits (drawn at random) that the digits classifier never trains on


def digit_images(upscale: str = "nearest", image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [1797, H, W, 1], int64 labels [1797]): every digit upscaled from 8x8 to image_size."""
    if upscale not in UPSCALINGS:
        raise ValueError(f"--upscale must be one of {', '.join(UPSCALINGS)}, got {upscale!r}")
    if image_size < 8:
        raise ValueError(f"--image_size={image_size}: the digits are 8x8; give 8 or more")
    from sklearn.datasets import load_digits  # ships its data: nothing is downloaded

    digits = load_digits()
    small = torch.from_numpy(digits.images).float()[:, None] / 16.0  # 17 grey levels, 0 = background
    options = {"align_corners": False} if upscale == "bilinear" else {}
    large = F.interpolate(small, size=(image_size, image_size), mode=upscale, **options)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images), digits.target.astype(np.int64)


def make_data(out: str, upscale: str = "nearest", image_size: int = 16) -> str:
    """Write the digits as a labelled .npz (x: uint8 NHWC, y: the digit, classes: '0'..'9')."""
    from ddgan.data import write_image_array

    images, labels = digit_images(upscale, image_size)
    write_image_array(out, images, labels, CLASSES)
    return out


if __name__ == "__main__":
    from ddgan.command import run_group

    run_group({"make-data": make_data}, "python -m eval.digits")
