"""The training run: run folder, data stream, the loop over iterations, checkpoints, signals.

`ddgan train` and `python train.py` build a Config with `config_from_flags` and hand it to
`run_training`; one iteration itself lives in `ddgan.iteration`. Under torchrun every process runs the
same loop; rank 0 alone writes the run folder.

Stopping: SIGINT and SIGTERM save a checkpoint and end the run with exit status 0 (a stop someone asked
for); SIGUSR1 saves one and exits with EXIT_REQUEUE (75), the "start me again" that a cluster's requeue
script looks for. With --run_dir, starting the same command again continues from the newest checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import networks
from ddgan import __version__, checkpoint, distributed
from ddgan.config import Config, architecture_changes, check_known, make_config, replace, validate
from ddgan.data import ImageDataset, describe_dataset, make_loader, open_dataset
from ddgan.iteration import NonFiniteError, Trainer
from ddgan.monitor import Monitor
from ddgan.sampling import generate, grid_image, grid_layout, readable_scale, write_png
from ddgan.space import check_resumed_autoencoder, kept_config, space_for

# The exit status after SIGUSR1's checkpoint: sysexits.h's EX_TEMPFAIL ("try again later"), which no
# crash (1), bad input (2) or signal death (128 + N) produces.
EXIT_REQUEUE = 75
# Iterations between the points where the ranks agree on stopping and on time-based checkpoints.
AGREE_EVERY = 10

# Scores a generator for the run's config: the FID (lower is better), or a dict holding "fid" and other
# metrics to log; called on every rank (eval.fid's splits the work). `ddgan train` passes eval.fid's.
Evaluator = Callable[[torch.nn.Module, Config], float | dict]


def new_run_dir(outdir: str | Path, config: Config) -> Path:
    """outdir/NNNNN-<preset>-<data>: the next free number, like StyleGAN's run folders."""
    outdir = Path(outdir).expanduser()
    outdir.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    data = re.sub(r"[^A-Za-z0-9_.]+", "_", Path(config.data).stem or config.data)[:40]
    run_dir = outdir / f"{max(numbers, default=-1) + 1:05d}-{config.preset}-{data}"
    run_dir.mkdir()
    return run_dir


def wall_minutes() -> float:
    """Minutes on a monotonic clock: what --checkpoint_minutes counts (tests replace it with a fake clock)."""
    return time.monotonic() / 60


def resume_config(resume: str, flags: dict, flag: str | None = None) -> tuple[Config, Path]:
    """The checkpoint's config with the given flags applied; architecture changes are refused.

    flag: how the refusal names what asked to continue (default `--resume FILE`)."""
    file = checkpoint.resolve(resume)
    saved = Config.from_dict(checkpoint.load(file)["config"], f"checkpoint {file}")
    # Runs from before --resamp_with_conv=False was refused: the flag never changed the networks.
    saved = replace(saved, resamp_with_conv=True)
    check_known(flags, "flag")
    values = saved.to_dict() | flags | {"resume": str(file)}
    config = Config.from_dict(values, "flag")
    validate(config)
    changed = architecture_changes(saved, config)
    if changed:
        instead = "pass another --run_dir" if flag else "start a new run without --resume"
        raise ValueError(f"{flag or f'--resume {file}'}: these flags change the architecture of the saved networks: "
                         f"{'; '.join(changed)}. Drop them, or {instead}")
    if "autoencoder" in flags or "autoencoder_config" in flags:
        check_resumed_autoencoder(file.parent, config)
    return config, file


def config_from_flags(preset: str = "cifar10", **flags) -> Config:
    """The run's config from a preset and flags, or from --resume's checkpoint and flags, or from the newest
    checkpoint in --run_dir and flags (a restart of the same command: the flags are those that started it)."""
    if flags.get("run_dir"):
        continued = continue_in_run_dir(preset, flags)
        if continued is not None:
            return continued
    if flags.get("resume"):
        config, _ = resume_config(flags.pop("resume"), flags)
        return config
    return make_config(preset, **flags)


