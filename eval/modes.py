"""Mode coverage and class accuracy on data that needs no download: the demo shapes and real digits.

`count`: a Stacked-MNIST-style mode count, three images stacked as the RGB channels of one.

`--task=digits`: each channel is one of scikit-learn's real handwritten digits (upscaled `nearest` or
`bilinear`), so the data has 10**3 = 1000 equally likely modes, as the DDGAN paper's Stacked-MNIST;
`--task=shapes`: one of the 4 demo shapes, 64 modes. A small classifier trained on single images labels
each channel of a generated image; the report gives how many modes the samples cover and the KL divergence
of their mode histogram from uniform (the paper's two numbers), and for digits the precision and recall
of the samples against real stacked digits in the classifier's features (k-nearest-neighbour manifolds).

    python -m eval.modes make-data stacked.npz --task=digits --upscale=nearest --image_size=16
    ddgan train --preset=stackmnist --data=stacked.npz --image_size=16 --num_channels_dae=32 --kimg=50
    python -m eval.modes count RUN_FOLDER --task=digits --n=10000

`accuracy`: for a class-conditional checkpoint, the fraction of each class's samples that a classifier
labels as the class asked for (the shape classifier for the demo shapes, a digit classifier trained on
scikit-learn's real digits for models of `eval.digits`' data, or one you pass).

    python -m eval.modes accuracy runs/demo --n=256
    python -m eval.modes accuracy RUN --classifier=digits

`spread`: for a demo-shapes checkpoint, how much the samples of a class vary against the data: the std of the
shape's centre and size over the data's, per class (1: as varied as the data; 0: every sample alike).

    python -m eval.modes spread runs/demo --n=256
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import torch
import torch.nn.functional as F

from ddgan.data import DemoShapes, write_image_array
from ddgan.data.demo import LUMA, SHAPES
from ddgan.data.images import from_uint8
from ddgan.sampling import default_steps
from eval import digits
from eval.manifold import manifold_metrics

NUM_SHAPES = len(SHAPES)


def stacked_shapes(n: int, image_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, H, W, 3], labels [n, 3]): channel c is a grayscale shape of kind labels[:, c]."""
    single = DemoShapes(image_size, num_channels=1, size=3 * n, seed=seed)
    kinds = single.labels.reshape(3, n)
    gray = single.images[:, 0].numpy().reshape(3, n, image_size, image_size)
    return np.ascontiguousarray(gray.transpose(1, 2, 3, 0)), kinds.T


