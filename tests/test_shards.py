"""Data in shards: WebDataset tars and Hugging Face datasets read back, dealt out, resumed, trained under torchrun."""

import io
import itertools
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ddgan.data import BadImageError, DemoShapes, make_loader, open_dataset
from ddgan.data.demo import SHAPES
from ddgan.data.streams import ShardStream
from ddgan.models import checkpoint
from tests.helpers import TINY, assert_resumes_exactly, tiny, torchrun_train

webdataset = pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")

SHARD_SIZES = (4, 5, 6, 7, 8, 6, 6, 6)  # unequal, so that positions cross shards at odd places
COUNT = sum(SHARD_SIZES)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()


def write_tars(folder, images, labels, sizes=SHARD_SIZES, corrupt=()):
    """The images as WebDataset shards folder/000000.tar ... (png, cls), keys s0000 ...; `corrupt` keys get junk."""
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for shard, size in enumerate(sizes):
        with webdataset.TarWriter(str(folder / f"{shard:06d}.tar")) as writer:
            for i in range(start, start + size):
                key = f"s{i:04d}"
                writer.write({"__key__": key, "png": b"not a png" if key in corrupt else png(images[i]),
                              "cls": str(labels[i])})
        start += size
    (folder / "classes.txt").write_text("\n".join(SHAPES) + "\n")
    return folder


def hf_table(images, labels):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SHAPES))})
    return datasets.Dataset.from_dict({"image": [{"bytes": png(x), "path": None} for x in images],
                                       "label": [int(y) for y in labels]}, features=features)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The demo shapes (8 px) and their classes, written as tar shards, parquet files and a save_to_disk folder."""
    datasets.disable_progress_bars()
    demo = DemoShapes(image_size=8, size=COUNT, seed=3)
    images = demo.images.permute(0, 2, 3, 1).numpy()
    labels = np.array([SHAPES.index(s) for s in demo.shapes])
    root = tmp_path_factory.mktemp("shards")
    write_tars(root / "tars", images, labels)
    table = hf_table(images, labels)
    (root / "parquet").mkdir()
    for part in range(4):
        table.shard(4, part, contiguous=True).to_parquet(str(root / "parquet" / f"train-{part:05d}.parquet"))
    table.save_to_disk(str(root / "disk"), num_shards=2)
    return dict(images=images, labels=labels, root=root, tars=str(root / "tars" / "{000000..000007}.tar"))


def as_tensor(pixels):
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1


def first_pass(stream: ShardStream) -> list:
    """One reader's first COUNT samples: every shard once, when there is one reader."""
    items = stream.items(0, 1)
    return [next(items) for _ in range(COUNT)]


def same_samples(read, source) -> bool:
    """Whether (image, label) pairs are those of the source, each once."""
    pairs = zip(source["images"], source["labels"], strict=True)
    wanted = sorted((as_tensor(x).numpy().tobytes(), int(y)) for x, y in pairs)
    return sorted((x.numpy().tobytes(), int(y)) for x, y in read) == wanted


@pytest.mark.parametrize("form", ["pattern", "folder", "list", "parquet_folder", "parquet_glob"])
def test_shards_read_back_the_source_images_and_classes(source, form, tmp_path):
    root = source["root"]
    data = {"pattern": source["tars"], "folder": str(root / "tars"), "parquet_folder": str(root / "parquet"),
            "parquet_glob": str(root / "parquet" / "*.parquet"), "list": str(tmp_path / "shards.txt")}[form]
    (tmp_path / "shards.txt").write_text("# one shard a line\n" + "".join(
        f"{root / 'tars' / f'{k:06d}.tar'}\n" for k in range(len(SHARD_SIZES))))
    stream = open_dataset(data, image_size=8, labels=True)
    assert isinstance(stream, ShardStream) and stream.class_names == list(SHAPES)
    read = first_pass(stream)
    assert same_samples(read, source)
    if form in ("pattern", "folder", "list"):  # a shard's samples come in file order
        first_shard = stream.shard_at(0)
        start = sum(SHARD_SIZES[:first_shard])
        expected = [as_tensor(source["images"][i]) for i in range(start, start + SHARD_SIZES[first_shard])]
        assert all(torch.equal(a[0], b) for a, b in zip(read[:len(expected)], expected, strict=True))


def test_without_classes_txt_the_classes_are_the_numbers_found(source, tmp_path):
    folder = write_tars(tmp_path / "tars", source["images"], source["labels"])
    (folder / "classes.txt").unlink()
    stream = open_dataset(str(folder), image_size=8, labels=True)
    assert stream.class_names == ["0", "1", "2", "3"]
    assert same_samples(first_pass(stream), source)


