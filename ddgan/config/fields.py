"""The training configuration: one dataclass whose fields are the flags, each with its group and one-line help.

Field names follow the original implementation's flags (`num_channels_dae`, `ch_mult`, `r1_gamma`, ...)
so that a researcher's command line carries over. The config is saved inside every checkpoint, so
sampling and FID need only the checkpoint path.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field, fields

from ddgan.spaces import space_class

# Fields that define the networks' shapes: a resumed run may not change these.
ARCHITECTURE_FIELDS = (
    "image_size", "num_channels", "num_channels_dae", "ch_mult", "num_res_blocks", "attn_resolutions",
    "resamp_with_conv", "time_conditioning", "fir", "fir_kernel", "skip_rescale", "resblock_type", "progressive",
    "progressive_input", "progressive_combine", "embedding_type", "fourier_scale", "not_use_tanh", "nz",
    "z_emb_dim", "t_emb_dim", "n_mlp", "ngf", "discriminator", "num_timesteps", "cond", "num_classes",
    "space", "wavelet_order", "net_type", "patch_size", "no_use_fbn", "no_use_freq", "no_use_residual",
    "num_disc_layers", "latent_channels", "latent_factor", "latent_scale", "class_loss", "mlp_width", "mlp_depth",
)


# The settings the networks take besides the architecture fields.
NETWORK_FIELDS = ARCHITECTURE_FIELDS + ("dropout", "centered")


# The original implementations' names of fields named otherwise here: accepted as flags, and read from their
# flag files and from checkpoints and model folders written before the rename.
FIELD_ALIASES = {"conditional": "time_conditioning"}


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
    sample_steps: int | None = option("diffusion", None, "steps a sample takes by default (grids, FID, ddgan sample, "
                                      "ONNX): below T, each x'_0 is diffused forward to the next step's input, as "
                                      "UFOGen samples; None = all T")
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
    time_conditioning: bool = option("generator", True, "condition G on the time step (False: an unconditional "
                                     "denoiser); the original's --conditional, which is accepted too")
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
    nz: int = option("generator", 100, "dimension of the noise code z")
    z_emb_dim: int = option("generator", 256, "width of the mapping network's output that drives AdaGN")
    n_mlp: int = option("generator", 4, "hidden layers of the mapping network (the released CIFAR-10 model has 4)")
    net_type: str = option("generator", "normal", "normal (NCSN++), wavelet (WaveDiff's frequency-aware NCSN++) or "
                           "mlp (an MLP on the flattened image: small images on a CPU)")
    mlp_width: int = option("generator", 1024, "units of each hidden layer of the MLP networks (G and D)")
    mlp_depth: int = option("generator", 3, "hidden layers of the MLP networks (G and D)")
    patch_size: int = option("generator", 1, "the generator works on patch_size x patch_size patches (WaveDiff)")
    no_use_fbn: bool = option("generator", False, "wavelet G without the frequency bottleneck (ablation)")
    no_use_freq: bool = option("generator", False, "wavelet G without wavelet down/up blocks (ablation)")
    no_use_residual: bool = option("generator", False, "wavelet G without the wavelet input pyramid (ablation)")

    ngf: int = option("discriminator", 64, "base width of the discriminator")
    discriminator: str = option("discriminator", "auto", "small (32 px), large (256 px), auto (by image_size) or "
                                "mlp (an MLP on the flattened pair)")
    t_emb_dim: int = option("discriminator", 256, "width of the discriminator's time embedding (and the MLP "
                            "generator's)")
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
    r2_gamma: float = option("optimisation", 0.0, "weight of the R2 penalty on D's gradient at fake pairs (zero-"
                             "centred, every lazy_reg steps as R1; R3GAN pairs it with R1 under --loss=relativistic)")
    loss: str = option("optimisation", "ns", "ns: the original's non-saturating loss on each pair; relativistic: "
                       "RpGAN's, each real pair against the fake one made from the same x_{t+1} (R3GAN)")
    objective: str = option("optimisation", "ddgan", "ddgan: D judges pairs (x_t, x_{t+1}), the original's; siddm: D "
                            "judges x_t's marginal and G adds SIDDM's auxiliary forward diffusion (--ac_w); ufogen: D "
                            "judges x'_0 diffused to t, G adds the diffusion loss SNR ||x'_0 - x_0||^2 (--ufo_rec_w)")
    ac_w: float = option("optimisation", 1.0, "siddm: weight of the auxiliary forward-diffusion term (the SIDDM "
                         "authors' --ac_w; 1.0 in their run_MOG.sh)")
    ufo_rec_w: float = option("optimisation", 1.0, "ufogen: weight of G's diffusion loss, the noise-prediction error "
                              "SNR(t+1) ||x'_0 - x_0||^2 (UFOGen's epsilon-MSE; 1 in its trainer)")
    ada_target: float = option("optimisation", 0.0, "adaptive augmentation (ADA) of D's pairs: the target of "
                               "E[sign(D on real pairs)] (ADA's 0.6); 0 = off. Pixel space only")
    ada_kimg: float = option("optimisation", 100.0, "ADA's speed: thousands of images for its probability to go "
                             "from 0 to 1 at the fastest")
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
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in canonical(values).items()})

    def network_kwargs(self) -> dict:
        """The settings the networks take, under the original implementation's names; in wavelet or latent
        space the networks see that tensor, so image_size and num_channels are the tensor's (as WaveDiff's)."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in NETWORK_FIELDS}
        values["conditional"] = values.pop("time_conditioning")  # the networks take the original's name
        channels, size, _ = self.diffused_shape
        return values | {"image_size": size, "num_channels": channels}

    @property
    def diffused_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensor the diffusion runs on: the image, its wavelet tensor or its latents."""
        return space_class(self.space).shape_of(self)

    @property
    def generator_kind(self) -> str:
        """`NCSNpp`, `WaveletNCSNpp` (net_type wavelet) or `MLP` (net_type mlp)."""
        return {"wavelet": "WaveletNCSNpp", "mlp": "MLP"}.get(self.net_type, "NCSNpp")

    @property
    def discriminator_kind(self) -> str:
        """`Discriminator_small`, `Discriminator_large` or `Discriminator_mlp`."""
        kind = self.discriminator if self.discriminator != "auto" else ("small" if self.image_size <= 64 else "large")
        return f"Discriminator_{kind}"

    @property
    def schedule(self) -> str:
        return "geometric" if self.use_geometric else "vp"


def unknown_flag_message(flag: str, known: list[str], where_listed: str, what: str = "flag") -> str:
    """`unknown flag --kmg; did you mean --kimg?`: the one wording of every command's unknown-flag error."""
    close = difflib.get_close_matches(flag, known, n=1)
    return f"unknown {what} --{flag}; " + (f"did you mean --{close[0]}?" if close else where_listed)


def check_known(values: dict, source: str) -> None:
    """Raise ValueError for names that are not config fields, suggesting the closest one."""
    names = [f.name for f in fields(Config)]
    for key in values:
        if key not in names and key not in FIELD_ALIASES:
            what = "flag" if source == "flag" else f"{source} setting"
            raise ValueError(unknown_flag_message(key, names, "`ddgan train --help` lists the flags", what))


def architecture_changes(old: Config, new: Config) -> list[str]:
    """The architecture fields on which two configs differ, as `name: old -> new`."""
    return [f"{k}: {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in ARCHITECTURE_FIELDS
            if getattr(old, k) != getattr(new, k)]


def replace(config: Config, **changes) -> Config:
    """A copy with some fields changed."""
    return dataclasses.replace(config, **changes)


def canonical(values: dict) -> dict:
    """`values` with the original implementations' names of fields (FIELD_ALIASES) under ours."""
    return {FIELD_ALIASES.get(key, key): value for key, value in values.items()}
