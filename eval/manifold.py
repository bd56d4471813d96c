"""Precision, recall, density and coverage of generated features against real ones, by the `prdc` package.

Precision and recall (Kynkäänniemi et al., 2019): the share of generated samples inside the real
manifold, and of real samples inside the generated one, each manifold the union of balls reaching every
sample's k-th nearest neighbour. Density and coverage (Naeem et al., 2020) are their outlier-robust
variants. ddgan computes them on the Inception features FID already extracted (same pass) with
k = 3; the k-NN arithmetic is `prdc`'s (Naeem et al.'s own package), not rewritten here.

Cost: three distance matrices of N x N, M x M and N x M float32, so 10 000 against 10 000 needs about
1.2 GB; larger sets grow quadratically.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

NEAREST_K = 3  # Kynkäänniemi et al.'s k
DEFAULT_COUNT = 10_000  # features per side (Naeem et al. evaluate on 10 000)
METRICS = ("precision", "recall", "density", "coverage")


def seeded_subset(features: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` rows chosen without replacement by a seeded generator, in their original order (all if fewer)."""
    if count >= len(features):
        return features
    rows = np.sort(np.random.default_rng(seed).choice(len(features), size=count, replace=False))
    return features[rows]


def manifold_metrics(real: np.ndarray, fake: np.ndarray, nearest_k: int = NEAREST_K) -> dict[str, float]:
    """{precision, recall, density, coverage} of fake features (M, D) against real ones (N, D)."""
    from prdc import compute_prdc

    real = np.asarray(real, dtype=np.float32)
    fake = np.asarray(fake, dtype=np.float32)
    if isinstance(nearest_k, bool) or not isinstance(nearest_k, int) or nearest_k < 1:
        raise ValueError(f"--nearest_k must be an integer >= 1, got {nearest_k!r}")
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"cannot compare generated features {fake.shape} with reference features {real.shape}: "
                         "both must be (count, dim) from the same feature extractor")
    for name, features in (("reference", real), ("generated", fake)):
        if len(features) <= nearest_k:
            raise ValueError(f"precision/recall need more than --nearest_k={nearest_k} {name} samples, got "
                             f"{len(features)}")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes; our report says them
        values = compute_prdc(real_features=real, fake_features=fake, nearest_k=nearest_k)
    return {name: float(values[name]) for name in METRICS}
