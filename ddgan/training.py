"""The training run: run folder, data stream, the loop over iterations, checkpoints, signals, the demo.

`ddgan train` and `python train.py` both end up in `train_from_flags`. Under torchrun every process
runs the same loop; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import time
from pathlib import Path

import torch

import networks
from ddgan import __version__, checkpoint, distributed
from ddgan.config import Config, architecture_changes, check_known, make_config, validate
from ddgan.data import describe_dataset, make_loader, open_dataset
from ddgan.monitor import Monitor
from ddgan.trainer import NonFiniteError, Trainer


def new_run_dir(outdir: str | Path, config: Config) -> Path:
    """outdir/NNNNN-<preset>-<data>: the next free number, like StyleGAN's run folders."""
    outdir = Path(outdir).expanduser()
    outdir.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    data = re.sub(r"[^A-Za-z0-9_.]+", "_", Path(config.data).stem or config.data)[:40]
    run_dir = outdir / f"{max(numbers, default=-1) + 1:05d}-{config.preset}-{data}"
    run_dir.mkdir()
    return run_dir


def resume_config(resume: str, flags: dict) -> tuple[Config, Path]:
    """The checkpoint's config with the given flags applied; architecture changes are refused."""
    file = checkpoint.resolve(resume)
    saved = Config.from_dict(checkpoint.load(file)["config"], f"checkpoint {file}")
    check_known(flags, "flag")
    values = saved.to_dict() | flags | {"resume": str(file)}
    config = Config.from_dict(values, "flag")
    validate(config)
    changed = architecture_changes(saved, config)
    if changed:
        raise ValueError(f"--resume {file}: these flags change the architecture of the saved networks: "
                         f"{'; '.join(changed)}. Drop them, or start a new run without --resume")
    return config, file


def train_from_flags(preset: str = "cifar10", **flags) -> Path:
    """Build the config from a preset and flags (or from --resume's checkpoint), then train."""
    if flags.get("resume"):
        config, _ = resume_config(flags.pop("resume"), flags)
    else:
        config = make_config(preset, **flags)
    return train(config)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks, so a stop always ends with a checkpoint."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def save_checkpoint(trainer: Trainer, run_dir: Path, extra: dict | None = None, name: str | None = None) -> Path:
    """Write the trainer's full state atomically as run_dir/ckpt-<images>.pt (or `name`)."""
    state = {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "ddgan_version": __version__,
        "config": trainer.config.to_dict(), "kimg": trainer.images_seen / 1000, **trainer.state_dict(),
        **(extra or {}),
    }
    return checkpoint.save_atomic(state, run_dir / (name or checkpoint.checkpoint_name(trainer.images_seen)))


def weights_finite(trainer: Trainer) -> bool:
    return all(torch.isfinite(p).all() for net in (trainer.G, trainer.D, trainer.G_ema) for p in net.parameters())


def train(config: Config, max_steps: int | None = None, device: str | None = None) -> Path | None:
    """Train until config.kimg thousand images have been seen (or `max_steps` iterations); returns the run folder."""
    context = distributed.setup(device)
    try:
        run_dir = _train(config, context, max_steps)
    except BaseException:
        distributed.teardown(wait_for_peers=False)
        raise
    distributed.teardown()
    return run_dir


