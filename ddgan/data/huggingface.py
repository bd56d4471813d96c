"""Hugging Face datasets as shards: parquet files and Hub datasets streamed, save_to_disk folders read by row.

The streamed ones are HubShards for ddgan.data.shards.ShardStream, which says what a run reads; a folder written
by `save_to_disk` has random access and opens as an ArrowSource, an image source like a folder of images. Columns
are the ones --image_column and --label_column name, else guessed: the only Image (ClassLabel) column, else one
with a usual name.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ddgan.data.sources import decode_image
from ddgan.data.streams import Record, ShardReadError, is_url, require
from ddgan.runtime import hub

IMAGE_COLUMN_NAMES = ("image", "img", "picture", "jpg", "png", "webp", "jpeg")
LABEL_COLUMN_NAMES = ("label", "labels", "cls", "class", "target", "y")


class HubShards:
    """A Hugging Face IterableDataset (the Hub, parquet files), its data files as shards, images undecoded."""

    def __init__(self, dataset, name: str, image_column: str, label_column: str | None, files: list[str] | None = None):
        datasets = require("datasets")
        features = dataset.features or {}
        if isinstance(features.get(image_column), datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset, self.name = dataset, name
        self.image_column, self.label_column = image_column, label_column
        self.files = files
        self._counts: dict[int, int] = {}

    def __len__(self) -> int:
        return self.dataset.n_shards

    def shard_name(self, index: int) -> str:
        return self.files[index] if self.files else f"{self.name} shard {index}"

    def rows(self, index: int, skip: int = 0) -> Iterator[dict]:
        """Shard `index`'s rows from the `skip`-th on; ShardReadError when the file breaks."""
        shard = self.dataset.shard(num_shards=len(self), index=index, contiguous=True)
        try:
            yield from shard.skip(skip) if skip else shard
        except (OSError, ValueError) as err:
            raise ShardReadError(f"shard {self.shard_name(index)} is unreadable: {err}") from err
        except Exception as err:
            if "arrow" not in type(err).__module__:
                raise
            raise ShardReadError(f"shard {self.shard_name(index)} is unreadable: {err}") from err

    def read(self, index: int, skip: int = 0) -> Iterator[Record]:
        for row_number, row in enumerate(self.rows(index, skip), start=skip):
            where = f"{self.shard_name(index)}[row {row_number}]"
            image = image_bytes(row[self.image_column])
            if image is None:
                yield Record(where, problem=f"{where}: column {self.image_column!r} holds no image bytes")
                continue
            label = row[self.label_column] if self.label_column else None
            if self.label_column and not isinstance(label, int | np.integer):
                yield Record(where, problem=f"{where}: column {self.label_column!r} holds {label!r}, not a class")
                continue
            yield Record(where, image, None if label is None else int(label))

    def count(self, index: int) -> int:
        if index not in self._counts:
            file = self.files[index] if self.files else ""
            if file.endswith(".parquet") and not is_url(file):
                self._counts[index] = require("pyarrow.parquet").read_metadata(file).num_rows
            else:
                shard = self.dataset.select_columns([self.image_column])
                shard = shard.shard(num_shards=len(self), index=index, contiguous=True)
                counted = 0
                try:
                    for _ in shard:
                        counted += 1
                except Exception:  # reading reports the broken part, naming it
                    pass
                self._counts[index] = counted
        return self._counts[index]


