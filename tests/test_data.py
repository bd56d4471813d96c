"""Datasets by name and path, the image-array format, the infinite sampler and the loader."""

import io
import socket
import warnings
import zipfile
from itertools import islice
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from ddgan.data import (
    BadImageError,
    DemoShapes,
    InfiniteSampler,
    describe_dataset,
    make_loader,
    open_dataset,
    read_image_array,
    write_image_array,
)

RED, GREEN, BLUE, GRAY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)


def solid(color, size=(8, 8), mode="RGB") -> Image.Image:
    """A one-colour image."""
    return Image.new("RGB", size, color).convert(mode)


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    """An image encoded in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def to_rgb255(item: torch.Tensor) -> np.ndarray:
    """A dataset item back in [0, 255], channels last."""
    return ((item + 1) * 127.5).permute(1, 2, 0).numpy()


def random_images(n=5, size=8, channels=3, seed=0) -> np.ndarray:
    """Random uint8 images (N, H, W, C)."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


# ---------------------------------------------------------------- image arrays (.npz / .npy)

def test_npz_round_trip_nhwc(tmp_path):
    x = random_images()
    write_image_array(tmp_path / "x.npz", x)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"], "the temporary file must be gone"
    np.testing.assert_array_equal(read_image_array(tmp_path / "x.npz"), x)
    ds = open_dataset(str(tmp_path / "x.npz"), image_size=8)
    assert len(ds) == 5
    np.testing.assert_allclose(to_rgb255(ds[3]), x[3], atol=1e-3)


def test_npz_nchw_and_other_key_and_npy(tmp_path):
    x = random_images(size=6)
    np.savez(tmp_path / "nchw.npz", images=x.transpose(0, 3, 1, 2))
    np.save(tmp_path / "plain.npy", x)
    np.testing.assert_array_equal(read_image_array(tmp_path / "nchw.npz"), x)
    np.testing.assert_array_equal(read_image_array(tmp_path / "plain.npy"), x)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((2, 8, 8), np.uint8), "4 dims"),
    (np.zeros((2, 8, 8, 5), np.uint8), "1 or 3 channels"),
])
def test_bad_arrays_are_named(tmp_path, bad, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=bad)
    with pytest.raises(ValueError, match=message) as info:
        read_image_array(path)
    assert "bad.npz" in str(info.value)


def test_npz_with_several_arrays_but_no_x(tmp_path):
    np.savez(tmp_path / "two.npz", a=random_images(), b=random_images())
    with pytest.raises(ValueError, match="'x'"):
        read_image_array(tmp_path / "two.npz")


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_image_array(tmp_path / "x.npz", np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=".npz"):
        write_image_array(tmp_path / "x.png", random_images())


# ---------------------------------------------------------------- folders and zips

def make_mixed_folder(root: Path) -> None:
    """Images in nested folders, in several modes, one smaller than 8 px, plus a non-image."""
    (root / "a").mkdir(parents=True)
    (root / "b" / "c").mkdir(parents=True)
    solid(RED).save(root / "3.PNG")
    solid(GREEN, (10, 10), "RGBA").save(root / "a" / "1.png")
    solid(GRAY, (12, 10), "L").save(root / "b" / "c" / "2.jpg", quality=95)
    solid(BLUE, (4, 4)).save(root / "small.bmp")
    (root / "notes.txt").write_text("not an image")
    solid(RED).save(root / ".hidden.png")


def test_folder_is_recursive_sorted_and_converted(tmp_path):
    make_mixed_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(str(tmp_path), image_size=8)
        items = [ds[i] for i in range(len(ds))] + [ds[3]]
    assert len(ds) == 4
    upscales = [w for w in caught if "upscaling" in str(w.message)]
    assert len(upscales) == 1 and "small.bmp" in str(upscales[0].message)
    for item, color in zip(items, [RED, GREEN, GRAY, BLUE, BLUE], strict=True):
        assert item.shape == (3, 8, 8) and item.dtype == torch.float32
        assert item.min() >= -1 and item.max() <= 1
        np.testing.assert_allclose(to_rgb255(item).mean(axis=(0, 1)), color, atol=3)
    gray = open_dataset(str(tmp_path), image_size=8, num_channels=1)
    assert gray[0].shape == (1, 8, 8)
    np.testing.assert_allclose((gray[0] + 1) * 127.5, round(0.299 * 255), atol=1)


