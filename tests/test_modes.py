"""The stacked-shapes mode count: its classifier and its statistics on real data."""

import numpy as np

from eval.modes import kl_to_uniform, mode_histogram, stacked_shapes, train_classifier


def test_real_stacked_shapes_cover_all_modes():
    classifier, accuracy = train_classifier(16, steps=300)
    assert accuracy > 0.97
    images, labels = stacked_shapes(3000, 16, seed=3)
    histogram = mode_histogram(images, classifier)
    truth = np.bincount(labels[:, 0] * 16 + labels[:, 1] * 4 + labels[:, 2], minlength=64)
    assert histogram.sum() == 3000 and np.abs(histogram - truth).sum() < 0.1 * 3000
    assert (histogram > 0).sum() == 64 and kl_to_uniform(histogram) < 0.05


def test_kl_of_a_single_mode():
    histogram = np.zeros(64)
    histogram[5] = 10
    assert np.isclose(kl_to_uniform(histogram), np.log(64))
