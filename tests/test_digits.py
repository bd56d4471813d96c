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
    assert held_out > 0.94
    images, labels = digits.digit_images("bilinear")
    # Blank images are no digit in particular: the classifier is not just guessing one class for everything.
    assert len(set(classify(images[-100:], classifier))) == 10
    assert (classify(images[-100:], classifier) == labels[-100:]).mean() > 0.9
