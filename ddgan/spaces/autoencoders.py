"""Latent DDGANs (LDDGAN, Trinh & Hamagami, IEEE Access 2024): LDM first-stage autoencoders as diffusers models.

LDDGAN runs DDGAN's denoising steps on the latents of a pretrained Latent Diffusion (CompVis latent-diffusion)
autoencoder: a KL autoencoder (`ldm.models.autoencoder.AutoencoderKL`) or a VQ one (`VQModelInterface`). This
module rebuilds such an autoencoder as `diffusers.AutoencoderKL` / `diffusers.VQModel` from LDM's config block
and loads LDM's weights into it under diffusers' names, strictly, so that every weight lands somewhere and
nothing is left unset. `LDMAutoencoder` then behaves as LDM's model does (encode, decode, quantize, `tanh_out`).
`from_diffusers` wraps a plain diffusers AutoencoderKL or VQModel the same way, such as one that
`ddgan autoencoder` trained.

diffusers is an optional dependency: `pip install -e '.[latent]'`.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

# LDM's autoencoder classes -> our kind. VQModelInterface is VQModel with encode/decode split at the quantizer;
# the two share weights and layout, so both convert (LDDGAN uses the interface).
AUTOENCODER_TARGETS = {
    "ldm.models.autoencoder.AutoencoderKL": "kl",
    "ldm.models.autoencoder.VQModelInterface": "vq",
    "ldm.models.autoencoder.VQModel": "vq",
}
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamps the log-variance to this
FIRST_STAGE_PREFIX = "first_stage_model."
REQUIRED_DDCONFIG = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "in_channels", "out_ch",
                     "z_channels")
GROUPS = 32  # LDM's Normalize is GroupNorm(32, eps=1e-6), which diffusers' Encoder/Decoder also use

# LDM name <-> diffusers name, as runs of whole dotted components. `{n}` is a number kept as is; `{level}` is a
# decoder level, which LDM counts from the full resolution and diffusers from the lowest (L - 1 - i either way,
# so the same table converts in both directions).
RENAMES = (
    ("down.{n}.block", "down_blocks.{n}.resnets"),
    ("down.{n}.attn", "down_blocks.{n}.attentions"),
    ("down.{n}.downsample", "down_blocks.{n}.downsamplers.0"),
    ("up.{level}.block", "up_blocks.{level}.resnets"),
    ("up.{level}.attn", "up_blocks.{level}.attentions"),
    ("up.{level}.upsample", "up_blocks.{level}.upsamplers.0"),
    ("mid.block_1", "mid_block.resnets.0"),
    ("mid.block_2", "mid_block.resnets.1"),
    ("mid.attn_1", "mid_block.attentions.0"),
    ("nin_shortcut", "conv_shortcut"),
    ("norm_out", "conv_norm_out"),
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
)


class LDMAutoencoder(nn.Module):
    """An LDM first-stage autoencoder held as a diffusers model (`model`), with LDM's encode/decode semantics.

    `kind` is 'kl' or 'vq'. `latent_channels` and `downsampling_factor` describe the latents: an image
    [B, C, S, S] encodes to [B, latent_channels, S / f, S / f].
    """

    def __init__(self, model: nn.Module, kind: str, tanh_out: bool = False):
        super().__init__()
        if kind not in ("kl", "vq"):
            raise ValueError(f"kind must be 'kl' or 'vq', got {kind!r}")
        self.model, self.kind, self.tanh_out = model, kind, bool(tanh_out)
        config = model.config
        self.latent_channels = config.latent_channels if kind == "kl" else config.vq_embed_dim
        self.downsampling_factor = 2 ** (len(config.block_out_channels) - 1)
        self.eval()

    def encode(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """KL: the posterior's (mean, logvar), logvar clamped to [-30, 20]. VQ: `h`, before quantization."""
        if self.kind == "vq":
            return self.model.encode(x).latents
        posterior = self.model.encode(x).latent_dist
        # diffusers clamps as LDM does; clamp again so the contract does not rest on its internals.
        return posterior.mean, posterior.logvar.clamp(*LOGVAR_RANGE)

    def encode_latents(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """LDDGAN's latents of `x` before its scale: a posterior sample (KL; `noise` replaces the draw) or `h` (VQ)."""
        if self.kind == "vq":
            return self.encode(x)
        mean, logvar = self.encode(x)
        if noise is None:
            # LDM draws on the CPU and then moves the noise, so a seeded run gives the same latents on any device.
            noise = torch.randn(mean.shape, dtype=mean.dtype).to(mean.device)
        return mean + torch.exp(0.5 * logvar) * noise

    def quantize(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VQ: (quantized h, codebook indices [B, H, W]), chosen as LDM's VectorQuantizer2 chooses them."""
        if self.kind != "vq":
            raise ValueError("quantize is for VQ autoencoders; this one is KL")
        codebook = self.model.quantize.embedding.weight
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        # LDM's own expansion of the squared distance, not diffusers' cdist: near-ties then pick the same code.
        distances = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        indices = distances.argmin(dim=1)
        chosen = codebook[indices]
        # LDM returns the straight-through value z + (e - z) at inference too; it differs from e by an ulp.
        quantized = (flat + (chosen - flat)).reshape(h.shape[0], h.shape[2], h.shape[3], -1).permute(0, 3, 1, 2)
        return quantized.contiguous(), indices.reshape(h.shape[0], h.shape[2], h.shape[3])

    def quantize_indices(self, h: torch.Tensor) -> torch.Tensor:
        """VQ: the codebook rows [B, H, W] that `decode(h)` uses."""
        return self.quantize(h)[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images from latents: KL post_quant_conv + decoder; VQ quantizes first, as LDM's decode does."""
        if self.kind == "vq":
            images = self.model.decode(self.quantize(z)[0], force_not_quantize=True).sample
        else:
            images = self.model.decode(z).sample
        return torch.tanh(images) if self.tanh_out else images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (KL) or the quantized code (VQ)."""
        latents = self.encode(x)
        return self.decode(latents[0] if self.kind == "kl" else latents)


def from_ldm(config: Mapping, state_dict: Mapping[str, torch.Tensor]) -> LDMAutoencoder:
    """Build the diffusers model that LDM's autoencoder `config` block describes and load LDM's weights into it.

    `config` is `{'target': 'ldm.models.autoencoder.AutoencoderKL' | '...VQModelInterface', 'params': {...}}`
    as in LDM's yaml. `state_dict` has LDM's key names (a Lightning checkpoint's `state_dict`); a
    `first_stage_model.` prefix is stripped (and the rest of a LatentDiffusion dropped), `loss.*` is ignored.
    Missing, unexpected or misshapen weights raise a ValueError naming them.
    """
    kind, params = _autoencoder_block(config)
    model = _build_diffusers_model(kind, params)
    _load_ldm_weights(model, _autoencoder_weights(state_dict))
    return LDMAutoencoder(model, kind, tanh_out=params["ddconfig"].get("tanh_out", False))


def load_ldm(ckpt_path: str | Path, config_path: str | Path) -> LDMAutoencoder:
    """`from_ldm` on a Lightning checkpoint and LDM's yaml: a plain autoencoder's, or a LatentDiffusion's, whose
    `model.params.first_stage_config` and `first_stage_model.*` weights are used.

    The checkpoint is read with `weights_only=True`: files from outside are data, never code, so one that
    needs pickled classes is refused.
    """
    import yaml  # the `latent` extra

    ckpt_path, config_path = Path(ckpt_path), Path(config_path)
    try:
        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{ckpt_path} cannot be read as data: only tensors, dicts, lists and numbers are loaded "
            "(weights_only=True), and this checkpoint needs pickled classes, which is refused on purpose. If "
            "you trust it, save its 'state_dict' alone in a trusted environment and load that.") from error
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]  # the rest (epoch, optimizer_states, callbacks) is training state
    elif isinstance(checkpoint, Mapping) and all(torch.is_tensor(value) for value in checkpoint.values()):
        state_dict = checkpoint
    else:
        raise ValueError(f"{ckpt_path} is neither a Lightning checkpoint (a dict with 'state_dict') nor a state_dict")
    with open(config_path, encoding="utf-8") as file:
        yaml_config = yaml.safe_load(file)
    model = yaml_config.get("model") if isinstance(yaml_config, Mapping) else None
    if not isinstance(model, Mapping) or "target" not in model:
        raise ValueError(f"{config_path} has no top-level 'model' with a 'target': not an LDM config")
    if model["target"] not in AUTOENCODER_TARGETS:
        first_stage = (model.get("params") or {}).get("first_stage_config")
        if first_stage is None:
            raise ValueError(f"{config_path}: model {model['target']!r} is neither an LDM autoencoder nor a "
                             "LatentDiffusion with params.first_stage_config")
        model = first_stage
    return from_ldm(model, state_dict)


DIFFUSERS_CLASSES = {"AutoencoderKL": "kl", "VQModel": "vq"}  # diffusers class -> LDMAutoencoder kind


def from_diffusers(model: nn.Module | str | Path, tanh_out: bool = False) -> LDMAutoencoder:
    """A diffusers AutoencoderKL or VQModel, or a folder its `save_pretrained` wrote, as an LDMAutoencoder.

    This is how an autoencoder trained by `ddgan autoencoder` (or any diffusers KL/VQ autoencoder) is used:
    its encode gives (mean, logvar) or `h`, and its decode images, as an LDM one's do. A pipeline's folder
    is taken through its `vae/`. No weights are ever downloaded: a folder must exist here. `tanh_out`: LDM's
    decoder option, which diffusers' config cannot hold.
    """
    if isinstance(model, str | Path):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} has no config.json: not a diffusers autoencoder folder (write one with "
                             "save_pretrained, or train one with `ddgan autoencoder`)")
        name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
        if name not in DIFFUSERS_CLASSES:
            raise ValueError(f"{folder} holds a diffusers {name or 'model of unknown class'}, not an "
                             f"{' or a '.join(DIFFUSERS_CLASSES)}")
        try:
            import diffusers
        except ImportError as error:
            raise ImportError("diffusers autoencoders need diffusers: pip install -e '.[latent]'") from error
        # low_cpu_mem_usage=False: the lazy path needs `accelerate` and only warns without it.
        model = getattr(diffusers, name).from_pretrained(folder, low_cpu_mem_usage=False)
    name = type(model).__name__
    if name not in DIFFUSERS_CLASSES:
        raise ValueError(f"from_diffusers takes a diffusers {' or '.join(DIFFUSERS_CLASSES)}, got {name}")
    return LDMAutoencoder(model, DIFFUSERS_CLASSES[name], tanh_out=tanh_out)


def _autoencoder_block(config: Mapping) -> tuple[str, dict]:
    """(kind, params) of an LDM autoencoder config block, validated."""
    if not isinstance(config, Mapping) or "target" not in config:
        got = f"keys {list(config)}" if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(f"config must be LDM's autoencoder block {{'target': ..., 'params': {{...}}}}, got {got}")
    target, params = config["target"], dict(config.get("params") or {})
    if target not in AUTOENCODER_TARGETS:
        if "first_stage_config" in params:
            raise ValueError(f"{target!r} is a whole latent diffusion model, not its autoencoder: pass its "
                             "model.params.first_stage_config block (or use load_ldm with the yaml)")
        raise ValueError(f"unknown autoencoder target {target!r}; expected one of {sorted(AUTOENCODER_TARGETS)}")
    kind = AUTOENCODER_TARGETS[target]
    ddconfig = params.get("ddconfig")
    if not isinstance(ddconfig, Mapping):
        raise ValueError(f"{target}: params.ddconfig is missing or not a mapping")
    missing = [name for name in REQUIRED_DDCONFIG if name not in ddconfig]
    needed = ["embed_dim"] + (["n_embed"] if kind == "vq" else [])
    missing += [f"params.{name}" for name in needed if name not in params]
    if missing:
        raise ValueError(f"{target}: the config lacks {missing}")
    _check_ddconfig(kind, params, ddconfig)
    return kind, {**params, "ddconfig": dict(ddconfig)}


def _is_count(value) -> bool:
    """A positive integer (yaml's booleans are ints to Python, but no count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_ddconfig(kind: str, params: Mapping, ddconfig: Mapping) -> None:
    """Refuse LDM settings that diffusers' Encoder/Decoder cannot reproduce, saying which and why."""
    counts = {name: ddconfig[name] for name in ("ch", "num_res_blocks", "resolution", "in_channels", "out_ch",
                                                 "z_channels")}
    counts.update({f"params.{name}": params[name] for name in ("embed_dim", "n_embed") if name in params})
    problems = [f"{name} must be a positive integer, got {value!r}" for name, value in counts.items()
                if not _is_count(value)]
    ch, ch_mult = ddconfig["ch"], ddconfig["ch_mult"]
    if not isinstance(ch_mult, (list, tuple)) or not ch_mult or not all(map(_is_count, ch_mult)):
        problems.append(f"ch_mult must be a non-empty list of positive integers, got {ch_mult!r}")
    elif ch_mult[0] != 1:
        # LDM's conv_in gives `ch` channels and level 0 widens them; diffusers' conv_in gives level 0's width.
        problems.append(f"ch_mult must start with 1 for diffusers' Encoder, got {list(ch_mult)}")
    elif _is_count(ch) and any(ch * m % GROUPS for m in ch_mult):
        problems.append(f"every width ch * ch_mult ({[ch * m for m in ch_mult]}) must divide into {GROUPS} groups")
    attn = ddconfig["attn_resolutions"]
    if attn is not None and (not isinstance(attn, (list, tuple)) or not all(map(_is_count, attn))):
        problems.append(f"attn_resolutions must be a list of resolutions, got {attn!r}")
    double_z = ddconfig.get("double_z", True)  # LDM's Encoder defaults to True
    if kind == "kl" and not double_z:
        problems.append("an AutoencoderKL needs double_z: True (mean and logvar)")
    if kind == "vq" and double_z:
        problems.append("a VQ model needs double_z: False")
    if kind == "kl" and params["embed_dim"] != ddconfig["z_channels"]:
        problems.append(f"diffusers' AutoencoderKL ties embed_dim to z_channels; got embed_dim {params['embed_dim']} "
                        f"and z_channels {ddconfig['z_channels']}")
    if kind == "vq" and params.get("remap") is not None:
        problems.append("remapped VQ indices (params.remap) are not supported")
    for name, supported in (("resamp_with_conv", True), ("use_linear_attn", False), ("attn_type", "vanilla"),
                            ("give_pre_end", False)):
        if ddconfig.get(name, supported) != supported:
            problems.append(f"{name} must be {supported!r}, got {ddconfig[name]!r}")
    if problems:
        raise ValueError("bad ddconfig for a diffusers autoencoder: " + "; ".join(problems))


def _attention_levels(ddconfig: Mapping) -> tuple[list[bool], list[bool]]:
    """Which levels (0 = full resolution) have attention after their res blocks, in the encoder and the decoder.

    LDM compares `attn_resolutions` with a resolution that it counts from `ddconfig.resolution`, not from the
    input: the encoder starts there and halves (rounding down) per level, the decoder starts at
    resolution // 2^(L-1) and doubles, so the two can differ when the resolution is not a power of two.
    """
    levels, resolution = len(ddconfig["ch_mult"]), int(ddconfig["resolution"])
    wanted = {int(r) for r in ddconfig["attn_resolutions"] or ()}
    encoder_sizes = [resolution // 2 ** level for level in range(levels)]
    lowest = resolution // 2 ** (levels - 1)
    decoder_sizes = [lowest * 2 ** (levels - 1 - level) for level in range(levels)]
    return [size in wanted for size in encoder_sizes], [size in wanted for size in decoder_sizes]


def _build_diffusers_model(kind: str, params: Mapping) -> nn.Module:
    """A freshly initialised diffusers AutoencoderKL or VQModel with LDM's architecture."""
    try:
        import diffusers
    except ImportError as error:
        raise ImportError("LDM autoencoders need diffusers: pip install -e '.[latent]'") from error
    ddconfig = params["ddconfig"]
    encoder_attention, decoder_attention = _attention_levels(ddconfig)
    common = dict(
        in_channels=int(ddconfig["in_channels"]),
        out_channels=int(ddconfig["out_ch"]),
        down_block_types=["AttnDownEncoderBlock2D" if attn else "DownEncoderBlock2D" for attn in encoder_attention],
        # diffusers lists the decoder's levels from the lowest resolution up
        up_block_types=["AttnUpDecoderBlock2D" if attn else "UpDecoderBlock2D" for attn in decoder_attention[::-1]],
        block_out_channels=[int(ddconfig["ch"]) * int(m) for m in ddconfig["ch_mult"]],
        layers_per_block=int(ddconfig["num_res_blocks"]),
        act_fn="silu",
        norm_num_groups=GROUPS,
        sample_size=int(ddconfig["resolution"]),
        # LDDGAN scales the latents itself (it divides by its own scale_factor); diffusers' factor goes unused.
        scaling_factor=1.0,
    )
    # No dropout setting: diffusers builds these res blocks without it. LDM's `dropout` acts only in training,
    # and LDDGAN keeps its autoencoder frozen in eval mode.
    if kind == "kl":
        return diffusers.AutoencoderKL(latent_channels=int(params["embed_dim"]), **common)
    return diffusers.VQModel(latent_channels=int(ddconfig["z_channels"]), vq_embed_dim=int(params["embed_dim"]),
                             num_vq_embeddings=int(params["n_embed"]), **common)


def _autoencoder_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The autoencoder's own weights among a checkpoint's: prefix stripped, training-only entries dropped."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    if "state_dict" in state_dict:
        raise ValueError("got a whole Lightning checkpoint: pass its ['state_dict'], or use load_ldm")
    if any(key.startswith(FIRST_STAGE_PREFIX) for key in state_dict):
        # A LatentDiffusion checkpoint: the rest (diffusion_model, model_ema, schedule buffers) is not ours.
        state_dict = {key[len(FIRST_STAGE_PREFIX):]: value for key, value in state_dict.items()
                      if key.startswith(FIRST_STAGE_PREFIX)}
    # loss.*: LPIPS, its discriminator and logvar, which LDM checkpoints carry from training; decoding needs none.
    return {key: value for key, value in state_dict.items() if not key.startswith("loss.")}


def _renamer(levels: int, to_diffusers: bool) -> Callable[[str], str]:
    """A function that maps one LDM autoencoder key to diffusers' (or back), for `levels` resolutions."""
    rules = []
    for ldm_name, diffusers_name in RENAMES:
        source, target = (ldm_name, diffusers_name) if to_diffusers else (diffusers_name, ldm_name)
        pattern = re.escape(source).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{level\}", r"(?P<level>\d+)")
        # whole components only: 'norm' must not match inside 'norm1' or 'group_norm'
        rules.append((re.compile(rf"(?<![^.]){pattern}(?![^.])"), target))

    def number(match: re.Match) -> str:
        groups = match.groupdict()
        if "level" not in groups:
            return groups.get("n", "")
        level = int(groups["level"])
        # a level past the last stays as it is, so the key stays unmatched and is reported, not wrapped around
        return str(levels - 1 - level if level < levels else level)

    def rename(key: str) -> str:
        for pattern, target in rules:
            key = pattern.sub(lambda match, target=target: re.sub(r"\{(n|level)\}", number(match), target), key)
        return key

    return rename


def _listing(names: list[str], shown: int = 5) -> str:
    """A few names and how many there are in all."""
    more = f", ... ({len(names)} in all)" if len(names) > shown else f" ({len(names)})"
    return ", ".join(names[:shown]) + more


def _load_ldm_weights(model: nn.Module, ldm_state: Mapping[str, torch.Tensor]) -> None:
    """Load LDM-named weights into the diffusers model strictly, naming every key that does not fit."""
    levels = len(model.config.block_out_channels)
    expected = model.state_dict()
    diffusers_name, ldm_name = _renamer(levels, to_diffusers=True), _renamer(levels, to_diffusers=False)
    to_diffusers = {key: diffusers_name(key) for key in ldm_state}
    provided = set(to_diffusers.values())
    missing = [ldm_name(key) for key in expected if key not in provided]
    unexpected = [key for key, new in to_diffusers.items() if new not in expected]
    converted, misshapen = {}, []
    for key, new in to_diffusers.items():
        if new not in expected:
            continue
        value, want = ldm_state[key], expected[new].shape
        if value.dim() == 4 and len(want) == 2 and value.shape == (*want, 1, 1):
            value = value.reshape(want)  # LDM's attention q/k/v/proj_out are 1x1 convs, diffusers' are Linear
        if value.shape != want:
            misshapen.append(f"{key} {tuple(value.shape)} (expected {tuple(want)})")
        converted[new] = value
    if missing or unexpected or misshapen:
        parts = [f"missing {_listing(missing)}" if missing else "",
                 f"unexpected {_listing(unexpected)}" if unexpected else "",
                 f"wrong shape {_listing(misshapen)}" if misshapen else ""]
        raise ValueError(
            "the LDM state_dict does not fit the autoencoder its config describes: "
            + "; ".join(part for part in parts if part)
            + f". Expected exactly {len(expected)} LDM first-stage weights (encoder.*, decoder.*, quant_conv, "
            "post_quant_conv, and quantize.embedding for VQ), under LDM's names; check that the config and the "
            "checkpoint belong together")
    model.load_state_dict(converted, strict=True)
