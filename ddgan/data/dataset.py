"""Training images as the model sees them, and `open_dataset`, which turns a name or a path into them."""

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ddgan.data.arrays import read_image_array
from ddgan.data.demo import DemoShapes
from ddgan.data.sources import (
    READ_ERRORS,
    ArraySource,
    FolderSource,
    ImageSource,
    LmdbSource,
    StackedMnistSource,
    ZipSource,
    lmdb_location,
)

DATASET_NAMES = ("demo", "cifar10", "stackmnist")


class BadImageError(OSError):
    """An image that cannot be read or decoded; the message names where it came from."""


class ImageDataset(Dataset):
    """Images from a source as float32 tensors (C, H, W) in [-1, 1], ready for the diffusion.

    Each image is converted to `num_channels` (1: grayscale, 3: RGB), resized with antialiased bicubic
    filtering so its shorter side is `image_size` and center-cropped to a square; random flips are the
    training iteration's (`Trainer.flip`), where `flippable` allows them. An unreadable image raises
    BadImageError naming it; with
    `skip_bad_images` it is reported once as a warning and the next readable image stands in for it.
    """

    def __init__(self, source: ImageSource, image_size: int, num_channels: int = 3, skip_bad_images: bool = False):
        check_image_args(image_size, num_channels)
        self.source = source
        self.image_size, self.num_channels = image_size, num_channels
        self.skip_bad_images = skip_bad_images
        # DataLoader workers each hold a copy of the dataset; flags in shared memory let the count span them.
        self._bad = torch.zeros(len(source), dtype=torch.uint8).share_memory_() if skip_bad_images else None
        self._warned_small = False

    @property
    def name(self) -> str:
        """The dataset's name or path."""
        return self.source.name

    @property
    def flippable(self) -> bool:
        """Whether a left-right mirror of an image is still an image of the data (not for digits)."""
        return getattr(self.source, "flippable", True)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self._read_readable(index)

    def bad_image_count(self) -> int:
        """How many distinct unreadable images have been skipped so far, across all loader workers."""
        return 0 if self._bad is None else int(self._bad.sum())

    def _read_readable(self, index: int) -> torch.Tensor:
        """Image `index`, or with skip_bad_images the first readable one after it (wrapping around)."""
        if not self.skip_bad_images:
            return self._read(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if self._bad[candidate]:
                continue
            try:
                return self._read(candidate)
            except BadImageError as err:
                self._bad[candidate] = 1
                warnings.warn(f"skipping an unreadable image: {err}", stacklevel=2)
        raise BadImageError(f"no readable image left in {self.name}: all {len(self)} failed to decode")

    def _read(self, index: int) -> torch.Tensor:
        """Load, convert and fit image `index`, naming it in the error if it cannot be decoded."""
        try:
            pixels = self._fit(self.source.load(index), index)
        except READ_ERRORS as err:
            raise BadImageError(f"cannot read image {self.source.describe(index)}: {err}") from err
        pixels = np.asarray(pixels, dtype=np.float32) / 127.5 - 1
        tensor = torch.from_numpy(pixels)
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()

    def _fit(self, image: Image.Image | np.ndarray, index: int) -> np.ndarray:
        """Convert channels, resize the shorter side to image_size, center-crop: uint8 (H, W[, C])."""
        size = self.image_size
        if isinstance(image, np.ndarray):
            if image.shape == (size, size, self.num_channels):
                return image
            image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        image = to_channels(image, self.num_channels)
        if min(image.size) < size and not self._warned_small:
            self._warned_small = True
            warnings.warn(f"{self.source.describe(index)} is {image.size[0]}x{image.size[1]}, smaller than "
                          f"image_size={size}: upscaling it and any other small image in {self.name}",
                          stacklevel=4)
        if image.size != (size, size):
            image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
        return np.asarray(image)


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


def default_data_root() -> Path:
    """Where named datasets live: $DDGAN_DATA, else ~/.cache/ddgan/datasets."""
    return Path(os.environ.get("DDGAN_DATA") or Path.home() / ".cache" / "ddgan" / "datasets").expanduser()


def open_dataset(data: str, image_size: int, num_channels: int = 3, download: bool = False,
                 skip_bad_images: bool = False, root: str | None = None) -> ImageDataset:
    """Open training images by name or path, as float32 tensors (C, H, W) in [-1, 1].

    `data` is a name — 'demo' (built-in shapes, nothing to download), 'cifar10' (train split, under
    `root`, default $DDGAN_DATA or ~/.cache/ddgan/datasets, fetched only when `download`), 'stackmnist'
    (from MNIST under `root`; not `flippable`, since a mirrored digit is not a digit) — or a path to a
    folder of images (searched recursively), a .zip of images, an LMDB (see LmdbSource), or a .npz/.npy
    uint8 array (see read_image_array). Names take precedence: write './cifar10' for a folder of that name.
    """
    check_image_args(image_size, num_channels)
    data_root = Path(root).expanduser() if root is not None else default_data_root()
    if data == "demo":
        demo = DemoShapes(image_size=max(image_size, 8), num_channels=num_channels)
        source = ArraySource(demo.images.permute(0, 2, 3, 1).numpy(), name="demo")
    elif data == "cifar10":
        source = ArraySource(torchvision_images("CIFAR10", data_root, download), name="cifar10")
    elif data == "stackmnist":
        source = StackedMnistSource(torchvision_images("MNIST", data_root, download))
    else:
        source = open_path(data)
    return ImageDataset(source, image_size, num_channels, skip_bad_images=skip_bad_images)


def open_path(data: str) -> ImageSource:
    """The image source a path points to, told apart by its suffix and contents."""
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data={data!r} is neither a dataset name ({', '.join(DATASET_NAMES)}) "
                                "nor an existing path")
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".npz", ".npy"):
        return ArraySource(read_image_array(path), name=str(path))
    if path.is_file() and suffix == ".zip":
        return ZipSource(path)
    location = lmdb_location(path)
    if location is not None:
        return LmdbSource(*location, name=str(path))
    if path.is_dir():
        return FolderSource(path)
    raise ValueError(f"data={data!r}: unsupported file type {suffix or '(none)'!r}; expected a folder of "
                     "images, a .zip of images, an LMDB, or a .npz/.npy image array")


