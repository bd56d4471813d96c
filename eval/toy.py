"""`ddgan toy`: the 2-D check of the objectives, as the SIDDM authors simulated it: 25 Gaussians on a 5x5 grid,
small time-embedded MLPs (`networks.mlp`) trained by the image trainer itself (`ddgan.training.trainer`, the
same D and G steps and `ddgan.diffusion.objectives`), then sampled in 1, 2, ... T steps.

    ddgan toy --objective=siddm --num_timesteps=4 --seed=0

For each number of sampling steps it writes a scatter plot (PNG) and scores the samples: `modes` (centres with a
sample within 3 standard deviations), `high_quality` (the share of samples within 3 standard deviations of some
centre), the Fréchet distance of Gaussians fitted to samples and data, and the MMD with a Gaussian kernel. The
last line printed is one JSON object with every score, the scores of the T-step sampler at the top level.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/toy.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from ddgan.command import run_command
from ddgan.config import make_config
from ddgan.sampling import write_png
from networks.mlp import MLPDiscriminator, MLPGenerator

GRID = 5  # centres per side
SPACING = 5.0  # distance between neighbouring centres: the centres are (5i, 5j), i, j = 0..4, as the authors'
STD = 1 / 3  # each Gaussian's standard deviation, before its points are clamped to 3 std of the centre
CENTRE, SCALE = 10.0, 10.0  # the networks see (x - 10) / 10: the grid in [-1.1, 1.1], as images in [-1, 1]


def centres(grid: int = GRID, spacing: float = SPACING) -> np.ndarray:
    """The [grid**2, 2] centres of the mixture: (spacing i, spacing j), i, j = 0..grid-1."""
    axis = np.arange(grid) * spacing
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


def sample_mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points [n, 2] of the equal-weight mixture, in data units: a centre plus N(0, STD^2) clamped to +-3 STD."""
    means = torch.from_numpy(centres()).float()
    index = torch.randint(0, len(means), (n,), generator=generator)
    return means[index] + (STD * torch.randn(n, 2, generator=generator)).clamp(-3 * STD, 3 * STD)


def score(samples: np.ndarray, data: np.ndarray, mmd_points: int = 10_000, seed: int = 0) -> dict:
    """The scores of samples [n, 2] against data [m, 2] (data units): modes (of 25, with a sample within 3 std of
    the centre), high_quality (share within 3 std of some centre), the Fréchet distance and the MMD."""
    distances = np.linalg.norm(samples[:, None, :] - centres()[None], axis=2)
    near = distances <= 3 * STD
    return {"modes": int(near.any(0).sum()), "high_quality": round(float(near.any(1).mean()), 4),
            "frechet": round(frechet_distance(samples, data), 4),
            "mmd": round(polynomial_mmd(samples, data, mmd_points, seed), 5)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^1/2) of Gaussians fitted to the two point sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(root)))


def polynomial_mmd(a: np.ndarray, b: np.ndarray, points: int = 10_000, seed: int = 0) -> float:
    """The unbiased squared MMD with the kernel (<x, y> / d + 1)^2, as the SIDDM authors report it: both sets
    standardised by the data's (b's) mean and std, `points` drawn from each with replacement."""
    rng = np.random.default_rng(seed)
    mean, std = b.mean(), b.std()
    x = (a[rng.integers(0, len(a), points)] - mean) / std
    y = (b[rng.integers(0, len(b), points)] - mean) / std
    dim = x.shape[1]

    def kernel_sum(u, v, same):
        k = (u @ v.T / dim + 1) ** 2
        return (k.sum() - np.trace(k)) / (len(u) * (len(u) - 1)) if same else k.mean()
    return float(kernel_sum(x, x, True) + kernel_sum(y, y, True) - 2 * kernel_sum(x, y, False))


def scatter_png(samples: np.ndarray, path: Path, size: int = 400, low: float = -3.0, high: float = 23.0) -> Path:
    """A square plot of the points (dark) over the mixture's centres (red), from `low` to `high` on both axes."""
    image = np.full((size, size, 3), 255, np.uint8)

    def pixels(points):
        ij = np.round((points - low) / (high - low) * (size - 1)).astype(int)
        inside = ((ij >= 0) & (ij < size)).all(1)
        return ij[inside]

    for x, y in pixels(samples):
        image[size - 1 - y, x] = (20, 20, 80)
    for x, y in pixels(centres()):
        image[max(size - 3 - y, 0):size + 2 - y, max(x - 2, 0):x + 3] = (220, 30, 30)
    return write_png(image, path)


