"""Training configuration: one dataclass, presets from the paper's recipes, and validation.

Field names follow the original implementation's flags (`num_channels_dae`, `ch_mult`, `r1_gamma`, ...)
so that a researcher's command line carries over. The config is saved inside every checkpoint, so
sampling and FID need only the checkpoint path.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field, fields

# Fields that define the networks' shapes: a resumed run may not change these.
ARCHITECTURE_FIELDS = (
    "image_size", "num_channels", "num_channels_dae", "ch_mult", "num_res_blocks", "attn_resolutions",
    "resamp_with_conv", "conditional", "fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive",
    "progressive_input", "progressive_combine", "embedding_type", "fourier_scale", "not_use_tanh", "nz",
    "z_emb_dim", "t_emb_dim", "n_mlp", "ngf", "discriminator", "num_timesteps",
)


@dataclass
class Config:
    """Every setting of a training run; defaults are the CIFAR-10 recipe."""

    # Data
    data: str = "cifar10"  # a dataset name (demo, cifar10) or a path: folder, zip, LMDB, .npz/.npy
    image_size: int = 32
    num_channels: int = 3
    hflip: bool = True  # random horizontal flips (off for digits)
    download: bool = False  # allow torchvision to download named datasets
    skip_bad_images: bool = False
    workers: int = 2

    # Forward diffusion
    num_timesteps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    use_geometric: bool = False

    # Generator: NCSN++ with AdaGN (the original's names)
    num_channels_dae: int = 128
    ch_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    not_use_tanh: bool = False
    centered: bool = True
    nz: int = 100
    z_emb_dim: int = 256
    t_emb_dim: int = 256
    n_mlp: int = 4

    # Discriminator
    ngf: int = 64
    discriminator: str = "auto"  # small (32 px), large (256 px) or auto (by image_size)

    # Optimisation
    batch_size: int = 256  # global batch over all processes
    kimg: float = 90_000.0  # training length in thousands of real images seen
    lr_g: float = 1.6e-4
    lr_d: float = 1.25e-4
    beta1: float = 0.5
    beta2: float = 0.9
    no_lr_decay: bool = False  # cosine decay to lr_min over the run unless set
    lr_min: float = 1e-5
    use_ema: bool = True
    ema_decay: float = 0.9999
    r1_gamma: float = 0.02
    lazy_reg: int | None = 15  # R1 every lazy_reg D steps; None = every step
    seed: int = 0

    # Speed switches (amp and channels_last: None = on where it helps, CUDA yes, CPU no)
    amp: str | None = None  # bf16, fp16, or none
    channels_last: bool | None = None
    compile: bool | None = None  # None = off: not yet measured to pay off (on the CPU it does not)
    tf32: bool = True

    # Run folder, logging, checkpoints
    outdir: str = "runs"
    resume: str | None = None  # a run folder or a checkpoint file
    log_every: int = 50  # iterations between console/TensorBoard scalars
    snapshot_kimg: float = 500.0  # checkpoint every N kimg
    sample_kimg: float = 500.0  # sample grid every N kimg
    grid_images: int = 64  # images in each sample grid (fixed seeds 0..N-1)
    keep_checkpoints: int = 3
    fid_every: float = 0.0  # kimg between FID evaluations; 0 = off
    fid_samples: int = 10_000
    fid_stats: str = "cifar10"  # clean-fid named statistics, or a .npz made by `ddgan fid make-stats`
    skip_nonfinite: int = 0  # tolerate this many non-finite losses (skipped steps) before stopping
    preset: str = field(default="cifar10", metadata={"help": "the recipe the defaults came from"})

    def to_dict(self) -> dict:
        """A plain dict (lists, not tuples) fit for JSON and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> Config:
        """Rebuild a config, ignoring nothing: unknown keys are an error naming `source`."""
        check_known(values, source)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def network_kwargs(self) -> dict:
        """The settings the networks take, under the original implementation's names."""
        names = ARCHITECTURE_FIELDS + ("dropout", "centered")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in names}

    @property
    def discriminator_kind(self) -> str:
        """`Discriminator_small` or `Discriminator_large`."""
        kind = self.discriminator if self.discriminator != "auto" else ("small" if self.image_size <= 64 else "large")
        return f"Discriminator_{kind}"

    @property
    def schedule(self) -> str:
        return "geometric" if self.use_geometric else "vp"


