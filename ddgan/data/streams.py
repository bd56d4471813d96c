"""Streams of shards, dealt out without overlap: the protocol every sharded format (tar, parquet, the Hub) is read by.

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
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ddgan.data.loader import InfiniteSampler
from ddgan.data.sources import (
    READ_ERRORS,
    BadImageError,
    allowed_bad_images,
    check_bad_budget,
    decode_image,
)

if TYPE_CHECKING:  # the stream's two formats, which are built on it
    from ddgan.data.huggingface import HubShards
    from ddgan.data.shards import TarShards

INSTALL = "pip install -e '.[shards]'"


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
        from ddgan.data.images import fit_image, pixels_to_tensor

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
