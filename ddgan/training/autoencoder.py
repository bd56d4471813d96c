"""`ddgan autoencoder`: train a small diffusers AutoencoderKL on a dataset, for latent DDGANs (LDDGAN).

Images that fit no published autoencoder need their own (LDDGAN trained an f2 one for CIFAR-10). The loss
is LDM's without its GAN term: L1 reconstruction, LPIPS when its weights are on this machine, and
`kl_weight` times the KL divergence of the posterior. The output folder is a diffusers model folder
(`AutoencoderKL.from_pretrained(DIR)`, `ddgan.latent.from_diffusers(DIR)`) that also holds the training
state, from which the same command resumes exactly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ddgan.config import PRESETS
from ddgan.data import ImageDataset, describe_dataset, make_loader, open_dataset
from ddgan.models import checkpoint
from ddgan.runtime.distributed import default_device
from ddgan.runtime.files import atomic_write, fsync_folder
from ddgan.sampling import grid_image, readable_scale, to_uint8, write_png
from ddgan.training.monitor import Monitor
from ddgan.training.skeleton import Every, train
from ddgan.version import __version__
from networks import count_parameters

STATE_FILE = "autoencoder-state.pt"
SUMMARY_FILE = "ddgan_autoencoder.json"
DIFFUSERS_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
STATE_FORMAT = "ddgan-autoencoder-state"
DATA_HELP = ("DATA is what `ddgan train --data` takes: a .npz with uint8 images (N, H, W, C) under key `x`, a "
             "folder or .zip of images, an LMDB, or a dataset name (demo, cifar10, stackmnist)")
BETAS = (0.5, 0.9)  # LDM's autoencoder optimizer
PERCEPTUAL_WEIGHT = 1.0  # LDM's LPIPS weight beside the L1 term
MEASURED_IMAGES = 256  # fixed images for the reported L1 and the latent std, the same at every snapshot
GRID_IMAGES = 8
LOG_EVERY = 10  # steps between scalars: each log reads the loss back from the device


@dataclass(frozen=True)
class Architecture:
    """What fixes the autoencoder's weights' shapes: a resumed run must repeat all of it."""

    image_size: int
    num_channels: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    latent_channels: int
    attention: bool
    norm_groups: int

    @property
    def factor(self) -> int:
        """How many pixels per side one latent stands for."""
        return 2 ** (len(self.ch_mult) - 1)

    def check(self, size_from_data: bool) -> None:
        """Refuse shapes that diffusers' Encoder/Decoder cannot build or invert, saying what to change."""
        if self.image_size % self.factor:
            where = "DATA's image size" if size_from_data else "--image_size"
            raise ValueError(f"{where} {self.image_size} is not divisible by the downsampling factor {self.factor} "
                             f"of --ch_mult='{list(self.ch_mult)}' (f = 2 ** (levels - 1)); pass an --image_size "
                             f"that is a multiple of {self.factor} (images are resized to it) or use fewer levels")
        widths = [self.ch * m for m in self.ch_mult]
        if any(width % self.norm_groups for width in widths):
            fits = max(g for g in range(1, self.norm_groups + 1) if all(width % g == 0 for width in widths))
            raise ValueError(f"--ch={self.ch} --ch_mult='{list(self.ch_mult)}' gives widths {widths}, which GroupNorm "
                             f"cannot split into --norm_groups={self.norm_groups} groups; pass --norm_groups={fits} "
                             f"(the most groups that divide every width) or a --ch that is a multiple of "
                             f"{self.norm_groups}")

    def build(self, seed: int) -> torch.nn.Module:
        """A freshly initialised diffusers AutoencoderKL, the same for the same seed."""
        try:
            import diffusers
        except ImportError as error:
            raise ImportError("ddgan autoencoder needs diffusers: pip install -e '.[latent]'") from error
        levels = len(self.ch_mult)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation that leaves the caller's stream alone
            torch.manual_seed(seed)
            return diffusers.AutoencoderKL(
                in_channels=self.num_channels, out_channels=self.num_channels,
                down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
                block_out_channels=[self.ch * m for m in self.ch_mult], layers_per_block=self.num_res_blocks,
                latent_channels=self.latent_channels, norm_num_groups=self.norm_groups,
                sample_size=self.image_size, mid_block_add_attention=self.attention,
                scaling_factor=1.0)  # replaced by 1 / latent std at each snapshot


