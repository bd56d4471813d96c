"""The `ddgan` command line: train, sample, edit, fid, bench, demo, autoencoder, export, info, presets (`fire`).

This module is the top of the package: the table of commands, each imported only when called. The
evaluation commands live in `eval/` (named here by "module:function", the one place the library names
eval; nothing imports this module but the console script and `python -m ddgan.cli`). How every command
answers --help, checks its flags and reports bad input is `ddgan.command`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from ddgan.command import _resolve, run_group, takes_config_flags
from ddgan.config import PRESETS, Config


@takes_config_flags
def train(preset: str = "cifar10", **flags) -> str:
    """Train a DDGAN: `--preset` (DDGAN's, WaveDiff's *_wavelet, LDDGAN's *_latent, demo: `ddgan presets`)
    sets every default, and any field can be overridden by its flag (`--num_channels_dae=64 --ch_mult='[1,2,2]'`).
    `--resume=RUN` continues a run exactly; with `--run_dir=PATH` the same command started again continues its
    run. Run under torchrun for several GPUs or nodes. Prints the run folder. SIGINT/SIGTERM save a checkpoint
    and exit 0; SIGUSR1 saves one and exits 75 ("start me again", docs/cluster.md)."""
    from ddgan.training.loop import run_training
    from ddgan.training.start import config_from_flags

    config = config_from_flags(preset, **flags)
    return str(run_training(config, evaluate_fid=fid_evaluator(config)))


def fid_evaluator(config: Config):
    """eval.fid's evaluator when the run asks for FID (--fid_every), else None; it checks --fid_stats now."""
    return _resolve("eval.fid:training_evaluator")(config) if config.fid_every else None


@takes_config_flags
def demo(outdir: str = "runs/demo", preset: str = "demo", **flags) -> str:
    """Train the `demo` preset on the built-in shapes (minutes on a CPU), then print where everything is;
    `--preset=demo_onestep` trains the same model and draws its samples in one step."""
    from ddgan.models import checkpoint
    from ddgan.training.loop import run_training
    from ddgan.training.start import config_from_flags

    started = time.perf_counter()
    config = config_from_flags(preset, outdir=outdir, **flags)
    run_dir = run_training(config)
    minutes = (time.perf_counter() - started) / 60
    if config.data == "demo" and config.cond:
        from ddgan.models import load_generator

        spread = _resolve("eval.modes:sample_spread")(*load_generator(run_dir))
        print(f"within-class spread of the samples over the data's (1 = as varied): centre "
              f"{(spread['centre_x'] + spread['centre_y']) / 2:.2f}, size {spread['size']:.2f} "
              "(python -m eval.modes spread RUN: per class)", file=sys.stderr)
    print(f"\nDemo finished in {minutes:.1f} min.\n  samples:     {run_dir / 'samples-final.png'}\n"
          f"  checkpoint:  {checkpoint.latest_checkpoint(run_dir)}\n"
          f"  TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}\n"
          f"  more samples: ddgan sample {run_dir}", file=sys.stderr)
    return str(run_dir)


def info(ckpt: str) -> None:
    """Describe a checkpoint: preset, images seen, architecture and parameter counts."""
    from ddgan.models import describe_checkpoint

    print(describe_checkpoint(ckpt))


def presets() -> None:
    """List the presets and what each sets."""
    for name, values in PRESETS.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


COMMANDS = {
    "train": train,
    "sample": "eval.sample:sample",
    "edit": "eval.edit:edit",
    "fid": "eval.fid:fid_command",
    "bench": "eval.benchmark:bench_command",
    "toy": "eval.toy:toy_command",
    "demo": demo,
    "autoencoder": "ddgan.training.autoencoder:autoencoder",
    "export": "ddgan.export:export",
    "info": info,
    "presets": presets,
}


# One line per command for `ddgan --help`, so that listing them imports none of the lazily imported ones.
PURPOSES = {
    "train": "Train a DDGAN from a preset (DDGAN's, WaveDiff's, LDDGAN's, demo) and flags; --resume continues a run.",
    "sample": "Draw images from a checkpoint, run folder or model folder into a grid, an .npz or a folder of PNGs.",
    "edit": "Edit images with a model: diffuse them part way, then denoise (SDEdit), optionally into another class.",
    "fid": "FID (and precision/recall) of a model's samples against a dataset or saved statistics.",
    "bench": "Time sampling, training iterations or the custom ops, against the original implementation's path.",
    "toy": "Train an objective (ddgan, siddm, ufogen) on 25 Gaussians in 2-D and score its samples (under a minute).",
    "demo": "Train the demo preset on the built-in shapes (minutes on a CPU), then show where the samples are.",
    "autoencoder": "Train a small diffusers KL autoencoder on your images, for latent DDGANs (--autoencoder).",
    "export": "Export a model to share or deploy: a model folder (safetensors, model card) or the sampler as ONNX.",
    "info": "Describe a checkpoint or model folder: preset, images seen, architecture and parameter counts.",
    "presets": "List the presets and what each sets.",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `ddgan` console script."""
    run_group(COMMANDS, "ddgan", argv, PURPOSES)


if __name__ == "__main__":
    main()
