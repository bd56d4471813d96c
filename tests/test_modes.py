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


def test_shape_geometry_finds_the_centre_and_the_spread_compares_with_the_data():
    from ddgan.data.demo import SHAPES, DemoShapes, render_shapes, shape_geometry, within_class_spread

    centres = np.array([[0.4, 0.55], [0.6, 0.45]])
    images = render_shapes(np.array([0, 1]), np.array([0, 0]), centres, np.array([0.2, 0.3]), 32, 3)
    geometry = shape_geometry(images.transpose(0, 2, 3, 1))
    assert np.abs(geometry[:, :2] - centres).max() < 0.01
    assert abs(geometry[0, 2] - np.sqrt(np.pi) * 0.2) < 0.02  # a disc of radius r covers pi r^2
    data = DemoShapes(16, size=2048, seed=3)
    pixels, labels = data.images.permute(0, 2, 3, 1).numpy(), np.array([SHAPES.index(s) for s in data.shapes])
    alike = within_class_spread(pixels[:1024], labels[:1024], pixels[1024:], labels[1024:])
    assert all(0.85 < alike[k] < 1.15 for k in ("centre_x", "centre_y", "size"))
    first_of_each = np.stack([pixels[labels == k][0] for k in range(len(SHAPES))])
    collapsed = within_class_spread(np.repeat(first_of_each, 8, axis=0), np.repeat(np.arange(4), 8), pixels, labels)
    assert collapsed["centre_x"] == collapsed["size"] == 0.0


def test_demo_shapes_vary_visibly_within_a_class():
    # Under a pixel of variety (the old +-0.05 centres, 0.30-0.36 radii: 0.46 px) the demo drew one shape per class.
    from ddgan.data.demo import SHAPES, DemoShapes, shape_geometry

    data = DemoShapes(16, size=2048, seed=3)
    geometry = shape_geometry(data.images.permute(0, 2, 3, 1).numpy()) * 16  # in pixels
    labels = np.array([SHAPES.index(s) for s in data.shapes])
    for label in range(len(SHAPES)):
        std = geometry[labels == label].std(axis=0)
        assert std[:2].min() > 0.8 and std[2] > 0.55, (SHAPES[label], std)


def test_the_demo_command_reports_the_within_class_spread(tmp_path, capsys):
    from ddgan.cli import main
    from tests.helpers import TINY

    flags = [f"--{k}={v}" for k, v in TINY.items() if k != "cond"]
    main(["demo", f"--outdir={tmp_path}", "--image_size=8", "--ch_mult=[1,2]", "--kimg=0.032", *flags])
    err = capsys.readouterr().err
    assert "within-class spread of the samples over the data's" in err and "Demo finished" in err


def test_real_stacked_digits_cover_about_1000_modes_with_kl_near_0():
    """The coverage task of real digits: each channel a real digit, so real data covers the 1000 modes."""
    from eval.manifold import manifold_metrics
    from eval.modes import channel_features, feature_frechet, stacked_digits, train_digits_classifier

    classifier, accuracy = train_digits_classifier(16, steps=800)
    assert accuracy > 0.95
    for upscale in ("nearest", "bilinear"):
        images, labels = stacked_digits(10_000, upscale, 16, seed=3)
        assert images.shape == (10_000, 16, 16, 3) and labels.shape == (10_000, 3)
        histogram = mode_histogram(images, classifier, classes=10)
        truth = np.bincount(labels[:, 0] * 100 + labels[:, 1] * 10 + labels[:, 2], minlength=1000)
        assert histogram.sum() == 10_000 and np.abs(histogram - truth).sum() < 0.2 * 10_000
        assert (histogram > 0).sum() >= 990 and kl_to_uniform(histogram) < 0.12
    real, other = stacked_digits(600, "nearest", 16, seed=4)[0], stacked_digits(600, "nearest", 16, seed=5)[0]
    metrics = manifold_metrics(channel_features(real, classifier), channel_features(other, classifier))
    assert metrics["precision"] > 0.6 and metrics["recall"] > 0.6
    one_digit = np.repeat(real[:1], 600, axis=0)  # a collapsed generator: every sample the same image
    collapsed = manifold_metrics(channel_features(real, classifier), channel_features(one_digit, classifier))
    assert collapsed["recall"] < 0.05
    real_fid = feature_frechet(channel_features(real, classifier), channel_features(other, classifier))
    collapsed_fid = feature_frechet(channel_features(real, classifier), channel_features(one_digit, classifier))
    assert 0 < real_fid < collapsed_fid / 5