def test_a_save_to_disk_folder_opens_with_random_access(source):
    dataset = open_dataset(str(source["root"] / "disk"), image_size=8, labels=True)
    assert dataset.class_names == list(SHAPES) and len(dataset) == COUNT
    assert same_samples([dataset[i] for i in range(COUNT)], source)


def test_readers_share_out_every_shard_once_per_pass(source):
    """2 ranks x 2 loader workers: the four readers' first two shards are the eight shards, each once."""
    stream = open_dataset(source["tars"], image_size=8, labels=True)
    read, shards = [], []
    for rank in (0, 1):
        dealt = stream.dealt(rank, 2, workers=2, batch_size=2, seed=0, start_index=0)
        for worker in (0, 1):
            reader, readers, start = dealt.reader_start(worker)
            shards += [dealt.shard_at(reader), dealt.shard_at(reader + readers)]
            count = sum(SHARD_SIZES[s] for s in shards[-2:])
            items = dealt.items(reader, readers, start)
            read += [next(items) for _ in range(count)]
    assert sorted(shards) == list(range(len(SHARD_SIZES)))
    assert same_samples(read, source)


def batches(data, rank, start_batch, count, workers, batch=3):
    loader = make_loader(data, batch, rank=rank, num_replicas=2, seed=5, workers=workers,
                         start_index=start_batch * batch)
    return [next(loader) for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_reads_on_where_the_interrupted_one_stopped(source, workers):
    """Restarting at k batches per rank gives exactly the uninterrupted stream's batches k, k + 1, ...: across
    shards of unequal sizes, an epoch's end, and (with two workers) an odd k, which rotates the workers."""
    stream = open_dataset(source["tars"], image_size=8, labels=True)
    for rank in (0, 1):
        whole = batches(stream, rank, 0, 20, workers)
        for k in (5, 13):
            resumed = batches(stream, rank, k, 20 - k, workers)
            for a, b in zip(whole[k:], resumed, strict=True):
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Batch j of a rank is the next 3 samples of its worker j mod W's reader, reader = worker * ranks + rank.
    readers = 2 * max(workers, 1)
    for rank in (0, 1):
        dealt = stream.dealt(rank, 2, workers, batch_size=3, seed=5, start_index=0)
        read = [dealt.items(worker * 2 + rank, readers) for worker in range(max(workers, 1))]
        for j, (images, labels) in enumerate(batches(stream, rank, 0, 8, workers)):
            expected = [next(read[j % max(workers, 1)]) for _ in range(3)]
            assert all(torch.equal(x, e[0]) and y == e[1] for x, y, e in zip(images, labels, expected, strict=True))


def test_a_training_run_on_shards_resumes_exactly(source, tmp_path):
    config = tiny("demo", tmp_path, data=source["tars"], cond=True, class_loss=0.0, kimg=0.036,
                  snapshot_kimg=0.016, lazy_reg=3, hflip=True, workers=2)
    whole = assert_resumes_exactly(config, stop_after=5, total_steps=9)
    saved = checkpoint.load(whole)["config"]
    assert saved["num_classes"] == 4 and tuple(saved["class_names"]) == SHAPES


@pytest.mark.parametrize("form, cond", [("tars", False), ("parquet", True)])
def test_two_process_torchrun_trains_on_shards(source, tmp_path, form, cond):
    data = source["tars"] if form == "tars" else str(source["root"] / "parquet")
    flags = [f"--{k}={v}" for k, v in (TINY | dict(workers=1, cond=cond)).items()] + [
        "--preset=demo", f"--data={data}", "--image_size=8", "--ch_mult=[1,2]", "--batch_size=4", "--kimg=0.012",
        f"--outdir={tmp_path}"]
    torchrun_train(*flags)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    state = checkpoint.load(run_dir)
    assert state["images_seen"] == 12 and state["step"] == 3
    assert state["config"]["num_classes"] == (4 if cond else 0)
    assert "shards streamed" in (run_dir / "log.jsonl").read_text()


def test_a_pattern_that_matches_nothing_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"matches no file \(looked for .*000.tar \.\. .*003.tar\)"):
        open_dataset(str(tmp_path / "{000..003}.tar"), image_size=8)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        open_dataset(str(tmp_path / "*.parquet"), image_size=8)