def continue_in_run_dir(preset: str, flags: dict) -> Config | None:
    """The config that continues --run_dir's newest checkpoint with `flags`; None when the folder holds none
    (missing or empty: a new run starts there)."""
    run_dir = flags["run_dir"]
    folder = Path(run_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--run_dir={run_dir} is a file, not a folder: --run_dir names the run folder itself "
                         "(made if missing); pass a folder path, or --resume=FILE to continue from a checkpoint file")
    if flags.get("resume"):
        raise ValueError(f"--resume and --run_dir={run_dir} both say where the run is; pass --run_dir alone (it "
                         "continues from the newest checkpoint in that folder) or --resume alone")
    newest = checkpoint.latest_checkpoint(folder) if folder.is_dir() else None
    if newest is None:
        return None
    config, _ = resume_config(str(newest), flags, flag=f"--run_dir={run_dir} (newest checkpoint {newest.name})")
    if config.preset != preset:
        raise ValueError(f"--run_dir={run_dir} holds a run of --preset={config.preset}, not --preset={preset}: "
                         f"restart it with the command line that started it (--preset={config.preset}), or pass "
                         "another --run_dir for a new run")
    return config


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGUSR1 into flags the loop checks, so a stop always ends with a checkpoint.

    `requeue` is set by SIGUSR1 (a scheduler's warning before a time limit): the run exits with EXIT_REQUEUE.
    """

    def __init__(self):
        self.requested = False
        self.requeue = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        # A second Ctrl-C means now. A repeated SIGTERM or SIGUSR1 is the same request: a scheduler signals
        # every process of a job, and torchrun passes what it gets on to its workers as well.
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.requeue = self.requeue or signum == signal.SIGUSR1

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class RequeueRequested(SystemExit):
    """run_training's end after SIGUSR1's checkpoint: uncaught, the process exits with EXIT_REQUEUE."""

    def __init__(self, run_dir: Path):
        super().__init__(EXIT_REQUEUE)
        self.run_dir = run_dir


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


def with_classes(config: Config, dataset: ImageDataset) -> Config:
    """Under --cond, the config with the data's classes; a resumed run's classes must be the data's."""
    if not config.cond:
        return config
    names = tuple(dataset.class_names)
    if config.num_classes and (config.num_classes, tuple(config.class_names)) != (dataset.num_classes, names):
        raise ValueError(f"--data={config.data} has {dataset.num_classes} classes ({', '.join(names)}), but the "
                         f"networks were made for {config.num_classes} ({', '.join(config.class_names)}); resume on "
                         "the same data, or start a new run")
    return replace(config, num_classes=dataset.num_classes, class_names=names)


def decide_flips(config: Config, dataset: ImageDataset) -> tuple[Config, str]:
    """The config with --hflip as it will apply to this data, and a line for the run log saying so."""
    if config.hflip and not dataset.flippable:
        return replace(config, hflip=False), (f"random horizontal flips: off ({dataset.name}'s images may not be "
                                              "mirrored: a mirrored digit is not a digit)")
    return config, f"random horizontal flips: {'on' if config.hflip else 'off (--hflip=False)'}"


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


def _run_loop(config: Config, context: distributed.Context, max_steps: int | None,
              evaluate_fid: Evaluator | None) -> tuple[Path, bool]:
    """The run; returns its folder and whether it stopped on SIGUSR1 (to be started again)."""
    if config.run_dir and context.distributed:
        # Rank 0's look at --run_dir decides whether this start continues a run: on shared storage another
        # node's listing may lag behind.
        config = Config.from_dict(distributed.share_from_main(config.to_dict(), context), "rank 0's config")
    if config.batch_size % context.world_size:
        raise ValueError(f"--batch_size={config.batch_size} is not divisible by the {context.world_size} processes; "
                         f"use a multiple of {context.world_size}")
    per_rank_batch = config.batch_size // context.world_size
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
    if context.distributed:  # every rank learns rank 0's folder
        shared = [str(run_dir) if run_dir else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])

    monitor = Monitor(run_dir if context.is_main else None, config.kimg, trainer.images_seen / 1000,
                      enabled=context.is_main)
    if context.is_main:
        space.save(run_dir)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        monitor.message(f"run folder {run_dir}\ndata: {describe_dataset(dataset)}\n{flips}\n"
                        + (f"{about_space}\n" if about_space else "") +
                        f"G {networks.count_parameters(trainer.G) / 1e6:.2f} M parameters, "
                        f"D ({config.discriminator_kind}) {networks.count_parameters(trainer.D) / 1e6:.2f} M; "
                        f"{context.world_size} process(es) on {context.device}, batch {config.batch_size}")
        if resumed is not None and config.run_dir:
            monitor.message(f"--run_dir holds a checkpoint: continuing from {config.resume} at "
                            f"{trainer.images_seen / 1000:.2f} kimg (the run was restarted)")
        elif resumed is not None:
            monitor.message(f"resumed from {config.resume} at {trainer.images_seen / 1000:.2f} kimg")
        elif config.run_dir:
            monitor.message(f"--run_dir holds no checkpoint yet: a new run starts in {run_dir}")

    batches = iter(make_loader(data, per_rank_batch, rank=context.rank, num_replicas=context.world_size,
                               seed=config.seed, workers=config.workers,
                               start_index=trainer.batches_drawn * per_rank_batch))
    total_images = int(math.ceil(config.kimg * 1000))
    best_fid = (resumed or {}).get("best_fid")
    next_snapshot = _next_mark(trainer.images_seen, config.snapshot_kimg)
    next_grid = _next_mark(trainer.images_seen, config.sample_kimg)
    next_fid = _next_mark(trainer.images_seen, config.fid_every)
    skipped, data_wait, steps_done = 0, 0.0, 0
    strict_checks = context.device.type == "cpu" or config.skip_nonfinite > 0
    saved_at = wall_minutes()  # rank 0's clock decides when --checkpoint_minutes is due
    requeue = False

    def snapshot(reason: str) -> Path | None:
        """Save on rank 0; every rank calls it (each sends its random stream)."""
        nonlocal saved_at
        streams = rank_streams(trainer, context)
        if not context.is_main:
            return None
        if not weights_finite(trainer):
            monitor.message(f"not saving at {reason}: the weights are not finite; the last checkpoint stands")
            return None
        path = save_checkpoint(trainer, run_dir, {"best_fid": best_fid, **streams})
        checkpoint.prune(run_dir, config.keep_checkpoints)
        saved_at = wall_minutes()
        return path

    with StopRequest() as stop:
        try:
            while trainer.images_seen < total_images and (max_steps is None or steps_done < max_steps):
                waited = time.perf_counter()
                x0, y = next(batches) if config.cond else (next(batches), None)
                data_wait += time.perf_counter() - waited
                log_now = trainer.step % config.log_every == 0
                try:
                    stats = trainer.run_iteration(x0, y, check_finite=strict_checks or log_now)
                except NonFiniteError as error:
                    skipped += 1
                    if skipped > config.skip_nonfinite:
                        saved = snapshot("the non-finite step")  # every rank raised: they save together
                        if context.is_main:
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
                    if config.skip_bad_images:  # this rank's unreadable images so far, within --skip_bad_images
                        stats["data/bad_images_skipped"] = dataset.bad_image_count()
                    monitor.scalars(kimg, trainer.step, stats)
                monitor.progress(kimg)
                if trainer.images_seen >= next_grid:
                    next_grid = _next_mark(trainer.images_seen, config.sample_kimg)
                    if context.is_main:
                        write_sample_grid(trainer, run_dir / f"samples-{trainer.images_seen:012d}.png", monitor)
                if trainer.images_seen >= next_fid:
                    next_fid = _next_mark(trainer.images_seen, config.fid_every)
                    best_fid = _evaluate_fid(evaluate_fid, trainer, run_dir, monitor, best_fid, context)
                if trainer.images_seen >= next_snapshot:
                    next_snapshot = _next_mark(trainer.images_seen, config.snapshot_kimg)
                    snapshot("a scheduled snapshot")
                # Ranks agree on stopping (and on rank 0's clock) every AGREE_EVERY steps, so a signal never
                # leaves one rank waiting.
                if context.distributed and trainer.step % AGREE_EVERY:
                    continue
                minutes = wall_minutes() - saved_at
                unfinished = trainer.images_seen < total_images  # the end saves anyway
                due = context.is_main and unfinished and 0 < config.checkpoint_minutes <= minutes
                stopping, requeue, due = distributed.any_true_each([stop.requested, stop.requeue, due], context)
                if stopping:
                    why = "SIGUSR1: stopping to be started again" if requeue else "stop requested"
                    monitor.message(f"{why} at {kimg:.2f} kimg: saving a checkpoint")
                    break
                if due:
                    saved = snapshot("a time-based checkpoint")
                    monitor.message(f"{minutes:.1f} min since the last checkpoint (--checkpoint_minutes="
                                    f"{config.checkpoint_minutes:g}): saved {saved}")
            final = snapshot("the end")
            if context.is_main and requeue:
                monitor.message(f"checkpoint: {final}\nexiting with status {EXIT_REQUEUE}: start the same command "
                                "again (with --run_dir, or --resume) to continue")
            elif context.is_main:
                write_sample_grid(trainer, run_dir / "samples-final.png", monitor)
                monitor.message(f"checkpoint: {final}\nsamples: {run_dir / 'samples-final.png'}\n"
                                f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
        finally:
            monitor.close()
    return run_dir, requeue


def _next_mark(images_seen: int, every_kimg: float) -> float:
    """The next multiple of `every_kimg` (in images) strictly after `images_seen`; inf when off."""
    if every_kimg <= 0:
        return math.inf
    every = every_kimg * 1000
    return (math.floor(images_seen / every) + 1) * every


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