def image_bytes(value) -> bytes | None:
    """The encoded image in a dataset cell: bytes, or an Image feature's {'bytes', 'path'}."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") and os.path.isfile(value["path"]):
            return Path(value["path"]).read_bytes()
    return None


class ArrowSource:
    """A Hugging Face dataset written by `save_to_disk`: memory-mapped Arrow files, read one row at a time.

    An ImageSource (see ddgan.data.sources): random access, so it trains as a folder of images does. Labels come
    from the label column (a ClassLabel's names, else 0..K-1), when there is one.
    """

    flippable = True

    def __init__(self, path: Path, image_column: str = "", label_column: str = "", labels_required: bool = False):
        datasets = require("datasets")
        self.path, self.name = path, str(path)
        table = datasets.load_from_disk(str(path))
        if isinstance(table, datasets.DatasetDict):
            table = table[pick_split(list(table), "", f"--data={path}")]
        self.image_column = pick_column(table.features, image_column, "--image_column", IMAGE_COLUMN_NAMES,
                                        datasets.Image, str(path))
        label = pick_column(table.features, label_column, "--label_column", LABEL_COLUMN_NAMES, datasets.ClassLabel,
                            str(path), required=labels_required)
        if isinstance(table.features[self.image_column], datasets.Image):
            table = table.cast_column(self.image_column, datasets.Image(decode=False))
        self.table = table.select_columns([self.image_column])
        self.labels, self.class_names, self.unclassified = None, [], None
        if label is not None:
            self.labels = np.asarray(table.data.column(label).to_numpy(), dtype=np.int64)
            self.class_names = class_names_of(table.features[label], int(self.labels.max(initial=-1)))

    def __len__(self) -> int:
        return len(self.table)

    def load(self, index: int):
        data = image_bytes(self.table[index][self.image_column])
        if data is None:
            raise ValueError(f"column {self.image_column!r} holds no image bytes")
        return decode_image(io.BytesIO(data))

    def describe(self, index: int) -> str:
        return f"{self.path}[row {index}]"


def class_names_of(feature, largest: int) -> list[str]:
    """A label column's class names: a ClassLabel's, else 0..largest."""
    names = getattr(feature, "names", None)
    return list(names) if names else [str(k) for k in range(largest + 1)]


def pick_column(features, given: str, flag: str, usual: tuple[str, ...], kind: type, where: str,
                required: bool = True) -> str | None:
    """The column `flag` names, else the only column of feature `kind`, else one with a usual name."""
    columns = list(features)
    if given:
        if given not in features:
            raise ValueError(f"{flag}={given}: {where} has no such column; its columns are: {', '.join(columns)}")
        return given
    typed = [name for name in columns if isinstance(features[name], kind)]
    if len(typed) == 1:
        return typed[0]
    named = [name for name in columns if name.lower() in usual]
    if named:
        return named[0]
    if not required:
        return None
    raise ValueError(f"cannot tell which column of {where} to use for {flag[2:]}; pass {flag} (the columns are: "
                     f"{', '.join(columns)})")


def pick_split(splits: list[str], given: str, what: str) -> str:
    """The split to train on: the one given, else train, else the only one."""
    if given or "train" in splits or len(splits) == 1:
        chosen = given or ("train" if "train" in splits else splits[0])
        if chosen in splits:
            return chosen
    raise ValueError(f"{what}: {'no split ' + repr(given) if given else 'which split?'}; the splits are: "
                     f"{', '.join(splits)} (name one as hf:owner/name:split, or put only that split's files in --data)")


def parquet_shards(data: str, files: list[str], image_column: str, label_column: str, labels: bool) -> HubShards:
    """Parquet files, one shard each, read by the datasets library."""
    datasets = require("datasets")
    split = "train"
    if Path(data).expanduser().is_dir():
        # A Hub snapshot holds several splits' files (data/train-*.parquet, data/test-*...): take the train split's.
        from datasets.data_files import DataFilesDict, get_data_patterns
        base = str(Path(data).expanduser())
        found = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base)
        split = pick_split(list(found), "", f"--data={data}")
        files = [str(f) for f in found[split]]
    stream = datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=True)
    image, label = stream_columns(stream, data, image_column, label_column, labels)
    return HubShards(stream, data, image, label, files)


def stream_columns(stream, where: str, image_column: str, label_column: str, labels: bool) -> tuple[str, str | None]:
    """The image column and (under --cond) the label column of a streamed dataset."""
    datasets = require("datasets")
    features = stream.features
    if features is None:
        raise ValueError(f"--data={where}: the dataset does not say what its columns are")
    image = pick_column(features, image_column, "--image_column", IMAGE_COLUMN_NAMES, datasets.Image, where)
    label = pick_column(features, label_column, "--label_column", LABEL_COLUMN_NAMES, datasets.ClassLabel, where,
                        required=labels) if labels else None
    return image, label


def hub_classes(shards: HubShards, labels: bool) -> list[str]:
    """The label column's class names: a ClassLabel's, else 0..K-1 from reading the column once."""
    if not labels:
        return []
    feature = shards.dataset.features[shards.label_column]
    if getattr(feature, "names", None):
        return list(feature.names)
    largest = max((row[shards.label_column] for row in shards.dataset.select_columns([shards.label_column])),
                  default=-1)
    return class_names_of(feature, int(largest))


def hub_shards(data: str, image_column: str, label_column: str, labels: bool) -> HubShards:
    """A dataset on the Hugging Face Hub, hf:owner/name[:split], streamed."""
    name, _, split = data[3:].partition(":")
    fetch_elsewhere = (f"download it where there is network (hf download --repo-type dataset {name} "
                       "--local-dir DIR, then copy DIR here) and pass --data=DIR")
    why = hub.why_offline()  # fails in seconds, not after the HTTP clients' retries
    if why is not None:
        raise ConnectionError(f"--data={data} streams from the Hugging Face Hub, and {why}: {fetch_elsewhere}")
    datasets = require("datasets")
    if not split:
        splits = datasets.get_dataset_split_names(name)
        split = pick_split(splits, "", f"--data={data}")
    stream = datasets.load_dataset(name, split=split, streaming=True)
    image, label = stream_columns(stream, data, image_column, label_column, labels)
    return HubShards(stream, data, image, label)
