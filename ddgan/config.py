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
    "z_emb_dim", "t_emb_dim", "n_mlp", "ngf", "discriminator", "num_timesteps", "cond", "num_classes",
    "space", "wavelet_order", "net_type", "patch_size", "no_use_fbn", "no_use_freq", "no_use_residual",
    "num_disc_layers", "latent_channels", "latent_factor", "latent_scale", "class_loss",
)
# The settings the networks take besides the architecture fields.
NETWORK_FIELDS = ARCHITECTURE_FIELDS + ("dropout", "centered")


GROUPS = ("data", "diffusion", "generator", "discriminator", "optimisation", "speed", "run folder")


def option(group: str, default, help: str):
    """A Config field with its `ddgan train --help` group and one-line help."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    return field(default=default, metadata={"group": group, "help": help})


@dataclass
class Config:
    """Every setting of a training run; defaults are the CIFAR-10 recipe."""

    data: str = option("data", "cifar10", "a dataset name (demo, cifar10, stackmnist) or a path: folder, .zip, LMDB, "
                       ".npz/.npy; or shards: WebDataset .tar (a {000..127} pattern, folder, or .txt list), "
                       "parquet, a save_to_disk folder, hf:owner/name[:split]")
    image_column: str = option("data", "", "the image column of a Hugging Face dataset, or the image extension in "
                               "WebDataset shards (empty: guessed)")
    label_column: str = option("data", "", "the class label column of a Hugging Face dataset, or the extension in "
                               "WebDataset shards (empty: guessed; cls in shards)")
    image_size: int = option("data", 32, "resolution in pixels (images are resized and center-cropped to it)")
    num_channels: int = option("data", 3, "1 (grayscale) or 3 (RGB)")
    hflip: bool = option("data", True, "random horizontal flips (never for digits, whatever this says)")
    download: bool = option("data", False, "let torchvision download a named dataset (cifar10, stackmnist's MNIST)")
    skip_bad_images: int | bool = option("data", 0, "skip up to this many unreadable images (each with a warning, "
                                         "the count logged) instead of stopping at the first; True: any number")
    workers: int = option("data", 2, "data loader processes per training process (0 = load in the main process)")
    cond: bool = option("data", False, "class-conditional: train on the data's labels and sample by class")
    num_classes: int = option("data", 0, "classes of a conditional model (set from the data under --cond)")
    class_names: tuple = option("data", (), "the classes' names (set from the data under --cond)")

    num_timesteps: int = option("diffusion", 4, "T, the number of denoising steps")
    beta_min: float = option("diffusion", 0.1, "beta(t) at t = 0 of the noise schedule")
    beta_max: float = option("diffusion", 20.0, "beta(t) at t = 1 of the noise schedule")
    use_geometric: bool = option("diffusion", False, "geometric variance schedule instead of the VP SDE's")
    space: str = option("diffusion", "pixel", "pixel; wavelet: diffuse the Haar wavelet tensor (4C channels at "
                        "half the size), as WaveDiff; latent: an autoencoder's latents, as LDDGAN")
    wavelet_order: str = option("diffusion", "bundled", "band order of the wavelet tensor: bundled (WaveDiff's "
                                "DWT_IDWT) or pytorch_wavelets (LH and HL swapped; WaveDiff's --use_pytorch_wavelet)")
    autoencoder: str | None = option("diffusion", None, "latent space: a diffusers AutoencoderKL/VQModel folder or Hub "
                                     "id, or an LDM .ckpt (with --autoencoder_config)")
    autoencoder_config: str | None = option("diffusion", None, "the LDM yaml of an --autoencoder .ckpt")
    latent_scale: float | None = option("diffusion", None, "latent space: the networks diffuse latents / latent_scale "
                                        "(LDDGAN's scale_factor); None = the std of the data's latents")
    latent_channels: int = option("diffusion", 0, "latent space: the latents' channels (set from --autoencoder)")
    latent_factor: int = option("diffusion", 0, "latent space: image pixels per latent along a side (set from "
                                "--autoencoder)")

    num_channels_dae: int = option("generator", 128, "base width nf of the NCSN++ U-Net")
    ch_mult: tuple = option("generator", (1, 2, 2, 2), "width multiplier of each resolution level, e.g. '[1,2,2,2]'")
    num_res_blocks: int = option("generator", 2, "residual blocks per resolution level")
    attn_resolutions: tuple = option("generator", (16,), "resolutions (px) that get self-attention, e.g. '[16]'")
    dropout: float = option("generator", 0.0, "dropout rate inside the residual blocks")
    resamp_with_conv: bool = option("generator", True, "kept for the original's command lines; BigGAN blocks "
                                    "resample inside the block, so only True is valid")
    conditional: bool = option("generator", True, "condition G on the time step (False: unconditional denoiser)")
    fir: bool = option("generator", True, "FIR-filtered resampling (False: nearest / box)")
    fir_kernel: tuple = option("generator", (1, 3, 3, 1), "taps of the resampling FIR filter")
    skip_rescale: bool = option("generator", True, "divide residual sums by sqrt(2)")
    resblock_type: str = option("generator", "biggan", "residual block type; only biggan (ddpm crashes in the "
                                "original)")
    progressive: str = option("generator", "none", "output pyramid: none or output_skip")
    progressive_input: str = option("generator", "residual", "input pyramid: none, input_skip or residual")
    progressive_combine: str = option("generator", "sum", "how input_skip merges the pyramid: sum or cat")
    embedding_type: str = option("generator", "positional", "time embedding: positional (step index) or fourier")
    fourier_scale: float = option("generator", 16.0, "std of the random Fourier features (fourier embedding)")
    not_use_tanh: bool = option("generator", False, "leave G's output unbounded (no final tanh)")
    centered: bool = option("generator", True, "data in [-1, 1] (False: G maps [0, 1] inputs to [-1, 1] first)")
    nz: int = option("generator", 100, "dimension of the latent z")
    z_emb_dim: int = option("generator", 256, "width of the mapping network's output that drives AdaGN")
    n_mlp: int = option("generator", 4, "hidden layers of the mapping network (the released CIFAR-10 model has 4)")
    net_type: str = option("generator", "normal", "normal (NCSN++) or wavelet (WaveDiff's frequency-aware NCSN++)")
    patch_size: int = option("generator", 1, "the generator works on patch_size x patch_size patches (WaveDiff)")
    no_use_fbn: bool = option("generator", False, "wavelet G without the frequency bottleneck (ablation)")
    no_use_freq: bool = option("generator", False, "wavelet G without wavelet down/up blocks (ablation)")
    no_use_residual: bool = option("generator", False, "wavelet G without the wavelet input pyramid (ablation)")

    ngf: int = option("discriminator", 64, "base width of the discriminator")
    discriminator: str = option("discriminator", "auto", "small (32 px), large (256 px) or auto (by image_size)")
    t_emb_dim: int = option("discriminator", 256, "width of the discriminator's time embedding")
    num_disc_layers: int | None = option("discriminator", None, "down blocks D uses (small: up to 4, large: up to "
                                         "6); None = all")

    batch_size: int = option("optimisation", 256, "global batch over all processes")
    kimg: float = option("optimisation", 90_000.0, "training length in thousands of real images seen")
    lr_g: float = option("optimisation", 1.6e-4, "generator learning rate")
    lr_d: float = option("optimisation", 1.25e-4, "discriminator learning rate")
    beta1: float = option("optimisation", 0.5, "Adam beta1 of both networks")
    beta2: float = option("optimisation", 0.9, "Adam beta2 of both networks")
    no_lr_decay: bool = option("optimisation", False, "constant learning rates (default: cosine decay to lr_min)")
    lr_min: float = option("optimisation", 1e-5, "learning rate at the end of the cosine decay")
    use_ema: bool = option("optimisation", True, "keep an exponential moving average of G for sampling")
    ema_decay: float = option("optimisation", 0.9999, "EMA decay per iteration")
    r1_gamma: float = option("optimisation", 0.02, "weight of the R1 penalty on D's gradient at real pairs")
    rec_loss: bool = option("optimisation", False, "add the L1 distance of G's x'_0 to the real x_0 to G's loss "
                            "(WaveDiff)")
    rec_loss_weight: float = option("optimisation", 1.0, "weight of that L1 term (1 in WaveDiff)")
    class_loss: float = option("discriminator", 0.0, "weight of an auxiliary class loss (AC-GAN) in conditional "
                               "runs (ignored without --cond): a head on D names the class of real pairs, and G's "
                               "pairs are to be named as their label; > 0 adds the head, so a resumed run keeps it")
    rec_loss_schedule: str = option("optimisation", "constant", "that weight over the run: constant, or sigmoid "
                                    "(LDDGAN: times 1 - sigmoid(linspace(-6, 6)) over the run's kimg)")
    lazy_reg: int | None = option("optimisation", 15, "R1 every lazy_reg D steps; None = every step")
    seed: int = option("optimisation", 0, "seed of the initial weights, the data order and the iterations' noise")

    amp: str | None = option("speed", "auto", "autocast dtype: bf16, fp16, none, or auto: bf16 on CUDA and for large "
                             "networks on CPUs with native bf16, else none")
    channels_last: bool | None = option("speed", None, "NHWC memory layout; default on for CUDA and bf16 CPUs")
    compile: bool | None = option("speed", None, "torch.compile G; default off (not measured to pay off yet)")
    tf32: bool = option("speed", True, "TF32 matmuls and convolutions on CUDA")

    outdir: str = option("run folder", "runs", "where numbered run folders are made")
    resume: str | None = option("run folder", None, "continue exactly from a run folder or checkpoint file")
    run_dir: str | None = option("run folder", None, "the run folder itself instead of a new numbered one under "
                                 "--outdir; a start whose folder holds a checkpoint continues from the newest, so a "
                                 "restarted or requeued command continues its run")
    checkpoint_minutes: float = option("run folder", 0.0, "also save a checkpoint at least every this many minutes "
                                       "of wall time; 0 = off")
    log_every: int = option("run folder", 50, "iterations between console/TensorBoard scalars")
    snapshot_kimg: float = option("run folder", 500.0, "kimg between checkpoints")
    sample_kimg: float = option("run folder", 500.0, "kimg between sample grids")
    grid_images: int = option("run folder", 64, "images in each sample grid (fixed seeds 0..N-1)")
    keep_checkpoints: int = option("run folder", 3, "regular checkpoints kept (older ones are deleted)")
    fid_every: float = option("run folder", 0.0, "kimg between FID evaluations; 0 = off")
    fid_samples: int = option("run folder", 10_000, "samples per FID evaluation")
    fid_stats: str = option("run folder", "cifar10", "clean-fid statistics name, or a .npz from `ddgan fid "
                            "make-stats`")
    fid_prdc: bool = option("run folder", False, "also log precision, recall, density and coverage at each FID "
                            "evaluation (needs --fid_stats from `ddgan fid make-stats --features=10000`)")
    skip_nonfinite: int = option("run folder", 0, "tolerate this many non-finite losses (skipped iterations) "
                                 "before stopping")
    preset: str = option("run folder", "cifar10", "the recipe the defaults came from (set by --preset)")

    def to_dict(self) -> dict:
        """A plain dict (lists, not tuples) fit for JSON and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> Config:
        """Rebuild a config, ignoring nothing: unknown keys are an error naming `source`."""
        check_known(values, source)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def network_kwargs(self) -> dict:
        """The settings the networks take, under the original implementation's names; in wavelet or latent
        space the networks see that tensor, so image_size and num_channels are the tensor's (as WaveDiff's)."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in NETWORK_FIELDS}
        channels, size, _ = self.latent_shape
        return values | {"image_size": size, "num_channels": channels}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensor the diffusion runs on: the image, its wavelet tensor or its latents."""
        from ddgan.space import SPACES

        return SPACES[self.space].shape_of(self)

    @property
    def generator_kind(self) -> str:
        """`NCSNpp` or `WaveletNCSNpp` (net_type wavelet)."""
        return "WaveletNCSNpp" if self.net_type == "wavelet" else "NCSNpp"

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
    # WaveDiff's recipes (its run.sh; batch sizes are per process there): DDGAN on the 12-channel Haar wavelet
    # tensor at half the resolution, with the L1 reconstruction term.
    # CIFAR-10 in 1800 epochs; its run.sh builds the plain NCSN++ (no --net_type), attention nowhere but the
    # middle block (its "32" never occurs at 16 px).
    "cifar10_wavelet": dict(
        data="cifar10", space="wavelet", wavelet_order="pytorch_wavelets", ch_mult=(1, 2, 2), attn_resolutions=(),
        num_disc_layers=3, rec_loss=True,
    ),
    # STL-10 at 64 px (pass --data=PATH), 900 epochs of the 100k unlabeled images.
    "stl10_wavelet": dict(
        data="stl10", image_size=64, space="wavelet", wavelet_order="pytorch_wavelets", net_type="wavelet",
        ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), num_disc_layers=4, rec_loss=True, kimg=90_000.0,
    ),
    # CelebA-HQ 256, 500 epochs of 30k images; WaveDiff's bundled band order.
    "celeba256_wavelet": dict(
        data="celeba256", image_size=256, space="wavelet", net_type="wavelet", num_channels_dae=64,
        ch_mult=(1, 2, 2, 2, 4), attn_resolutions=(16,), num_timesteps=2, n_mlp=3, num_disc_layers=5,
        rec_loss=True, batch_size=32, kimg=15_000.0, r1_gamma=2.0, lr_d=1e-4, lr_g=2e-4, lazy_reg=10,
        snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LSUN Church 256, 500 epochs.
    "lsun256_wavelet": dict(
        data="lsun256", image_size=256, space="wavelet", wavelet_order="pytorch_wavelets", net_type="wavelet",
        num_channels_dae=64, ch_mult=(1, 2, 2, 2, 4), attn_resolutions=(16,), num_timesteps=4, n_mlp=3,
        num_disc_layers=5, rec_loss=True, batch_size=16, kimg=60_000.0, ema_decay=0.999, r1_gamma=1.0, lr_d=1e-4,
        lr_g=1.6e-4, lazy_reg=10, snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LDDGAN's recipes (its run.sh, train mode): plain NCSN++ on an LDM autoencoder's latents over latent_scale
    # (LDDGAN's scale_factor). The autoencoder is left empty on purpose: these numbers only hold for the one
    # named in each comment, so the user passes it (--autoencoder, plus --autoencoder_config for an LDM .ckpt).
    # run.sh gives no batch size, learning rate or R1 weight, so those follow the same data's wavelet preset.
    # CIFAR-10, 2000 epochs of 50k images; expects LDDGAN's f2 KL autoencoder (16x16x4_551.ckpt with
    # cifar10_16x16x4.yaml: 4x16x16 latents). Its "32" attention never occurs at 16 px: only the middle block.
    "cifar10_latent": dict(
        data="cifar10", space="latent", latent_scale=105.0, ch_mult=(1, 2, 2), attn_resolutions=(), nz=50,
        discriminator="small", num_disc_layers=3, rec_loss=True, rec_loss_schedule="sigmoid", kimg=100_000.0,
    ),
    # CelebA-HQ 256, 500 epochs of 30k images; expects the VQ f4 first stage of LDM's CELEBA_config.yaml (its
    # checkpoint with that yaml: 3x64x64 latents). The CelebA trainer builds the large D.
    "celeba256_latent": dict(
        data="celeba256", image_size=256, space="latent", latent_scale=6.0, ch_mult=(1, 2, 2, 2),
        attn_resolutions=(16,), num_timesteps=2, n_mlp=3, discriminator="large", num_disc_layers=4, rec_loss=True,
        rec_loss_schedule="sigmoid", batch_size=32, kimg=15_000.0, r1_gamma=2.0, lr_d=1e-4, lr_g=2e-4, lazy_reg=10,
        snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # LSUN Church 256, 1000 epochs of 120k images; expects the KL f8 first stage of LDM's LSUN_config.yaml (its
    # checkpoint with that yaml: 4x32x32 latents). run.sh trains it without the L1 term.
    "lsun256_latent": dict(
        data="lsun256", image_size=256, space="latent", latent_scale=60.0, ch_mult=(1, 2, 2, 2), num_res_blocks=3,
        attn_resolutions=(16,), num_timesteps=4, nz=50, n_mlp=3, discriminator="large", num_disc_layers=4,
        batch_size=16, kimg=120_000.0, ema_decay=0.999, r1_gamma=1.0, lr_d=1e-4, lr_g=1.6e-4, lazy_reg=10,
        snapshot_kimg=250.0, sample_kimg=250.0, grid_images=36,
    ),
    # Built-in shapes at 16 px, one class per shape, sized for about 7 minutes on 2 CPU cores (AMD EPYC).
    # Width 16 runs 120 img/s against 80 at width 32, and 3000 steps at a constant learning rate separate
    # circles from squares, which shorter or decaying runs draw alike (tuning runs in BENCHMARKS.md). At that
    # constant rate a class's accuracy swings between snapshots (real digits: 0.29 -> 0.91 -> 0.80); an EMA
    # over about 1000 steps (0.999) instead of 100 (0.99) averages over them: on the digits it lifted one
    # run's worst class from 0.80 to 0.90 and lowered another's from 0.95 to 0.85 (BENCHMARKS.md). What made
    # the weakest class reliable on real digits was D's class head (class_loss 1): worst digit 0.85-0.97
    # over six runs without it, 0.95-1.00 with it, at the cost of a linear layer. On the wider demo shapes
    # (issue #25: samples now vary within a class) squares part from circles late, after 36 kimg: EMA 0.999
    # still drew them as circles at 48 (0.52-0.86 on two seeds of three); 0.998 kept up (0.99 on seeds 0-2).
    # R1 gamma 0.2 drew every shape by 24 kimg on the old shapes, where 0.02 drew squares as circles.
    "demo": dict(
        data="demo", cond=True, image_size=16, num_channels_dae=16, ch_mult=(1, 2, 2), num_res_blocks=1,
        attn_resolutions=(), num_timesteps=2, nz=32, z_emb_dim=64, t_emb_dim=64, n_mlp=2, ngf=16,
        batch_size=16, kimg=48.0, lr_g=4e-4, lr_d=3e-4, no_lr_decay=True, ema_decay=0.998, r1_gamma=0.2,
        class_loss=1.0, lazy_reg=15, workers=0, log_every=20, snapshot_kimg=12.0, sample_kimg=6.0, fid_stats="",
        channels_last=False,
    ),
}

# The autoencoder each latent preset was made for, named in the error when --autoencoder is missing: the
# preset's numbers (latent_scale above all) mean nothing with another one.
LATENT_PRESET_AUTOENCODERS = {
    "cifar10_latent": "LDDGAN's --autoencoder=16x16x4_551.ckpt --autoencoder_config=cifar10_16x16x4.yaml",
    "celeba256_latent": "LDM's CelebA-HQ checkpoint with --autoencoder_config=CELEBA_config.yaml (its VQ f4 first "
                        "stage)",
    "lsun256_latent": "LDM's LSUN Church checkpoint with --autoencoder_config=LSUN_config.yaml (its KL f8 first "
                      "stage)",
}


def unknown_flag_message(flag: str, known: list[str], where_listed: str, what: str = "flag") -> str:
    """`unknown flag --kmg; did you mean --kimg?`: the one wording of every command's unknown-flag error."""
    close = difflib.get_close_matches(flag, known, n=1)
    return f"unknown {what} --{flag}; " + (f"did you mean --{close[0]}?" if close else where_listed)


def check_known(values: dict, source: str) -> None:
    """Raise ValueError for names that are not config fields, suggesting the closest one."""
    names = [f.name for f in fields(Config)]
    for key in values:
        if key not in names:
            what = "flag" if source == "flag" else f"{source} setting"
            raise ValueError(unknown_flag_message(key, names, "`ddgan train --help` lists the flags", what))


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

    # Each check that another module owns lives there once: the schedule's, the precision's, the generator's.
    from ddgan.diffusion import check_schedule
    from ddgan.precision import check_amp
    from ddgan.wavelet import ORDERS

    need(c.space in ("pixel", "wavelet", "latent"),
         f"--space must be pixel or wavelet (WaveDiff) or latent (LDDGAN), got {c.space!r}")
    need(c.space != "latent" or bool(c.autoencoder), "--space=latent needs --autoencoder=SRC: a diffusers "
         "AutoencoderKL/VQModel folder or Hub id, or an LDM .ckpt with --autoencoder_config=ITS.yaml"
         + (f"; --preset={c.preset} expects {LATENT_PRESET_AUTOENCODERS[c.preset]}"
            if c.preset in LATENT_PRESET_AUTOENCODERS else ""))
    need(c.space == "latent" or not (c.autoencoder or c.autoencoder_config),
         "--autoencoder is for latent models: add --space=latent")
    need(c.latent_scale is None or (isinstance(c.latent_scale, int | float) and not isinstance(c.latent_scale, bool)
                                    and 0 < c.latent_scale < float("inf")),
         f"--latent_scale must be a positive number (the networks diffuse latents / latent_scale), or left out to "
         f"measure it; got {c.latent_scale!r}")
    need(c.rec_loss_schedule in ("constant", "sigmoid"),
         f"--rec_loss_schedule must be constant or sigmoid, got {c.rec_loss_schedule!r}")
    need(c.rec_loss_schedule == "constant" or c.rec_loss,
         "--rec_loss_schedule=sigmoid weights the --rec_loss term: add --rec_loss=True")
    need(c.wavelet_order in ORDERS, f"--wavelet_order must be one of {', '.join(ORDERS)}, got {c.wavelet_order!r}")
    need(c.net_type in ("normal", "wavelet"), f"--net_type must be normal or wavelet, got {c.net_type!r}")
    # The wavelet network resamples its own features by Haar transforms, so it also runs on latents.
    need(c.net_type == "normal" or c.space in ("wavelet", "latent"),
         "--net_type=wavelet works on wavelet tensors or latents: add --space=wavelet (or --space=latent)")
    need(c.space != "wavelet" or c.image_size % 2 == 0,
         f"--image_size={c.image_size} must be even in wavelet space (the Haar transform halves it)")
    need(c.num_disc_layers is None or 1 <= c.num_disc_layers <= (4 if c.discriminator_kind.endswith("small") else 6),
         f"--num_disc_layers={c.num_disc_layers}: the {c.discriminator_kind} has "
         f"{4 if c.discriminator_kind.endswith('small') else 6} down blocks; give 1 to that, or None for all")
    need(isinstance(c.skip_bad_images, bool) or (isinstance(c.skip_bad_images, int) and c.skip_bad_images >= 0),
         f"--skip_bad_images={c.skip_bad_images!r}: give how many unreadable images to skip (0 stops at the first), "
         "or True for any number")
    need(c.rec_loss_weight >= 0, f"--rec_loss_weight must be >= 0, got {c.rec_loss_weight}")
    # A latent run's shape comes from its autoencoder: ddgan.space.fitted checks it again once that is open.
    if c.space != "latent" or c.latent_factor:
        _check_shapes(c, need)
    need(c.resamp_with_conv, "--resamp_with_conv=False has no effect with BigGAN residual blocks (they resample "
         "inside the block, as in the original); leave it at True")
    need(c.num_channels in (1, 3), f"--num_channels must be 1 or 3, got {c.num_channels}")
    need(c.num_timesteps >= 1, f"--num_timesteps must be >= 1, got {c.num_timesteps}")
    need(c.batch_size >= 1, f"--batch_size must be >= 1, got {c.batch_size}")
    need(c.kimg > 0, f"--kimg must be > 0, got {c.kimg}")
    need(c.lazy_reg is None or c.lazy_reg >= 1, f"--lazy_reg must be >= 1 or None, got {c.lazy_reg}")
    need(c.r1_gamma >= 0, f"--r1_gamma must be >= 0, got {c.r1_gamma}")
    need(0 <= c.ema_decay < 1, f"--ema_decay must lie in [0, 1), got {c.ema_decay}")
    check_amp(c.amp)
    need(c.discriminator in ("auto", "small", "large"),
         f"--discriminator must be auto, small or large, got {c.discriminator!r}")
    for name in ("snapshot_kimg", "sample_kimg", "fid_every", "checkpoint_minutes"):
        need(getattr(c, name) >= 0, f"--{name} must be >= 0")
    need(c.grid_images >= 1, f"--grid_images must be >= 1, got {c.grid_images}")
    need(c.num_classes >= 0 and (c.cond or c.num_classes == 0),
         f"--num_classes={c.num_classes} needs --cond=True (it is set from the data's labels); leave it out")
    need(c.class_loss >= 0, f"--class_loss must be >= 0, got {c.class_loss}")
    need(not c.class_names or len(c.class_names) == c.num_classes,
         f"--class_names lists {len(c.class_names)} names for {c.num_classes} classes")
    need(c.keep_checkpoints >= 1, f"--keep_checkpoints must be >= 1, got {c.keep_checkpoints}")
    check_schedule(c.num_timesteps, c.beta_min, c.beta_max, c.schedule)


def _check_shapes(c: Config, need) -> None:
    """The checks of what the networks see: patches, the generator's levels, the discriminator's halvings."""
    from networks import check_generator_args

    _, resolution, _ = c.latent_shape
    need(isinstance(c.patch_size, int) and c.patch_size >= 1 and resolution % c.patch_size == 0,
         f"--patch_size={c.patch_size} must divide the {resolution} px the generator sees")
    resolution //= c.patch_size
    if c.net_type == "wavelet" and not c.no_use_fbn:
        need(resolution % 2 ** len(c.ch_mult) == 0,
             f"--image_size={c.image_size}: the frequency bottleneck halves the generator's lowest resolution once "
             f"more, so {resolution} px must be divisible by 2**len(ch_mult)={2 ** len(c.ch_mult)}; change "
             "--image_size or --ch_mult, or pass --no_use_fbn=True")
    check_generator_args(resolution, c.ch_mult, c.attn_resolutions, c.resblock_type, c.progressive,
                         c.progressive_input, c.progressive_combine, c.embedding_type)
    small = c.discriminator_kind.endswith("small")
    layers = c.num_disc_layers or (4 if small else 6)
    halvings = layers - 1 if small else layers  # the small D's first block keeps the resolution
    need(c.latent_shape[1] >> halvings >= 1,
         f"the {c.discriminator_kind} halves the {c.latent_shape[1]} px it sees {halvings} times; use a larger "
         "--image_size or fewer --num_disc_layers")


def architecture_changes(old: Config, new: Config) -> list[str]:
    """The architecture fields on which two configs differ, as `name: old -> new`."""
    return [f"{k}: {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in ARCHITECTURE_FIELDS
            if getattr(old, k) != getattr(new, k)]


def replace(config: Config, **changes) -> Config:
    """A copy with some fields changed."""
    return dataclasses.replace(config, **changes)
