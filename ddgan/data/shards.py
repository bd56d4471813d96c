"""Data in shards: WebDataset tar shards and Hugging Face datasets, streamed and dealt out without overlap.

A stream never holds the data in memory and never needs random access. Its shards are S_0 .. S_{n-1}: a
pattern's expansion or a list file's lines in their order, a folder's .tar files sorted by name, a Hugging
Face dataset's data files in the library's order. What a run reads, exactly:

- The global shard sequence is epoch after epoch, epoch e being the n shards permuted by a generator seeded
  with seed + e (InfiniteSampler's permutation).
- There are Q = ranks x loader workers readers (a rank that loads in its own process has one); reader
  q = worker * ranks + rank takes positions q, q + Q, q + 2Q, ... of the sequence and reads each of its
  shards whole, samples in file order. Every sample it yields fills one of its "slots", counted from 0.
- Rank r's DataLoader takes batch j from worker j mod W (torch's order), the next batch_size slots of that
  worker's reader.
- A run that drew k batches per rank restarts with start_index = k * batch_size (make_loader): loader worker
  i plays worker (i + k) mod W, so batch k still comes from worker k mod W, and each reader starts at the
  slot after the last one it served. The stream then continues exactly, for the same seed, number of ranks,
  --workers and per-rank batch size; with others it is another deal of the same shards.

Reaching slot s means skipping whole shards by their sample counts (a tar's headers, a parquet file's
metadata, else a read without decoding) and then s' samples into the shard, read but not decoded.

An unreadable sample (no image, an image that does not decode, a bad label) and an unreadable rest of a shard
stop the run with an error naming the shard and the sample's key; with skip_bad_images they are warned about
and counted, and the next readable sample fills their slots, so positions do not move.

Hugging Face datasets are read by ddgan.data.huggingface; a folder written by `save_to_disk` has random access
there and opens as an ArrowSource, read like any image source.
"""

from __future__ import annotations

import copy
import glob
import io
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ddgan.data.loader import InfiniteSampler
from ddgan.data.sources import (
    IMAGE_EXTENSIONS,
    READ_ERRORS,
    BadImageError,
    allowed_bad_images,
    check_bad_budget,
    decode_image,
)

if TYPE_CHECKING:
    from ddgan.data.huggingface import HubShards

INSTALL = "pip install -e '.[shards]'"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_KEYS = tuple(extension[1:] for extension in IMAGE_EXTENSIONS)  # tar member extensions that hold images
# What a broken tar raises while being read (ValueError: webdataset's duplicate member names).
TAR_ERRORS = (tarfile.TarError, OSError, ValueError, EOFError)
CLASSES_FILE = "classes.txt"  # beside tar shards: one class name per line, line k naming class k


class ShardReadError(OSError):
    """The rest of a shard cannot be read (a corrupt or truncated tar, an unreadable file)."""


