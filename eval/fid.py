"""`ddgan fid`: Frechet Inception Distance with clean-fid, streamed from the generator.

Generated images go to clean-fid's generator interface as uint8 batches, so no PNGs are written; the
seeds (default 0..n-1) fix the sample set. Reference statistics (mu, sigma of Inception features) come
from clean-fid's hosted files (`--stats=cifar10`), from a file written by `ddgan fid make-stats`, or are
computed from a folder / array of images (`--ref`).

clean-fid downloads what it needs the first time; offline, every missing file is reported up front
with its name, the folder it belongs in and the URL to fetch it from on another machine.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/fid.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from ddgan import checkpoint
from ddgan.cli import prints_its_result
from ddgan.config import Config
from ddgan.data import ImageDataset, open_dataset
from ddgan.files import atomic_write
from ddgan.models import load_generator
from ddgan.sampling import check_batch, default_device, generate, seed_list, to_uint8

MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's TorchScript Inception (clean, legacy_tensorflow)
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's weights (legacy_pytorch)
PYTORCH_FID_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats"
DOWNLOAD_TIMEOUT_S = 30
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]  # float (B, 3, 299, 299) in [0, 255] -> (B, D)


class MissingFileError(FileNotFoundError):
    """A file FID needs (Inception weights, reference statistics) that is absent and could not be fetched."""


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")


# ---------------------------------------------------------------------------------------------------------
# Files clean-fid would download


def download(url: str, path: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch `url` into `path` via a temporary file, so an interrupted download leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        atomic_write(path, lambda f: shutil.copyfileobj(response, f, 1 << 20))


def fetch(path: Path, url: str, what: str, allow_download: bool, hint: str = "") -> Path:
    """`path` if it exists, else download it from `url` (if allowed), else a MissingFileError saying what to do."""
    if path.is_file():
        return path
    reason = "downloading is off"
    if allow_download:
        print(f"downloading {what} from {url} to {path}", file=sys.stderr)
        try:
            download(url, path)
            return path
        except (OSError, ValueError) as error:  # URLError and timeouts are OSErrors
            reason = f"the download failed: {error}"
    raise MissingFileError(f"{what} not found: {path} does not exist and {reason}. Fetch {url} on a machine with "
                           f"internet access and place it at {path}{hint}")


def cleanfid_inception_folder() -> Path:
    """Where clean-fid itself keeps the TorchScript Inception weights (a fixed folder it chooses)."""
    return Path("./" if platform.system() == "Windows" else "/tmp")


def inception_path(inception: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The TorchScript Inception weights: --inception, else $DDGAN_INCEPTION, else clean-fid's cache folder."""
    given = inception or os.environ.get("DDGAN_INCEPTION")
    if given:
        path = Path(given).expanduser()
        path = path / INCEPTION_FILE if path.is_dir() else path
        if not path.is_file():
            raise MissingFileError(f"--inception / $DDGAN_INCEPTION points at {path}, which does not exist; fetch "
                                   f"{INCEPTION_URL} and give the path of {INCEPTION_FILE}")
        return path
    hint = " (or anywhere, then pass --inception=PATH or set DDGAN_INCEPTION=PATH)"
    return fetch(cleanfid_inception_folder() / INCEPTION_FILE, INCEPTION_URL, f"Inception weights {INCEPTION_FILE}",
                 allow_download, hint)


@contextlib.contextmanager
def folder_holding(path: Path, name: str) -> Iterator[Path]:
    """A folder in which `name` is the file `path`: its own folder, or a temporary one with a link to it."""
    if path.name == name:
        yield path.parent
        return
    with tempfile.TemporaryDirectory(prefix="ddgan-fid-") as folder:
        os.symlink(path.resolve(), Path(folder) / name)
        yield Path(folder)


