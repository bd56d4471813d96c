"""`ddgan fid`: FID, and with --prdc precision, recall, density and coverage, of a checkpoint's samples.

Generated images go through clean-fid's resizing and Inception network batch by batch, so no PNGs are
written; the seeds (default 0..n-1) fix the sample set, and every metric uses the same features, computed
once. Under torchrun the batches are dealt out to the ranks (NCCL on GPUs, gloo on CPUs) and the features
gathered in seed order on rank 0: the numbers of one process, sooner. The reference is clean-fid's hosted
statistics where they exist (`--stats=cifar10`), a file of `ddgan fid make-stats` (which can also keep a
seeded subset of reference features for --prdc), or a folder / array of images (`--ref`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as `python eval/fid.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from ddgan.command import prints_its_result
from ddgan.config import Config
from ddgan.data import ImageDataset, open_dataset
from ddgan.models import load_generator, resolve_source
from ddgan.runtime import distributed
from ddgan.runtime.files import atomic_write
from ddgan.sampling import generate_share, parse_classes, seed_list, to_uint8
from ddgan.sampling.generate import check_batch
from eval.inception import (
    FeatureExtractor,
    batch_features,
    check_mode,
    fetch,
    inception_extractor,
)
from eval.manifold import DEFAULT_COUNT, NEAREST_K, manifold_metrics, seeded_subset

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


# ---------------------------------------------------------------------------------------------------------
# Reference statistics


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


# ---------------------------------------------------------------------------------------------------------
# Features, split over the ranks of a torchrun job


def gathered_features(local_batches: Iterator[np.ndarray], shares: list[range], total: int,
                      extractor: FeatureExtractor, mode: str, device, context: distributed.Context,
                      description: str, verbose: bool) -> np.ndarray | None:
    """Features of every rank's uint8 batches, gathered in order on rank 0 (None on the others)."""
    local = (batch_features(images, extractor, mode, device) for images in local_batches)
    parts = []
    with tqdm(total=total, desc=description, unit="img", file=sys.stderr,
              disable=not (verbose and context.is_main)) as bar:
        for gathered in distributed.gather_rounds(local, shares, context):
            parts += gathered
            bar.update(sum(len(p) for p in gathered))
    return np.concatenate(parts) if context.is_main else None


def generator_features(G: torch.nn.Module, config: Config, seeds: Sequence[int], batch: int, device,
                       extractor: FeatureExtractor, mode: str, amp: str | None = None, labels=None,
                       context: distributed.Context | None = None, verbose: bool = True) -> np.ndarray | None:
    """Features of G's images for `seeds` (and labels), this process's share drawn here; all of them on rank 0."""
    context = context or distributed.current(device)
    shares, images = generate_share(G, config, seeds, batch, replace(context, device=torch.device(device)),
                                    labels, amp=amp)
    return gathered_features(images, shares, len(seeds), extractor, mode, device, context, "features of samples",
                             verbose)


def dataset_features(dataset: ImageDataset, extractor: FeatureExtractor, n: int | None = None, batch: int = 100,
                     mode: str = "clean", device=None, workers: int = 0, verbose: bool = True,
                     context: distributed.Context | None = None) -> np.ndarray | None:
    """Features of the (first n) images of a dataset; under torchrun each rank reads its share, rank 0 gets all."""
    count = len(dataset) if n is None else n
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= len(dataset):
        raise ValueError(f"--n={n}: {dataset.name} holds {len(dataset)} images; choose 2..{len(dataset)} or leave "
                         "--n out to use them all")
    context = context or distributed.current(device)
    shares = distributed.round_shares(count, batch, context)
    subset = torch.utils.data.Subset(dataset, [index for share in shares for index in share])
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=False, num_workers=workers)
    batches = (to_uint8(images).permute(0, 2, 3, 1).numpy() for images in loader)
    return gathered_features(batches, shares, count, extractor, mode, device, context,
                             f"features of {dataset.name}", verbose)


def open_reference(data: str, image_size: int | None = None, download: bool = False) -> ImageDataset:
    """Images to compare with, in RGB and unflipped; at their own size (the first image's) unless image_size."""
    dataset = open_dataset(str(data), image_size or 1, num_channels=3, download=download)
    if image_size is None:
        first = dataset.source.load(0)
        size = min(first.shape[:2]) if isinstance(first, np.ndarray) else min(first.size)
        dataset = ImageDataset(dataset.source, size, num_channels=3)
    return dataset


# ---------------------------------------------------------------------------------------------------------
# Metrics