# Where torchvision looks under the root, and how to put the files there by hand.
TORCHVISION_DATASETS = {
    "CIFAR10": ("cifar-10-batches-py", "unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
                                       "into the root (it holds cifar-10-batches-py/)"),
    "MNIST": ("MNIST/raw", "gunzip the four *-ubyte.gz files of https://ossci-datasets.s3.amazonaws.com/mnist/ "
                           "into <root>/MNIST/raw"),
}


def torchvision_images(kind: str, root: Path, download: bool) -> np.ndarray:
    """A torchvision dataset's training images as uint8 numpy; its errors say how to get the files."""
    import torchvision.datasets

    folder, by_hand = TORCHVISION_DATASETS[kind]
    where = f"{root / folder} (root={str(root)!r}; change it with --root or $DDGAN_DATA)"
    if download:
        root.mkdir(parents=True, exist_ok=True)
    try:
        dataset = getattr(torchvision.datasets, kind)(str(root), train=True, download=download)
    except (OSError, RuntimeError) as err:
        if download:
            raise RuntimeError(f"could not download {kind} into {where}: {err}. Without internet access, "
                               f"fetch the files on another machine, then {by_hand}") from err
        raise FileNotFoundError(f"{kind} not found at {where}. Pass --download (download=True) to fetch it, "
                                f"or {by_hand}") from err
    return np.asarray(dataset.data)


def describe_dataset(ds: Dataset) -> str:
    """One line for logs: the dataset's name, size and image resolution."""
    if isinstance(ds, ImageDataset):
        return f"{ds.name}: {len(ds)} images of {ds.num_channels}x{ds.image_size}x{ds.image_size}"
    name = getattr(ds, "name", type(ds).__name__)
    try:
        first = ds[0]
        first = first[0] if isinstance(first, tuple | list) else first
        shape = "x".join(str(n) for n in first.shape)
    except Exception:  # a log line must never stop a run
        shape = "unknown size"
    return f"{name}: {len(ds)} images of {shape}"
