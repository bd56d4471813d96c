"""The `ddgan` command line: train, sample, edit, fid, bench, demo, autoencoder, export, info, presets (`fire`).

Flags keep the original implementation's underscore names; `--flag=value` works, lists as
`--ch_mult='[1,2,2]'`. Every sub-command (and `python train.py`, `python -m eval.modes`, ...) is wrapped
by `command`, so all of them answer `--help` the same way, refuse a misspelled flag with a suggestion
before any work starts, and end bad input with one line naming the flag and the fix, not a traceback
(set DDGAN_TRACEBACK=1 for one). The evaluation commands live in `eval/` and are imported only when
called: the library itself never imports `eval`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import keyword
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields

import fire

from ddgan.config import GROUPS, PRESETS, Config, unknown_flag_message

# Errors that are the user's input or environment, printed as one line; anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, OSError, KeyError, ArithmeticError)


def command(name: str, function: Callable | str, program: str = "ddgan") -> Callable:
    """`function` as the command `PROGRAM NAME` for fire; a "module:function" string is imported when first run."""

    def run(*args, **flags):
        target = _resolve(function)
        try:
            return call(name, target, args, flags, program)
        except BrokenPipeError:  # `ddgan ... | head` closed the pipe: nothing went wrong
            sys.exit(0)
        except USER_ERRORS as error:
            if os.environ.get("DDGAN_TRACEBACK"):
                raise
            print(f"{program} {name}: error: {error}", file=sys.stderr)
            sys.exit(2)

    run.__name__ = name.replace(" ", "_").replace("-", "_")
    # `ddgan --help` lists each command with this one line; the command's own --help gives the whole docstring.
    run.__doc__ = PURPOSES.get(name) or (inspect.getdoc(function) or "").split("\n")[0]
    return run


def call(name: str, function: Callable, args: Sequence, flags: dict, program: str = "ddgan"):
    """Run function(*args, **flags) as `PROGRAM NAME`: --help prints its help; unknown flags, arguments are refused."""
    subcommands = getattr(function, "subcommands", {})
    if args and isinstance(args[0], str) and args[0] in subcommands:
        return call(f"{name} {args[0]}", subcommands[args[0]], args[1:], flags, program)
    if flags.pop("help", False) or "-h" in args or "--help" in args:
        print(help_text(f"{program} {name}", function))
        return None
    # A flag named like a Python keyword (--class) reaches its parameter with a trailing underscore (class_).
    flags = {f"{flag}_" if keyword.iskeyword(flag) else flag: value for flag, value in flags.items()}
    signature = inspect.signature(function)
    parameters = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        known = [p for p, spec in parameters.items() if spec.kind is not spec.VAR_POSITIONAL]
        for flag in flags:
            if flag not in known:
                raise ValueError(unknown_flag_message(flag.rstrip("_"), [_flag_name(p) for p in known],
                                                      f"`{program} {name} --help` lists the flags"))
    try:
        signature.bind(*args, **flags)
    except TypeError as error:
        raise ValueError(f"{error}; see `{program} {name} --help`") from None
    return function(*args, **flags)


def help_text(command_line: str, function: Callable) -> str:
    """The usage line built from the signature, then the docstring (train: every Config flag, grouped)."""
    words = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            words.append("[--FLAG=VALUE ...]")
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            words.append(f"--{_flag_name(parameter.name)}={parameter.name.upper()}")  # a required flag
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            words.append(parameter.name.upper() if parameter.default is parameter.empty
                         else f"[--{_flag_name(parameter.name)}={_shown(parameter.default)}]")
    text = f"usage: {command_line} {' '.join(words)}\n\n{inspect.getdoc(function) or ''}"
    return text + (config_flags_help() if getattr(function, "takes_config_flags", False) else "")


def config_flags_help() -> str:
    """Every training flag with its one-line help and cifar10 default, grouped as the Config dataclass is."""
    lines = ["", "", "Flags (cifar10 defaults; `ddgan presets` shows what each preset changes):"]
    options = {f"--{f.name}={_shown(f.default)}": f for f in fields(Config) if f.name != "preset"}
    width = max(map(len, options)) + 2
    for group in GROUPS:
        lines.append(f"\n  {group}:")
        lines += [f"    {flag:<{width}}{f.metadata['help']}" for flag, f in options.items()
                  if f.metadata["group"] == group]
    return "\n".join(lines)


def _flag_name(parameter: str) -> str:
    """The flag of a parameter: `class_` is --class."""
    return parameter[:-1] if parameter.endswith("_") and keyword.iskeyword(parameter[:-1]) else parameter


def _shown(value) -> str:
    """A default as it would be typed on the command line."""
    return f"'{list(value)}'".replace(" ", "") if isinstance(value, tuple) else str(value)


def _resolve(function: Callable | str) -> Callable:
    if callable(function):
        return function
    module, _, attribute = function.partition(":")
    return getattr(importlib.import_module(module), attribute)


def prints_its_result(function: Callable) -> Callable:
    """A command of `function`, which prints its own report: returning None keeps fire from echoing the value.

    The command shows and checks `function`'s flags (inspect follows __wrapped__).
    """

    @functools.wraps(function)
    def run(*args, **flags) -> None:
        function(*args, **flags)

    return run


def takes_config_flags(function: Callable) -> Callable:
    """Mark a command whose **flags are Config fields, so that its --help lists them."""
    function.takes_config_flags = True
    return function


@takes_config_flags
def train(preset: str = "cifar10", **flags) -> str:
    """Train a DDGAN: `--preset` (DDGAN's, WaveDiff's *_wavelet, LDDGAN's *_latent, demo: `ddgan presets`)
    sets every default, and any field can be overridden by its flag (`--num_channels_dae=64 --ch_mult='[1,2,2]'`).
    `--resume=RUN` continues a run exactly; with `--run_dir=PATH` the same command started again continues its
    run. Run under torchrun for several GPUs or nodes. Prints the run folder. SIGINT/SIGTERM save a checkpoint
    and exit 0; SIGUSR1 saves one and exits 75 ("start me again", README: On a cluster)."""
    from ddgan.training_loop import config_from_flags, run_training

    config = config_from_flags(preset, **flags)
    return str(run_training(config, evaluate_fid=fid_evaluator(config)))


def fid_evaluator(config: Config):
    """eval.fid's evaluator when the run asks for FID (--fid_every), else None; it checks --fid_stats now."""
    return _resolve("eval.fid:training_evaluator")(config) if config.fid_every else None


@takes_config_flags
def demo(outdir: str = "runs/demo", **flags) -> str:
    """Train the `demo` preset on the built-in shapes (minutes on a CPU), then print where everything is."""
    from ddgan import checkpoint
    from ddgan.training_loop import config_from_flags, run_training

    started = time.perf_counter()
    config = config_from_flags("demo", outdir=outdir, **flags)
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
    "demo": demo,
    "autoencoder": "ddgan.autoencoder:autoencoder",
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
    "demo": "Train the demo preset on the built-in shapes (minutes on a CPU), then show where the samples are.",
    "autoencoder": "Train a small diffusers KL autoencoder on your images, for latent DDGANs (--autoencoder).",
    "export": "Export a model to share or deploy: a model folder (safetensors, model card) or the sampler as ONNX.",
    "info": "Describe a checkpoint or model folder: preset, images seen, architecture and parameter counts.",
    "presets": "List the presets and what each sets.",
}


def main(argv: Sequence[str] | None = None, commands: dict | None = None, name: str = "ddgan") -> None:
    """Entry point of the `ddgan` console script; other `commands` make a script's own command group."""
    table = {key: command(key, function, name) for key, function in (commands or COMMANDS).items()}
    fire.Fire(table, command=list(argv) if argv is not None else None, name=name)


def run_command(name: str, function: Callable | str, argv: Sequence[str] | None = None) -> None:
    """Run one command from its own script: `python eval/sample.py ...` is `ddgan sample ...`."""
    fire.Fire(command(name, function), command=list(argv) if argv is not None else None, name=name)


if __name__ == "__main__":
    main()