def _train(config: Config, context: distributed.Context, max_steps: int | None) -> Path | None:
    if config.batch_size % context.world_size:
        raise ValueError(f"--batch_size={config.batch_size} is not divisible by the {context.world_size} processes; "
                         f"use a multiple of {context.world_size}")
    per_rank_batch = config.batch_size // context.world_size
    dataset = open_dataset(config.data, config.image_size, config.num_channels, hflip=False,
                           download=config.download, skip_bad_images=config.skip_bad_images)
    trainer = Trainer(config, context)

    resumed = None
    if config.resume:
        file = checkpoint.resolve(config.resume)
        resumed = checkpoint.load(file)
        trainer.load_state_dict(resumed)
        run_dir = file.parent
        if context.is_main:
            checkpoint.remove_stale_temporaries(run_dir)
    else:
        run_dir = new_run_dir(config.outdir, config) if context.is_main else None
    if context.distributed:  # every rank learns rank 0's folder
        shared = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])

    monitor = Monitor(run_dir if context.is_main else None, config.kimg, trainer.images_seen / 1000,
                      enabled=context.is_main)
    if context.is_main:
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        monitor.message(f"run folder {run_dir}\ndata: {describe_dataset(dataset)}\n"
                        f"G {networks.count_parameters(trainer.G) / 1e6:.2f} M parameters, "
                        f"D ({config.discriminator_kind}) {networks.count_parameters(trainer.D) / 1e6:.2f} M; "
                        f"{context.world_size} process(es) on {context.device}, batch {config.batch_size}")
        if resumed is not None:
            monitor.message(f"resumed from {config.resume} at {trainer.images_seen / 1000:.2f} kimg")

    batches = iter(make_loader(dataset, per_rank_batch, rank=context.rank, num_replicas=context.world_size,
                               seed=config.seed, workers=config.workers,
                               start_index=trainer.step * per_rank_batch))
    total_images = int(math.ceil(config.kimg * 1000))
    best_fid = (resumed or {}).get("best_fid")
    next_snapshot = _next_mark(trainer.images_seen, config.snapshot_kimg)
    next_grid = _next_mark(trainer.images_seen, config.sample_kimg)
    next_fid = _next_mark(trainer.images_seen, config.fid_every)
    skipped, data_wait, steps_done = 0, 0.0, 0
    strict_checks = context.device.type == "cpu" or config.skip_nonfinite > 0

    def snapshot(reason: str) -> Path | None:
        if not context.is_main:
            return None
        if not weights_finite(trainer):
            monitor.message(f"not saving at {reason}: the weights are not finite; the last checkpoint stands")
            return None
        path = save_checkpoint(trainer, run_dir, {"best_fid": best_fid})
        checkpoint.prune(run_dir, config.keep_checkpoints)
        return path

    with StopRequest() as stop:
        try:
            while trainer.images_seen < total_images and (max_steps is None or steps_done < max_steps):
                waited = time.perf_counter()
                x0 = next(batches)
                data_wait += time.perf_counter() - waited
                log_now = trainer.step % config.log_every == 0
                try:
                    stats = trainer.train_step(x0, check_finite=strict_checks or log_now)
                except NonFiniteError as error:
                    skipped += 1
                    if skipped > config.skip_nonfinite:
                        if context.is_main:
                            saved = snapshot("the non-finite step")
                            kept = saved or checkpoint.latest_checkpoint(run_dir)
                            monitor.message(f"stopping: {error}. Last finite state: {kept}")
                        raise
                    monitor.message(f"skipping a step: {error} ({skipped}/{config.skip_nonfinite} tolerated)")
                    continue
                steps_done += 1
                kimg = trainer.images_seen / 1000
                if log_now:
                    stats.update(trainer.grad_norms())
                    stats["lr/G"] = trainer.opt_G.param_groups[0]["lr"]
                    stats["lr/D"] = trainer.opt_D.param_groups[0]["lr"]
                    stats["speed/data_wait_s"] = data_wait
                    data_wait = 0.0
                    monitor.scalars(kimg, trainer.step, stats)
                monitor.progress(kimg)
                if trainer.images_seen >= next_grid:
                    next_grid = _next_mark(trainer.images_seen, config.sample_kimg)
                    if context.is_main:
                        write_sample_grid(trainer, run_dir / f"samples-{trainer.images_seen:012d}.png", monitor)
                if trainer.images_seen >= next_fid:
                    next_fid = _next_mark(trainer.images_seen, config.fid_every)
                    best_fid = _evaluate_fid(trainer, run_dir, monitor, best_fid, context)
                if trainer.images_seen >= next_snapshot:
                    next_snapshot = _next_mark(trainer.images_seen, config.snapshot_kimg)
                    snapshot("a scheduled snapshot")
                # Ranks agree on stopping every 10 steps, so a signal never leaves one rank waiting.
                check_stop = not context.distributed or trainer.step % 10 == 0
                if check_stop and distributed.any_true(stop.requested, context):
                    monitor.message(f"stop requested at {kimg:.2f} kimg: saving a checkpoint")
                    break
            final = snapshot("the end")
            if context.is_main:
                write_sample_grid(trainer, run_dir / "samples-final.png", monitor)
                monitor.message(f"checkpoint: {final}\nsamples: {run_dir / 'samples-final.png'}\n"
                                f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
        finally:
            monitor.close()
    return run_dir


def _next_mark(images_seen: int, every_kimg: float) -> float:
    """The next multiple of `every_kimg` (in images) strictly after `images_seen`; inf when off."""
    if every_kimg <= 0:
        return math.inf
    every = every_kimg * 1000
    return (math.floor(images_seen / every) + 1) * every


def write_sample_grid(trainer: Trainer, path: Path, monitor=None) -> Path:
    """Sample a grid from the EMA generator with fixed seeds 0..n-1 (the same images every time)."""
    n = trainer.config.grid_images
    from eval.sample import generate, grid_image, save_grid

    images = next(iter(generate(trainer.G_ema, trainer.config, list(range(n)), batch=n, device=trainer.device,
                                progress=False)))
    save_grid(images, path)
    if monitor is not None:
        monitor.image("samples", trainer.images_seen / 1000, grid_image(images))
    return path


def _evaluate_fid(trainer: Trainer, run_dir: Path, monitor, best_fid, context) -> float | None:
    """FID of the EMA generator (rank 0), logged; keeps best.pt when it improves."""
    if context.is_main:
        from eval.fid import fid_of_generator

        value = fid_of_generator(trainer.G_ema, trainer.config, stats=trainer.config.fid_stats,
                                 n=trainer.config.fid_samples, batch=100, device=trainer.device)
        monitor.scalars(trainer.images_seen / 1000, trainer.step, {"fid": value})
        monitor.message(f"FID {value:.3f} at {trainer.images_seen / 1000:.1f} kimg")
        if best_fid is None or value < best_fid:
            best_fid = value
            save_checkpoint(trainer, run_dir, {"best_fid": best_fid, "fid": value}, name="best.pt")
    distributed.barrier(context)
    return best_fid


def run_demo(outdir: str = "runs/demo", **flags) -> str:
    """`make demo`: train the demo preset on built-in shapes, then print where everything is."""
    started = time.perf_counter()
    run_dir = train_from_flags("demo", outdir=outdir, **flags)
    minutes = (time.perf_counter() - started) / 60
    grid = run_dir / "samples-final.png"
    print(f"\nDemo finished in {minutes:.1f} min.\n  samples:     {grid}\n"
          f"  checkpoint:  {checkpoint.latest_checkpoint(run_dir)}\n"
          f"  TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}\n"
          f"  more samples: ddgan sample {run_dir}", file=sys.stderr)
    return str(run_dir)


def describe_checkpoint(path: str) -> str:
    """A few lines about a checkpoint: what produced it and what it holds."""
    file = checkpoint.resolve(path)
    state = checkpoint.load(file)
    config = Config.from_dict(state["config"], f"checkpoint {file}")
    from ddgan.models import build_discriminator, build_generator

    lines = [
        f"{file}: ddgan checkpoint format {state['version']} (ddgan {state.get('ddgan_version', '?')})",
        f"preset {config.preset}, data {config.data}, {state['images_seen'] / 1000:.2f} kimg, step {state['step']}",
        f"{config.image_size} px x {config.num_channels} ch, T={config.num_timesteps} ({config.schedule}), "
        f"nf={config.num_channels_dae}, ch_mult={list(config.ch_mult)}",
        f"G {networks.count_parameters(build_generator(config)) / 1e6:.2f} M parameters, "
        f"D {networks.count_parameters(build_discriminator(config)) / 1e6:.2f} M",
    ]
    if state.get("best_fid") is not None:
        lines.append(f"best FID {state['best_fid']:.3f}")
    return "\n".join(lines)
