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
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
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
from eval.fid_stats import (
    Reference,
    check_has_features,
    check_stats_size,
    feature_stats,
    frechet,
    load_stats,
    named_stats_file,
    reference_stats,
)
from eval.inception import (
    FeatureExtractor,
    batch_features,
    check_mode,
    inception_extractor,
)
from eval.manifold import DEFAULT_COUNT, NEAREST_K, manifold_metrics, seeded_subset

# ---------------------------------------------------------------------------------------------------------
# Reference statistics



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
