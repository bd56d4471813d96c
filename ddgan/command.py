"""One command of the command line, as every ddgan command behaves: `--help`, a misspelled flag refused with a
suggestion before any work starts, bad input ended with one line naming the flag and the fix, not a traceback
(set DDGAN_TRACEBACK=1 for one). `ddgan.cli` is the `ddgan` command built from these, `python train.py`,
`python -m eval.modes` and the other scripts are too.

Flags keep the original implementation's underscore names; `--flag=value` works, lists as `--ch_mult='[1,2,2]'`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import keyword
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields

import fire

from ddgan.config import GROUPS, Config, unknown_flag_message

# Errors that are the user's input or environment, printed as one line; anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, OSError, KeyError, ArithmeticError)


def command(name: str, function: Callable | str, program: str = "ddgan", purpose: str = "") -> Callable:
    """`function` as the command `PROGRAM NAME` for fire; a "module:function" string is imported when first run.
    `purpose` is its line in the program's --help (else the first line of its docstring)."""

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
    run.__doc__ = purpose or (inspect.getdoc(function) or "").split("\n")[0]
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


def run_command(name: str, function: Callable | str, argv: Sequence[str] | None = None) -> None:
    """Run one command from its own script: `python eval/sample.py ...` is `ddgan sample ...`."""
    fire.Fire(command(name, function), command=list(argv) if argv is not None else None, name=name)


def run_group(commands: dict, program: str, argv: Sequence[str] | None = None, purposes: dict | None = None) -> None:
    """Run a script's command group: `PROGRAM NAME ...` for each (name: function or "module:function") in commands."""
    table = {key: command(key, function, program, (purposes or {}).get(key, "")) for key, function in commands.items()}
    fire.Fire(table, command=list(argv) if argv is not None else None, name=program)
