"""Datasets by name and path, the image-array format, the infinite sampler and the loader."""

import io
import pickle
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
    read_labels,
    write_image_array,
)
from ddgan.data.demo import SHAPES
from ddgan.data.images import from_uint8

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
    # Image 1's stand-in would be image 2, also unreadable: a count of 1 stops there, 2 lets both pass.
    with pytest.warns(UserWarning, match=r"1 skipped so far, --skip_bad_images=1"), pytest.raises(
            BadImageError, match=r"2_truncated.png.*2 unreadable images, more than --skip_bad_images=1"):
        open_dataset(str(tmp_path / "data"), image_size=8, skip_bad_images=1)[1]
    with pytest.warns(UserWarning, match=r"2 skipped so far, --skip_bad_images=2"):
        open_dataset(str(tmp_path / "data"), image_size=8, skip_bad_images=2)[1]


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


@pytest.mark.parametrize("channels", [1, 3])
def test_demo_images_drawn_one_at_a_time_equal_those_drawn_together(channels):
    """Items are drawn when first read: in any order, alone, they are the very images drawn in chunks."""
    together = DemoShapes(12, num_channels=channels, size=1100, seed=2).images
    lazy = DemoShapes(12, num_channels=channels, size=1100, seed=2)
    for index in (1099, 0, 517, 1024, 0):
        assert torch.equal(lazy[index], from_uint8(together[index]))
    assert int(lazy._drawn.sum()) == 4  # the others wait
    assert torch.equal(lazy.images, together)


def test_datasets_never_flip_and_one_place_decides_flips(tmp_path):
    from ddgan.config import make_config
    from ddgan.training.start import decide_flips

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


# ---------------------------------------------------------------- class labels

NO_LABELS = ("--cond=True needs class labels, and {} has none; labels come from cifar10, demo, an image folder or "
             ".zip with one sub-folder per class, or a .npz with an int array `y` beside `x`")


def mean_color(item: torch.Tensor) -> np.ndarray:
    """A dataset item's average colour in [0, 255]."""
    return to_rgb255(item).mean(axis=(0, 1))


def make_class_folders(root: Path) -> None:
    """Images in one sub-folder per class, one nested deeper; classes sort as bird, cat, dog."""
    (root / "cat" / "deep").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "bird").mkdir()
    solid(RED).save(root / "cat" / "1.png")
    solid(GREEN).save(root / "cat" / "deep" / "3.png")
    solid(BLUE).save(root / "dog" / "2.png")
    solid(GRAY).save(root / "bird" / "0.png")
    (root / "dog" / "notes.txt").write_text("not an image")


def test_folder_classes_are_the_first_level_sub_folders(tmp_path):
    make_class_folders(tmp_path)
    ds = open_dataset(str(tmp_path), image_size=8, labels=True)
    assert ds.class_names == ["bird", "cat", "dog"] and ds.num_classes == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 1, 2], "cat/deep/ belongs to cat"
    for i, (color, label) in enumerate([(GRAY, 0), (RED, 1), (GREEN, 1), (BLUE, 2)]):
        image, item_label = ds[i]
        assert type(item_label) is int and item_label == label
        np.testing.assert_allclose(mean_color(image), color, atol=1)
    plain = open_dataset(str(tmp_path), image_size=8)
    assert isinstance(plain[0], torch.Tensor) and torch.equal(plain[0], ds[0][0]), "labels=False yields images"
    assert plain.num_classes == 3 and plain.labels.tolist() == [0, 1, 1, 2], "labels are there to inspect"


def test_zip_classes_are_the_first_level_folders(tmp_path):
    path = tmp_path / "classes.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("dog/2.png", png_bytes(solid(BLUE)))
        archive.writestr("cat/deep/1.png", png_bytes(solid(RED)))
        archive.writestr("cat/0.png", png_bytes(solid(GREEN)))
        archive.writestr("__MACOSX/cat/._0.png", b"resource fork")
        archive.writestr("readme.txt", "x")
    ds = open_dataset(str(path), image_size=8, labels=True)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    image, label = ds[2]
    assert label == 1
    np.testing.assert_allclose(mean_color(image), BLUE, atol=1)