class AutoencoderTrainer:
    """The model, its Adam optimizer, the stream that samples the posterior, and how far training has come."""

    def __init__(self, architecture: Architecture, lr: float, kl_weight: float, seed: int, device: torch.device,
                 perceptual: torch.nn.Module | None = None):
        self.device, self.kl_weight, self.perceptual = device, kl_weight, perceptual
        self.model = architecture.build(seed).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=BETAS)
        self.noise = torch.Generator(device=device).manual_seed(seed)
        self.step, self.images_seen = 0, 0

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One Adam step on a batch in [-1, 1]; the loss terms, still on the device."""
        x = images.to(self.device, non_blocking=True).float()
        posterior = self.model.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=self.noise,
                                                         device=self.device)
        reconstruction = self.model.decode(z).sample
        l1 = (reconstruction - x).abs().mean()
        kl = posterior.kl().mean()
        # LDM sums both terms over each image; dividing the KL by the pixels per image keeps LDM's balance
        # while the loss reads as a per-pixel L1 (Adam does not see the overall scale).
        loss = l1 + self.kl_weight * kl / x[0].numel()
        terms = {"loss/l1": l1, "loss/kl": kl}
        if self.perceptual is not None:
            terms["loss/lpips"] = self.perceptual(three_channels(reconstruction), three_channels(x)).mean()
            loss = loss + PERCEPTUAL_WEIGHT * terms["loss/lpips"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        self.images_seen += len(x)
        return {"loss/total": loss.detach(), **{name: value.detach() for name, value in terms.items()}}

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly; the data position is `images_seen`."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                "images_seen": self.images_seen, "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise.set_state(state["noise"])
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])


def three_channels(images: torch.Tensor) -> torch.Tensor:
    """Grayscale repeated as RGB, for LPIPS's ImageNet network."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def perceptual_loss(device: torch.device) -> tuple[torch.nn.Module | None, str]:
    """LPIPS (VGG), as LDM's autoencoders use, or None and why: its weights must already be here, nothing is fetched."""
    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed (pip install lpips, and its VGG weights in torch's hub cache)"
    import lpips
    import torchvision

    linear = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    missing = [str(path) for path in (linear, backbone) if not path.is_file()]
    if missing:
        return None, f"its weights are not on this machine ({', '.join(missing)}), and nothing is downloaded"
    return lpips.LPIPS(net="vgg", verbose=False).to(device).eval().requires_grad_(False), ""


def open_images(data: str, image_size: int | None, num_channels: int | None, download: bool) -> ImageDataset:
    """DATA as `ddgan train --data` reads it; an unset size or channel count is its first image's."""
    try:
        # Only the demo is drawn at the size asked for here; any other data is re-fitted to its own below.
        dataset = open_dataset(str(data), image_size or PRESETS["demo"]["image_size"], num_channels or 3,
                               download=download)
        if image_size is None or num_channels is None:
            first = dataset.source.load(0)
            if isinstance(first, np.ndarray):
                size, channels = min(first.shape[:2]), first.shape[-1] if first.ndim == 3 else 1
            else:
                gray = first.mode != "P" and len(first.getbands()) <= 2  # a palette's one band holds colours
                size, channels = min(first.size), 1 if gray else 3
            dataset = ImageDataset(dataset.source, image_size or size, num_channels or channels)
        dataset[0]  # decode one image now, so an unreadable dataset fails before any work
    except (OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile) as error:
        raise ValueError(f"DATA={str(data)!r} cannot be read: {error}. {DATA_HELP}") from error
    return dataset


def read_state(out: Path, resume: bool) -> dict | None:
    """The training state in `out`, None for a new run; refuses to overwrite a model it did not train."""
    path = out / STATE_FILE
    if not path.is_file():
        if resume:
            raise ValueError(f"--resume=True but {path} does not exist: nothing to resume; drop --resume to "
                             f"start a new run in {out}")
        foreign = [name for name in DIFFUSERS_FILES if (out / name).exists()]
        if foreign:
            raise ValueError(f"--out={out} holds {', '.join(foreign)} but no {STATE_FILE}: a model this command did "
                             "not train, which it would overwrite; choose another --out")
        return None
    state = checkpoint.read(path)  # weights_only=True, with clear errors for truncated or foreign files
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a `ddgan autoencoder` training state; choose another --out")
    return state


def architecture_changes(saved: dict, current: Architecture) -> list[str]:
    """The architecture flags whose value differs from the saved state's, each as '--flag: saved here, now there'."""
    saved = Architecture(**{**saved, "ch_mult": tuple(saved["ch_mult"])})
    return [f"--{name}: {getattr(saved, name)!r} in the state, {value!r} now" for name, value in asdict(current).items()
            if getattr(saved, name) != value]


def fixed_images(dataset: ImageDataset, count: int) -> torch.Tensor:
    """`count` images spread evenly over the dataset, the same ones in every run on it."""
    indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    return torch.stack([dataset[int(i)] for i in indices])


@torch.no_grad()
def measure(model: torch.nn.Module, images: torch.Tensor, seed: int) -> tuple[float, float, torch.Tensor]:
    """(L1 of reconstructions through the posterior mean, std of posterior samples, the reconstructions).

    The std is LDM's `scale_by_std`: dividing latents by it gives them unit variance. The samples draw from a
    stream of their own, so measuring never changes what training draws.
    """
    model.eval()
    noise = torch.Generator().manual_seed(seed)
    reconstructions, samples = [], []
    for chunk in images.split(64):
        x = chunk.to(next(model.parameters()).device)
        posterior = model.encode(x).latent_dist
        reconstructions.append(model.decode(posterior.mean).sample.float().cpu())
        samples.append(posterior.mean.cpu() + posterior.std.cpu() * torch.randn(posterior.mean.shape, generator=noise))
    model.train()
    reconstructions = torch.cat(reconstructions)
    return (reconstructions - images).abs().mean().item(), torch.cat(samples).std().item(), reconstructions


def write_diffusers_folder(model: torch.nn.Module, out: Path) -> None:
    """`save_pretrained` into a hidden folder in `out`, then each file renamed into place: none is ever half written."""
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".diffusers-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        for name in DIFFUSERS_FILES:
            (staging / name).chmod(0o644)  # safetensors writes owner-only files; a model folder is for sharing
            (staging / name).replace(out / name)
        fsync_folder(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, value: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def autoencoder_postfix(values: dict) -> str:
    """The progress bar's summary: the losses that say how training goes, and the speed."""
    if "loss/l1" not in values:  # a snapshot's measurement
        return f"measured L1 {values['measured/l1']:.4f}, latent std {values['measured/latent_std']:.3f}"
    lpips = f" LPIPS {values['loss/lpips']:.3f}" if "loss/lpips" in values else ""
    return f"L1 {values['loss/l1']:.4f}{lpips} KL {values['loss/kl']:.1f} {values.get('speed/img_per_s', 0):.0f} img/s"


def positive(name: str, value, kind: type = int) -> int | float:
    """A flag's value as `kind`, refused unless it is positive."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (kind is int and value % 1):
        raise ValueError(f"--{name}={value!r}: expected a positive {'integer' if kind is int else 'number'}")
    return kind(value)


def announce(monitor: Monitor, out: Path, dataset: ImageDataset, trainer: AutoencoderTrainer,
             architecture: Architecture, device: torch.device, lpips_off: str, saved: dict | None,
             settings: dict) -> None:
    """The run log's opening lines: the folder, data, model, and what a resumed run changed."""
    monitor.message(f"autoencoder folder {out}\ndata: {describe_dataset(dataset)}\n"
                    f"{count_parameters(trainer.model) / 1e6:.2f} M parameters; latents "
                    f"{architecture.latent_channels}x{architecture.image_size // architecture.factor}x"
                    f"{architecture.image_size // architecture.factor} (f={architecture.factor}) on {device}")
    if lpips_off:
        monitor.message(f"LPIPS is off: {lpips_off}; the loss is L1 + KL")
    if saved is not None:
        monitor.message(f"resumed from {out / STATE_FILE} at {trainer.images_seen / 1000:.3f} kimg")
        for name, value in settings.items():
            if saved["settings"].get(name) != value:
                monitor.message(f"note: --{name} is {value!r} now, {saved['settings'].get(name)!r} in the state; "
                                "the run goes on with the new value, so it will not repeat an uninterrupted run")


@dataclass
class SnapshotWriter:
    """Writes a snapshot of an autoencoder run into its folder (diffusers files, summary, reconstructions, state)."""

    trainer: AutoencoderTrainer
    out: Path
    probe: torch.Tensor  # the fixed images measured and shown at every snapshot
    seed: int
    architecture: Architecture
    data: str
    dataset: str  # the data's description
    settings: dict
    monitor: Monitor

    def snapshot(self, name: str) -> dict:
        """Write the diffusers folder, the summary, a reconstruction grid and the state; the summary."""
        trainer, out, architecture, probe = self.trainer, self.out, self.architecture, self.probe
        if not all(torch.isfinite(p).all() for p in trainer.model.parameters()):
            raise FloatingPointError(f"the weights are not finite at step {trainer.step}; the last snapshot in {out} "
                                     "stands: resume from it with a lower --lr")
        l1, std, reconstructions = measure(trainer.model, probe, self.seed)
        trainer.model.register_to_config(scaling_factor=1 / std)
        write_diffusers_folder(trainer.model, out)
        f = architecture.factor
        summary = {"trained_by": "ddgan autoencoder", "ddgan_version": __version__, "data": self.data,
                   "dataset": self.dataset, "kimg": trainer.images_seen / 1000, "steps": trainer.step,
                   "l1": l1, "l1_images": len(probe), "latent_std": std, "scaling_factor": 1 / std,
                   "latent_shape": [architecture.latent_channels, architecture.image_size // f,
                                    architecture.image_size // f],
                   "downsampling_factor": f, "architecture": asdict(architecture), "training": self.settings}
        write_json(out / SUMMARY_FILE, summary)
        shown = torch.cat([probe[:GRID_IMAGES], reconstructions[:GRID_IMAGES]])
        grid = grid_image(to_uint8(shown).permute(0, 2, 3, 1).numpy(), min(GRID_IMAGES, len(probe)),
                          readable_scale(architecture.image_size))
        write_png(grid, out / f"reconstructions-{name}.png")
        self.monitor.image("reconstructions", trainer.images_seen / 1000, grid)
        self.monitor.scalars(trainer.images_seen / 1000, trainer.step, {"measured/l1": l1,
                                                                        "measured/latent_std": std})
        # The state last: a folder whose state exists always has diffusers files at least as new.
        checkpoint.save_atomic({"format": STATE_FORMAT, "version": 1, "ddgan_version": __version__,
                                "architecture": {**asdict(architecture), "ch_mult": list(architecture.ch_mult)},
                                "settings": self.settings, **trainer.state_dict()}, out / STATE_FILE)
        return summary


def check_flags(image_size, num_channels, ch_mult, kimg, lr, batch_size, kl_weight, snapshot_kimg,
                workers) -> tuple:
    """(image_size, ch_mult, kimg, lr, batch_size) as their types, or ValueError naming the flag at fault."""
    if image_size is not None:
        image_size = positive("image_size", image_size)
    if num_channels not in (None, 1, 3):
        raise ValueError(f"--num_channels={num_channels!r}: expected 1 (grayscale) or 3 (RGB)")
    if isinstance(ch_mult, int | str) or not ch_mult:
        raise ValueError(f"--ch_mult={ch_mult!r}: expected a list of positive integers, as --ch_mult='[1,2]'")
    ch_mult = tuple(positive("ch_mult", m) for m in ch_mult)
    kimg, lr = positive("kimg", kimg, float), positive("lr", lr, float)
    batch_size = positive("batch_size", batch_size)
    if not isinstance(kl_weight, int | float) or kl_weight < 0 or not isinstance(snapshot_kimg, int | float) \
            or snapshot_kimg < 0 or not isinstance(workers, int) or workers < 0:
        raise ValueError("--kl_weight, --snapshot_kimg (0: at the end only) and --workers must be numbers >= 0")
    return image_size, ch_mult, kimg, lr, batch_size


def autoencoder(data: str, *, out: str, image_size: int | None = None, num_channels: int | None = None, ch: int = 32,
                ch_mult: tuple[int, ...] = (1, 2), num_res_blocks: int = 1, latent_channels: int = 4,
                attention: bool = False, norm_groups: int = 32, kimg: float = 50.0, batch_size: int = 32,
                lr: float = 1e-3, kl_weight: float = 1e-6, seed: int = 0, snapshot_kimg: float = 10.0,
                resume: bool = False, device: str | None = None, workers: int = 0, download: bool = False) -> str:
    """Train a small KL autoencoder (a diffusers AutoencoderKL) on DATA for latent DDGANs; prints --out.

    DATA is what `ddgan train --data` takes (.npz, image folder or .zip, LMDB, demo, cifar10). --image_size and
    --num_channels default to DATA's; an image of S pixels encodes to --latent_channels x S/f x S/f latents,
    f = 2 ** (len(ch_mult) - 1). --attention=True adds self-attention at the lowest resolution, as in LDM;
    every width ch * ch_mult must divide into --norm_groups GroupNorm groups. Loss: L1 + --kl_weight * KL
    (+ LPIPS when its weights are installed). Every --snapshot_kimg and at the end, --out gets config.json and
    diffusion_pytorch_model.safetensors (AutoencoderKL.from_pretrained(OUT)), ddgan_autoencoder.json (data,
    kimg, L1, latent_std and scaling_factor = 1 / latent_std), reconstructions-*.png (originals above,
    reconstructions below), tensorboard/, log.jsonl and autoencoder-state.pt. Rerunning on a folder that holds
    a state continues it exactly (--resume=True insists on one); Ctrl-C saves first."""
    out = Path(out).expanduser()
    image_size, ch_mult, kimg, lr, batch_size = check_flags(image_size, num_channels, ch_mult, kimg, lr, batch_size,
                                                            kl_weight, snapshot_kimg, workers)
    dataset = open_images(data, image_size, num_channels, download)
    architecture = Architecture(dataset.image_size, dataset.num_channels, positive("ch", ch), ch_mult,
                                positive("num_res_blocks", num_res_blocks),
                                positive("latent_channels", latent_channels), bool(attention),
                                positive("norm_groups", norm_groups))
    architecture.check(size_from_data=image_size is None)
    out.mkdir(parents=True, exist_ok=True)
    saved = read_state(out, resume)
    if saved is not None and (changed := architecture_changes(saved["architecture"], architecture)):
        raise ValueError(f"--out={out} holds a training state made with other architecture flags ({'; '.join(changed)}"
                         "); pass the same flags to resume it (--image_size and --num_channels default to DATA's), "
                         "or choose another --out")
    checkpoint.remove_stale_temporaries(out)
    for stale in out.glob(".diffusers-*"):  # a save killed before its renames
        shutil.rmtree(stale, ignore_errors=True)

    device = default_device(device or None)
    perceptual, lpips_off = perceptual_loss(device)
    trainer = AutoencoderTrainer(architecture, lr, float(kl_weight), int(seed), device, perceptual)
    settings = {"data": str(data), "batch_size": batch_size, "lr": lr, "kl_weight": float(kl_weight),
                "seed": int(seed), "lpips": perceptual is not None}
    if saved is not None:
        trainer.load_state_dict(saved)
    monitor = Monitor(out, kimg, trainer.images_seen / 1000, postfix=autoencoder_postfix)
    announce(monitor, out, dataset, trainer, architecture, device, lpips_off, saved, settings)
    run = SnapshotWriter(trainer, out, fixed_images(dataset, MEASURED_IMAGES), int(seed), architecture, str(data),
                         describe_dataset(dataset), settings, monitor)
    snapshot = run.snapshot

    total_images = math.ceil(round(kimg * 1000, 6))
    if trainer.images_seen >= total_images:
        monitor.message(f"already trained for {trainer.images_seen / 1000:.3f} kimg; raise --kimg to go on")
    batches = make_loader(dataset, batch_size, seed=int(seed), workers=workers, start_index=trainer.images_seen)

    def step() -> bool:
        terms = trainer.train_step(next(batches))
        if trainer.step % LOG_EVERY == 0 or trainer.images_seen >= total_images:
            values = monitor.scalars(trainer.images_seen / 1000, trainer.step, {**terms, "lr": lr})
            if not math.isfinite(values["loss/total"]):
                raise FloatingPointError(f"the loss is not finite at step {trainer.step}; the last snapshot "
                                         f"in {out} stands: resume from it with a lower --lr")
        return True

    def finish(stopped: bool) -> None:
        if stopped:
            monitor.message(f"stop requested at {trainer.images_seen / 1000:.3f} kimg: saving; run the same "
                            "command again to continue")
        summary = snapshot("final")
        monitor.message(f"L1 {summary['l1']:.4f} on {summary['l1_images']} images, latent std "
                        f"{summary['latent_std']:.4f} (scaling_factor {summary['scaling_factor']:.4f})\n"
                        f"diffusers folder: {out} (AutoencoderKL.from_pretrained)\n"
                        f"reconstructions: {out / 'reconstructions-final.png'}\n"
                        f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")

    # The last step's snapshot is the final one.
    every = Every(max(1, round(snapshot_kimg * 1000)) if snapshot_kimg > 0 else 0,
                  lambda: snapshot(f"{trainer.images_seen:09d}"), at_the_end=False)
    train(step, lambda: trainer.images_seen, total_images, monitor, [every], lambda stop: stop.requested, finish)
    return str(out)