def pytorch_fid_path(inception: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """pytorch-fid's Inception weights (legacy_pytorch): --inception, $DDGAN_INCEPTION, or torch.hub's cache."""
    given = inception or os.environ.get("DDGAN_INCEPTION")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise MissingFileError(f"--inception / $DDGAN_INCEPTION points at {path}, which does not exist; "
                                   f"--mode=legacy_pytorch needs {PYTORCH_FID_FILE} from {PYTORCH_FID_URL}")
        return path
    return fetch(Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE, PYTORCH_FID_URL,
                 f"pytorch-fid Inception weights {PYTORCH_FID_FILE}", allow_download,
                 " (torch.hub's cache; $TORCH_HOME moves it) or pass --inception=PATH")


def inception_extractor(mode: str = "clean", device=None, inception: str | os.PathLike | None = None,
                        allow_download: bool = True) -> FeatureExtractor:
    """clean-fid's Inception feature extractor for `mode`, with its weights found (or fetched) first."""
    check_mode(mode)
    device = torch.device(device) if device is not None else default_device()
    find = pytorch_fid_path if mode == "legacy_pytorch" else inception_path
    return load_extractor(mode, device, find(inception, allow_download))


@functools.lru_cache(maxsize=1)  # training evaluates FID again and again: load Inception once
def load_extractor(mode: str, device: torch.device, weights: Path) -> FeatureExtractor:
    """Build clean-fid's extractor from weights known to be on disk, so nothing is downloaded."""
    from cleanfid.features import build_feature_extractor
    from cleanfid.inception_torchscript import InceptionV3W

    if mode == "legacy_pytorch":
        with hub_holding(weights):  # clean-fid loads these through torch.hub's cache
            return build_feature_extractor(mode, device, use_dataparallel=False)
    with folder_holding(weights, INCEPTION_FILE) as folder:
        model = InceptionV3W(str(folder), download=False, resize_inside=mode == "legacy_tensorflow")
    return model.to(device).eval()


@contextlib.contextmanager
def hub_holding(weights: Path) -> Iterator[None]:
    """Point torch.hub's cache at `weights` for the duration, unless it is already the cached file."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE
    if cached.is_file() and cached.resolve() == weights.resolve():
        yield
        return
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="ddgan-hub-") as folder:
        (Path(folder) / "checkpoints").mkdir()
        os.symlink(weights.resolve(), Path(folder) / "checkpoints" / PYTORCH_FID_FILE)
        torch.hub.set_dir(folder)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


# ---------------------------------------------------------------------------------------------------------
# Statistics


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (N, D), as clean-fid computes them."""
    if len(features) < 2:
        raise ValueError(f"FID needs at least 2 images to estimate a covariance, got {len(features)}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def cleanfid_stats_folder() -> Path:
    """Where clean-fid keeps downloaded statistics: a `stats` folder inside its package."""
    import cleanfid

    return Path(cleanfid.__file__).parent / "stats"


def named_stats(name: str, mode: str, image_size: int, split: str = "train",
                allow_download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """clean-fid's hosted statistics, e.g. cifar10 / 32 px / train, fetched once into its stats folder."""
    from cleanfid.features import get_reference_statistics

    file = f"{name}_{mode}_{split}_{image_size}.npz".lower()
    path = cleanfid_stats_folder() / file
    fetch(path, f"{STATS_URL}/{file}", f"clean-fid statistics {file}", allow_download,
          " (or make your own with `ddgan fid make-stats DATA --out=STATS.npz` and pass --stats=STATS.npz)")
    return get_reference_statistics(name, image_size, mode=mode, split=split)


def load_stats(path: str | os.PathLike, mode: str, dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a file of `ddgan fid make-stats` (or any .npz holding mu and sigma)."""
    path = Path(path).expanduser()
    with np.load(path, allow_pickle=False) as stats:
        if "mu" not in stats or "sigma" not in stats:
            hint = "; it looks like an image array: pass it as --ref" if "x" in stats or len(stats.files) == 1 else ""
            raise ValueError(f"--stats={str(path)!r} holds {stats.files}, not FID statistics (mu, sigma){hint}")
        if "mode" in stats and str(stats["mode"]) != mode:
            raise ValueError(f"--stats={str(path)!r} was made in mode {str(stats['mode'])!r}, but FID is computed in "
                             f"mode {mode!r}; pass --mode={str(stats['mode'])} or remake the statistics")
        mu, sigma = stats["mu"], stats["sigma"]
    if dims is not None and mu.shape != (dims,):
        raise ValueError(f"--stats={str(path)!r} holds {mu.shape[0]}-dim features but the feature extractor makes "
                         f"{dims}-dim ones; remake the statistics with the same extractor")
    return mu, sigma


def reference_stats(stats, mode: str = "clean", image_size: int = 32, split: str = "train",
                    allow_download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a (mu, sigma) pair, a .npz of statistics, or the name of clean-fid's hosted statistics."""
    if isinstance(stats, tuple | list) and len(stats) == 2:
        return np.asarray(stats[0]), np.asarray(stats[1])
    if not isinstance(stats, str | os.PathLike) or not str(stats):
        raise ValueError(f"--stats must name clean-fid statistics (e.g. cifar10) or a .npz from `ddgan fid "
                         f"make-stats`, got {stats!r}; or compare with images via --ref=FOLDER|NPZ")
    if str(stats).lower().endswith(".npz") or Path(stats).expanduser().is_file():
        if not Path(stats).expanduser().is_file():
            raise ValueError(f"--stats={str(stats)!r} does not exist; make it with `ddgan fid make-stats DATA "
                             f"--out={stats}`")
        return load_stats(stats, mode)
    return named_stats(str(stats), mode, image_size, split, allow_download)


# ---------------------------------------------------------------------------------------------------------
# Features through clean-fid's generator interface


class BatchFeed:
    """clean-fid's `gen`: each call returns the next batch of uint8 (B, 3, H, W) images, whatever z it gets.

    clean-fid asks for ceil(n / batch) full batches and keeps the first n images; a short last batch is
    padded by repeating its first image.
    """

    def __init__(self, batches: Iterator[np.ndarray], batch: int):
        self.batches, self.batch = batches, batch

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        images = torch.from_numpy(next(self.batches)).permute(0, 3, 1, 2)
        if images.shape[1] == 1:  # Inception sees RGB; grayscale is replicated, as PIL's convert('RGB') does
            images = images.expand(-1, 3, -1, -1)
        if len(images) < self.batch:
            images = torch.cat([images, images[:1].expand(self.batch - len(images), -1, -1, -1)])
        return images.contiguous()


def stream_features(batches: Iterator[np.ndarray], n: int, batch: int, extractor: FeatureExtractor,
                    mode: str, device, description: str, verbose: bool = True) -> np.ndarray:
    """Features (n, D) of the first n images of a stream of uint8 (B, H, W, C) batches, via clean-fid."""
    from cleanfid.fid import get_model_features

    # clean-fid draws (unused) latents from the global RNG; keep the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        return get_model_features(BatchFeed(batches, batch), extractor, mode=mode, z_dim=1, num_gen=n,
                                  batch_size=batch, device=device, desc=description, verbose=verbose)


def dataset_batches(dataset: torch.utils.data.Dataset, n: int, batch: int, workers: int = 0) -> Iterator[np.ndarray]:
    """The first n images of a dataset of CHW tensors in [-1, 1] as uint8 (B, H, W, C) batches."""
    subset = torch.utils.data.Subset(dataset, range(n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=False, num_workers=workers)
    for images in loader:
        yield to_uint8(images).permute(0, 2, 3, 1).numpy()


def open_reference(data: str, image_size: int | None = None) -> ImageDataset:
    """Images to compare with, in RGB and unflipped; at their own size (the first image's) unless image_size."""
    dataset = open_dataset(str(data), image_size or 1, num_channels=3)
    if image_size is None:
        first = dataset.source.load(0)
        size = min(first.shape[:2]) if isinstance(first, np.ndarray) else min(first.size)
        dataset = ImageDataset(dataset.source, size, num_channels=3)
    return dataset


def dataset_features(dataset: ImageDataset, extractor: FeatureExtractor, n: int | None = None, batch: int = 100,
                     mode: str = "clean", device=None, workers: int = 0, verbose: bool = True) -> np.ndarray:
    """Features of the (first n) images of a dataset."""
    count = len(dataset) if n is None else n
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= len(dataset):
        raise ValueError(f"--n={n}: {dataset.name} holds {len(dataset)} images; choose 2..{len(dataset)} or leave "
                         "--n out to use them all")
    batches = dataset_batches(dataset, count, batch, workers)
    return stream_features(batches, count, batch, extractor, mode, device, f"features of {dataset.name}", verbose)


# ---------------------------------------------------------------------------------------------------------
# Public entry points


def fid_of_generator(G: torch.nn.Module, config: Config, stats, n: int = 50_000, batch: int = 100, device=None,
                     feature_extractor: FeatureExtractor | None = None, seeds: Sequence[int] | None = None,
                     mode: str = "clean", split: str = "train", inception: str | None = None, amp: str | None = None,
                     verbose: bool = True) -> float:
    """FID of G's samples for seeds (default 0..n-1) against `stats`: a name, a .npz, or (mu, sigma).

    G comes back in the train/eval mode it came in; the caller's global random state is not touched.
    """
    check_mode(mode)
    check_batch(batch)
    seeds = seed_list(n, seeds, default=50_000) if seeds is None else seed_list(None, seeds)
    device = torch.device(device) if device is not None else next(G.parameters()).device
    reference = reference_stats(stats, mode, config.image_size, split)
    extractor = feature_extractor or inception_extractor(mode, device, inception)
    was_training = G.training
    G.eval()
    try:
        batches = generate(G, config, seeds, batch, device, amp=amp, progress=False)
        features = stream_features(batches, len(seeds), batch, extractor, mode, device, "FID", verbose)
    finally:
        G.train(was_training)
    return frechet(feature_stats(features), reference)


def training_fid(G: torch.nn.Module, config: Config) -> float:
    """The FID `ddgan train --fid_every` logs: config.fid_samples seeds against config.fid_stats."""
    return fid_of_generator(G, config, stats=config.fid_stats, n=config.fid_samples, batch=100, verbose=False)


def frechet(stats_a, stats_b) -> float:
    """clean-fid's Frechet distance between two (mu, sigma) pairs, after checking that they match."""
    from cleanfid.fid import frechet_distance

    if stats_a[0].shape != stats_b[0].shape:
        raise ValueError(f"cannot compare {stats_a[0].shape[0]}-dim features with {stats_b[0].shape[0]}-dim "
                         "reference statistics; both must come from the same feature extractor")
    return float(frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


def make_stats(data: str, out: str, image_size: int | None = None, n: int | None = None, batch: int = 100,
               mode: str = "clean", device=None, inception: str | None = None, workers: int = 0,
               overwrite: bool = False, feature_extractor: FeatureExtractor | None = None,
               verbose: bool = True) -> str:
    """Compute FID reference statistics (mu, sigma) once from a dataset and save them as a .npz.

    data: a dataset name (cifar10, ...) or a folder / .zip / LMDB / .npz of images; never flipped.
    out: where to write the statistics (*.npz); pass it later as `ddgan fid CKPT --stats=OUT`.
    image_size: resize to this size first (use the generator's); default the images' own size.
    n: use only the first n images (default all).
    """
    check_mode(mode)
    check_batch(batch)
    out_path = Path(out).expanduser()
    if out_path.suffix.lower() != ".npz":
        raise ValueError(f"--out={out!r}: statistics are written as .npz; give a path ending in .npz")
    if out_path.exists() and not overwrite:
        raise ValueError(f"--out={out!r} exists; pass --overwrite to replace it")
    dataset = open_reference(data, image_size)
    device = torch.device(device) if device is not None else default_device()
    extractor = feature_extractor or inception_extractor(mode, device, inception)
    mu, sigma = feature_stats(dataset_features(dataset, extractor, n, batch, mode, device, workers, verbose))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, lambda f: np.savez(
        f, mu=mu, sigma=sigma, mode=np.array(mode), num_images=np.array(n or len(dataset)),
        image_size=np.array(dataset.image_size), source=np.array(str(data))))
    return str(out_path)


def fid(ckpt: str, stats: str | None = None, ref: str | None = None, n: int | None = None, batch: int = 100,
        seeds=None, device=None, mode: str = "clean", split: str = "train", inception: str | None = None,
        ema: bool = True, preset: str | None = None, reference_config: str | None = None, amp: str | None = None,
        feature_extractor: FeatureExtractor | None = None, verbose: bool = True) -> float:
    """FID of a checkpoint's samples; prints it and a JSON line, and returns it.

    `ddgan fid make-stats DATA --out=STATS.npz [--image_size=32]` computes reference statistics once from a
    dataset name or a folder / .npz / LMDB of images (`ddgan fid make-stats --help`).

    stats: clean-fid statistics by name (cifar10, at the generator's resolution and --split) or a .npz from
        `ddgan fid make-stats`; default the checkpoint's fid_stats setting.
    ref: instead of --stats, a folder / .npz / LMDB of reference images, resized to the generator's size.
    n, seeds: the sample set: seeds 0..n-1 (n default 50000), or --seeds like 0-49999.
    mode: clean (default), legacy_tensorflow (TTUR's protocol) or legacy_pytorch (pytorch-fid's, which the
        DDGAN paper used).
    inception: a local copy of the Inception weights (also $DDGAN_INCEPTION); needed offline.
    """
    check_mode(mode)
    check_batch(batch)
    if stats is not None and ref is not None:
        raise ValueError("give --stats or --ref, not both")
    seeds = seed_list(n, seeds, default=50_000)
    started = time.time()
    device = torch.device(device) if device is not None else default_device()
    source = checkpoint.resolve(ckpt)
    G, config = load_generator(source, ema=ema, device=device, preset=preset, reference_config_path=reference_config)
    if ref is None:
        stats = stats if stats is not None else config.fid_stats
        if not stats:
            raise ValueError(f"{source} names no FID statistics (its fid_stats is empty); pass --stats=NAME|STATS.npz "
                             "or --ref=FOLDER|NPZ")
        reference = reference_stats(stats, mode, config.image_size, split)  # before Inception: fail fast offline
        if str(stats).lower().endswith(".npz"):
            check_stats_size(stats, config.image_size)
        extractor = feature_extractor or inception_extractor(mode, device, inception)
    else:
        dataset = open_reference(ref, config.image_size)
        extractor = feature_extractor or inception_extractor(mode, device, inception)
        reference = feature_stats(dataset_features(dataset, extractor, None, batch, mode, device, verbose=verbose))
    value = fid_of_generator(G, config, reference, batch=batch, device=device, feature_extractor=extractor,
                             seeds=seeds, mode=mode, amp=amp, verbose=verbose)
    described = str(ref if ref is not None else stats)
    record = {"metric": "fid", "value": value, "ckpt": str(source), "reference": described, "mode": mode,
              "n": len(seeds), "seeds": describe_seeds(seeds), "device": str(device),
              "seconds": round(time.time() - started, 1)}
    print(f"FID {value:.4f} ({len(seeds)} samples of {source.name} vs {described}, {mode} mode)")
    print(json.dumps(record))
    return value


def check_stats_size(path: str, image_size: int) -> None:
    """Warn when statistics were made at another resolution than the generator's."""
    with np.load(Path(path).expanduser(), allow_pickle=False) as stats:
        made_at = int(stats["image_size"]) if "image_size" in stats else None
    if made_at is not None and made_at != image_size:
        warnings.warn(f"--stats={path} was made from {made_at} px images but the generator makes {image_size} px; "
                      f"remake them with --image_size={image_size} for a fair comparison", stacklevel=2)


def describe_seeds(seeds: Sequence[int]) -> str:
    """`0-49999` for a contiguous run, else the count."""
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return f"{len(seeds)} seeds"


fid_command = prints_its_result(fid)  # fid prints the FID and a JSON line


# `ddgan fid make-stats DATA --out=STATS.npz` computes reference statistics once.
fid_command.subcommands = {"make-stats": make_stats, "make_stats": make_stats}


def main(argv: Sequence[str] | None = None) -> None:
    """`python eval/fid.py CKPT ...` is `ddgan fid CKPT ...` (also `make-stats DATA --out=STATS.npz`)."""
    from ddgan.cli import run_command

    run_command("fid", fid_command, argv)


if __name__ == "__main__":
    main()
