"""The `ddgan` command line: train, sample, fid, bench, demo and info, all through `fire`.

Flags keep the original implementation's underscore names; `--flag=value` works, lists as
`--ch_mult='[1,2,2]'`. Bad input ends with one line naming the flag and the fix, not a traceback.
"""

from __future__ import annotations

import functools
import sys
import time

import fire


def friendly_errors(command):
    """Print ValueError/OSError messages as one clean line and exit 2 instead of a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, OSError, KeyError, ArithmeticError) as error:
            if "DDGAN_TRACEBACK" in __import__("os").environ:
                raise
            print(f"ddgan {command.__name__}: error: {error}", file=sys.stderr)
            sys.exit(2)

    return run


@friendly_errors
def train(preset: str = "cifar10", **flags):
    """Train a DDGAN: `--preset` (cifar10, celeba256, lsun256, stackmnist, demo) sets every default; any
    field can be overridden by its flag (`--num_channels_dae=64 --ch_mult='[1,2,2]'`). Run under
    torchrun for several GPUs or nodes. Returns the run folder."""
    if flags.pop("help", False):
        print(train.__doc__)
        return None
    from ddgan.training_loop import config_from_flags, run_training

    config = config_from_flags(preset, **flags)
    return str(run_training(config, evaluate_fid=_fid_evaluator(config)))


def _fid_evaluator(config):
    """eval.fid's evaluator when the run asks for FID (--fid_every), reached lazily: the library never imports eval."""
    if not config.fid_every:
        return None
    from eval.fid import training_fid

    return training_fid


def _flags_help() -> str:
    """Every training flag with its cifar10 default, for `ddgan train --help`."""
    from dataclasses import fields

    from ddgan.config import Config

    return "\n\nFlags (cifar10 defaults; `ddgan presets` shows what each preset changes):\n" + "\n".join(
        f"    --{f.name}={f.default!r}" for f in fields(Config) if f.name != "preset")


train.__doc__ += _flags_help()


@friendly_errors
def demo(outdir: str = "runs/demo", **flags):
    """Train the `demo` preset on the built-in shapes (minutes on a CPU), then print where everything is."""
    from ddgan import checkpoint
    from ddgan.training_loop import config_from_flags, run_training

    started = time.perf_counter()
    run_dir = run_training(config_from_flags("demo", outdir=outdir, **flags))
    minutes = (time.perf_counter() - started) / 60
    print(f"\nDemo finished in {minutes:.1f} min.\n  samples:     {run_dir / 'samples-final.png'}\n"
          f"  checkpoint:  {checkpoint.latest_checkpoint(run_dir)}\n"
          f"  TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}\n"
          f"  more samples: ddgan sample {run_dir}", file=sys.stderr)
    return str(run_dir)


@friendly_errors
def info(ckpt: str):
    """Describe a checkpoint: preset, images seen, architecture and parameter counts."""
    from ddgan.models import describe_checkpoint

    print(describe_checkpoint(ckpt))


@friendly_errors
def presets():
    """List the presets and what each sets."""
    from ddgan.config import PRESETS

    for name, values in PRESETS.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


def _commands() -> dict:
    from eval.benchmark import bench_command
    from eval.fid import fid_command
    from eval.sample import sample

    return {
        "train": train,
        "sample": friendly_errors(sample),
        "fid": friendly_errors(fid_command),
        "bench": friendly_errors(bench_command),
        "demo": demo,
        "info": info,
        "presets": presets,
    }


def main(argv: list[str] | None = None):
    """Entry point of the `ddgan` console script."""
    fire.Fire(_commands(), command=argv, name="ddgan")


if __name__ == "__main__":
    main()