def test_resize_keeps_the_centre(tmp_path):
    stripes = np.zeros((8, 24, 3), np.uint8)
    stripes[:, :8], stripes[:, 8:16], stripes[:, 16:] = RED, GREEN, BLUE
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    Image.fromarray(np.repeat(np.repeat(stripes, 2, 0), 2, 1)).save(tmp_path / "wide2x.png")
    ds = open_dataset(str(tmp_path), image_size=8)
    np.testing.assert_allclose(to_rgb255(ds[0]), np.broadcast_to(GREEN, (8, 8, 3)), atol=1e-3)
    np.testing.assert_allclose(to_rgb255(ds[1])[:, 2:6], np.broadcast_to(GREEN, (8, 4, 3)), atol=1)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty.*no images"):
        open_dataset(str(tmp_path / "empty"), image_size=8)
    with pytest.raises(FileNotFoundError, match="nowhere.*neither a dataset name"):
        open_dataset(str(tmp_path / "nowhere"), image_size=8)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="image_size"):
        open_dataset("demo", image_size=0)
    with pytest.raises(ValueError, match="num_channels"):
        open_dataset("demo", image_size=16, num_channels=4)


def make_folder_with_bad_images(root: Path) -> None:
    """Two good images around a non-image and a truncated png."""
    root.mkdir()
    solid(RED).save(root / "0.png")
    (root / "1_garbage.png").write_bytes(b"this is not a png")
    (root / "2_truncated.png").write_bytes(png_bytes(Image.fromarray(random_images(1, 32)[0]))[:200])
    solid(BLUE).save(root / "3.png")


def test_corrupt_images_are_named_or_skipped(tmp_path):
    make_folder_with_bad_images(tmp_path / "data")
    strict = open_dataset(str(tmp_path / "data"), image_size=8)
    with pytest.raises(BadImageError, match="1_garbage.png"):
        strict[1]
    with pytest.raises(BadImageError, match="2_truncated.png"):
        strict[2]
    lenient = open_dataset(str(tmp_path / "data"), image_size=8, skip_bad_images=True)
    with pytest.warns(UserWarning, match="unreadable"):
        items = [lenient[i] for i in range(4)]
    assert lenient.bad_image_count() == 2
    for item in items[1:]:  # each bad image is replaced by the next good one
        np.testing.assert_allclose(to_rgb255(item)[0, 0], BLUE, atol=1e-3)
    lenient[2]
    assert lenient.bad_image_count() == 2, "a known bad image is not counted twice"