def test_an_undecodable_image_stops_the_run_unless_skipped(source, tmp_path):
    bad = "s0006"  # the third sample of shard 1
    write_tars(tmp_path / "tars", source["images"], source["labels"], corrupt={bad})
    pattern = str(tmp_path / "tars" / "{000000..000007}.tar")
    with pytest.raises(BadImageError, match=rf"cannot read image .*000001.tar:{bad}.png.*--skip_bad_images"):
        first_pass(open_dataset(pattern, image_size=8))
    lenient = open_dataset(pattern, image_size=8, skip_bad_images=True)
    with pytest.warns(UserWarning, match=rf"skipping an unreadable image: .*{bad}.png.*1 skipped so far"):
        read = first_pass(lenient)
    assert lenient.bad_image_count() == 1
    with pytest.raises(BadImageError, match=r"pass --skip_bad_images=N to skip up to N"):
        first_pass(open_dataset(pattern, image_size=8, skip_bad_images=0))
    # The next sample of the shard fills the bad one's slot, so every later position stays where it was.
    position = [k for k in range(COUNT) if torch.equal(read[k], as_tensor(source["images"][7]))]
    assert len(position) == 2 and position[1] == position[0] + 1


def test_a_truncated_shard_is_named_and_skipping_keeps_positions(source, tmp_path):
    folder = write_tars(tmp_path / "tars", source["images"], source["labels"])
    broken = folder / "000002.tar"  # 6 samples, each a .cls and a .png member of 2048 bytes (headers, data)
    broken.write_bytes(broken.read_bytes()[:3 * 4096 + 2048 + 1024 + 50])  # ends inside the fourth one's png data
    pattern = str(folder / "{000000..000007}.tar")
    with pytest.raises(BadImageError, match="shard .*000002.tar is unreadable after sample 's0011'"):
        first_pass(open_dataset(pattern, image_size=8))
    stream = open_dataset(pattern, image_size=8, skip_bad_images=True)
    assert stream.shards.count(2) == 3  # the samples before the break
    with pytest.warns(UserWarning, match="skipping an unreadable image: shard .*000002.tar"):
        for rank in (0, 1):
            whole = batches(stream, rank, 0, 14, workers=0)
            for k in range(1, 14):
                resumed = batches(stream, rank, k, 14 - k, workers=0)
                assert all(torch.equal(a, b) for a, b in zip(whole[k:], resumed, strict=True))
    assert stream.bad_image_count() == 1


def test_columns_that_do_not_exist_are_named_with_those_that_do(source):
    with pytest.raises(ValueError, match="--image_column=photo: .* no such column; its columns are: image, label"):
        open_dataset(str(source["root"] / "parquet"), image_size=8, image_column="photo")
    with pytest.raises(ValueError, match="--label_column=klass: .* its columns are: image, label"):
        open_dataset(str(source["root"] / "disk"), image_size=8, labels=True, label_column="klass")
    with pytest.raises(ValueError, match=r"--image_column=jpg: the first sample .* no \.jpg member; its members are: "
                                         "cls, png"):
        open_dataset(source["tars"], image_size=8, image_column="jpg")


def test_an_undecodable_parquet_image_is_named_by_file_and_row(source, tmp_path):
    images, labels = source["images"][:6], source["labels"][:6]
    table = hf_table(images, labels).to_dict()
    table["image"][4] = {"bytes": b"junk", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SHAPES))})
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "bad.parquet"))
    stream = open_dataset(str(tmp_path / "bad.parquet"), image_size=8, labels=True)
    with pytest.raises(BadImageError, match=r"bad.parquet\[row 4\]"):
        list(itertools.islice(stream.items(0, 1), 6))


def test_a_hub_dataset_offline_or_unreachable_fails_in_one_line_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"^--data=hf:someone/shapes streams from the Hugging Face Hub, and "
                                              r"HF_HUB_OFFLINE \(or HF_DATASETS_OFFLINE\) is set: download") as error:
        open_dataset("hf:someone/shapes", image_size=8)
    assert "\n" not in str(error.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="streams from the Hugging Face Hub, and cannot reach 127.0.0.1"):
        open_dataset("hf:someone/shapes:train", image_size=8)
    assert time.monotonic() - started < 10


def test_a_stream_refuses_a_latent_space_and_names_the_missing_extra(source, monkeypatch):
    from ddgan.config import make_config
    from ddgan.data import shards
    from ddgan.spaces import LatentSpace

    stream = open_dataset(source["tars"], image_size=8)
    space = LatentSpace(make_config("demo", data=source["tars"]), None, {})
    with pytest.raises(ValueError, match="--space=latent encodes the whole dataset .* is a stream of shards"):
        space.training_data(stream)
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[shards\]'"):
        shards.require("webdataset")
