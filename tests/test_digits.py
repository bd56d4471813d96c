"""The real-digits check of class conditioning: its data and its classifier."""

import numpy as np
import pytest

from ddgan.data import open_dataset, read_image_array, read_labels
from eval import digits
from eval.modes import classify, train_digits_classifier


@pytest.mark.parametrize("upscale", digits.UPSCALINGS)
def test_digits_are_written_with_their_labels(tmp_path, upscale):
    path = digits.make_data(str(tmp_path / f"{upscale}.npz"), upscale=upscale)
    images = read_image_array(path)
    labels, names = read_labels(path)
    assert images.shape == (1797, 16, 16, 1) and images.dtype == np.uint8
    assert names == list(digits.CLASSES) and np.bincount(labels).min() > 170
    blocks = images[:, ::2, ::2]
    blocky = all((images[:, dy::2, dx::2] == blocks).all() for dy in (0, 1) for dx in (0, 1))
    assert blocky == (upscale == "nearest")
    # Both ways keep the digit: averaging each 2x2 block gives back about the 8x8 original.
    small = images.reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4))
    original, _ = digits.digit_images("nearest", 8)
    assert np.abs(small - original[..., 0]).mean() < (1 if upscale == "nearest" else 25)
    assert open_dataset(path, 16, 1, labels=True).num_classes == 10


def test_unknown_upscaling_is_refused():
    with pytest.raises(ValueError, match="--upscale must be one of nearest, bilinear"):
        digits.digit_images("bicubic")


def test_the_digits_classifier_knows_held_out_real_digits():
    classifier, held_out = train_digits_classifier(16)
    assert held_out > 0.97
    images, labels = digits.digit_images("bilinear")
    # It names all ten digits (not one class for everything), and the ones it was trained on it names right.
    assert len(set(classify(images[-100:], classifier))) == 10
    assert (classify(images[-100:], classifier) == labels[-100:]).mean() > 0.9


def test_accuracy_of_a_digits_model(tmp_path):
    """The short version of BENCHMARKS.md's real-digits check: a conditional run on the digits, judged by the
    digits classifier (picked by the model's class names)."""
    from ddgan.training.loop import run_training
    from eval.modes import accuracy
    from tests.helpers import tiny

    data = digits.make_data(str(tmp_path / "digits.npz"), upscale="nearest", image_size=8)
    run_dir = run_training(tiny("demo", tmp_path / "runs", data=data, cond=True, num_channels=1, hflip=False,
                                kimg=0.008))
    report = accuracy(str(run_dir), n=8)
    assert list(report["accuracy"]) == list(digits.CLASSES)
    assert all(0 <= v <= 1 for v in report["accuracy"].values())
    assert report["classifier_held_out_accuracy"] > 0.9
    with pytest.raises(ValueError, match="--classifier=shapes names circle"):
        accuracy(str(run_dir), n=8, classifier="shapes")
