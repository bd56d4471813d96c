"""The training run: data stream, networks, run folder, the loop over iterations, checkpoints, grids, FID.

`ddgan train` and `python train.py` build a Config with `ddgan.training.start.config_from_flags` and hand it
to `run_training`; one iteration itself lives in `ddgan.training.trainer`, the loop's skeleton (schedule,
signals) in `ddgan.training.skeleton`. Under torchrun every process runs the same loop; rank 0 alone writes
the run folder.

Stopping: SIGINT and SIGTERM save a checkpoint and end the run with exit status 0; SIGUSR1 saves one and exits
with EXIT_REQUEUE (75) (`ddgan.training.signals`). With --run_dir, starting the same command again continues
from the newest checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import networks
from ddgan.config import Config
from ddgan.data import describe_dataset, make_loader, open_dataset
from ddgan.models import checkpoint
from ddgan.models.space import space_for
from ddgan.runtime import distributed
from ddgan.sampling import generate, grid_image, grid_layout, readable_scale, write_png
from ddgan.spaces import kept_config
from ddgan.training.monitor import Monitor
from ddgan.training.signals import EXIT_REQUEUE, RequeueRequested, StopRequest
from ddgan.training.skeleton import Every, train
from ddgan.training.start import config_from_flags, decide_flips, new_run_dir, with_classes
from ddgan.training.trainer import NonFiniteError, Trainer
from ddgan.version import __version__

# Iterations between the points where the ranks agree on stopping and on time-based checkpoints.
AGREE_EVERY = 10

# Scores a generator for the run's config: the FID (lower is better), or a dict holding "fid" and other
# metrics to log; called on every rank (eval.fid's splits the work). `ddgan train` passes eval.fid's.
Evaluator = Callable[[torch.nn.Module, Config], float | dict]

__all__ = ["EXIT_REQUEUE", "Evaluator", "config_from_flags", "run_training", "write_sample_grid"]


def wall_minutes() -> float:
    """Minutes on a monotonic clock: what --checkpoint_minutes counts (tests replace it with a fake clock)."""
    return time.monotonic() / 60


def save_checkpoint(trainer: Trainer, run_dir: Path, extra: dict | None = None, name: str | None = None) -> Path:
    """Write the trainer's full state atomically as run_dir/ckpt-<images>.pt (or `name`)."""
    state = {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "ddgan_version": __version__,
        "config": trainer.config.to_dict(), "kimg": trainer.images_seen / 1000, **trainer.state_dict(),
        **(extra or {}),
    }
    return checkpoint.save_atomic(state, run_dir / (name or checkpoint.checkpoint_name(trainer.images_seen)))


def rank_streams(trainer: Trainer, context: distributed.Context) -> dict:
    """On rank 0 of a distributed run, {"rank_streams": every rank's iteration random stream} for a checkpoint
    (the trainer's own state holds only this rank's); else {}. Every rank must call it."""
    if not context.distributed:
        return {}
    streams = distributed.gather_on_main(trainer.rng.get_state(), context)
    return {"rank_streams": streams} if context.is_main else {}


def restore_rank_streams(trainer: Trainer, state: dict) -> None:
    """Continue this rank's random stream where a checkpoint with `rank_streams` left it, so that a resumed
    distributed run draws what the uninterrupted one would; a checkpoint of another number of processes or
    another kind of device keeps the fresh stream Trainer.load_state_dict chose."""
    streams = state.get("rank_streams") or []
    if len(streams) != trainer.context.world_size:
        return
    mine = streams[trainer.context.rank]
    if mine.numel() == trainer.rng.get_state().numel():
        trainer.rng.set_state(mine)


def weights_finite(trainer: Trainer) -> bool:
    return all(torch.isfinite(p).all() for net in (trainer.G, trainer.D, trainer.G_ema) for p in net.parameters())