def test_images_outside_class_folders_have_no_class(tmp_path):
    make_mixed_folder(tmp_path / "mixed")
    with pytest.raises(ValueError, match="images outside any class sub-folder.*3.PNG.*one sub-folder per class"):
        open_dataset(str(tmp_path / "mixed"), image_size=8, labels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small.bmp is upscaled
        plain = open_dataset(str(tmp_path / "mixed"), image_size=8)
        assert len(plain) == 4 and isinstance(plain[3], torch.Tensor), "labels=False: any layout, as before"
    assert plain.labels is None and plain.class_names == [] and plain.num_classes == 0
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as archive:
        archive.writestr("a/1.png", png_bytes(solid(RED)))
        archive.writestr("0.png", png_bytes(solid(RED)))
    with pytest.raises(ValueError, match=r"flat.zip:0.png; move the images into one sub-folder per class"):
        open_dataset(str(tmp_path / "flat.zip"), image_size=8, labels=True)


def test_npz_labels_round_trip_with_class_names(tmp_path):
    x, y = random_images(4), np.array([2, 0, 1, 2], dtype=np.uint8)
    path = tmp_path / "labeled.npz"
    write_image_array(path, x, y=y, classes=["cat", "dog", "eel"])
    assert [p.name for p in tmp_path.iterdir()] == ["labeled.npz"], "written atomically, as before"
    with np.load(path) as stored:
        assert stored["y"].dtype == np.int64 and stored["classes"].dtype.kind == "U"
    labels, names = read_labels(path)
    assert labels.dtype == np.int64 and labels.tolist() == [2, 0, 1, 2] and names == ["cat", "dog", "eel"]
    ds = open_dataset(str(path), image_size=8, labels=True)
    assert ds.class_names == ["cat", "dog", "eel"] and ds.num_classes == 3
    image, label = ds[0]
    assert label == 2
    np.testing.assert_allclose(to_rgb255(image), x[0], atol=1e-3)
    assert "3 classes" in describe_dataset(ds)


def test_npz_labels_without_class_names_are_numbered(tmp_path):
    x = random_images(3)
    np.savez(tmp_path / "y.npz", x=x, y=np.array([0, 3, 1], dtype=np.int16))
    ds = open_dataset(str(tmp_path / "y.npz"), image_size=8, labels=True)
    assert ds.class_names == ["0", "1", "2", "3"] and ds.labels.dtype == np.int64
    assert [ds[i][1] for i in range(3)] == [0, 3, 1]
    np.savez(tmp_path / "plain.npz", x=x)
    np.save(tmp_path / "plain.npy", x)
    assert read_labels(tmp_path / "plain.npz") is None and read_labels(tmp_path / "plain.npy") is None


@pytest.mark.parametrize("labels, message", [
    ({"y": np.array([0, 1])}, r"`y` has shape \(2,\) for 3 images; expected one label per image, shape \(3,\)"),
    ({"y": np.array([0.0, 1.0, 1.0])}, "`y` holds float64 labels; expected integer class indices"),
    ({"y": np.array([0, -1, 1])}, "`y` holds the negative label -1"),
    ({"y": np.array([0, 2, 1]), "classes": np.array(["a", "b"])}, "label 2 but `classes` names only 2 classes"),
    ({"classes": np.array(["a", "b"])}, "holds class names `classes` but no labels"),
])
def test_bad_npz_labels_are_named(tmp_path, labels, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=random_images(3), **labels)
    with pytest.raises(ValueError, match=message) as info:
        open_dataset(str(path), image_size=8, labels=True)
    assert "bad.npz" in str(info.value) and "\n" not in str(info.value)
    with pytest.warns(UserWarning, match="ignoring the class labels.*bad.npz"):
        plain = open_dataset(str(path), image_size=8)
    assert plain.labels is None and isinstance(plain[0], torch.Tensor), "a run without labels goes on"


def test_write_rejects_bad_labels(tmp_path):
    x = random_images(3)
    with pytest.raises(ValueError, match="for 3 images"):
        write_image_array(tmp_path / "x.npz", x, y=[0, 1])
    with pytest.raises(ValueError, match="float"):
        write_image_array(tmp_path / "x.npz", x, y=[0.5, 1, 2])
    with pytest.raises(ValueError, match="names only 1 classes"):
        write_image_array(tmp_path / "x.npz", x, y=[0, 1, 0], classes=["a"])
    with pytest.raises(ValueError, match="without labels; pass y"):
        write_image_array(tmp_path / "x.npz", x, classes=["a"])
    assert not list(tmp_path.iterdir()), "nothing is written when the labels are refused"


def test_sources_without_labels_refuse_labels(tmp_path):
    np.save(tmp_path / "images.npy", random_images(2))
    write_lmdb(tmp_path / "lmdb", {b"0": png_bytes(solid(RED)), b"1": png_bytes(solid(BLUE))})
    digits = np.random.default_rng(0).integers(1, 256, (5, 28, 28), dtype=np.uint8)
    write_fake_mnist(tmp_path, digits)
    for data in (str(tmp_path / "images.npy"), str(tmp_path / "lmdb"), "stackmnist"):
        with pytest.raises(ValueError) as info:
            open_dataset(data, image_size=32, root=str(tmp_path), labels=True)
        assert str(info.value) == NO_LABELS.format(data)
        assert open_dataset(data, image_size=32, root=str(tmp_path)).labels is None


def test_demo_labels_are_its_shapes():
    ds = open_dataset("demo", image_size=16, labels=True)
    shapes = DemoShapes(16).shapes
    assert ds.class_names == list(SHAPES) == ["circle", "square", "triangle", "cross"]
    assert ds.labels.tolist() == [SHAPES.index(shape) for shape in shapes]
    image, label = ds[7]
    assert SHAPES[label] == shapes[7] and torch.equal(image, open_dataset("demo", image_size=16)[7])
    assert describe_dataset(ds) == "demo: 8192 images of 3x16x16, 4 classes"


def write_fake_cifar10(root: Path, batches: list[tuple[np.ndarray, list[int]]], names: list[str]) -> None:
    """CIFAR-10's python batches in torchvision's layout: per batch a pickled dict of rows (N, 3*32*32) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for number, (images, labels) in enumerate(batches, start=1):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps({"data": rows, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def test_cifar10_labels_are_its_targets_and_classes(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    # The fake batches cannot match the real files' checksums, which torchvision checks before reading.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    images = random_images(10, size=32)
    labels = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_fake_cifar10(tmp_path, [(images[i:i + 2], labels[i:i + 2]) for i in range(0, 10, 2)], names)
    ds = open_dataset("cifar10", image_size=32, root=str(tmp_path), labels=True)
    assert ds.labels.tolist() == labels and ds.class_names == names and ds.num_classes == 10
    image, label = ds[4]
    assert label == 5
    np.testing.assert_allclose(to_rgb255(image), images[4], atol=1e-3)


def test_skipped_images_bring_their_own_labels(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    solid(RED).save(root / "a" / "0.png")
    (root / "a" / "1_garbage.png").write_bytes(b"this is not a png")
    solid(BLUE).save(root / "b" / "2.png")
    ds = open_dataset(str(root), image_size=8, skip_bad_images=True, labels=True)
    with pytest.warns(UserWarning, match="1_garbage.png"):
        image, label = ds[1]
    np.testing.assert_allclose(mean_color(image), BLUE, atol=1)
    assert label == 1, "the stand-in from b/ is labeled b, not a"
    assert ds[0][1] == 0


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_labels_as_int64(workers):
    ds = open_dataset("demo", image_size=8, labels=True)
    images, labels = next(make_loader(ds, batch_size=4, seed=2, workers=workers, pin_memory=False))
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (4,) and labels.dtype == torch.int64
    indices = list(islice(iter(InfiniteSampler(ds, seed=2)), 4))
    assert labels.tolist() == ds.labels[indices].tolist()
    assert torch.equal(images, torch.stack([ds[i][0] for i in indices]))


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


def test_a_run_logs_how_many_unreadable_images_it_skipped(tmp_path):
    import json

    from ddgan.training.loop import run_training
    from tests.helpers import tiny

    make_folder_with_bad_images(tmp_path / "data")
    config = tiny("demo", tmp_path, data=str(tmp_path / "data"), image_size=8, ch_mult=[1, 2], batch_size=4,
                  kimg=0.008, skip_bad_images=2, hflip=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = run_training(config)
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [entry["data/bad_images_skipped"] for entry in logged if "data/bad_images_skipped" in entry][-1] == 2
