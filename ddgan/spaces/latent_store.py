"""A latent model's autoencoder: opening `--autoencoder`, the copy a run folder keeps, the data's cached posteriors.

`--autoencoder` takes a diffusers `AutoencoderKL` / `VQModel` folder, a Hub id (fetched by diffusers, which
honours HF_HUB_OFFLINE), or an LDM `.ckpt` with its yaml (`--autoencoder_config`, read by
`ddgan.latent.load_ldm`). A run keeps its autoencoder once, as `RUN/autoencoder/` (a diffusers folder in
safetensors plus `ddgan_latent.json`: the kind, LDM's `tanh_out`, which diffusers does not store, the
weights' hash and the source), so that its checkpoints need nothing else. The data's posteriors are encoded
once into `OUTDIR/latent-cache/<key>.pt`, keyed by the weights' hash and the data's pixels.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddgan.data import ImageDataset
from ddgan.runtime import hub
from ddgan.runtime.files import atomic_write, fsync_folder
from ddgan.spaces.autoencoders import LDMAutoencoder, from_diffusers, load_ldm

RUN_FOLDER = "autoencoder"  # RUN/autoencoder/
INFO_FILE = "ddgan_latent.json"
CACHE_FOLDER = "latent-cache"  # OUTDIR/latent-cache/
CACHE_FORMAT = "ddgan-latent-cache"
LDM_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
ENCODE_BATCH = 256


def _diffusers():
    try:
        import diffusers
    except ImportError as error:
        raise ImportError("--space=latent needs diffusers: pip install -e '.[latent]'") from error
    return diffusers


def open_autoencoder(source: str, ldm_config: str | None = None) -> tuple[LDMAutoencoder, dict]:
    """(the autoencoder, what it is: kind, tanh_out, source) from what --autoencoder and --autoencoder_config name;
    a run folder's copy says where it came from."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        if ldm_config is None:
            raise ValueError(f"--autoencoder={source} is a file, read as an LDM checkpoint: add "
                             "--autoencoder_config=PATH.yaml (its LDM config), or pass a diffusers folder or Hub id")
        if path.suffix.lower() not in LDM_SUFFIXES:
            raise ValueError(f"--autoencoder={source}: expected an LDM checkpoint ({', '.join(LDM_SUFFIXES)}) or a "
                             "diffusers folder")
        autoencoder = load_ldm(path, ldm_config)
    elif ldm_config is not None:
        raise ValueError(f"--autoencoder_config={ldm_config} goes with an LDM .ckpt, but --autoencoder={source} is "
                         "not a file; drop --autoencoder_config for a diffusers folder or Hub id")
    elif path.is_dir():
        autoencoder = _from_folder(path)
    elif hub.parse_id(str(source)):
        autoencoder = _from_hub(str(source))
    else:
        raise ValueError(f"--autoencoder={source}: no such folder or file, and not a Hub id (owner/name); pass a "
                         "diffusers AutoencoderKL/VQModel folder, a Hub id such as stabilityai/sd-vae-ft-mse, or an "
                         "LDM .ckpt with --autoencoder_config")
    autoencoder.requires_grad_(False).eval()
    if path.is_dir() and (path / INFO_FILE).is_file():
        return autoencoder, read_info(path)
    return autoencoder, {"kind": autoencoder.kind, "tanh_out": autoencoder.tanh_out, "source": str(source),
                         "source_config": None if ldm_config is None else str(ldm_config)}


def _from_folder(folder: Path) -> LDMAutoencoder:
    """A diffusers AutoencoderKL/VQModel folder (or a pipeline's `vae/`), with a run's ddgan_latent.json if any."""
    info = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() else {}
    try:
        return from_diffusers(folder, tanh_out=info.get("tanh_out", False))
    except ValueError as error:
        raise ValueError(f"--autoencoder={error}") from None


def _from_hub(text: str) -> LDMAutoencoder:
    """A Hub id's autoencoder (a bare one, or a pipeline's `vae/`): its config and safetensors weights only."""
    _diffusers()
    patterns = [f"{prefix}{name}" for prefix in ("", "vae/")
                for name in ("config.json", "diffusion_pytorch_model*.safetensors")]
    return _from_folder(hub.fetch(text, "--autoencoder", allow_patterns=patterns))


