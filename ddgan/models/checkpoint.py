"""Checkpoints: self-describing files written atomically, found by age, loaded as data only, with clear errors.

A run folder holds its checkpoints as `*.pt` files; the newest one is the latest state. Each file carries
the full config, so `ddgan sample` and `ddgan fid` need only its path. Files written by the original
implementation (`netG_<epoch>.pth`, `content.pth`) are recognised and converted.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path

import torch

from ddgan.runtime.files import atomic_write, temporary_pattern

FORMAT = "ddgan-checkpoint"
VERSION = 2  # bump with a migration in MIGRATIONS when the layout changes
CHECKPOINT_GLOB = "*.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with what to do about it."""


def checkpoint_name(images_seen: int) -> str:
    """File name of the regular checkpoint after `images_seen` real images; sorts in training order."""
    return f"ckpt-{images_seen:012d}.pt"


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically (see ddgan.runtime.files.atomic_write): a crash leaves the old file."""
    path = Path(path)
    try:
        return atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as error:
        raise OSError(error.errno, f"could not write checkpoint {path}: {error.strerror or error}; free disk "
                      "space or choose another --outdir (earlier checkpoints are intact)") from error


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run folder's checkpoints, oldest first (by modification time, then name)."""
    files = [p for p in Path(run_dir).glob(CHECKPOINT_GLOB) if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    files = list_checkpoints(run_dir)
    return files[-1] if files else None


def _newest(files: list[Path | None]) -> Path | None:
    files = [f for f in files if f is not None]
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name)) if files else None


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file from a file path or a run folder (its newest checkpoint)."""
    path = Path(path).expanduser()
    if path.is_dir():
        # A run folder, or an --outdir whose run folders hold the checkpoints.
        newest = latest_checkpoint(path) or _newest([latest_checkpoint(p) for p in path.iterdir() if p.is_dir()])
        if newest is None:
            raise CheckpointError(f"{path} is a folder with no checkpoint (*.pt) in it or in its run folders; "
                                  "pass a checkpoint file or a run folder that holds one")
        return newest
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by a save that was killed mid-write (they never replaced a checkpoint)."""
    stale = [p for p in Path(run_dir).glob(temporary_pattern(CHECKPOINT_GLOB)) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def prune(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` regular checkpoints (`ckpt-*.pt`); return what was deleted."""
    regular = [p for p in list_checkpoints(run_dir) if p.name.startswith("ckpt-")]
    doomed = regular[:-keep] if keep > 0 else regular
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


# Types a checkpoint may hold beyond tensors and plain containers: the original's `content.pth` keeps its
# command line as an argparse.Namespace (a bag of attributes; building one runs nothing).
SAFE_GLOBALS = [argparse.Namespace]


def read(path: str | os.PathLike) -> dict:
    """Load any checkpoint file into a dict as data only; code, foreign objects and truncation are clear errors.

    Every load is `torch.load(..., weights_only=True)`: a pickle that would call a function or build an
    object of another type is refused before anything in it runs.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise _unreadable(path, error) from None
        refused = _refused_global(str(error))
        raise CheckpointError(
            f"{path} holds code or objects that ddgan will not execute{refused}, so it was not loaded and "
            "nothing in it ran. A checkpoint needs only tensors, numbers, strings and containers: if you "
            "trust the file, load it yourself and re-save its state_dicts with torch.save") from None
    except Exception as error:  # the safe unpickler meets foreign bytes with all kinds of errors; none ran code
        raise _unreadable(path, error) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a ddgan checkpoint or an original "
                              "DDGAN state_dict")
    return obj


def _refused_global(message: str) -> str:
    """' (it asks for posix.system)' from torch's weights-only error, when that names the refused global."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return f" (it asks for {found.group(1)})" if found else ""


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    """The error for a truncated or foreign file, pointing at the folder's other checkpoints."""
    others = [p.name for p in list_checkpoints(path.parent) if p != path] if path.parent.exists() else []
    hint = f"; earlier checkpoints in that folder: {', '.join(others[-3:])}" if others else ""
    return CheckpointError(f"checkpoint {path} is truncated, corrupt or not a PyTorch file ({error}){hint}")


def is_ours(obj: dict) -> bool:
    return obj.get("format") == FORMAT


def is_original(obj: dict) -> bool:
    """Files of the original implementation: a generator state_dict or its `content.pth`."""
    if "netG_dict" in obj:
        return True
    return bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()) and any(
        k.removeprefix("module.").startswith(("all_modules.", "z_transform.")) for k in obj)


def migrate(obj: dict, path: str | os.PathLike) -> dict:
    """Bring an older checkpoint layout up to VERSION; refuse a newer one."""
    version = obj.get("version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} has no format version; it was not written by ddgan")
    if version > VERSION:
        raise CheckpointError(f"{path} was written by a newer ddgan (checkpoint format {version}, this one reads "
                              f"up to {VERSION}); upgrade ddgan to load it")
    while version < VERSION:
        obj = MIGRATIONS[version](obj)
        version = obj["version"]
    return obj


def _from_v0(obj: dict) -> dict:
    # Format 0 (pre-release) named the EMA generator `ema` and had no images_seen counter.
    obj = dict(obj)
    obj["G_ema"] = obj.pop("ema", obj.get("G"))
    obj.setdefault("images_seen", int(round(obj.get("kimg", 0.0) * 1000)))
    obj["version"] = 1
    return obj


def _from_v1(obj: dict) -> dict:
    # Format 1's class-conditional networks took the class through G's mapping network and D's projection
    # only; format 2 adds it to both time embeddings (`class_temb`). A zero embedding adds nothing, so the
    # migrated networks compute what they did, and a resumed run trains the new embeddings from zero.
    obj = dict(obj, version=2)
    config = obj.get("config") or {}
    classes = int(config.get("num_classes") or 0)
    if classes == 0:
        return obj
    widths = {"G": 4 * int(config["num_channels_dae"]), "G_ema": 4 * int(config["num_channels_dae"]),
              "D": int(config["t_emb_dim"])}
    for net, width in widths.items():
        state = obj.get(net)
        if state is not None and "class_temb.weight" not in state:
            obj[net] = {**state, "class_temb.weight": torch.zeros(width, classes)}
    for name in ("opt_G", "opt_D"):  # the new parameter comes last in parameters(), with no Adam state yet
        if obj.get(name):
            groups = [dict(group) for group in obj[name]["param_groups"]]
            groups[-1]["params"] = [*groups[-1]["params"], 1 + max(i for g in groups for i in g["params"])]
            obj[name] = {**obj[name], "param_groups": groups}
    return obj


MIGRATIONS = {0: _from_v0, 1: _from_v1}


def load(path: str | os.PathLike, original_ok: bool = False) -> dict:
    """Load a ddgan checkpoint (file or run folder), migrated to the current layout.

    A file of the original implementation is an error unless `original_ok`, when its dict is returned
    as read (`is_original` tells it apart; `ddgan.models.load_generator` converts it).
    """
    path = resolve(path)
    obj = read(path)
    if is_ours(obj):
        return migrate(obj, path)
    if is_original(obj):
        if original_ok:
            return obj
        raise CheckpointError(f"{path} is a checkpoint of the original DDGAN code; load it with "
                              f"`ddgan sample {path} --preset=cifar10` (or --reference_config=FILE) so its "
                              "architecture is known")
    keys = ", ".join(sorted(map(str, obj))[:6])
    raise CheckpointError(f"{path} is not a ddgan checkpoint (its keys: {keys}...); pass a file written by "
                          "`ddgan train` or an original netG_*.pth / content.pth")
