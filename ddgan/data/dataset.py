"""Training images as the model sees them, and `open_dataset`, which turns a name or a path into them."""

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ddgan.data.arrays import read_image_array, read_labels
from ddgan.data.demo import DemoShapes, DemoSource
from ddgan.data.images import check_image_args, fit_image, pixels_to_tensor
from ddgan.data.shards import is_sharded, open_sharded
from ddgan.data.sources import (
    READ_ERRORS,
    ArraySource,
    BadImageError,
    FolderSource,
    ImageSource,
    LmdbSource,
    StackedMnistSource,
    ZipSource,
    allowed_bad_images,
    check_bad_budget,
    lmdb_location,
    source_labels,
)
from ddgan.data.streams import ShardStream

DATASET_NAMES = ("demo", "cifar10", "stackmnist")


class ImageDataset(Dataset):
    """Images from a source as float32 tensors (C, H, W) in [-1, 1], ready for the diffusion.

    Each image is converted to `num_channels` (1: grayscale, 3: RGB), resized with antialiased bicubic
    filtering so its shorter side is `image_size` and center-cropped to a square; random flips are the
    training iteration's (`Trainer.flip`), where `flippable` allows them. An unreadable image raises
    BadImageError naming it; with
    `skip_bad_images` it is reported once as a warning and the next readable image stands in for it.

    The source's classes are `labels` (int64 (N,), None when it has none), `class_names` and `num_classes`;
    `with_labels` makes items (image, label) pairs, the label an int, and needs a labeled source.
    """

    def __init__(self, source: ImageSource, image_size: int, num_channels: int = 3, skip_bad_images: bool = False,
                 with_labels: bool = False):
        check_image_args(image_size, num_channels)
        self.labels, self.class_names = source_labels(source)
        if with_labels and self.labels is None:
            raise ValueError(missing_labels_message(source))
        self.with_labels = with_labels
        self.source = source
        self.image_size, self.num_channels = image_size, num_channels
        self.skip_bad_images = allowed_bad_images(skip_bad_images)
        # DataLoader workers each hold a copy of the dataset; flags in shared memory let the count span them.
        self._bad = torch.zeros(len(source), dtype=torch.uint8).share_memory_() if skip_bad_images else None
        self._warned_small = False

    @property
    def name(self) -> str:
        """The dataset's name or path."""
        return self.source.name

    @property
    def num_classes(self) -> int:
        """How many classes the images fall into; 0 when they have no labels."""
        return len(self.class_names)

    @property
    def flippable(self) -> bool:
        """Whether a left-right mirror of an image is still an image of the data (not for digits)."""
        return getattr(self.source, "flippable", True)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        read, image = self._read_readable(index)
        # The label of the image actually read: a skipped image's stand-in brings its own class.
        return (image, int(self.labels[read])) if self.with_labels else image

    def bad_image_count(self) -> int:
        """How many distinct unreadable images have been skipped so far, across all loader workers."""
        return 0 if self._bad is None else int(self._bad.sum())

    def _read_readable(self, index: int) -> tuple[int, torch.Tensor]:
        """Image `index`, or with skip_bad_images the first readable one after it (wrapping around), and its index."""
        if not self.skip_bad_images:
            return index, self._read(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if self._bad[candidate]:
                continue
            try:
                return candidate, self._read(candidate)
            except BadImageError as err:
                self._bad[candidate] = 1
                check_bad_budget(self.bad_image_count(), self.skip_bad_images, err)
                warnings.warn(f"skipping an unreadable image: {err} ({self.bad_image_count()} skipped so far, "
                              f"--skip_bad_images={self.skip_bad_images:g})", stacklevel=2)
        raise BadImageError(f"no readable image left in {self.name}: all {len(self)} failed to decode")

    def _read(self, index: int) -> torch.Tensor:
        """Load, convert and fit image `index`, naming it in the error if it cannot be decoded."""
        try:
            pixels = self._fit(self.source.load(index), index)
        except READ_ERRORS as err:
            raise BadImageError(f"cannot read image {self.source.describe(index)}: {err}") from err
        return pixels_to_tensor(pixels)

    def _fit(self, image: Image.Image | np.ndarray, index: int) -> np.ndarray:
        """Convert channels, resize the shorter side to image_size, center-crop: uint8 (H, W[, C])."""
        def warn_small(width: int, height: int) -> None:
            if not self._warned_small:
                self._warned_small = True
                warnings.warn(f"{self.source.describe(index)} is {width}x{height}, smaller than "
                              f"image_size={self.image_size}: upscaling it and any other small image in {self.name}",
                              stacklevel=6)
        return fit_image(image, self.image_size, self.num_channels, warn_small)


def missing_labels_message(source: ImageSource) -> str:
    """Why a source cannot give class labels, and where labels come from."""
    unclassified = getattr(source, "unclassified", None)
    if unclassified is not None:
        return (f"--cond=True needs class labels, and {source.name} has images outside any class sub-folder, such "
                f"as {source.describe(unclassified)}; move the images into one sub-folder per class "
                "(<data>/<class>/<image>; the sub-folders' sorted names are the classes)")
    return (f"--cond=True needs class labels, and {source.name} has none; labels come from cifar10, demo, an image "
            "folder or .zip with one sub-folder per class, or a .npz with an int array `y` beside `x`")


def default_data_root() -> Path:
    """Where named datasets live: $DDGAN_DATA, else ~/.cache/ddgan/datasets."""
    return Path(os.environ.get("DDGAN_DATA") or Path.home() / ".cache" / "ddgan" / "datasets").expanduser()


def open_dataset(data: str, image_size: int, num_channels: int = 3, download: bool = False,
                 skip_bad_images: bool = False, root: str | None = None, labels: bool = False,
                 image_column: str = "", label_column: str = "") -> ImageDataset:
    """Open training images by name or path, as float32 tensors (C, H, W) in [-1, 1].

    `data` is a name — 'demo' (built-in shapes, nothing to download), 'cifar10' (train split, under
    `root`, default $DDGAN_DATA or ~/.cache/ddgan/datasets, fetched only when `download`), 'stackmnist'
    (from MNIST under `root`; not `flippable`, since a mirrored digit is not a digit) — or a path to a
    folder of images (searched recursively), a .zip of images, an LMDB (see LmdbSource), or a .npz/.npy
    uint8 array (see read_image_array). Names take precedence: write './cifar10' for a folder of that name.

    Shards stream instead (a ShardStream, see ddgan.data.shards): WebDataset .tar shards (a brace or glob
    pattern, a folder of .tar files, a .txt list of paths or URLs) and Hugging Face datasets (hf:owner/name[:split],
    parquet files); `image_column` and `label_column` name their columns, guessed when empty. A folder written
    by `save_to_disk` opens with random access, as an image folder does.

    With `labels`, items are (image, class label) pairs, for class-conditional training. Labels come from
    cifar10's classes, the demo's shapes (SHAPES order), a folder's or .zip's first-level sub-folders
    (sorted by name), or a .npz's int array `y` (and names `classes`, see read_labels); the dataset's
    `labels`, `class_names` and `num_classes` describe them either way.
    """
    check_image_args(image_size, num_channels)
    data_root = Path(root).expanduser() if root is not None else default_data_root()
    if data == "demo":
        source = DemoSource(DemoShapes(image_size=max(image_size, 8), num_channels=num_channels))
    elif data == "cifar10":
        images, classes, class_names = torchvision_images("CIFAR10", data_root, download)
        source = ArraySource(images, "cifar10", classes, class_names)
    elif data == "stackmnist":
        digits, _, _ = torchvision_images("MNIST", data_root, download)
        source = StackedMnistSource(digits)
    elif is_sharded(data):
        source = open_sharded(data, image_size, num_channels, skip_bad_images, labels, image_column, label_column)
        if isinstance(source, ShardStream):
            return source
    else:
        source = open_path(data, labels_required=labels)
    return ImageDataset(source, image_size, num_channels, skip_bad_images=skip_bad_images, with_labels=labels)


def open_path(data: str, labels_required: bool = False) -> ImageSource:
    """The image source a path points to, told apart by its suffix and contents."""
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data={data!r} is neither a dataset name ({', '.join(DATASET_NAMES)}) "
                                "nor an existing path")
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".npz", ".npy"):
        return array_file_source(path, labels_required)
    if path.is_file() and suffix == ".zip":
        return ZipSource(path)
    location = lmdb_location(path)
    if location is not None:
        return LmdbSource(*location, name=str(path))
    if path.is_dir():
        return FolderSource(path)
    raise ValueError(f"data={data!r}: unsupported file type {suffix or '(none)'!r}; expected a folder of "
                     "images, a .zip of images, an LMDB, or a .npz/.npy image array")