def weights_hash(autoencoder: LDMAutoencoder) -> str:
    """sha256 of the weights (names, dtypes, shapes, bytes), the kind and tanh_out: what makes its latents."""
    digest = hashlib.sha256(f"{autoencoder.kind} tanh_out={autoencoder.tanh_out}".encode())
    for name, tensor in sorted(autoencoder.model.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {value.dtype} {tuple(tensor.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def read_info(folder: Path) -> dict:
    """A run folder's ddgan_latent.json; a clear error when it is missing."""
    path = folder / INFO_FILE
    if not path.is_file():
        raise ValueError(f"{folder} lacks {INFO_FILE}: not the autoencoder copy of a ddgan run")
    return json.loads(path.read_text(encoding="utf-8"))


def keep_in_run(autoencoder: LDMAutoencoder, about: dict, digest: str, run_dir: Path) -> Path:
    """RUN/autoencoder/ written once, atomically (a hidden folder renamed into place); an existing one must match.

    `digest` is weights_hash(autoencoder)."""
    folder = run_dir / RUN_FOLDER
    if folder.is_dir():
        kept = read_info(folder)
        if kept.get("weights_sha256") != digest:
            raise ValueError(f"{folder} holds another autoencoder than this run's (from {kept.get('source')}); "
                             "resume without --autoencoder, or start a new run")
        return folder
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{RUN_FOLDER}-"))
    try:
        autoencoder.model.save_pretrained(staging, safe_serialization=True)
        info = {**about, "weights_sha256": digest, "latent_channels": autoencoder.latent_channels,
                "downsampling_factor": autoencoder.downsampling_factor}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for file in staging.iterdir():
            file.chmod(0o644)  # safetensors writes owner-only files; a run folder is for sharing
        staging.chmod(0o755)
        os.replace(staging, folder)
        fsync_folder(run_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@functools.lru_cache(maxsize=4)
def opened(source: str, ldm_config: str | None, stamp: float) -> tuple[LDMAutoencoder, dict]:
    """open_autoencoder, once per process for a source unchanged on disk (`stamp`): samplers of a run share it."""
    return open_autoencoder(source, ldm_config)


def stamp_of(source: str) -> float:
    """The newest modification time under a local source (0 for a Hub id), so an edited folder is reopened."""
    path = Path(source).expanduser()
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)
    return path.stat().st_mtime if path.exists() else 0.0


# -- the data's posteriors --------------------------------------------------------------------------------


def data_fingerprint(dataset: ImageDataset) -> str:
    """sha256 of every image as the model sees it (resized, in [-1, 1]) and of the labels, in order."""
    digest = hashlib.sha256(f"{len(dataset)} images".encode())
    for index in range(len(dataset)):
        item = dataset[index]
        image, label = item if isinstance(item, tuple) else (item, None)
        digest.update(image.numpy().tobytes())
        if label is not None:
            digest.update(str(label).encode())
    return digest.hexdigest()


def cache_key(autoencoder_hash: str, fingerprint: str, views: int) -> str:
    """The cache file's name: the autoencoder, the data and whether flipped images are encoded too."""
    return hashlib.sha256(f"{autoencoder_hash} {fingerprint} views={views}".encode()).hexdigest()[:24]


@torch.no_grad()
def encode_posteriors(autoencoder: LDMAutoencoder, dataset: ImageDataset, views: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([N, views, P, h, w] posteriors: cat(mean, logvar) for KL, h for VQ; int64 labels [N] or None).

    The second view is the posterior of the mirrored image. Mirroring a latent is not mirroring the image
    (the encoder's features are not mirror-symmetric, and a padded stride-2 conv shifts), so flips are
    encoded, never derived.
    """
    autoencoder = autoencoder.to(device)
    posteriors, labels = [], []
    for start in range(0, len(dataset), ENCODE_BATCH):
        items = [dataset[i] for i in range(start, min(start + ENCODE_BATCH, len(dataset)))]
        if isinstance(items[0], tuple):
            labels += [label for _, label in items]
            items = [image for image, _ in items]
        x = torch.stack(items).to(device)
        encoded = [_posterior(autoencoder, view) for view in (x, x.flip(3))[:views]]
        posteriors.append(torch.stack(encoded, dim=1).float().cpu())
    return torch.cat(posteriors), torch.tensor(labels, dtype=torch.int64) if labels else None


def _posterior(autoencoder: LDMAutoencoder, x: torch.Tensor) -> torch.Tensor:
    encoded = autoencoder.encode(x)
    return torch.cat(encoded, dim=1) if autoencoder.kind == "kl" else encoded


def cached_posteriors(autoencoder: LDMAutoencoder, digest: str, dataset: ImageDataset, views: int, folder: Path,
                      device: torch.device) -> tuple[Path, str]:
    """(the cache file of this autoencoder, whose weights_hash is `digest`, and data; what happened): found, or
    encoded and written atomically."""
    key = cache_key(digest, data_fingerprint(dataset), views)
    path = folder / f"{key}.pt"
    if path.is_file():
        return path, f"reused {path}"
    started = time.perf_counter()
    posteriors, labels = encode_posteriors(autoencoder, dataset, views, device)
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"format": CACHE_FORMAT, "key": key, "kind": autoencoder.kind, "posteriors": posteriors,
             "labels": labels}
    atomic_write(path, lambda f: torch.save(entry, f))
    mirrors = " and their mirrors" if views == 2 else ""
    return path, f"encoded {len(dataset)} images{mirrors} in {time.perf_counter() - started:.1f} s into {path}"


def read_posteriors(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The posteriors and labels of a cache file written by cached_posteriors."""
    entry = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT or entry.get("key") != path.stem:
        raise ValueError(f"{path} is not a latent cache written by ddgan for this key; delete it to encode again")
    return entry["posteriors"], entry["labels"]


def latent_std(posteriors: torch.Tensor, kind: str) -> float:
    """The std of the data's latents (LDM's scale_by_std), from the unflipped posteriors.

    For KL it is that of the posterior samples' distribution, a mixture of Gaussians: E[mean^2 + var] -
    E[mean]^2, computed in float64 with no draw, so the measured scale does not depend on a seed.
    """
    first = posteriors[:, 0].double()
    if kind == "vq":
        return float(first.std(unbiased=False))
    mean, logvar = first.chunk(2, dim=1)
    return float(np.sqrt(float((mean.square() + logvar.exp()).mean() - mean.mean().square())))