PRESETS: dict[str, dict] = {
    # The original's CIFAR-10 command: 4 GPUs x 64 images, 1800 epochs of 50k images.
    "cifar10": dict(data="cifar10"),
    # Stacked MNIST (three digits as RGB channels), the CIFAR-10 recipe without flips.
    "stackmnist": dict(data="stackmnist", hflip=False, r1_gamma=0.05, kimg=12_000.0),
    # CelebA-HQ 256: 8 GPUs x 4 images, 800 epochs of 30k images.
    "celeba256": dict(
        data="celeba256", image_size=256, num_channels_dae=64, ch_mult=(1, 1, 2, 2, 4, 4), num_timesteps=2,
        batch_size=32, kimg=24_000.0, ema_decay=0.999, r1_gamma=2.0, lr_d=1e-4, lr_g=2e-4, lazy_reg=10,
        n_mlp=3, snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LSUN Church 256: 8 GPUs x 8 images, 500 epochs of 120k images.
    "lsun256": dict(
        data="lsun256", image_size=256, num_channels_dae=64, ch_mult=(1, 1, 2, 2, 4, 4), num_timesteps=4,
        batch_size=64, kimg=60_000.0, ema_decay=0.999, r1_gamma=1.0, lr_d=1e-4, lr_g=1.6e-4, lazy_reg=10,
        n_mlp=3, snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # Built-in shapes at 16 px, sized for about 7 minutes on 2 CPU cores.
    "demo": dict(
        data="demo", image_size=16, num_channels_dae=32, ch_mult=(1, 2, 2), num_res_blocks=1,
        attn_resolutions=(), num_timesteps=2, nz=32, z_emb_dim=64, t_emb_dim=64, n_mlp=2, ngf=16,
        batch_size=16, kimg=40.0, lr_g=4e-4, lr_d=3e-4, ema_decay=0.99, r1_gamma=0.02, lazy_reg=15,
        workers=0, log_every=20, snapshot_kimg=10.0, sample_kimg=5.0, fid_stats="",
        # NHWC made this 16 px training step ~30% faster on a 2-core CPU (126 vs 169 ms at batch 16).
        channels_last=True,
    ),
}


def check_known(values: dict, source: str) -> None:
    """Raise ValueError for names that are not config fields, suggesting the closest one."""
    names = [f.name for f in fields(Config)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean --{close[0]}?" if close else "; `ddgan train --help` lists the flags"
            what = "flag" if source == "flag" else f"{source} setting"
            raise ValueError(f"unknown {what} --{key}{hint}")


def make_config(preset: str = "cifar10", **overrides) -> Config:
    """The preset's config with overrides applied and checked."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    check_known(overrides, "flag")
    values = {**PRESETS[preset], **overrides, "preset": preset}
    config = Config.from_dict({k: _coerce(k, v) for k, v in values.items()}, "flag")
    validate(config)
    return config


def _coerce(name: str, value):
    """Turn fire's parsed values into the field's type (lists to tuples, ints to floats)."""
    default = next(f for f in fields(Config) if f.name == name).default
    if isinstance(default, tuple):
        if isinstance(value, (int, float)):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"--{name} takes a list such as --{name}='[1,2,2]', got {value!r}")
        return tuple(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ValueError(f"--{name} takes True/False, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def validate(c: Config) -> None:
    """Reject settings that cannot work, before any work starts, with the fix in the message."""
    def need(ok: bool, message: str):
        if not ok:
            raise ValueError(message)

    levels = len(c.ch_mult)
    need(levels >= 1, "--ch_mult needs at least one level, e.g. --ch_mult='[1,2,2,2]'")
    factor = 2 ** (levels - 1)
    need(c.image_size >= factor and c.image_size % factor == 0,
         f"--image_size={c.image_size} must be divisible by 2**(len(ch_mult)-1)={factor} for "
         f"--ch_mult={list(c.ch_mult)}; change one of them")
    resolutions = {c.image_size // 2**i for i in range(levels)}
    for r in c.attn_resolutions:
        need(r in resolutions, f"--attn_resolutions contains {r}, which never occurs; the feature maps are "
             f"{sorted(resolutions, reverse=True)} px for --image_size={c.image_size} and --ch_mult={list(c.ch_mult)}")
    need(c.num_channels in (1, 3), f"--num_channels must be 1 or 3, got {c.num_channels}")
    need(c.num_timesteps >= 1, f"--num_timesteps must be >= 1, got {c.num_timesteps}")
    need(c.batch_size >= 1, f"--batch_size must be >= 1, got {c.batch_size}")
    need(c.kimg > 0, f"--kimg must be > 0, got {c.kimg}")
    need(c.lazy_reg is None or c.lazy_reg >= 1, f"--lazy_reg must be >= 1 or None, got {c.lazy_reg}")
    need(c.r1_gamma >= 0, f"--r1_gamma must be >= 0, got {c.r1_gamma}")
    need(0 <= c.ema_decay < 1, f"--ema_decay must lie in [0, 1), got {c.ema_decay}")
    need(c.amp in (None, "none", "bf16", "fp16"), f"--amp must be bf16, fp16 or none, got {c.amp!r}")
    need(c.discriminator in ("auto", "small", "large"),
         f"--discriminator must be auto, small or large, got {c.discriminator!r}")
    need(c.resblock_type == "biggan",
         "--resblock_type ddpm is not supported (it crashes in the original too); use biggan")
    need(c.progressive in ("none", "output_skip"), f"--progressive must be none or output_skip, got {c.progressive!r}")
    need(c.progressive_input in ("none", "input_skip", "residual"),
         f"--progressive_input must be none, input_skip or residual, got {c.progressive_input!r}")
    need(c.embedding_type in ("positional", "fourier"),
         f"--embedding_type must be positional or fourier, got {c.embedding_type!r}")
    for name in ("snapshot_kimg", "sample_kimg", "fid_every"):
        need(getattr(c, name) >= 0, f"--{name} must be >= 0")
    need(c.grid_images >= 1, f"--grid_images must be >= 1, got {c.grid_images}")
    need(c.keep_checkpoints >= 1, f"--keep_checkpoints must be >= 1, got {c.keep_checkpoints}")
    from ddgan.diffusion import check_schedule  # one source of truth for schedule limits

    check_schedule(c.num_timesteps, c.beta_min, c.beta_max, c.schedule)


def architecture_changes(old: Config, new: Config) -> list[str]:
    """The architecture fields on which two configs differ, as `name: old -> new`."""
    return [f"{k}: {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in ARCHITECTURE_FIELDS
            if getattr(old, k) != getattr(new, k)]


def replace(config: Config, **changes) -> Config:
    """A copy with some fields changed."""
    return dataclasses.replace(config, **changes)