def require(module: str):
    """Import an optional library of the `shards` extra, or say what installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"reading shards needs the {module} library: {INSTALL}") from err


def is_url(name: str) -> bool:
    """Whether a shard name is a URL (http://, s3://, pipe:...) rather than a local path."""
    return "://" in name or name.startswith("pipe:")


@dataclass
class Record:
    """One slot's sample before decoding: where it is, the image's bytes, its label, or why it is unreadable."""

    where: str
    image: bytes | None = None
    label: int | None = None
    problem: str = ""


class TarShards:
    """WebDataset tar shards: a sample is the members sharing a key; its image is the member with an image
    extension (or `image_key`), its class the integer text in `label_key` (cls)."""

    def __init__(self, urls: list[str], name: str, image_key: str = "", label_key: str = "cls",
                 labels: bool = False):
        self.urls, self.name = urls, name
        self.image_key, self.label_key = image_key.lstrip("."), (label_key or "cls").lstrip(".")
        self.labels = labels
        self._counts: dict[int, int] = {}
        self.check_first_sample()

    def __len__(self) -> int:
        return len(self.urls)

    def samples(self, index: int) -> Iterator[dict]:
        """The raw samples of shard `index` (webdataset's grouping), bytes undecoded; ShardReadError when broken."""
        webdataset = require("webdataset")
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        url, key = self.urls[index], None
        try:
            stream = webdataset.gopen(url)
        except (OSError, ValueError) as err:
            raise ShardReadError(f"cannot open shard {url}: {err}") from err
        try:
            for sample in group_by_keys({**f, "__url__": url} for f in tar_file_iterator(stream)):
                key = sample["__key__"]
                yield sample
        except TAR_ERRORS as err:
            raise ShardReadError(f"shard {url} is unreadable after sample {key!r}: {err}") from err
        finally:
            stream.close()

    def record(self, index: int, sample: dict) -> Record:
        """A raw sample's image bytes and label, or what is wrong with it."""
        where = f"{self.urls[index]}:{sample['__key__']}"
        parts = sorted(k for k in sample if not k.startswith("__"))
        found = [self.image_key] if self.image_key else [k for k in IMAGE_KEYS if k in sample]
        if not found or found[0] not in sample:
            wanted = self.image_key or "/".join(IMAGE_KEYS)
            return Record(where, problem=f"sample {where} holds no .{wanted} image (it has: {', '.join(parts)})")
        where = f"{where}.{found[0]}"
        if not self.labels:
            return Record(where, sample[found[0]])
        try:
            label = int(sample[self.label_key].decode().strip())
        except KeyError:
            return Record(where, problem=f"sample {where} has no .{self.label_key} class (it has: {', '.join(parts)})")
        except (UnicodeDecodeError, ValueError):
            return Record(where, problem=f"the .{self.label_key} of {where} is not an integer class: "
                                         f"{sample[self.label_key][:20]!r}")
        return Record(where, sample[found[0]], label)

    def read(self, index: int, skip: int = 0) -> Iterator[Record]:
        """Shard `index`'s samples from its `skip`-th on."""
        for position, sample in enumerate(self.samples(index)):
            if position >= skip:
                yield self.record(index, sample)

    def count(self, index: int) -> int:
        """How many samples shard `index` yields when read (up to where it breaks, if it does)."""
        if index not in self._counts:
            url = self.urls[index]
            counted = None if is_url(url) else count_tar_headers(url)
            if counted is None:
                counted = 0
                try:
                    for _ in self.samples(index):
                        counted += 1
                except ShardReadError:
                    pass
            self._counts[index] = counted
        return self._counts[index]

    def check_first_sample(self) -> None:
        """Refuse an --image_column or --label_column that the first sample does not have, naming what it has."""
        try:
            first = next(self.samples(0), None)
        except ShardReadError:
            return  # reading reports it, naming the sample
        if first is None:
            return
        parts = sorted(k for k in first if not k.startswith("__"))
        label_key = self.label_key if self.labels else ""
        for flag, key in (("--image_column", self.image_key), ("--label_column", label_key)):
            if key and key not in first:
                raise ValueError(f"{flag}={key}: the first sample of {self.urls[0]} ({first['__key__']!r}) has no "
                                 f".{key} member; its members are: {', '.join(parts)}")

    def classes(self) -> list[str]:
        """The class names: classes.txt beside the shards, else 0..K-1 with K - 1 the largest class found."""
        names_file = classes_file(self.urls)
        if names_file is not None:
            names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
            if names:
                return names
        largest = -1
        for index in range(len(self)):
            try:
                for sample in self.samples(index):
                    record = self.record(index, sample)
                    largest = max(largest, -1 if record.label is None else record.label)
            except ShardReadError:
                continue  # reading reports it
        if largest < 0:
            raise ValueError(f"--cond=True needs class labels, and no sample of {self.name} has a .{self.label_key} "
                             "member holding an integer class; pass --label_column, or train without --cond")
        return [str(k) for k in range(largest + 1)]


def count_tar_headers(path: str) -> int | None:
    """The samples of a local tar counted from its headers alone (webdataset's grouping); None if it is broken."""
    from webdataset.tariterators import group_by_keys, meta_prefix, meta_suffix

    def files(archive):
        for member in archive:
            name = member.name
            if not member.isreg() or ("/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix)):
                continue
            if re.match(r"__[^/]*__($|/)", name):  # tar_file_iterator's skip_meta
                continue
            yield {"fname": name, "data": b"", "__url__": path}

    try:
        with tarfile.open(path, "r:*") as archive:
            return sum(1 for _ in group_by_keys(files(archive)))
    except TAR_ERRORS:
        return None


def classes_file(urls: list[str]) -> Path | None:
    """classes.txt in the folder of the first local shard, if there is one."""
    if not urls or is_url(urls[0]):
        return None
    found = Path(urls[0]).expanduser().parent / CLASSES_FILE
    return found if found.is_file() else None


@dataclass(frozen=True)
class Deal:
    """Where a rank's loader stands: rank among `ranks`, loader workers, batch size, seed, batches drawn."""

    rank: int = 0
    ranks: int = 1
    workers: int = 1
    batch_size: int = 1
    seed: int = 0
    batches_drawn: int = 0


class ShardStream(IterableDataset):
    """Shards as an endless stream of float32 images (C, H, W) in [-1, 1], or (image, label) pairs.

    Images are fitted as ImageDataset fits them. `dealt` places the stream for one rank's loader (make_loader
    does this); the module docstring says what it reads, exactly.
    """

    flippable = True
    labels = None  # per-image labels are not known up front; class_names are

    def __init__(self, shards: TarShards | HubShards, image_size: int, num_channels: int = 3,
                 skip_bad_images: bool = False, with_labels: bool = False, class_names: list[str] | None = None):
        self.shards, self.name = shards, shards.name
        self.image_size, self.num_channels = image_size, num_channels
        self.skip_bad_images, self.with_labels = allowed_bad_images(skip_bad_images), with_labels
        self.class_names = list(class_names or [])
        self.deal = Deal()
        # Loader workers each hold a copy; a count in shared memory spans them.
        self._bad = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._seen_bad: set[str] = set()
        self._warned_small = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        """One line for the run log."""
        classes = f", {self.num_classes} classes" if self.with_labels else ""
        return (f"{self.name}: {len(self.shards)} shard{'s' if len(self.shards) != 1 else ''} streamed, images of "
                f"{self.num_channels}x{self.image_size}x{self.image_size}{classes}")

    def bad_image_count(self) -> int:
        """How many distinct unreadable samples have been skipped so far, across all loader workers."""
        return int(self._bad.item())

    def dealt(self, rank: int, ranks: int, workers: int, batch_size: int, seed: int, start_index: int) -> ShardStream:
        """This stream as rank `rank`'s loader with `workers` workers reads it, `start_index` samples in."""
        if start_index % batch_size:
            raise ValueError(f"start_index={start_index}: a stream resumes after whole batches of {batch_size}")
        placed = copy.copy(self)
        placed.deal = Deal(rank, ranks, max(workers, 1), batch_size, seed, start_index // batch_size)
        readers = ranks * max(workers, 1)
        if len(self.shards) < readers and rank == 0:
            warnings.warn(f"{self.name}: {len(self.shards)} shards for {readers} readers ({ranks} processes x "
                          f"{max(workers, 1)} loader workers): some read the next pass's shards while others still "
                          f"read this pass's; write at least {readers} shards, or use fewer --workers", stacklevel=3)
        return placed

    def reader_start(self, loader_worker: int) -> tuple[int, int, int]:
        """(reader, readers, first slot) for one loader worker of the dealt stream."""
        deal = self.deal
        worker = (loader_worker + deal.batches_drawn) % deal.workers
        served = len(range(worker, deal.batches_drawn, deal.workers))
        return worker * deal.ranks + deal.rank, deal.workers * deal.ranks, served * deal.batch_size

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, int]]:
        info = get_worker_info()
        return self.items(*self.reader_start(info.id if info is not None else 0))

    def shard_at(self, position: int) -> int:
        """The shard at a position of the global shard sequence."""
        epoch, offset = divmod(position, len(self.shards))
        if getattr(self, "_order", (None, None))[0] != epoch:
            self._order = epoch, InfiniteSampler(self.shards, seed=self.deal.seed).permutation(epoch)
        return self._order[1][offset]

    def records(self, reader: int, readers: int, start: int = 0) -> Iterator[Record]:
        """Reader `reader`'s slots from slot `start` on, undecoded; a broken shard's missing slots are problems."""
        position, slot, empty = reader, 0, set()
        while True:
            shard = self.shard_at(position)
            count = self.shards.count(shard)
            if count == 0:
                empty.add(shard)
                if len(empty) == len(self.shards):
                    raise ValueError(f"{self.name}: no shard holds a sample")
            if slot + count > start:
                break
            slot += count
            position += readers
        skip = start - slot
        while True:
            produced = skip
            try:
                for record in self.shards.read(shard, skip):
                    produced += 1
                    yield record
            except ShardReadError as err:
                self.report_bad(str(err), str(err))
                # A broken shard still fills the slots its count gives it, as a resumed run counts them.
                yield from (Record(str(err)) for _ in range(max(self.shards.count(shard) - produced, 0)))
            position, skip = position + readers, 0
            shard = self.shard_at(position)

    def items(self, reader: int, readers: int, start: int = 0) -> Iterator[torch.Tensor | tuple[torch.Tensor, int]]:
        """Reader `reader`'s images from slot `start` on; with skip_bad_images the next readable one fills bad slots."""
        pending = 0
        for record in self.records(reader, readers, start):
            try:
                item = self.decode(record)
            except BadSample as err:
                if record.problem or record.image is not None:  # a broken shard's rest is reported already
                    self.report_bad(record.where, str(err))
                pending += 1
                continue
            for _ in range(pending + 1):
                yield item
            pending = 0

    def decode(self, record: Record) -> torch.Tensor | tuple[torch.Tensor, int]:
        from ddgan.data.dataset import fit_image, pixels_to_tensor

        if record.problem or record.image is None:
            raise BadSample(record.problem or f"cannot read {record.where}")
        try:
            image = decode_image(io.BytesIO(record.image))
            pixels = fit_image(image, self.image_size, self.num_channels, self.warn_small(record.where))
        except READ_ERRORS as err:
            raise BadSample(f"cannot read image {record.where}: {err}") from err
        tensor = pixels_to_tensor(pixels)
        if not self.with_labels:
            return tensor
        if record.label is None or not 0 <= record.label < self.num_classes:
            raise BadSample(f"{record.where}: class {record.label} is not one of the {self.num_classes} classes "
                            f"0..{self.num_classes - 1}")
        return tensor, record.label

    def warn_small(self, where: str):
        def warn(width: int, height: int) -> None:
            if not self._warned_small:
                self._warned_small = True
                warnings.warn(f"{where} is {width}x{height}, smaller than image_size={self.image_size}: upscaling it "
                              f"and any other small image in {self.name}", stacklevel=4)
        return warn

    def report_bad(self, where: str, message: str) -> None:
        """Stop at an unreadable sample, or with skip_bad_images count it and warn, once per sample and process."""
        if not self.skip_bad_images:
            raise BadSample(message).as_error()
        if where in self._seen_bad:
            return
        self._seen_bad.add(where)
        self._bad += 1
        check_bad_budget(self.bad_image_count(), self.skip_bad_images, BadSample(message))
        warnings.warn(f"skipping an unreadable image: {message} ({self.bad_image_count()} skipped so far, "
                      f"--skip_bad_images={self.skip_bad_images:g})", stacklevel=3)


class BadSample(Exception):
    """A slot without a readable image; `as_error` is the BadImageError a strict run stops with."""

    def as_error(self):
        return BadImageError(f"{self}; pass --skip_bad_images=N to skip up to N unreadable samples")


def is_sharded(data: str) -> bool:
    """Whether --data names shards or a Hugging Face dataset rather than images to open by path."""
    if data.startswith("hf:") or is_url(data) or re.search(r"[{*?\[]", data):
        return True
    path = Path(data).expanduser()
    if path.is_dir():
        return is_arrow_folder(path) or any(path.glob("*.tar")) or bool(parquet_files(path))
    return data.lower().endswith((*TAR_SUFFIXES, ".parquet", ".txt"))


def is_arrow_folder(path: Path) -> bool:
    """Whether a folder was written by `save_to_disk` (a dataset, or a DatasetDict of them)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def parquet_files(folder: Path) -> list[Path]:
    """The parquet files in a folder, down to the two levels Hub layouts use (data/, <config>/<split>/)."""
    return sorted(p for pattern in ("*.parquet", "*/*.parquet", "*/*/*.parquet") for p in folder.glob(pattern))


def shard_names(data: str) -> list[str]:
    """The shards a pattern, a list file or a single file names, checked to exist when they are local."""
    webdataset = require("webdataset")
    if data.lower().endswith(".txt") and not re.search(r"[{*?\[]", data):
        listing = Path(data).expanduser()
        if not listing.is_file():
            raise FileNotFoundError(f"--data={data}: no such list file")
        lines = [line.strip() for line in listing.read_text().splitlines()]
        names = [n if is_url(n) or os.path.isabs(n) else str(listing.parent / n)
                 for n in lines if n and not n.startswith("#")]
        if not names:
            raise ValueError(f"--data={data}: the list file names no shard (one path or URL per line)")
    else:
        names = []
        for name in webdataset.shardlists.expand_urls(data):
            if is_url(name):
                names.append(name)
            elif re.search(r"[*?\[]", name):
                names += sorted(glob.glob(os.path.expanduser(name)))
            else:
                names.append(os.path.expanduser(name))
    missing = [n for n in names if not is_url(n) and not os.path.isfile(n)]
    if not names or len(missing) == len(names):
        raise FileNotFoundError(f"--data={data} matches no file" + (f" (looked for {missing[0]} .. {missing[-1]})"
                                                                    if missing else ""))
    if missing:
        raise FileNotFoundError(f"--data={data}: {len(missing)} of its {len(names)} shards do not exist, such as "
                                f"{missing[0]}")
    return names


def open_sharded(data: str, image_size: int, num_channels: int = 3, skip_bad_images: bool = False,
                 labels: bool = False, image_column: str = "", label_column: str = ""):
    """The stream (ShardStream), or for a save_to_disk folder the ArrowSource, that --data names."""
    from ddgan.data.huggingface import ArrowSource, HubShards, hub_classes, hub_shards, parquet_shards

    if data.startswith("hf:"):
        shards = hub_shards(data, image_column, label_column, labels)
    else:
        path = Path(data).expanduser()
        if path.is_dir() and is_arrow_folder(path):
            return ArrowSource(path, image_column, label_column, labels)
        if path.is_dir():
            tars = sorted(str(p) for p in path.glob("*.tar"))
            names = tars or [str(p) for p in parquet_files(path)]
        else:
            names = shard_names(data)
        if all(n.lower().endswith(TAR_SUFFIXES) for n in names):
            shards = TarShards(names, data, image_column, label_column or "cls", labels)
        elif all(n.lower().endswith(".parquet") for n in names):
            shards = parquet_shards(data, names, image_column, label_column, labels)
        else:
            raise ValueError(f"--data={data}: expected only .tar shards or only .parquet files, got "
                             f"{', '.join(sorted({Path(n).suffix or n for n in names}))}")
    class_names = hub_classes(shards, labels) if isinstance(shards, HubShards) else (
        shards.classes() if labels else [])
    return ShardStream(shards, image_size, num_channels, skip_bad_images, labels, class_names)
