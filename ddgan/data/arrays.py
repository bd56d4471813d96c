"""The image-array file convention: uint8 images (N, H, W, C) in a `.npz` under key `x`, or in a `.npy`.

A `.npz` may also carry class labels: an integer array `y`, one label per image, and optionally the class
names as a string array `classes` (label i names classes[i]).
"""

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ddgan.runtime.files import atomic_write

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


def write_image_array(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None = None,
                      classes: Sequence[str] | np.ndarray | None = None) -> None:
    """Write uint8 images (N, H, W, C) to a .npz under key `x`, atomically: no reader sees half a file.

    With `y`, one integer label per image is written as int64 under `y`, and with `classes` too, the class
    names as a unicode array under `classes`; both are checked as `read_labels` checks them.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() != ".npz":
        raise ValueError(f"path={str(path)!r}: image arrays are written as .npz; give a path ending in .npz")
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in CHANNEL_COUNTS:
        raise ValueError(f"x: expected uint8 images shaped (N, H, W, C) with C in {{1, 3}}, "
                         f"got {x.dtype} of shape {x.shape}")
    arrays = {"x": x}
    if y is not None:
        arrays["y"], names = check_labels(str(path), np.asarray(y), len(x), classes)
        if classes is not None:
            arrays["classes"] = np.array(names, dtype=str)
    elif classes is not None:
        raise ValueError(f"{str(path)!r}: classes were given without labels; pass y (one label per image) too")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: write_npz(f, arrays))


def write_npz(file, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (uncompressed), with fixed entry dates: the same arrays always give the same bytes."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            with archive.open(entry, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asanyarray(array), allow_pickle=False)


def read_labels(path: str | os.PathLike, image_count: int | None = None) -> tuple[np.ndarray, list[str]] | None:
    """The class labels of an image array file: int64 labels (N,) and the class names, or None when it has none.

    Labels are a .npz's integer array `y`; names its string array `classes`, else "0", "1", ... up to the
    largest label. A .npy holds images only. `image_count` is the file's number of images, when the caller
    has already read them; otherwise they are read to count them.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() != ".npz":
        return None
    count = len(read_image_array(path)) if image_count is None else image_count
    with np.load(path, allow_pickle=False) as archive:
        if "y" not in archive.files:
            if "classes" in archive.files:
                raise ValueError(f"{str(path)!r} holds class names `classes` but no labels; store one integer "
                                 "label per image under key 'y'")
            return None
        y = archive["y"]
        try:
            classes = archive["classes"] if "classes" in archive.files else None
        except ValueError as err:  # an object array, which would need unpickling
            raise ValueError(f"{str(path)!r}: cannot read `classes` ({err}); store the class names as a string "
                             "array: np.array(names, dtype=str)") from err
    return check_labels(str(path), y, count, classes)


def check_labels(file: str, y: np.ndarray, image_count: int,
                 classes: Sequence[str] | np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """Check labels `y` of `image_count` images of `file` (and class names, if any): int64 labels, names."""
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{file!r}: `y` holds {y.dtype} labels; expected integer class indices 0..K-1 "
                         "(from whole-number floats: y.astype(np.int64); from one-hot rows: y.argmax(1))")
    if y.shape != (image_count,):
        raise ValueError(f"{file!r}: `y` has shape {y.shape} for {image_count} images; expected one label per "
                         f"image, shape ({image_count},)")
    if image_count and y.min() < 0:
        raise ValueError(f"{file!r}: `y` holds the negative label {y.min()}; expected class indices 0..K-1")
    largest = int(y.max()) if image_count else -1
    if classes is None:
        return y.astype(np.int64), [str(k) for k in range(largest + 1)]
    names = np.asarray(classes)
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ValueError(f"{file!r}: `classes` is {names.dtype} of shape {names.shape}; expected the class names "
                         "as a 1-D string array: np.array(names, dtype=str)")
    if largest >= len(names):
        raise ValueError(f"{file!r}: `y` holds the label {largest} but `classes` names only {len(names)} "
                         f"classes (labels 0..{len(names) - 1}); add the missing names or fix the labels")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    return y.astype(np.int64), names
