"""Where images come from: folders, zip archives, LMDBs and in-memory arrays, each read one image at a time.

A source knows its `name`, its length, how to `load(index)` one image (a decoded PIL image, or a uint8
array (H, W, C)), how to `describe(index)` where that image lives for error messages, and whether its
images may be mirrored (`flippable`). Conversion and resizing are the dataset's job and random flips the
training iteration's, so every source is read the same way.

A source that knows its images' classes holds them as `labels`, int64 (N,), and their names as
`class_names`; one without has labels None and no names. `source_labels` is how the dataset reads them.
"""

import io
import math
import os
import zipfile
from pathlib import Path
from typing import IO, Protocol

import lmdb
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# What a corrupt, truncated or missing image raises while being read and decoded.
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, zipfile.BadZipFile,
               lmdb.Error)


class ImageSource(Protocol):
    """A sequence of images that are read on demand."""

    name: str
    flippable: bool  # whether a left-right mirror of an image is still an image of the data
    labels: np.ndarray | None  # image i's class index, or None when the images have no classes
    class_names: list[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image | np.ndarray: ...

    def describe(self, index: int) -> str: ...


def allowed_bad_images(skip_bad_images: int | bool) -> float:
    """How many unreadable images --skip_bad_images lets a run skip: a count, True for any number, False for none."""
    if isinstance(skip_bad_images, bool):
        return math.inf if skip_bad_images else 0
    if not isinstance(skip_bad_images, int | float) or skip_bad_images < 0:
        raise ValueError(f"--skip_bad_images={skip_bad_images!r}: give how many unreadable images to skip (0 stops "
                         "at the first), or True for any number")
    return skip_bad_images


def check_bad_budget(count: int, allowed: float, error: Exception) -> None:
    """Raise BadImageError when `count` unreadable images are more than --skip_bad_images allows."""
    if count > allowed:
        raise BadImageError(f"{error}; that is {count} unreadable images, more than --skip_bad_images={allowed:g} "
                            "allows: fix or remove them, or raise the count")


class BadImageError(OSError):
    """An image that cannot be read or decoded; the message names where it came from."""


def decode_image(file: str | Path | IO[bytes]) -> Image.Image:
    """Open and fully decode an image, so that a truncated file fails here rather than later."""
    with Image.open(file) as image:
        image.load()
    return image


def path_parts(relative_path: str) -> list[str]:
    """The folders and file name of a path inside a dataset, split on either slash (zips made on Windows)."""
    return relative_path.replace("\\", "/").split("/")


def is_image_name(relative_path: str) -> bool:
    """Whether a path inside a dataset names an image: a known extension, no hidden or macOS metadata part."""
    parts = path_parts(relative_path)
    # macOS archives carry `__MACOSX/` folders and `._name.png` resource forks that are not images.
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def classes_by_first_folder(relative_paths: list[str]) -> tuple[np.ndarray | None, list[str], int | None]:
    """Each image's class: its first-level folder, the classes being those folders sorted by name.

    Numbered as torchvision's ImageFolder numbers them; deeper folders belong to their first-level folder.
    Returns (labels, class names, None), or (None, [], index) when the image at `index`, and perhaps
    others, sits directly at the top, outside every class folder.
    """
    folders = []
    for index, relative_path in enumerate(relative_paths):
        parts = path_parts(relative_path)
        if len(parts) == 1:
            return None, [], index
        folders.append(parts[0])
    class_names = sorted(set(folders))
    class_index = {name: k for k, name in enumerate(class_names)}
    return np.array([class_index[f] for f in folders], dtype=np.int64), class_names, None


def source_labels(source: ImageSource) -> tuple[np.ndarray | None, list[str]]:
    """A source's labels, int64 (N,), and class names, checked against each other; (None, []) without labels."""
    labels = getattr(source, "labels", None)
    if labels is None:
        return None, []
    labels, class_names = np.asarray(labels, dtype=np.int64), list(getattr(source, "class_names", []))
    if labels.shape != (len(source),):
        raise ValueError(f"{source.name}: {labels.shape} labels for {len(source)} images; expected one per image")
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(class_names):
        raise ValueError(f"{source.name}: labels span {labels.min()}..{labels.max()} but there are "
                         f"{len(class_names)} class names; expected labels 0..{len(class_names) - 1}")
    return labels, class_names


class FolderSource:
    """The image files under a folder, found recursively, in sorted order of their relative paths.

    The first-level sub-folders are the classes (see classes_by_first_folder); when an image lies directly
    in the folder there are none, and `unclassified` is its index.
    """

    flippable = True

    def __init__(self, root: Path):
        self.root = root
        self.name = str(root)
        found = []
        for folder, subfolders, files in os.walk(root, followlinks=True):
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]
            relative = Path(folder).relative_to(root)
            found += [(relative / f).as_posix() for f in files if is_image_name(f)]
        self.files = sorted(found)
        if not self.files:
            raise ValueError(f"data={str(root)!r}: the folder holds no images "
                             f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}, searched recursively)")
        self.labels, self.class_names, self.unclassified = classes_by_first_folder(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        """Decode the image file at `index`."""
        return decode_image(self.root / self.files[index])

    def describe(self, index: int) -> str:
        """The image's file path."""
        return str(self.root / self.files[index])


class ZipSource:
    """The image files inside a zip archive, in sorted order of their names, read without extracting.

    Classes come from the archive's first-level folders, as for FolderSource.
    """

    flippable = True

    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as err:
            raise ValueError(f"data={str(path)!r} is not a readable zip archive: {err}") from err
        self.members = sorted(n for n in names if not n.endswith("/") and is_image_name(n))
        if not self.members:
            raise ValueError(f"data={str(path)!r}: the zip archive holds no images "
                             f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
        self.labels, self.class_names, self.unclassified = classes_by_first_folder(self.members)
        self._archive, self._pid = None, None

    def __len__(self) -> int:
        return len(self.members)

    def __getstate__(self) -> dict:
        # An open archive does not pickle, and must not be shared: each worker opens its own.
        return {**self.__dict__, "_archive": None, "_pid": None}

    def _open(self) -> zipfile.ZipFile:
        """This process's own handle on the archive: a forked worker must not share its parent's offset."""
        if self._archive is None or self._pid != os.getpid():
            self._archive, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._archive

    def load(self, index: int) -> Image.Image:
        """Decode the archive member at `index`."""
        return decode_image(io.BytesIO(self._open().read(self.members[index])))

    def describe(self, index: int) -> str:
        """The archive and the member's name in it."""
        return f"{self.path}:{self.members[index]}"


class MissingEntryError(OSError):
    """An LMDB entry that should hold an image is missing: an OSError, so it counts as an unreadable image."""


def lmdb_location(path: Path) -> tuple[Path, bool] | None:
    """The LMDB under `path` and whether it is a directory environment, or None when `path` is not one."""
    if path.is_dir():
        if (path / "data.mdb").is_file():
            return path, True
        # The original code's CelebA-HQ layout: a root folder holding `train.lmdb` (and `validation.lmdb`).
        if (path / "train.lmdb").exists():
            return lmdb_location(path / "train.lmdb")
        return None
    if path.name == "data.mdb":
        return path.parent, True
    if path.suffix.lower() in (".lmdb", ".mdb"):
        return path, False
    return None


# This process's read-only LMDB handles, with the process id that opened each.
_environments: dict[tuple[Path, bool], tuple[int, lmdb.Environment]] = {}


def open_environment(path: Path, is_dir: bool) -> lmdb.Environment:
    """This process's read-only handle on an LMDB, shared by every dataset that reads it.

    LMDB refuses to open one environment twice in a process, and a handle must not be used across a
    fork: a forked DataLoader worker closes the copy it inherited and opens its own.
    """
    key = (path.resolve(), is_dir)
    owner, env = _environments.get(key, (None, None))
    if env is not None and owner == os.getpid():
        return env
    if env is not None:
        env.close()  # closes only this process's copy of the parent's map
    env = lmdb.open(str(path), subdir=is_dir, readonly=True, lock=False, readahead=False, meminit=False)
    _environments[key] = os.getpid(), env
    return env


class LmdbSource:
    """Images stored in an LMDB, in one of the layouts the original code reads.

    Index layout (CelebA-HQ): keys b"0" .. b"N-1", each holding encoded image bytes (png/jpg/webp) or raw
    square RGB bytes (side * side * 3); N is a stored b"length" entry if present, else the entry count.
    Key-list layout (LSUN): arbitrary keys, in LMDB key order, each holding encoded image bytes.
    """

    flippable = True

    def __init__(self, path: Path, is_dir: bool, name: str | None = None):
        self.path, self.is_dir = path, is_dir
        self.name = name or str(path)
        self.labels, self.class_names = None, []
        try:
            with open_environment(path, is_dir).begin() as txn:
                self.keys, self.length, self.raw_side = self._index(txn)
        except lmdb.Error as err:
            raise ValueError(f"data={self.name!r}: cannot open {str(path)!r} as an LMDB: {err}") from err

    def _index(self, txn: lmdb.Transaction) -> tuple[list[bytes] | None, int, int]:
        """The key list (None in the index layout), the length, and the raw image side (0: encoded images)."""
        entries = txn.stat()["entries"]
        if entries == 0:
            raise ValueError(f"LMDB {str(self.path)!r} is empty")
        first = txn.get(b"0")
        if first is None:
            keys = list(txn.cursor().iternext(keys=True, values=False))
            if not _looks_encoded(txn.get(keys[0])):
                raise ValueError(f"LMDB {str(self.path)!r} has no key b'0' (index layout: keys '0'..'N-1') "
                                 f"and its first key {keys[0][:40]!r} holds no encoded image (LSUN layout)")
            return keys, len(keys), 0
        stored = txn.get(b"length")
        length = int(stored) if stored is not None else entries
        if txn.get(str(length - 1).encode()) is None:
            raise ValueError(f"LMDB {str(self.path)!r} has key b'0' but not b'{length - 1}': expected keys "
                             f"'0'..'N-1' with N = {length} (the stored 'length', else the entry count)")
        if _looks_encoded(first):
            return None, length, 0
        side = math.isqrt(len(first) // 3)
        if side < 2 or 3 * side * side != len(first):
            raise ValueError(f"LMDB {str(self.path)!r}: the value under key b'0' ({len(first)} bytes) is "
                             "neither an encoded image nor raw square RGB bytes")
        return None, length, side

    def __len__(self) -> int:
        return self.length

    def _key(self, index: int) -> bytes:
        """The key that item `index` is stored under."""
        return self.keys[index] if self.keys is not None else str(index).encode()

    def load(self, index: int) -> Image.Image | np.ndarray:
        """Decode the image stored for item `index`."""
        key = self._key(index)
        with open_environment(self.path, self.is_dir).begin() as txn:
            value = txn.get(key)
        if value is None:
            raise MissingEntryError(f"no entry under key {key!r}")
        if self.raw_side:
            return np.frombuffer(value, dtype=np.uint8).reshape(self.raw_side, self.raw_side, 3)
        return decode_image(io.BytesIO(value))

    def describe(self, index: int) -> str:
        """The LMDB and the item's key in it."""
        return f"{self.path}[key {self._key(index).decode(errors='replace')!r}]"


def _looks_encoded(value: bytes | None) -> bool:
    """Whether bytes start like an image file that PIL can decode."""
    if value is None:
        return False
    try:
        with Image.open(io.BytesIO(value)):
            return True
    except (OSError, SyntaxError, ValueError):
        return False


class ArraySource:
    """Images held in memory as a uint8 array (N, H, W, C), with their int labels (N,) and class names if known."""

    flippable = True

    def __init__(self, images: np.ndarray, name: str, labels: np.ndarray | None = None,
                 class_names: list[str] | tuple[str, ...] = ()):
        self.images = images
        self.name = name
        self.labels, self.class_names = labels, list(class_names)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray:
        """Image `index` as a uint8 array (H, W, C)."""
        return self.images[index]

    def describe(self, index: int) -> str:
        """The array's name and the index."""
        return f"{self.name}[{index}]"


class StackedMnistSource:
    """StackedMNIST, the original's mode-coverage benchmark: three random MNIST digits as R, G and B, 32 px.

    Each channel walks two independent permutations of the digits, giving 2 * len(digits) images; the
    digits are padded by 2 pixels (28 -> 32), as in the original, rather than resized.
    """

    flippable = False  # a mirrored digit is not a digit

    def __init__(self, digits: np.ndarray, seed: int = 0):
        self.digits = digits
        self.name = "stackmnist"
        # Mode-coverage runs are unconditional; a class here would be one of 1000 digit triples.
        self.labels, self.class_names = None, []
        rng = np.random.default_rng(seed)
        count = len(digits)
        self.triples = np.stack(
            [np.concatenate([rng.permutation(count), rng.permutation(count)]) for _ in range(3)], axis=1)

    def __len__(self) -> int:
        return len(self.triples)

    def load(self, index: int) -> np.ndarray:
        """The three digits of image `index`, stacked as channels and padded to 32 x 32."""
        image = np.zeros((32, 32, 3), dtype=np.uint8)
        image[2:30, 2:30] = self.digits[self.triples[index]].transpose(1, 2, 0)
        return image

    def describe(self, index: int) -> str:
        """The digits' indices in MNIST."""
        return f"stackmnist[{index}] (MNIST digits {self.triples[index].tolist()})"