class SmallCNN(torch.nn.Module):
    """A small CNN that names the class of a one-channel image (a demo shape, a digit)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.convs = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4))
        self.head = torch.nn.Linear(32 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(x).flatten(1))


def fit_classifier(x: torch.Tensor, y: torch.Tensor, train: int, num_classes: int, steps: int, seed: int,
                   shift: int = 0) -> tuple[SmallCNN, float]:
    """Fit a SmallCNN on images x[:train] in [-1, 1] (randomly shifted by up to `shift` px); returns it and
    its accuracy on the held-out x[train:]."""
    torch.manual_seed(seed)
    model = SmallCNN(num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        index = torch.randint(0, train, (64,))
        batch = x[index]
        if shift:
            dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
            batch = torch.roll(batch, (dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(batch), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x[train:]).argmax(1) == y[train:]).float().mean().item()
    return model.eval(), accuracy


def train_classifier(image_size: int, steps: int = 400, seed: int = 1) -> tuple[SmallCNN, float]:
    """Fit the shape classifier on fresh single shapes; returns it and its held-out accuracy."""
    data = DemoShapes(image_size, num_channels=1, size=6000, seed=seed)
    x = from_uint8(data.images)
    y = torch.from_numpy(data.labels)
    return fit_classifier(x, y, 5000, NUM_SHAPES, steps, seed)


@functools.lru_cache(maxsize=2)
def train_digits_classifier(image_size: int, steps: int = 3000, seed: int = 1) -> tuple[SmallCNN, float]:
    """Fit a digit classifier on the real digits but a held-out random HELD_OUT, both upscalings (shifted by
    up to 1 px); returns it and its accuracy on the held-out digits (both upscalings).

    The held-out digits are drawn at random, not the set's last ones (other writers): a model trained on the
    digits draws the writers it saw, and that is what the classifier must know."""
    sets = [digits.digit_images(upscale, image_size) for upscale in digits.UPSCALINGS]
    order = np.random.default_rng(0).permutation(len(sets[0][1]))
    train, held_out = order[:-digits.HELD_OUT], order[-digits.HELD_OUT:]
    x = from_uint8(torch.cat([torch.from_numpy(images[part]) for part in (train, held_out)
                              for images, _ in sets]).permute(0, 3, 1, 2))
    y = torch.cat([torch.from_numpy(labels[part]) for part in (train, held_out) for _, labels in sets])
    return fit_classifier(x, y, len(train) * len(sets), len(digits.CLASSES), steps, seed, shift=1)


def classify(images: np.ndarray, classifier: SmallCNN) -> np.ndarray:
    """The class index the classifier sees in each uint8 [N, H, W, C] image (RGB seen as luma)."""
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2)
    if x.shape[1] == 3:  # the demo's grayscale images are the luma of its RGB ones
        x = torch.einsum("nchw,c->nhw", x, torch.from_numpy(LUMA))[:, None]
    with torch.no_grad():
        return classifier(from_uint8(x)).argmax(1).numpy()


def mode_histogram(images: np.ndarray, classifier: SmallCNN, classes: int = NUM_SHAPES) -> np.ndarray:
    """Counts of the classes**3 modes among uint8 [N, H, W, 3] images, each channel one of `classes`."""
    x = from_uint8(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        labels = classifier(x.reshape(-1, 1, *x.shape[2:])).argmax(1).reshape(-1, 3).numpy()
    modes = labels[:, 0] * classes**2 + labels[:, 1] * classes + labels[:, 2]
    return np.bincount(modes, minlength=classes**3)


def channel_features(images: np.ndarray, classifier: SmallCNN, batch: int = 2048) -> np.ndarray:
    """The classifier's penultimate features of each channel, side by side: [N, 3 * 512] for uint8 [N, H, W, 3]."""
    x = from_uint8(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        parts = [classifier.convs(chunk.reshape(-1, 1, *x.shape[2:])).flatten(1).reshape(len(chunk), -1)
                 for chunk in x.split(batch)]
    return torch.cat(parts).numpy()


def feature_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance of Gaussians fitted to two feature sets [N, F] (FID in the digits classifier's features)."""
    from eval.fid_stats import frechet

    return frechet(*((f.mean(0), np.cov(f, rowvar=False)) for f in (a, b)))


def stacked_digits(n: int, upscale: str = "nearest", image_size: int = 16,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, H, W, 3], labels [n, 3]): channel c is a real digit, drawn at random from all 1 797."""
    images, labels = digits.digit_images(upscale, image_size)
    picks = np.random.default_rng(seed).integers(0, len(labels), size=(n, 3))
    stacked = images[picks, :, :, 0].transpose(0, 2, 3, 1)  # [n, H, W, 3]
    return np.ascontiguousarray(stacked), labels[picks]


def kl_to_uniform(histogram: np.ndarray) -> float:
    """KL(p_samples || uniform over the modes), in nats."""
    p = histogram / histogram.sum()
    nonzero = p > 0
    return float(np.sum(p[nonzero] * np.log(p[nonzero] * len(p))))


TASKS = ("shapes", "digits")


def stacked(task: str, n: int, image_size: int, seed: int, upscale: str = "nearest") -> np.ndarray:
    """n stacked images of a task (uint8 NHWC)."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "digits":
        return stacked_digits(n, upscale, image_size, seed)[0]
    return stacked_shapes(n, image_size, seed)[0]


def make_data(out: str, n: int = 20_000, image_size: int = 32, seed: int = 0, task: str = "shapes",
              upscale: str = "nearest") -> str:
    """Write a stacked training set as a uint8 NHWC .npz (key `x`): three demo shapes (64 modes) or three real
    digits (1000 modes, --upscale=nearest or bilinear) as the RGB channels."""
    write_image_array(out, stacked(task, n, image_size, seed, upscale))
    return out


def sampling_steps(config, steps: int | None) -> dict:
    """The report's `steps` entry: the number of denoising steps its samples took."""
    return {"steps": steps or default_steps(config) or config.num_timesteps}


def count(ckpt: str, n: int = 2000, batch: int = 250, device: str = "cpu", task: str = "shapes",
          upscale: str = "nearest", steps: int | None = None) -> dict:
    """Sample n images from a checkpoint and report the modes covered and the KL to uniform (and, for digits,
    precision and recall against n real stacked digits made with --upscale). steps: sample in that many of the
    model's T steps (default all)."""
    from ddgan.models import load_generator
    from ddgan.sampling import generate

    G, config = load_generator(ckpt, device=device)
    samples = np.concatenate(list(generate(G, config, list(range(n)), batch=batch, device=device, num_steps=steps)))
    report = {"checkpoint": str(ckpt), "samples": n, **sampling_steps(config, steps),
              **score_stacked(samples, task, upscale)}
    print(json.dumps(report))
    return report


def score_stacked(samples: np.ndarray, task: str = "shapes", upscale: str = "nearest") -> dict:
    """Modes covered and KL to uniform of stacked uint8 [N, H, W, 3] images (digits: precision and recall too),
    beside the same numbers for as many real stacked images."""
    n, image_size = len(samples), samples.shape[1]
    real = stacked(task, n, image_size, 12345, upscale)
    classes = len(digits.CLASSES) if task == "digits" else NUM_SHAPES
    classifier, accuracy = (train_digits_classifier if task == "digits" else train_classifier)(image_size)
    histogram, real_histogram = mode_histogram(samples, classifier, classes), mode_histogram(real, classifier, classes)
    report = {"task": task, "classifier_accuracy": round(accuracy, 4),
              "modes_covered": int((histogram > 0).sum()), "kl_to_uniform": round(kl_to_uniform(histogram), 4),
              "real_data_modes": int((real_histogram > 0).sum()),
              "real_data_kl": round(kl_to_uniform(real_histogram), 4),
              "max_modes": classes**3, "kl_of_one_mode": round(math.log(classes**3), 4)}
    if task == "digits":
        real_features, sample_features = channel_features(real, classifier), channel_features(samples, classifier)
        metrics = manifold_metrics(real_features, sample_features)
        report |= {"precision": round(metrics["precision"], 4), "recall": round(metrics["recall"], 4),
                   "classifier_fid": round(feature_frechet(real_features, sample_features), 3)}
    return report


def accuracy(ckpt: str, n: int = 256, batch: int = 256, device: str = "cpu", classifier: str | None = None,
             steps: int | None = None) -> dict:
    """Per-class accuracy of a conditional checkpoint: n samples per class, the share labelled as asked.

    classifier: `shapes` (the demo shape classifier), `digits` (one trained on scikit-learn's real digits, for
        models of eval.digits' data), or "package.module:function", a function from uint8 images (N, H, W, C)
        to the predicted class indices (N,) in the model's classes; default: shapes when the classes are the
        demo shapes, digits when they are '0'..'9'.
    steps: sample in that many of the model's T steps (default all).
    """
    from ddgan.models import load_generator
    from ddgan.sampling import generate

    G, config = load_generator(ckpt, device=device)
    if config.num_classes == 0:
        raise ValueError(f"{ckpt} is unconditional (trained without --cond=True): it has no classes to check")
    names = list(config.class_names) or [str(i) for i in range(config.num_classes)]
    if classifier is None:
        classifier = "shapes" if set(names) <= set(SHAPES) else "digits" if names == list(digits.CLASSES) else None
    if classifier in ("shapes", "digits"):
        known = SHAPES if classifier == "shapes" else digits.CLASSES
        if not set(names) <= set(known):
            raise ValueError(f"--classifier={classifier} names {', '.join(known)}, and the model's classes are "
                             f"{', '.join(names[:10])}: pass --classifier=package.module:function instead")
        train = train_classifier if classifier == "shapes" else train_digits_classifier
        model, held_out = train(config.image_size)
        to_class = np.array([names.index(name) if name in names else -1 for name in known])

        def predict(images):
            return to_class[classify(images, model)]
    elif classifier is not None:
        module, _, function = str(classifier).partition(":")
        predict = getattr(__import__(module, fromlist=[function]), function)
        held_out = None
    else:
        raise ValueError(f"the classes ({', '.join(names[:5])}...) are neither the demo shapes nor the digits: pass "
                         "--classifier=package.module:function (uint8 NHWC images -> class indices)")
    per_class = {}
    for label, name in enumerate(names):
        samples = np.concatenate(list(generate(G, config, list(range(n)), batch=batch, device=device, labels=label,
                                               progress=False, num_steps=steps)))
        per_class[name] = round(float(np.mean(np.asarray(predict(samples)) == label)), 4)
    scores = list(per_class.values())
    report = {"checkpoint": str(ckpt), "samples_per_class": n, **sampling_steps(config, steps),
              "accuracy": per_class, "min_accuracy": min(scores),
              "mean_accuracy": round(float(np.mean(scores)), 4),
              "classifier_held_out_accuracy": None if held_out is None else round(held_out, 4)}
    print(json.dumps(report))
    return report


def spread(ckpt: str, n: int = 256, batch: int = 256, device: str = "cpu", reference: int = 2048,
           steps: int | None = None) -> dict:
    """Within-class variety of a demo-shapes checkpoint: per class, the std of the samples' shape centre and size
    over the data's (`ddgan.data.demo.within_class_spread`; 1 = the data's variety, 0 = all alike). steps: sample
    in that many of the model's T steps (default all)."""
    from ddgan.models import load_generator

    G, config = load_generator(ckpt, device=device)
    report = ({"checkpoint": str(ckpt), "samples_per_class": n, **sampling_steps(config, steps)}
              | sample_spread(G, config, n, batch, device, reference, steps))
    print(json.dumps(report))
    return report


def sample_spread(G, config, n: int = 256, batch: int = 256, device: str = "cpu", reference: int = 2048,
                  steps: int | None = None) -> dict:
    """within_class_spread of n samples per class of G (in `steps` of its T steps) against `reference` fresh demo
    images."""
    from ddgan.data.demo import within_class_spread
    from ddgan.sampling import generate

    if list(config.class_names) != list(SHAPES):
        raise ValueError(f"spread measures the demo shapes; the model's classes are {', '.join(config.class_names)}")
    samples = [np.concatenate(list(generate(G, config, range(n), batch=batch, device=device, labels=label,
                                            progress=False, num_steps=steps))) for label in range(NUM_SHAPES)]
    data = DemoShapes(config.image_size, config.num_channels, size=reference, seed=7)
    return within_class_spread(np.concatenate(samples), np.repeat(np.arange(NUM_SHAPES), n),
                               data.images.permute(0, 2, 3, 1).numpy(), data.labels)


if __name__ == "__main__":
    from ddgan.command import prints_its_result, run_group

    run_group({"make-data": make_data, "count": prints_its_result(count), "accuracy": prints_its_result(accuracy),
               "spread": prints_its_result(spread)}, "python -m eval.modes")
