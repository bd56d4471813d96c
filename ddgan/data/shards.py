"""WebDataset tar shards, and the dispatch from --data to the sharded format it names (tar, parquet, the Hub,
a save_to_disk folder). How a stream of shards is read and dealt out is `ddgan.data.streams`."""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ddgan.data.sources import (
    IMAGE_EXTENSIONS,
)
from ddgan.data.streams import Record, ShardReadError, ShardStream, is_url, require

if TYPE_CHECKING:
    pass

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


IMAGE_KEYS = tuple(extension[1:] for extension in IMAGE_EXTENSIONS)  # tar member extensions that hold images


# What a broken tar raises while being read (ValueError: webdataset's duplicate member names).
TAR_ERRORS = (tarfile.TarError, OSError, ValueError, EOFError)


CLASSES_FILE = "classes.txt"  # beside tar shards: one class name per line, line k naming class k


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
