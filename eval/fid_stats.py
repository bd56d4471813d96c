"""The reference statistics FID compares against: clean-fid's published ones by name, .npz files of
`ddgan fid make-stats`, their loading and checks, and the Fréchet distance between two of them."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.inception import (
    check_mode,
    fetch,
)

STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats"


# The statistics clean-fid hosts (its README, "Supported Precomputed Datasets"): name -> split -> resolutions,
# each in the modes clean, legacy_tensorflow and legacy_pytorch.
CLEANFID_STATS = {
    "cifar10": {"train": (32,), "test": (32,)},
    "ffhq": {"trainval": (256, 1024), "trainval70k": (256, 1024)},
    "lsun_church": {"train": (256,)},
    "lsun_horse": {"train": (256,)},
    "lsun_cat": {"train": (256,), "trainfull": (256,)},
    "afhq_cat": {"train": (512,)},
    "afhq_dog": {"train": (512,)},
    "afhq_wild": {"train": (512,)},
    "brecahad": {"train": (512,)},
    "metfaces": {"train": (1024,)},
    "horse2zebra": {"test": (256,)},
    "cat2dog": {"test": (256,)},
}


@dataclass(frozen=True)
class Reference:
    """What generated images are compared with: FID statistics and, for --prdc, reference features."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (N, D), as clean-fid computes them."""
    if len(features) < 2:
        raise ValueError(f"FID needs at least 2 images to estimate a covariance, got {len(features)}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def cleanfid_stats_folder() -> Path:
    """Where clean-fid keeps downloaded statistics: a `stats` folder inside its package."""
    import cleanfid

    return Path(cleanfid.__file__).parent / "stats"


def named_stats_file(name: str, mode: str, image_size: int, split: str = "train") -> Path:
    """Where clean-fid's statistics `name` (split, resolution) live once fetched; refused if no server has them."""
    check_mode(mode)
    file = f"{name}_{mode}_{split}_{image_size}.npz".lower()
    path = cleanfid_stats_folder() / file
    hosted = CLEANFID_STATS.get(name.lower(), {})
    if path.is_file() or image_size in hosted.get(split.lower(), ()):
        return path
    make = (f"make statistics at the model's resolution with `ddgan fid make-stats "
            f"{name if name.lower() in ('cifar10', 'demo') else 'DATA'} --image_size={image_size} "
            f"--out={name}-{image_size}.npz` and pass --stats={name}-{image_size}.npz")
    if not hosted:
        raise ValueError(f"--stats={name}: clean-fid hosts no statistics of that name (it has "
                         f"{', '.join(CLEANFID_STATS)}; a file path must end in .npz); {make}")
    exists = "; ".join(f"--split={s} at {' or '.join(f'{r} px' for r in sizes)}" for s, sizes in hosted.items())
    raise ValueError(f"--stats={name}: clean-fid has no {file} (split {split}, {image_size} px), so nothing was "
                     f"downloaded. For {name} it hosts {exists}; {make}")


def named_stats(name: str, mode: str, image_size: int, split: str = "train", allow_download: bool = True) -> Reference:
    """clean-fid's hosted statistics, e.g. cifar10 / 32 px / train, fetched once into its stats folder."""
    path = named_stats_file(name, mode, image_size, split)
    fetch(path, f"{STATS_URL}/{path.name}", f"clean-fid statistics {path.name}", allow_download,
          " (or make your own with `ddgan fid make-stats DATA --out=STATS.npz` and pass --stats=STATS.npz)")
    with np.load(path, allow_pickle=False) as stats:
        return Reference(stats["mu"], stats["sigma"])


def load_stats(path: str | os.PathLike, mode: str, dims: int | None = None) -> Reference:
    """The statistics (and reference features, if kept) in a file of `ddgan fid make-stats` or any .npz
    holding mu and sigma."""
    path = Path(path).expanduser()
    with np.load(path, allow_pickle=False) as stats:
        if "mu" not in stats or "sigma" not in stats:
            hint = "; it looks like an image array: pass it as --ref" if "x" in stats or len(stats.files) == 1 else ""
            raise ValueError(f"--stats={str(path)!r} holds {stats.files}, not FID statistics (mu, sigma){hint}")
        if "mode" in stats and str(stats["mode"]) != mode:
            raise ValueError(f"--stats={str(path)!r} was made in mode {str(stats['mode'])!r}, but FID is computed in "
                             f"mode {mode!r}; pass --mode={str(stats['mode'])} or remake the statistics")
        reference = Reference(stats["mu"], stats["sigma"], stats["features"] if "features" in stats else None)
    if dims is not None and reference.mu.shape != (dims,):
        raise ValueError(f"--stats={str(path)!r} holds {reference.mu.shape[0]}-dim features but the feature "
                         f"extractor makes {dims}-dim ones; remake the statistics with the same extractor")
    return reference


def reference_stats(stats, mode: str = "clean", image_size: int = 32, split: str = "train",
                    allow_download: bool = True) -> Reference:
    """The Reference of a (mu, sigma) pair, a .npz of statistics, or the name of clean-fid's hosted statistics."""
    if isinstance(stats, Reference):
        return stats
    if isinstance(stats, tuple | list) and len(stats) == 2:
        return Reference(np.asarray(stats[0]), np.asarray(stats[1]))
    if not isinstance(stats, str | os.PathLike) or not str(stats):
        raise ValueError(f"--stats must name clean-fid statistics (e.g. cifar10) or a .npz from `ddgan fid "
                         f"make-stats`, got {stats!r}; or compare with images via --ref=FOLDER|NPZ")
    if str(stats).lower().endswith(".npz") or Path(stats).expanduser().is_file():
        if not Path(stats).expanduser().is_file():
            raise ValueError(f"--stats={str(stats)!r} does not exist; make it with `ddgan fid make-stats DATA "
                             f"--out={stats}`")
        return load_stats(stats, mode)
    return named_stats(str(stats), mode, image_size, split, allow_download)


def check_has_features(reference: Reference, described: str, training: bool = False) -> None:
    """--prdc needs reference features, which hosted statistics and plain make-stats files do not hold."""
    if reference.features is None:
        flag, stats_flag, alternative = ("--fid_prdc", "--fid_stats", "") if training else \
            ("--prdc", "--stats", ", or compare with images via --ref=FOLDER|NPZ")
        raise ValueError(f"{flag}: the statistics {described} hold no reference features, only mu and sigma. Keep "
                         f"some with `ddgan fid make-stats DATA --out=STATS.npz --features=10000` and pass "
                         f"{stats_flag}=STATS.npz{alternative}")


def check_stats_size(path: str, image_size: int) -> None:
    """Warn when statistics were made at another resolution than the generator's."""
    with np.load(Path(path).expanduser(), allow_pickle=False) as stats:
        made_at = int(stats["image_size"]) if "image_size" in stats else None
    if made_at is not None and made_at != image_size:
        warnings.warn(f"--stats={path} was made from {made_at} px images but the generator makes {image_size} px; "
                      f"remake them with --image_size={image_size} for a fair comparison", stacklevel=2)


def frechet(stats_a, stats_b) -> float:
    """clean-fid's Frechet distance between two (mu, sigma) pairs, after checking that they match."""
    from cleanfid.fid import frechet_distance

    if stats_a[0].shape != stats_b[0].shape:
        raise ValueError(f"cannot compare {stats_a[0].shape[0]}-dim features with {stats_b[0].shape[0]}-dim "
                         "reference statistics; both must come from the same feature extractor")
    return float(frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))