def array_file_source(path: Path, labels_required: bool) -> ArraySource:
    """The images of a .npz/.npy file and their labels, if any.

    Broken labels fail only a run that needs them: the images are fine, so one that trains without labels
    warns and goes on.
    """
    images = read_image_array(path)
    try:
        labels, class_names = read_labels(path, len(images)) or (None, [])
    except ValueError as err:
        if labels_required:
            raise
        warnings.warn(f"ignoring the class labels of {path}: {err}", stacklevel=4)
        labels, class_names = None, []
    return ArraySource(images, str(path), labels, class_names)


# Where torchvision looks under the root, and how to put the files there by hand.
TORCHVISION_DATASETS = {
    "CIFAR10": ("cifar-10-batches-py", "unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
                                       "into the root (it holds cifar-10-batches-py/)"),
    "MNIST": ("MNIST/raw", "gunzip the four *-ubyte.gz files of https://ossci-datasets.s3.amazonaws.com/mnist/ "
                           "into <root>/MNIST/raw"),
}


# The torchvision datasets whose labels are the images' classes (a StackedMNIST image is three MNIST digits).
LABELED_TORCHVISION_DATASETS = ("CIFAR10",)


def torchvision_images(kind: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """A torchvision dataset's training images as uint8 numpy, its int64 labels and its class names.

    Labels are None and names [] for a dataset not in LABELED_TORCHVISION_DATASETS. Errors say how to get the files.
    """
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
    if kind not in LABELED_TORCHVISION_DATASETS:
        return np.asarray(dataset.data), None, []
    return np.asarray(dataset.data), np.asarray(dataset.targets, dtype=np.int64), list(dataset.classes)


def describe_dataset(ds: Dataset) -> str:
    """One line for logs: the dataset's name, size, image resolution, and its number of classes if it has labels."""
    if isinstance(ds, ShardStream):
        return ds.describe()
    if isinstance(ds, ImageDataset):
        classes = "" if ds.labels is None else f", {ds.num_classes} class{'es' if ds.num_classes != 1 else ''}"
        return f"{ds.name}: {len(ds)} images of {ds.num_channels}x{ds.image_size}x{ds.image_size}{classes}"
    name = getattr(ds, "name", type(ds).__name__)
    try:
        first = ds[0]
        first = first[0] if isinstance(first, tuple | list) else first
        shape = "x".join(str(n) for n in first.shape)
    except Exception:  # a log line must never stop a run
        shape = "unknown size"
    return f"{name}: {len(ds)} images of {shape}"
