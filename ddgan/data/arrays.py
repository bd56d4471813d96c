"""The image-array file convention: uint8 images (N, H, W, C) in a `.npz` under key `x`, or in a `.npy`."""

import os
from pathlib import Path

import numpy as np

from ddgan.files import atomic_write

CHANNEL_COUNTS = (1, 3)


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """Read uint8 images (N, H, W, C) from a .npz (key `x`, or its only array) or a .npy file."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".npz", ".npy"):
        raise ValueError(f"path={str(path)!r}: expected a .npz or .npy file of uint8 images")
    if not path.is_file():
        raise FileNotFoundError(f"image array file {str(path)!r} does not exist")
    # allow_pickle stays off: an image array is plain numbers, and unpickling runs arbitrary code.
    if path.suffix.lower() == ".npy":
        x = np.load(path, allow_pickle=False)
    else:
        with np.load(path, allow_pickle=False) as archive:
            x = archive[_pick_key(path, archive.files)]
    return _as_nhwc(path, x)


def _pick_key(path: Path, keys: list[str]) -> str:
    """The array to read from an .npz: `x` by convention, else the only array it holds."""
    if "x" in keys:
        return "x"
    if len(keys) == 1:
        return keys[0]
    raise ValueError(f"{str(path)!r} holds arrays {keys} but none is named 'x'; "
                     "store the images under key 'x' (or as the file's only array)")


def _as_nhwc(path: Path, x: np.ndarray) -> np.ndarray:
    """Check dtype and rank, and move the channel axis last when the array is stored (N, C, H, W)."""
    if x.dtype != np.uint8:
        raise ValueError(f"{str(path)!r} holds {x.dtype} images; expected uint8 in [0, 255] (from [0, 1] "
                         "floats: (x * 255).round().clip(0, 255).astype(np.uint8))")
    if x.ndim != 4:
        raise ValueError(f"{str(path)!r} holds an array of shape {x.shape}; expected 4 dims (N, H, W, C) or "
                         "(N, C, H, W) with C in {1, 3} (add a channel axis to grayscale: x[..., None])")
    if x.shape[1] in CHANNEL_COUNTS and x.shape[-1] not in CHANNEL_COUNTS:
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] not in CHANNEL_COUNTS:
        raise ValueError(f"{str(path)!r} holds an array of shape {x.shape}; expected 1 or 3 channels, "
                         "laid out (N, H, W, C) or (N, C, H, W)")
    if len(x) == 0:
        raise ValueError(f"{str(path)!r} holds no images (its array has shape {x.shape})")
    return np.ascontiguousarray(x)


def write_image_array(path: str | os.PathLike, x: np.ndarray) -> None:
    """Write uint8 images (N, H, W, C) to a .npz under key `x`, atomically: no reader sees half a file."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".npz":
        raise ValueError(f"path={str(path)!r}: image arrays are written as .npz; give a path ending in .npz")
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in CHANNEL_COUNTS:
        raise ValueError(f"x: expected uint8 images shaped (N, H, W, C) with C in {{1, 3}}, "
                         f"got {x.dtype} of shape {x.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, x=x))