def toy(objective: str = "ddgan", num_timesteps: int = 4, iterations: int = 4000, batch_size: int = 256,
        seed: int = 0, nz: int = 2, width: int = 100, depth: int = 3, lr_g: float = 1e-4, lr_d: float = 4e-4,
        beta2: float = 0.999, r1_gamma: float = 0.0, ac_w: float = 1.0, ufo_rec_w: float = 1.0, loss: str = "ns",
        r2_gamma: float = 0.0, fourier_features: int = 64, fourier_scale_g: float = 0.5,
        fourier_scale_d: float = 0.25, lr_decay: bool = False, ema_decay: float = 0.0,
        samples: int = 10_000, steps: Sequence[int] | None = None, out: str = "runs/toy") -> dict:
    """Train G and D on the 25-Gaussian grid with an objective, then score samples drawn in 1, 2, ... T steps.

    objective: ddgan, siddm or ufogen (the trainer's --objective); ac_w, ufo_rec_w their weights.
    iterations: D and G steps; batch_size points per step; width, depth: the MLPs' hidden layers.
    fourier_features: random Fourier features of the points each network sees (0: raw coordinates, the
        authors' networks); fourier_scale_g, fourier_scale_d: their frequencies' std in G and D, in cycles per
        unit of the networks' coordinates.
    lr_decay: cosine decay of both learning rates over the iterations (the trainer's, to its lr_min 1e-5).
    ema_decay: sample from an exponential moving average of G with this decay per iteration (0: G itself).
    steps: numbers of sampling steps to score (default: 1, 2, 4, ... up to T, and T).
    out: folder of the scatter plots (one per number of steps) and scores.json.
    """
    from ddgan.training.trainer import Trainer

    steps = sorted({*(steps or [s for s in (1, 2, 4, 8) if s < num_timesteps]), num_timesteps})
    config = make_config(
        "cifar10", data="toy", hflip=False, objective=objective, num_timesteps=num_timesteps,
        nz=nz, batch_size=batch_size, lr_g=lr_g, lr_d=lr_d, beta2=beta2, r1_gamma=r1_gamma, lazy_reg=1, ac_w=ac_w,
        ufo_rec_w=ufo_rec_w, loss=loss, r2_gamma=r2_gamma, no_lr_decay=not lr_decay, use_ema=ema_decay > 0,
        ema_decay=ema_decay, seed=seed,
        kimg=iterations * batch_size / 1000, amp="none", channels_last=False, t_emb_dim=32)

    def networks(c):
        return (MLPGenerator(2, c.nz, width, depth, c.t_emb_dim, fourier_features, fourier_scale_g),
                MLPDiscriminator(2, width, depth, c.t_emb_dim, fourier_features, fourier_scale_d))

    trainer = Trainer(config, build_networks=networks)
    data_stream = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in tqdm(range(iterations), desc=f"toy {objective}", unit="it", mininterval=1.0, file=sys.stderr):
        trainer.run_iteration((sample_mixture(batch_size, data_stream) - CENTRE) / SCALE)
    train_seconds = time.perf_counter() - started

    data = sample_mixture(samples, torch.Generator().manual_seed(10_000 + seed)).numpy()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    by_steps = {}
    for count in steps:
        with torch.no_grad():
            noise = torch.Generator().manual_seed(20_000 + seed)
            x_T = trainer.diffusion.prior((samples, 2), noise)
            # G_ema is G's copy after every step when ema_decay is 0.
            points = trainer.diffusion.sample(trainer.G_ema, x_T, nz, generator=noise, num_steps=count)
        points = points.numpy() * SCALE + CENTRE
        by_steps[count] = score(points, data, mmd_points=min(samples, 10_000))
        scatter_png(points, folder / f"{objective}-steps{count}.png")
    report = {"objective": objective, "num_timesteps": num_timesteps, "seed": seed, "iterations": iterations,
              "batch_size": batch_size, "fourier_features": fourier_features, "lr_decay": lr_decay,
              "ema_decay": ema_decay,
              "train_seconds": round(train_seconds, 1), **by_steps[num_timesteps],
              "by_steps": {str(k): v for k, v in by_steps.items()}, "plots": str(folder)}
    (folder / f"{objective}-scores.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


@functools.wraps(toy)
def toy_command(*args, **flags) -> None:
    """`ddgan toy`: the report as one JSON line, printed last."""
    print(json.dumps(toy(*args, **flags)), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("toy", toy_command, argv)


if __name__ == "__main__":
    main()
