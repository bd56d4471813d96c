"""Model folders: a trained generator as `config.json` + `model.safetensors` (+ a model card), read without pickle.

A training checkpoint carries D, both optimizers and the random streams; a model folder carries what sampling
needs and nothing else, in the Hugging Face layout, so that it can be shared on the Hub and loaded by id:
  - `config.json`: {"format": "ddgan-model", "format_version": 1, "ddgan_version", "generator" (the class),
    "weights" (dtype, which G), "config" (the model's Config fields: architecture, space and its transform,
    T and schedule, classes and their names), "trained" (data, kimg, step, the last FID and friends logged)};
  - `model.safetensors`: the EMA generator's weights, under the generator's own state_dict names;
  - `autoencoder/`: a latent model's autoencoder (diffusers safetensors and ddgan_latent.json), decoder included;
  - `README.md` and `samples.png`: the model card (`ddgan export` writes them; reading ignores them).
Reading takes `json` and `safetensors` only, so a folder from anywhere is data, never code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ddgan.config import Config
from ddgan.models.build import build_generator
from ddgan.models.space import space_for
from ddgan.runtime import hub
from ddgan.spaces import kept_config, space_class
from ddgan.version import __version__

FORMAT = "ddgan-model"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
GRID_FILE = "samples.png"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config fields that describe the machine a run trained on, not the model: left out of config.json.
LOCAL_FIELDS = ("outdir", "resume", "run_dir", "workers", "download", "autoencoder_config")
# What a Hub id fetches: never pickled weights, never a training checkpoint that shares the repository.
HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, GRID_FILE, "autoencoder/config.json", "autoencoder/*.json",
             "autoencoder/diffusion_pytorch_model*.safetensors"]


class ModelFolderError(ValueError):
    """A model folder that cannot be read or written as asked; the message names the file and the fix."""


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder whose config.json says it is a ddgan model folder."""
    file = Path(path).expanduser() / CONFIG_FILE
    if not file.is_file():
        return False
    try:
        return json.loads(file.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def locate(path: str | os.PathLike) -> Path | None:
    """The model folder `path` names: a local folder, or a Hub id fetched into the Hub cache; None otherwise."""
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / CONFIG_FILE).is_file() and not is_model_folder(local):
            if not any(local.glob("*.pt")):
                raise ModelFolderError(f"{local / CONFIG_FILE} is not a ddgan model folder's (no \"format\": "
                                       f"\"{FORMAT}\"); write one with `ddgan export RUN --out={local}`")
        return local if is_model_folder(local) else None
    if local.exists() or not hub.parse_id(str(path)):
        return None
    folder = hub.fetch(str(path), "checkpoint", allow_patterns=HUB_FILES)
    if not is_model_folder(folder):
        raise ModelFolderError(f"Hub repository {path} holds no ddgan model folder (its config.json lacks "
                               f"\"format\": \"{FORMAT}\")")
    return folder


def model_config(config: Config) -> dict:
    """The Config fields a model folder keeps (the machine-local ones left out); a latent model's autoencoder is
    the folder's own `autoencoder/`."""
    values = {k: v for k, v in config.to_dict().items() if k not in LOCAL_FIELDS}
    return space_class(config.space).model_folder_fields(values)


def read(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """(G in eval mode on `device`, its Config) from a model folder; json and safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    about = read_about(folder)
    config = kept_config(Config.from_dict(about["config"], f"{folder / CONFIG_FILE}"), folder)
    config = space_for(config).config  # a latent model's: checks that the kept autoencoder fits
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():
        raise ModelFolderError(f"{folder} has no {WEIGHTS_FILE}; export the model again (`ddgan export RUN "
                               f"--out={folder} --overwrite`)")
    try:
        weights = load_file(weights_file)
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFolderError(f"{weights_file} cannot be read as safetensors ({error}); export it again") from None
    generator = build_generator(config)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ModelFolderError(f"{weights_file} does not fit the {type(generator).__name__} that {CONFIG_FILE} "
                               f"describes: {_listed('missing', missing)}{'; ' if missing and extra else ''}"
                               f"{_listed('unexpected', extra)}")
    wrong = [f"{k} {tuple(weights[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if weights[k].shape != v.shape]
    if wrong:
        raise ModelFolderError(f"{weights_file}: tensors of the wrong shape: {_listed('', wrong)}")
    generator.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})
    return generator.to(device).eval().requires_grad_(False), config


def read_about(folder: Path) -> dict:
    """config.json of a model folder, checked for its format and version."""
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ModelFolderError(f"{folder} has no {CONFIG_FILE}: not a model folder (write one with `ddgan export "
                               "RUN --out=DIR`)")
    try:
        about = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"{file} is not readable JSON ({error})") from None
    if not isinstance(about, dict) or about.get("format") != FORMAT:
        raise ModelFolderError(f"{file} is not a ddgan model folder's config (no \"format\": \"{FORMAT}\")")
    if about.get("format_version", 0) > VERSION:
        raise ModelFolderError(f"{file} is format version {about['format_version']}, newer than this ddgan reads "
                               f"({VERSION}); upgrade ddgan")
    if not isinstance(about.get("config"), dict):
        raise ModelFolderError(f"{file} has no \"config\" mapping")
    return about


def write(generator: torch.nn.Module, config: Config, out: str | os.PathLike, dtype: str = "float32",
          trained: dict | None = None, overwrite: bool = False,
          extras: Callable[[Path], None] | None = None) -> Path:
    """Write a model folder at `out` atomically (built in a hidden sibling, then renamed into place).

    `extras(staging)` adds files (the card, the sample grid) before the rename; a latent model's autoencoder
    is written by its space. An existing `out` is refused unless `overwrite`.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ModelFolderError(f"--dtype={dtype}: offered are {', '.join(DTYPES)}")
    out = Path(out).expanduser()
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        weights = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in generator.state_dict().items()}
        save_file(weights, staging / WEIGHTS_FILE, metadata={"format": FORMAT, "dtype": dtype})
        space_for(config).save(staging)  # what the space keeps besides the networks (a latent one's autoencoder)
        about = {"format": FORMAT, "format_version": VERSION, "ddgan_version": __version__,
                 "generator": config.generator_kind, "weights": {"dtype": dtype, "generator": "ema"},
                 "config": model_config(config), "trained": trained or {}}
        (staging / CONFIG_FILE).write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
        if extras is not None:
            extras(staging)
        for file in staging.rglob("*"):  # mkdtemp and safetensors make owner-only files; a model is for sharing
            file.chmod(0o755 if file.is_dir() else 0o644)
        staging.chmod(0o755)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing --out unless --overwrite (and never a file where a folder goes)."""
    if out.exists() and not out.is_dir():
        raise ModelFolderError(f"--out={out} is an existing file; a model folder goes there: choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelFolderError(f"--out={out} exists; pass --overwrite to replace it, or choose another --out")


def _replace_folder(staging: Path, out: Path) -> None:
    """Put `staging` at `out`; an old `out` is moved aside first and deleted only once the new one is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-old-"))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _listed(what: str, names: list[str], at_most: int = 8) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")
    return f"{what} {shown}".strip()

