"""Making a config from a preset and flags, and refusing, before any work starts, settings that cannot work."""

from __future__ import annotations

from dataclasses import fields

from ddgan.config.fields import Config, canonical, check_known
from ddgan.config.presets import LATENT_PRESET_AUTOENCODERS, PRESETS
from ddgan.diffusion.losses import LOSSES
from ddgan.diffusion.objectives import OBJECTIVES
from ddgan.diffusion.process import check_schedule, is_step_count
from ddgan.runtime.precision import check_amp
from ddgan.spaces import SPACES, space_class
from ddgan.spaces.wavelet import ORDERS
from networks import check_generator_args


def make_config(preset: str = "cifar10", **overrides) -> Config:
    """The preset's config with overrides applied and checked."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    check_known(overrides, "flag")
    values = canonical({**PRESETS[preset], **overrides, "preset": preset})
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

    need(c.space in SPACES,
         f"--space must be pixel or wavelet (WaveDiff) or latent (LDDGAN), got {c.space!r}")
    space = space_class(c.space)
    need(not space.opens_autoencoder or bool(c.autoencoder), "--space=latent needs --autoencoder=SRC: a diffusers "
         "AutoencoderKL/VQModel folder or Hub id, or an LDM .ckpt with --autoencoder_config=ITS.yaml"
         + (f"; --preset={c.preset} expects {LATENT_PRESET_AUTOENCODERS[c.preset]}"
            if c.preset in LATENT_PRESET_AUTOENCODERS else ""))
    need(space.opens_autoencoder or not (c.autoencoder or c.autoencoder_config),
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
    need(c.net_type in ("normal", "wavelet", "mlp"), f"--net_type must be normal, wavelet or mlp, got {c.net_type!r}")
    need(c.net_type != "wavelet" or space.takes_wavelet_generator,
         "--net_type=wavelet works on wavelet tensors or latents: add --space=wavelet (or --space=latent)")
    problem = space.config_problem(c)
    need(not problem, problem)
    need(c.discriminator in ("auto", "small", "large", "mlp"),
         f"--discriminator must be auto, small, large or mlp, got {c.discriminator!r}")
    _check_mlp(c, need)
    need(c.num_disc_layers is None or 1 <= c.num_disc_layers <= (4 if c.discriminator_kind.endswith("small") else 6),
         f"--num_disc_layers={c.num_disc_layers}: the {c.discriminator_kind} has "
         f"{4 if c.discriminator_kind.endswith('small') else 6} down blocks; give 1 to that, or None for all")
    need(isinstance(c.skip_bad_images, bool) or (isinstance(c.skip_bad_images, int) and c.skip_bad_images >= 0),
         f"--skip_bad_images={c.skip_bad_images!r}: give how many unreadable images to skip (0 stops at the first), "
         "or True for any number")
    need(c.rec_loss_weight >= 0, f"--rec_loss_weight must be >= 0, got {c.rec_loss_weight}")
    # A latent run's shape comes from its autoencoder: ddgan.models.space_for checks it again once that is open.
    if space.shape_known(c):
        _check_shapes(c, need)
    need(c.resamp_with_conv, "--resamp_with_conv=False has no effect with BigGAN residual blocks (they resample "
         "inside the block, as in the original); leave it at True")
    need(c.num_channels in (1, 3), f"--num_channels must be 1 or 3, got {c.num_channels}")
    need(c.num_timesteps >= 1, f"--num_timesteps must be >= 1, got {c.num_timesteps}")
    need(c.batch_size >= 1, f"--batch_size must be >= 1, got {c.batch_size}")
    need(c.kimg > 0, f"--kimg must be > 0, got {c.kimg}")
    need(c.lazy_reg is None or c.lazy_reg >= 1, f"--lazy_reg must be >= 1 or None, got {c.lazy_reg}")
    need(c.r1_gamma >= 0, f"--r1_gamma must be >= 0, got {c.r1_gamma}")
    need(c.r2_gamma >= 0, f"--r2_gamma must be >= 0, got {c.r2_gamma}")
    need(c.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {c.loss!r}")
    need(c.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}, got {c.objective!r}")
    need(c.ac_w >= 0, f"--ac_w must be >= 0, got {c.ac_w}")
    need(c.ufo_rec_w >= 0, f"--ufo_rec_w must be >= 0, got {c.ufo_rec_w}")
    need(0 <= c.ada_target < 1, f"--ada_target must lie in [0, 1) (0 = off; ADA's is 0.6), got {c.ada_target}")
    need(c.ada_kimg > 0, f"--ada_kimg must be > 0, got {c.ada_kimg}")
    need(not c.ada_target or space.augmentable, f"--ada_target augments images, and --space={c.space} diffuses "
         "other tensors: leave --ada_target out, or train in --space=pixel")
    need(0 <= c.ema_decay < 1, f"--ema_decay must lie in [0, 1), got {c.ema_decay}")
    check_amp(c.amp)
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
    need(c.sample_steps is None or is_step_count(c.sample_steps, c.num_timesteps),
         f"--sample_steps must be an integer in 1..{c.num_timesteps} (--num_timesteps) or None (all T steps), "
         f"got {c.sample_steps!r}")


def _check_mlp(c: Config, need) -> None:
    """The MLP networks: positive sizes, no classes, no D layers to count."""
    if "mlp" not in (c.net_type, c.discriminator):
        return
    for name in ("mlp_width", "mlp_depth"):
        value = getattr(c, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"--{name} must be a positive integer, got {value!r}")
    need(not c.cond, "the MLP networks (--net_type=mlp, --discriminator=mlp) are unconditional: leave --cond out, "
         "or use the NCSN++ networks (--net_type=normal --discriminator=auto)")
    need(c.discriminator != "mlp" or not c.class_loss,
         "--class_loss needs the convolutional discriminator's class head: leave it out with --discriminator=mlp")
    need(c.discriminator != "mlp" or c.num_disc_layers is None,
         "--num_disc_layers counts the convolutional discriminator's blocks; size the MLP with --mlp_depth")


def _check_shapes(c: Config, need) -> None:
    """The checks of what the networks see: patches, the generator's levels, the discriminator's halvings."""
    _, resolution, _ = c.diffused_shape
    need(isinstance(c.patch_size, int) and c.patch_size >= 1 and resolution % c.patch_size == 0,
         f"--patch_size={c.patch_size} must divide the {resolution} px the generator sees")
    resolution //= c.patch_size
    if c.net_type == "wavelet" and not c.no_use_fbn:
        need(resolution % 2 ** len(c.ch_mult) == 0,
             f"--image_size={c.image_size}: the frequency bottleneck halves the generator's lowest resolution once "
             f"more, so {resolution} px must be divisible by 2**len(ch_mult)={2 ** len(c.ch_mult)}; change "
             "--image_size or --ch_mult, or pass --no_use_fbn=True")
    if c.net_type != "mlp":
        check_generator_args(resolution, c.ch_mult, c.attn_resolutions, c.resblock_type, c.progressive,
                             c.progressive_input, c.progressive_combine, c.embedding_type)
    if c.discriminator == "mlp":
        return
    small = c.discriminator_kind.endswith("small")
    layers = c.num_disc_layers or (4 if small else 6)
    halvings = layers - 1 if small else layers  # the small D's first block keeps the resolution
    need(c.diffused_shape[1] >> halvings >= 1,
         f"the {c.discriminator_kind} halves the {c.diffused_shape[1]} px it sees {halvings} times; use a larger "
         "--image_size or fewer --num_disc_layers")
