"""Checkpoints: self-describing files written atomically, found by age, loaded with clear errors.

A run folder holds its checkpoints as `*.pt` files; the newest one is the latest state. Each file carries
the full config, so `ddgan sample` and `ddgan fid` need only its path. Files written by the original
implementation (`netG_<epoch>.pth`, `content.pth`) are recognised and converted.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

FORMAT = "ddgan-checkpoint"
VERSION = 1  # bump with a migration in MIGRATIONS when the layout changes
CHECKPOINT_GLOB = "*.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with what to do about it."""


def checkpoint_name(images_seen: int) -> str:
    """File name of the regular checkpoint after `images_seen` real images; sorts in training order."""
    return f"ckpt-{images_seen:012d}.pt"


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise OSError(error.errno, f"could not write checkpoint {path}: {error.strerror or error}; free disk "
                          "space or choose another --outdir (earlier checkpoints are intact)") from error
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    stale = [p for p in Path(run_dir).glob(".*.pt.*.tmp") if p.is_file()]
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


def read(path: str | os.PathLike) -> dict:
    """Load any checkpoint file into a dict, turning truncation and foreign files into clear errors."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError, io.UnsupportedOperation,
            AttributeError, ModuleNotFoundError, ValueError) as error:
        others = [p.name for p in list_checkpoints(path.parent) if p != path] if path.parent.exists() else []
        hint = f"; earlier checkpoints in that folder: {', '.join(others[-3:])}" if others else ""
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a PyTorch file ({error}){hint}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a ddgan checkpoint or an original "
                              "DDGAN state_dict")
    return obj


def is_ours(obj: dict) -> bool:
    return obj.get("format") == FORMAT


def is_original(obj: dict) -> bool:
    """Files of the original implementation: a generator state_dict or its `content.pth`."""
    if "netG_dict" in obj:
        return True
    return bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()) and any(
        k.split(".", 1)[-1].startswith(("all_modules.", "z_transform.")) for k in obj)


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


MIGRATIONS = {0: _from_v0}


def load(path: str | os.PathLike) -> dict:
    """Load a ddgan checkpoint (file or run folder), migrated to the current layout."""
    path = resolve(path)
    obj = read(path)
    if is_ours(obj):
        return migrate(obj, path)
    if is_original(obj):
        raise CheckpointError(f"{path} is a checkpoint of the original DDGAN code; load it with "
                              "`ddgan sample {path} --preset=cifar10` (or --reference_config=FILE) so its "
                              "architecture is known")
    keys = ", ".join(sorted(map(str, obj))[:6])
    raise CheckpointError(f"{path} is not a ddgan checkpoint (its keys: {keys}...); pass a file written by "
                          "`ddgan train` or an original netG_*.pth / content.pth")