def run_training(config: Config, max_steps: int | None = None, device: str | None = None,
                 evaluate_fid: Evaluator | None = None) -> Path | None:
    """Train until config.kimg thousand images have been seen (or `max_steps` iterations); returns the run folder.

    evaluate_fid: called every --fid_every kimg on every rank with the EMA generator; `ddgan train` passes
    eval.fid's clean-fid evaluator. Required when --fid_every is set.
    """
    if config.fid_every > 0 and evaluate_fid is None:
        raise ValueError(f"--fid_every={config.fid_every} needs an FID evaluator: run `ddgan train`, or pass "
                         "evaluate_fid=eval.fid.training_evaluator(config) to run_training")
    with distributed.joined(device) as context:
        run_dir, requeue = _run_loop(config, context, max_steps, evaluate_fid)
    if requeue:
        raise RequeueRequested(run_dir)
    return run_dir


def _open_run(config: Config, context: distributed.Context):
    """(config, dataset, the space's training items, trainer, resumed checkpoint or None, run folder, lines for
    the run log): the data opened, the networks built or restored, the run folder chosen on every rank."""
    if config.run_dir and context.distributed:
        # Rank 0's look at --run_dir decides whether this start continues a run: on shared storage another
        # node's listing may lag behind.
        config = Config.from_dict(distributed.share_from_main(config.to_dict(), context), "rank 0's config")
    if config.batch_size % context.world_size:
        raise ValueError(f"--batch_size={config.batch_size} is not divisible by the {context.world_size} processes; "
                         f"use a multiple of {context.world_size}")
    dataset = open_dataset(config.data, config.image_size, config.num_channels, download=config.download,
                           skip_bad_images=config.skip_bad_images, labels=config.cond,
                           image_column=config.image_column, label_column=config.label_column)
    config = with_classes(config, dataset)
    config, flips = decide_flips(config, dataset)
    # A resumed latent run decodes with the autoencoder its folder keeps.
    space = space_for(config, checkpoint.resolve(config.resume).parent if config.resume else None)
    data, about_space = space.training_data(dataset, context)
    config = space.config  # a latent space fills in its shape and the measured scale
    trainer = Trainer(config, context, space)

    resumed = None
    if config.resume:
        file = checkpoint.resolve(config.resume)
        resumed = checkpoint.load(file)
        trainer.load_state_dict(resumed)
        restore_rank_streams(trainer, resumed)
        run_dir = file.parent
        if context.is_main:
            checkpoint.remove_stale_temporaries(run_dir)
    elif config.run_dir:
        run_dir = Path(config.run_dir).expanduser()
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_stale_temporaries(run_dir)
    else:
        run_dir = new_run_dir(config.outdir, config) if context.is_main else None
    run_dir = Path(distributed.share_from_main(str(run_dir) if run_dir else None, context))  # rank 0's folder
    log = [f"run folder {run_dir}\ndata: {describe_dataset(dataset)}\n{flips}\n"
           + (f"{about_space}\n" if about_space else "") +
           f"G {networks.count_parameters(trainer.G) / 1e6:.2f} M parameters, "
           f"D ({config.discriminator_kind}) {networks.count_parameters(trainer.D) / 1e6:.2f} M; "
           f"{context.world_size} process(es) on {context.device}, batch {config.batch_size}"]
    if resumed is not None and config.run_dir:
        log.append(f"--run_dir holds a checkpoint: continuing from {config.resume} at "
                   f"{trainer.images_seen / 1000:.2f} kimg (the run was restarted)")
    elif resumed is not None:
        log.append(f"resumed from {config.resume} at {trainer.images_seen / 1000:.2f} kimg")
    elif config.run_dir:
        log.append(f"--run_dir holds no checkpoint yet: a new run starts in {run_dir}")
    return config, dataset, data, trainer, resumed, run_dir, log