def test_bad_images_are_counted_across_workers(tmp_path):
    make_folder_with_bad_images(tmp_path / "data")
    ds = open_dataset(str(tmp_path / "data"), image_size=8, skip_bad_images=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = next(make_loader(ds, batch_size=4, workers=1, pin_memory=False))
    assert batch.shape == (4, 3, 8, 8)
    assert ds.bad_image_count() == 2


def test_zip_is_read_lazily_and_in_workers(tmp_path):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("b/2.png", png_bytes(solid(BLUE)))
        archive.writestr("a/1.jpg", png_bytes(solid(GREEN), "JPEG"))
        archive.writestr("0.webp", png_bytes(solid(RED), "WEBP"))
        archive.writestr("__MACOSX/._0.webp", b"resource fork")
        archive.writestr("readme.txt", "x")
    ds = open_dataset(str(path), image_size=8)
    assert len(ds) == 3
    for i, color in enumerate([RED, GREEN, BLUE]):
        np.testing.assert_allclose(to_rgb255(ds[i]).mean(axis=(0, 1)), color, atol=4)
    assert ds.source._archive is not None
    batch = next(make_loader(ds, batch_size=3, workers=1, pin_memory=False))
    assert batch.shape == (3, 3, 8, 8)


# ---------------------------------------------------------------- LMDB

def write_lmdb(path: Path, items: dict[bytes, bytes], subdir: bool = True) -> None:
    """An LMDB holding the given key/value pairs."""
    env = lmdb.open(str(path), map_size=1 << 24, subdir=subdir)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()


def test_lmdb_original_celeba_layout_raw_and_encoded(tmp_path):
    x = random_images(4, size=10)
    # The original's CelebA-HQ layout: root/train.lmdb, keys str(i), raw square RGB bytes.
    (tmp_path / "celeba").mkdir()
    write_lmdb(tmp_path / "celeba" / "train.lmdb", {str(i).encode(): x[i].tobytes() for i in range(4)})
    raw = open_dataset(str(tmp_path / "celeba"), image_size=10)
    assert len(raw) == 4
    np.testing.assert_allclose(to_rgb255(raw[2]), x[2], atol=1e-3)
    encoded_items = {str(i).encode(): png_bytes(Image.fromarray(x[i])) for i in range(4)}
    write_lmdb(tmp_path / "encoded", {**encoded_items, b"length": b"3"})
    encoded = open_dataset(str(tmp_path / "encoded"), image_size=10)
    assert len(encoded) == 3, "a stored length wins over the entry count"
    np.testing.assert_allclose(to_rgb255(encoded[1]), x[1], atol=1e-3)
    batch = next(make_loader(encoded, batch_size=2, workers=1, pin_memory=False))
    assert batch.shape == (2, 3, 10, 10)


def test_lmdb_lsun_layout_and_file_environment(tmp_path):
    colors = {b"f00d": RED, b"0bad": GREEN, b"c0de": BLUE}
    write_lmdb(tmp_path / "church.lmdb", {k: png_bytes(solid(c), "WEBP") for k, c in colors.items()},
               subdir=False)
    ds = open_dataset(str(tmp_path / "church.lmdb"), image_size=8)
    assert len(ds) == 3
    again = open_dataset(str(tmp_path / "church.lmdb"), image_size=8)
    assert torch.equal(again[0], ds[0]), "one LMDB opened by two datasets in a process (trainer and FID)"
    for i, key in enumerate(sorted(colors)):
        np.testing.assert_allclose(to_rgb255(ds[i]).mean(axis=(0, 1)), colors[key], atol=4)


def test_bad_lmdbs_are_named(tmp_path):
    write_lmdb(tmp_path / "junk", {b"foo": b"bar", b"baz": b"qux"})
    with pytest.raises(ValueError, match="junk.*no key b'0'"):
        open_dataset(str(tmp_path / "junk"), image_size=8)
    write_lmdb(tmp_path / "gap", {b"0": png_bytes(solid(RED)), b"1": png_bytes(solid(RED)), b"x": b"y"})
    with pytest.raises(ValueError, match="gap.*not b'2'"):
        open_dataset(str(tmp_path / "gap"), image_size=8)
    write_lmdb(tmp_path / "empty", {})
    with pytest.raises(ValueError, match="empty.*is empty"):
        open_dataset(str(tmp_path / "empty"), image_size=8)
    write_lmdb(tmp_path / "broken", {b"0": png_bytes(solid(RED)), b"1": b"garbage"})
    with pytest.raises(BadImageError, match="broken.*key '1'"):
        open_dataset(str(tmp_path / "broken"), image_size=8)[1]


# ---------------------------------------------------------------- named datasets

def test_missing_cifar10_says_how_to_get_it_without_touching_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("open_dataset tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(FileNotFoundError, match="--download") as info:
        open_dataset("cifar10", image_size=32, root=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    monkeypatch.setenv("DDGAN_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError, match="env"):
        open_dataset("cifar10", image_size=32)


def write_fake_mnist(root: Path, digits: np.ndarray) -> None:
    """MNIST's training files in torchvision's layout (idx format), holding the given 28x28 digits."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    count = len(digits).to_bytes(4, "big")
    (raw / "train-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + count + (28).to_bytes(4, "big") * 2 + digits.tobytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + count + bytes(len(digits)))
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((raw / name.replace("t10k", "train")).read_bytes())


def test_stackmnist_stacks_three_digits_padded_to_32(tmp_path):
    digits = np.random.default_rng(0).integers(1, 256, (5, 28, 28), dtype=np.uint8)
    write_fake_mnist(tmp_path, digits)
    ds = open_dataset("stackmnist", image_size=32, root=str(tmp_path))
    assert len(ds) == 10 and not ds.flippable, "two passes over MNIST; a mirrored digit is not a digit"
    image = np.rint(to_rgb255(ds[7])).astype(np.uint8)
    assert image[:2].max() == 0 and image[:, -2:].max() == 0
    originals = {d.tobytes() for d in digits}
    assert all(image[2:30, 2:30, c].tobytes() in originals for c in range(3))
    counts = np.bincount(ds.source.triples[:, 0], minlength=5)
    assert (counts == 2).all(), "each digit appears twice per channel"


def test_demo_is_deterministic_and_shapes_are_big():
    a, b = DemoShapes(16, size=64, seed=3), DemoShapes(16, size=64, seed=3)
    assert torch.equal(a.images, b.images) and a.shapes == b.shapes
    assert not torch.equal(a.images, DemoShapes(16, size=64, seed=4).images)
    assert a.images.shape == (64, 3, 16, 16) and a.images.dtype == torch.uint8
    assert set(a.shapes) == {"circle", "square", "triangle", "cross"}
    corner = a.images[:, :, :1, :1].float()
    foreground = ((a.images.float() - corner).abs().sum(1) > 60).float().mean((1, 2))
    assert foreground.min() > 0.1 and foreground.max() < 0.5, "each shape covers a fair part of the image"
    assert a[0].min() >= -1 and a[0].max() <= 1
    assert DemoShapes(16, num_channels=1, size=4).images.shape == (4, 1, 16, 16)


def test_datasets_never_flip_and_one_place_decides_flips(tmp_path):
    from ddgan.config import make_config
    from ddgan.training_loop import decide_flips

    ds = open_dataset("demo", image_size=16)
    assert ds.flippable and torch.equal(ds[5], ds[5]), "the dataset hands out images unflipped"
    config, line = decide_flips(make_config("demo"), ds)
    assert config.hflip and line == "random horizontal flips: on"
    config, line = decide_flips(make_config("demo", hflip=False), ds)
    assert not config.hflip and "off (--hflip=False)" in line

    digits = np.random.default_rng(0).integers(1, 256, (5, 28, 28), dtype=np.uint8)
    write_fake_mnist(tmp_path, digits)
    mnist = open_dataset("stackmnist", image_size=32, root=str(tmp_path))
    # --preset=cifar10 --data=stackmnist asks for flips; digits refuse them, and the log says why.
    config, line = decide_flips(make_config("cifar10", data="stackmnist"), mnist)
    assert not config.hflip and "off" in line and "digit" in line


def test_describe_dataset_names_size_and_resolution():
    line = describe_dataset(open_dataset("demo", image_size=16, num_channels=1))
    assert "demo" in line and "8192" in line and "1x16x16" in line
    assert "4 images of 3x16x16" in describe_dataset(DemoShapes(16, size=4))


# ---------------------------------------------------------------- sampler and loader

def test_sampler_covers_each_epoch_and_reshuffles():
    stream = list(islice(iter(InfiniteSampler(range(10), seed=1)), 30))
    epochs = [stream[i:i + 10] for i in range(0, 30, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert stream == list(islice(iter(InfiniteSampler(range(10), seed=1)), 30)), "same seed, same stream"
    assert stream != list(islice(iter(InfiniteSampler(range(10), seed=2)), 30))
    assert list(islice(iter(InfiniteSampler(range(4), shuffle=False)), 6)) == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("size", [12, 10])
def test_sampler_ranks_are_disjoint_and_cover_the_epoch(size):
    ranks = 3
    samplers = [InfiniteSampler(range(size), rank=r, num_replicas=ranks) for r in range(ranks)]
    shares = [list(islice(iter(s), len(range(r, size, ranks)))) for r, s in enumerate(samplers)]
    together = [i for share in shares for i in share]
    assert sorted(together) == list(range(size))


def test_sampler_resumes_exactly():
    full = list(islice(iter(InfiniteSampler(range(7), rank=1, num_replicas=2, seed=5)), 40))
    resumed = InfiniteSampler(range(7), rank=1, num_replicas=2, seed=5, start_index=13)
    resumed = list(islice(iter(resumed), 27))
    assert resumed == full[13:]
    with pytest.raises(ValueError, match="rank"):
        InfiniteSampler(range(7), rank=2, num_replicas=2)


@pytest.mark.parametrize("workers", [0, 1])
def test_make_loader_batches_and_resume(workers):
    ds = open_dataset("demo", image_size=8)
    loader = make_loader(ds, batch_size=4, workers=workers, pin_memory=False)
    batches = [next(loader) for _ in range(3)]
    assert all(b.shape == (4, 3, 8, 8) and b.dtype == torch.float32 for b in batches)
    resumed = make_loader(ds, batch_size=4, workers=workers, pin_memory=False, start_index=8)
    assert torch.equal(next(resumed), batches[2])