def frechet(stats_a, stats_b) -> float:
    """clean-fid's Frechet distance between two (mu, sigma) pairs, after checking that they match."""
    from cleanfid.fid import frechet_distance

    if stats_a[0].shape != stats_b[0].shape:
        raise ValueError(f"cannot compare {stats_a[0].shape[0]}-dim features with {stats_b[0].shape[0]}-dim "
                         "reference statistics; both must come from the same feature extractor")
    return float(frechet_distance(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


def metrics_of_features(features: np.ndarray, reference: Reference, prdc: bool = False, prdc_n: int = DEFAULT_COUNT,
                        nearest_k: int = NEAREST_K) -> dict[str, float]:
    """{fid} of generated features, and with prdc precision/recall/density/coverage of the first prdc_n of them
    against a seeded prdc_n of the reference features."""
    values = {"fid": frechet(feature_stats(features), (reference.mu, reference.sigma))}
    if prdc:
        real = seeded_subset(reference.features, prdc_n)
        values |= manifold_metrics(real, features[:prdc_n], nearest_k)
    return values


def generator_metrics(G: torch.nn.Module, config: Config, reference: Reference | None, seeds: Sequence[int],
                      batch: int = 100, device=None, feature_extractor: FeatureExtractor | None = None,
                      mode: str = "clean", inception: str | None = None, amp: str | None = None, labels=None,
                      prdc: bool = False, prdc_n: int = DEFAULT_COUNT, nearest_k: int = NEAREST_K,
                      context: distributed.Context | None = None, verbose: bool = True) -> dict[str, float]:
    """FID (and with prdc the four manifold metrics) of G's images for `seeds`, on every rank of a torchrun job
    (only rank 0's `reference` is read; the others may pass None).

    G comes back in the train/eval mode it came in; the caller's global random state is not touched.
    """
    check_mode(mode)
    check_batch(batch)
    device = torch.device(device) if device is not None else next(G.parameters()).device
    context = context or distributed.current(device)
    if prdc:
        check_prdc_n(prdc_n)
        if context.is_main:  # only rank 0 holds the reference
            check_has_features(reference, "given")
    extractor = feature_extractor or inception_extractor(mode, device, inception)
    was_training = G.training
    G.eval()
    try:
        features = generator_features(G, config, seeds, batch, device, extractor, mode, amp, labels, context, verbose)
    finally:
        G.train(was_training)
    values = metrics_of_features(features, reference, prdc, prdc_n, nearest_k) if context.is_main else None
    return distributed.share_from_main(values, context)


def fid_of_generator(G: torch.nn.Module, config: Config, stats, n: int = 50_000, batch: int = 100, device=None,
                     feature_extractor: FeatureExtractor | None = None, seeds: Sequence[int] | None = None,
                     mode: str = "clean", split: str = "train", inception: str | None = None, amp: str | None = None,
                     verbose: bool = True) -> float:
    """FID of G's samples for seeds (default 0..n-1) against `stats`: a name, a .npz, or (mu, sigma)."""
    seeds = seed_list(n, seeds, default=50_000) if seeds is None else seed_list(None, seeds)
    reference = reference_stats(stats, mode, config.image_size, split)
    return generator_metrics(G, config, reference, seeds, batch, device, feature_extractor, mode, inception, amp,
                             labels=all_classes(config, len(seeds)), verbose=verbose)["fid"]


def all_classes(config: Config, count: int, classes: Sequence[int] | None = None) -> list[int] | None:
    """A conditional model's label for each of `count` images: the classes in turn (all by default)."""
    if not config.num_classes:
        return None
    classes = list(classes) if classes is not None else list(range(config.num_classes))
    return [classes[i % len(classes)] for i in range(count)]


def check_prdc_n(prdc_n) -> None:
    if isinstance(prdc_n, bool) or not isinstance(prdc_n, int) or prdc_n < 2:
        raise ValueError(f"--prdc_n must be an integer >= 2 (features per side for precision/recall), got {prdc_n!r}")


# ---------------------------------------------------------------------------------------------------------
# Commands


def training_evaluator(config: Config, feature_extractor: FeatureExtractor | None = None
                       ) -> Callable[[torch.nn.Module, Config], dict[str, float]]:
    """What `ddgan train --fid_every` calls on every rank: FID (and with --fid_prdc the manifold metrics) of
    config.fid_samples seeds against config.fid_stats. Checks the statistics now, not hours into the run."""
    if str(config.fid_stats).lower().endswith(".npz"):
        reference = load_stats(config.fid_stats, "clean") if Path(config.fid_stats).expanduser().is_file() else None
        if reference is None:
            raise ValueError(f"--fid_stats={config.fid_stats!r} does not exist; make it with `ddgan fid make-stats "
                             f"DATA --image_size={config.image_size} --out={config.fid_stats}`")
        if config.fid_prdc:
            check_has_features(reference, f"--fid_stats={config.fid_stats}", training=True)
    else:
        named_stats_file(config.fid_stats, "clean", config.image_size)
        if config.fid_prdc:
            raise ValueError(f"--fid_prdc: clean-fid's statistics --fid_stats={config.fid_stats} hold no reference "
                             "features; make a file with `ddgan fid make-stats DATA --out=STATS.npz "
                             "--features=10000` and pass --fid_stats=STATS.npz")

    def evaluate(G: torch.nn.Module, config: Config) -> dict[str, float]:
        context = distributed.current(next(G.parameters()).device)
        reference = distributed.main_only(lambda: reference_stats(config.fid_stats, "clean", config.image_size),
                                          context)
        seeds = list(range(config.fid_samples))
        return generator_metrics(G, config, reference, seeds, labels=all_classes(config, len(seeds)),
                                 feature_extractor=feature_extractor, prdc=config.fid_prdc,
                                 prdc_n=min(DEFAULT_COUNT, config.fid_samples), context=context, verbose=False)

    return evaluate


def make_stats(data: str, out: str, image_size: int | None = None, n: int | None = None, features: int = 0,
               seed: int = 0, batch: int = 100, mode: str = "clean", device=None, inception: str | None = None,
               workers: int = 0, download: bool = False, overwrite: bool = False,
               feature_extractor: FeatureExtractor | None = None, verbose: bool = True) -> str:
    """Compute FID reference statistics (mu, sigma) once from a dataset and save them as a .npz (under torchrun
    every process extracts a share of the features; rank 0 writes).

    data: a dataset name (cifar10, ...) or a folder / .zip / LMDB / .npz of images; never flipped.
    out: where to write the statistics (*.npz); pass it later as `ddgan fid CKPT --stats=OUT`.
    image_size: resize to this size first (use the generator's); default the images' own size.
    n: use only the first n images (default all).
    features: also keep this many reference features (a subset chosen by --seed) so that `ddgan fid --prdc`
        needs no second pass over the data; 10000 is usual (80 MB for Inception's 2048 dims), 0 keeps none.
    download: fetch a named dataset (cifar10) first if it is not on disk.
    """
    check_mode(mode)
    check_batch(batch)
    if isinstance(features, bool) or not isinstance(features, int) or features < 0:
        raise ValueError(f"--features must be a count >= 0 of reference features to keep, got {features!r}")
    out_path = Path(out).expanduser()
    if out_path.suffix.lower() != ".npz":
        raise ValueError(f"--out={out!r}: statistics are written as .npz; give a path ending in .npz")
    if out_path.exists() and not overwrite:
        raise ValueError(f"--out={out!r} exists; pass --overwrite to replace it")
    dataset = open_reference(data, image_size, download)
    with distributed.joined(device) as context:  # under torchrun every process reads and extracts a share
        extractor = feature_extractor or inception_extractor(mode, context.device, inception)
        all_features = dataset_features(dataset, extractor, n, batch, mode, context.device, workers, verbose,
                                        context=context)
        if context.is_main:
            mu, sigma = feature_stats(all_features)
            kept = {"features": seeded_subset(all_features, features, seed).astype(np.float32),
                    "features_seed": np.array(seed)} if features else {}
            out_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out_path, lambda f: np.savez(
                f, mu=mu, sigma=sigma, mode=np.array(mode), num_images=np.array(n or len(dataset)),
                image_size=np.array(dataset.image_size), source=np.array(str(data)), **kept))
    return str(out_path)


def fid(ckpt: str, stats: str | None = None, ref: str | None = None, n: int | None = None, batch: int = 100,
        seeds=None, class_=None, prdc: bool = False, prdc_n: int = DEFAULT_COUNT, nearest_k: int = NEAREST_K,
        device=None, mode: str = "clean", split: str = "train", inception: str | None = None, ema: bool = True,
        preset: str | None = None, reference_config: str | None = None, amp: str | None = None,
        feature_extractor: FeatureExtractor | None = None, verbose: bool = True, autoencoder: str | None = None,
        autoencoder_config: str | None = None) -> dict:
    """FID of a checkpoint's samples (and with --prdc=True precision, recall, density, coverage); prints the
    numbers and a JSON line, and returns that record. Under torchrun every process draws a share.

    `ddgan fid make-stats DATA --out=STATS.npz [--image_size=32] [--features=10000]` computes reference
    statistics once from a dataset name or a folder / .npz / LMDB of images (`ddgan fid make-stats --help`).

    stats: clean-fid statistics by name (cifar10, at the generator's resolution and --split) or a .npz from
        `ddgan fid make-stats`; default the checkpoint's fid_stats setting.
    ref: instead of --stats, a folder / .npz / LMDB of reference images, resized to the generator's size.
    n, seeds: the sample set: seeds 0..n-1 (n default 50000), or --seeds like 0-49999 (write --seeds under
        torchrun, which takes --n for an abbreviation of its own --nnodes).
    class: a conditional model's classes (--class=0,2 or names), drawn in turn; default all.
    prdc: also precision and recall (Kynkäänniemi et al., k = --nearest_k) and density and coverage (Naeem et
        al.) of the first --prdc_n samples against --prdc_n reference features (a seeded subset of --ref's,
        or those kept in --stats by make-stats --features).
    mode: clean (default), legacy_tensorflow (TTUR's protocol) or legacy_pytorch (pytorch-fid's, which the
        DDGAN paper used).
    inception: a local copy of the Inception weights (also $DDGAN_INCEPTION); needed offline.
    autoencoder, autoencoder_config: the autoencoder of an LDDGAN netG_*.pth / content.pth (with a latent
        --preset); a ddgan checkpoint keeps its own.
    """
    check_mode(mode)
    check_batch(batch)
    if prdc:
        check_prdc_n(prdc_n)
    if stats is not None and ref is not None:
        raise ValueError("give --stats or --ref, not both")
    seeds = seed_list(n, seeds, default=50_000)
    started = time.time()
    with distributed.joined(device) as context:
        record = _fid(ckpt, stats, ref, seeds, batch, class_, prdc, prdc_n, nearest_k, context, mode, split,
                      inception, ema, preset, reference_config, amp, feature_extractor, verbose, autoencoder,
                      autoencoder_config)
    record["seconds"] = round(time.time() - started, 1)
    if context.is_main:
        extra = "".join(f", {name} {record[name]:.4f}" for name in ("precision", "recall", "density", "coverage")
                        if name in record)
        print(f"FID {record['value']:.4f}{extra} ({record['n']} samples of {Path(record['ckpt']).name} vs "
              f"{record['reference']}, {mode} mode, {context.world_size} process(es))")
        print(json.dumps(record))
    return record


def _fid(ckpt, stats, ref, seeds, batch, class_, prdc, prdc_n, nearest_k, context, mode, split, inception, ema,
         preset, reference_config, amp, feature_extractor, verbose, autoencoder=None,
         autoencoder_config=None) -> dict:
    device = context.device
    source = resolve_source(ckpt)
    G, config = load_generator(source, ema=ema, device=device, preset=preset, reference_config_path=reference_config,
                               autoencoder=autoencoder, autoencoder_config=autoencoder_config)
    labels = all_classes(config, len(seeds), None if class_ is None else parse_classes(class_, config))
    if ref is None:
        stats = stats if stats is not None else config.fid_stats
        if not stats:
            raise ValueError(f"{source} names no FID statistics (its fid_stats is empty); pass --stats=NAME|STATS.npz "
                             "or --ref=FOLDER|NPZ")
        # Rank 0 alone compares, so it alone reads (or fetches) them; named statistics no server has are
        # refused there before any download (named_stats), and the error stops every rank.
        def load_reference() -> Reference:
            reference = reference_stats(stats, mode, config.image_size, split)
            if prdc:
                check_has_features(reference, f"--stats={stats}")
            if str(stats).lower().endswith(".npz"):
                check_stats_size(stats, config.image_size)
            return reference

        reference = distributed.main_only(load_reference, context)
        extractor = feature_extractor or inception_extractor(mode, device, inception)
    else:
        dataset = open_reference(ref, config.image_size)
        extractor = feature_extractor or inception_extractor(mode, device, inception)
        real = dataset_features(dataset, extractor, None, batch, mode, device, verbose=verbose, context=context)
        reference = Reference(*feature_stats(real), real) if context.is_main else None
    values = generator_metrics(G, config, reference, seeds, batch, device, extractor, mode, amp=amp, labels=labels,
                               prdc=prdc, prdc_n=prdc_n, nearest_k=nearest_k, context=context, verbose=verbose)
    record = {"metric": "fid", "value": values["fid"]} | {k: v for k, v in values.items() if k != "fid"}
    if prdc:
        record |= {"nearest_k": nearest_k, "prdc_n": min(prdc_n, len(seeds))}
    return record | {"ckpt": str(source), "reference": str(ref if ref is not None else stats), "mode": mode,
                     "n": len(seeds), "seeds": describe_seeds(seeds), "device": str(device),
                     "processes": context.world_size}


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


fid_command = prints_its_result(fid)  # fid prints the numbers and a JSON line


# `ddgan fid make-stats DATA --out=STATS.npz` computes reference statistics once.
fid_command.subcommands = {"make-stats": make_stats, "make_stats": make_stats}


def main(argv: Sequence[str] | None = None) -> None:
    """`python eval/fid.py CKPT ...` is `ddgan fid CKPT ...` (also `make-stats DATA --out=STATS.npz`)."""
    from ddgan.command import run_command

    run_command("fid", fid_command, argv)


if __name__ == "__main__":
    main()