def _run_loop(config: Config, context: distributed.Context, max_steps: int | None,
              evaluate_fid: Evaluator | None) -> tuple[Path, bool]:
    """The run; returns its folder and whether it stopped on SIGUSR1 (to be started again)."""
    config, dataset, data, trainer, resumed, run_dir, log = _open_run(config, context)
    run = _Run(config, context, dataset, data, trainer, resumed, run_dir, evaluate_fid)
    if context.is_main:
        trainer.space.save(run_dir)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        for line in log:
            run.monitor.message(line)
    scheduled = [Every(config.sample_kimg * 1000, run.grid), Every(config.fid_every * 1000, run.fid),
                 Every(config.snapshot_kimg * 1000, lambda: run.snapshot("a scheduled snapshot"))]
    train(run.step, lambda: trainer.images_seen, run.total_images, run.monitor, scheduled, run.stopping, run.finish,
          max_steps)
    return run_dir, run.requeue


class _Run:
    """A DDGAN run's parts of the loop skeleton: its step, its scheduled grids, FID and snapshots, when it stops,
    and how it ends. Every rank runs the same calls; rank 0 alone writes."""

    def __init__(self, config: Config, context: distributed.Context, dataset, data, trainer: Trainer,
                 resumed: dict | None, run_dir: Path, evaluate_fid: Evaluator | None):
        self.config, self.context, self.dataset, self.trainer, self.run_dir = config, context, dataset, trainer, run_dir
        self.evaluate_fid = evaluate_fid
        self.monitor = Monitor(run_dir if context.is_main else None, config.kimg, trainer.images_seen / 1000,
                               enabled=context.is_main)
        per_rank_batch = config.batch_size // context.world_size
        self.batches = iter(make_loader(data, per_rank_batch, rank=context.rank, num_replicas=context.world_size,
                                        seed=config.seed, workers=config.workers,
                                        start_index=trainer.batches_drawn * per_rank_batch))
        self.total_images = int(math.ceil(config.kimg * 1000))
        self.best_fid = (resumed or {}).get("best_fid")
        self.strict_checks = context.device.type == "cpu" or config.skip_nonfinite > 0
        self.skipped, self.data_wait, self.requeue = 0, 0.0, False
        self.saved_at = wall_minutes()  # rank 0's clock decides when --checkpoint_minutes is due

    def snapshot(self, reason: str) -> Path | None:
        """Save on rank 0; every rank calls it (each sends its random stream)."""
        streams = rank_streams(self.trainer, self.context)
        if not self.context.is_main:
            return None
        if not weights_finite(self.trainer):
            self.monitor.message(f"not saving at {reason}: the weights are not finite; the last checkpoint stands")
            return None
        path = save_checkpoint(self.trainer, self.run_dir, {"best_fid": self.best_fid, **streams})
        checkpoint.prune(self.run_dir, self.config.keep_checkpoints)
        self.saved_at = wall_minutes()
        return path

    def step(self) -> bool:
        """One iteration, logged every --log_every steps; False when a non-finite loss skipped it."""
        config, trainer = self.config, self.trainer
        waited = time.perf_counter()
        x0, y = next(self.batches) if config.cond else (next(self.batches), None)
        self.data_wait += time.perf_counter() - waited
        log_now = trainer.step % config.log_every == 0
        try:
            stats = trainer.run_iteration(x0, y, check_finite=self.strict_checks or log_now)
        except NonFiniteError as error:
            self.skipped += 1
            if self.skipped > config.skip_nonfinite:
                saved = self.snapshot("the non-finite step")  # every rank raised: they save together
                if self.context.is_main:
                    kept = saved or checkpoint.latest_checkpoint(self.run_dir)
                    self.monitor.message(f"stopping: {error}. Last finite state: {kept}")
                raise
            self.monitor.message(f"skipping a step: {error} ({self.skipped}/{config.skip_nonfinite} tolerated)")
            return False
        if log_now:
            stats.update(trainer.grad_norms())
            stats["lr/G"] = trainer.opt_G.param_groups[0]["lr"]
            stats["lr/D"] = trainer.opt_D.param_groups[0]["lr"]
            stats["speed/data_wait_s"], self.data_wait = self.data_wait, 0.0
            if config.skip_bad_images:  # this rank's unreadable images so far, within --skip_bad_images
                stats["data/bad_images_skipped"] = self.dataset.bad_image_count()
            self.monitor.scalars(trainer.images_seen / 1000, trainer.step, stats)
        return True

    def grid(self) -> None:
        if self.context.is_main:
            write_sample_grid(self.trainer, self.run_dir / f"samples-{self.trainer.images_seen:012d}.png",
                              self.monitor)

    def fid(self) -> None:
        self.best_fid = _evaluate_fid(self.evaluate_fid, self.trainer, self.run_dir, self.monitor, self.best_fid,
                                      self.context)

    def stopping(self, stop: StopRequest) -> bool:
        """Ranks agree on stopping (and on rank 0's clock) every AGREE_EVERY steps, so that a signal never
        leaves one rank waiting; a time-based checkpoint is saved when due."""
        config, trainer = self.config, self.trainer
        if self.context.distributed and trainer.step % AGREE_EVERY:
            return False
        minutes = wall_minutes() - self.saved_at
        unfinished = trainer.images_seen < self.total_images  # the end saves anyway
        due = self.context.is_main and unfinished and 0 < config.checkpoint_minutes <= minutes
        stop_now, self.requeue, due = distributed.any_true_each([stop.requested, stop.requeue, due], self.context)
        if stop_now:
            why = "SIGUSR1: stopping to be started again" if self.requeue else "stop requested"
            self.monitor.message(f"{why} at {trainer.images_seen / 1000:.2f} kimg: saving a checkpoint")
            return True
        if due:
            saved = self.snapshot("a time-based checkpoint")
            self.monitor.message(f"{minutes:.1f} min since the last checkpoint (--checkpoint_minutes="
                                 f"{config.checkpoint_minutes:g}): saved {saved}")
        return False

    def finish(self, stopped: bool) -> None:
        """The final checkpoint; then, unless the run is to be started again, the final grid."""
        final = self.snapshot("the end")
        run_dir = self.run_dir
        if self.context.is_main and self.requeue:
            self.monitor.message(f"checkpoint: {final}\nexiting with status {EXIT_REQUEUE}: start the same "
                                 "command again (with --run_dir, or --resume) to continue")
        elif self.context.is_main:
            write_sample_grid(self.trainer, run_dir / "samples-final.png", self.monitor)
            self.monitor.message(f"checkpoint: {final}\nsamples: {run_dir / 'samples-final.png'}\n"
                                 f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")


def write_sample_grid(trainer: Trainer, path: Path, monitor=None) -> Path:
    """A grid from the EMA generator with fixed seeds (the same images every time), one row per class when
    the model is conditional, small images enlarged so that one can see them."""
    config = trainer.config
    seeds, labels, columns = grid_layout(config, config.grid_images)
    images = np.concatenate(list(generate(trainer.G_ema, config, seeds, batch=len(seeds), device=trainer.device,
                                          progress=False, labels=labels, space=trainer.space)))
    grid = grid_image(images, columns, readable_scale(config.image_size))
    write_png(grid, path)
    if monitor is not None:
        monitor.image("samples", trainer.images_seen / 1000, grid)
    return path


def _evaluate_fid(evaluate_fid: Evaluator, trainer: Trainer, run_dir: Path, monitor, best_fid,
                  context) -> float | None:
    """FID (and whatever else the evaluator measures) of the EMA generator, logged; keeps best.pt when it improves."""
    values = evaluate_fid(trainer.G_ema, kept_config(trainer.config, run_dir))
    values = values if isinstance(values, dict) else {"fid": values}
    streams = rank_streams(trainer, context)
    if context.is_main:
        value = values["fid"]
        monitor.scalars(trainer.images_seen / 1000, trainer.step, values)
        others = "".join(f", {name} {number:.3f}" for name, number in values.items() if name != "fid")
        monitor.message(f"FID {value:.3f}{others} at {trainer.images_seen / 1000:.1f} kimg")
        if best_fid is None or value < best_fid:
            best_fid = value
            save_checkpoint(trainer, run_dir, {"best_fid": best_fid, "fid": value, **streams}, name="best.pt")
    distributed.barrier(context)
    return best_fid
