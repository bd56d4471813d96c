"""ddgan.latent: LDM (LDDGAN) first-stage autoencoders converted to diffusers, against LDDGAN's test vectors."""

from __future__ import annotations

import argparse
import functools
import re

import pytest
import torch

from ddgan.diffusion.process import Diffusion
from tests.conftest import load_fixture, replay_sampler

AUTOENCODER_CASES = ["kl_attn_tanh", "kl_f8", "vq_f4"]
TOLERANCE = 1e-4  # the README's bound for float outputs; VQ indices must match exactly


pytestmark = pytest.mark.usefixtures("latent_extra")


@functools.cache
def _cached(name: str) -> dict:
    return load_fixture(f"lddgan/{name}.pt")


def fixture(name: str) -> dict:
    """A fixture, loaded once per session; the state_dict is copied so a test may edit it."""
    loaded = _cached(name)
    return {**loaded, "state_dict": dict(loaded["state_dict"])} if "state_dict" in loaded else loaded


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


def convert(name: str):
    from ddgan.spaces.autoencoders import from_ldm

    case = fixture(name)
    return from_ldm(case["config"], case["state_dict"]), case


# ---------------------------------------------------------------------------------------------------------
# Agreement with LDM's autoencoders.


@pytest.mark.parametrize("name", AUTOENCODER_CASES)
def test_autoencoder_matches_ldm(name):
    autoencoder, case = convert(name)
    inputs, outputs = case["inputs"], case["outputs"]
    assert not autoencoder.training and not autoencoder.model.training
    with torch.no_grad():
        if autoencoder.kind == "kl":
            mean, logvar = autoencoder.encode(inputs["x"])
            sample = mean + torch.exp(0.5 * logvar) * inputs["sample_noise"]
            errors = {"mean": max_error(mean, outputs["mean"]), "logvar": max_error(logvar, outputs["logvar"]),
                      "sample": max_error(sample, outputs["sample"]),
                      "encode_latents": max_error(autoencoder.encode_latents(inputs["x"], inputs["sample_noise"]),
                                                  outputs["sample"]),
                      "decode_mean": max_error(autoencoder.decode(outputs["mean"]), outputs["decode_mean"]),
                      "decode_z": max_error(autoencoder.decode(inputs["z"]), outputs["decode_z"])}
        else:
            quant, indices = autoencoder.quantize(outputs["h"])
            assert torch.equal(indices, outputs["indices"])
            assert torch.equal(autoencoder.quantize_indices(outputs["h"]), outputs["indices"])
            errors = {"h": max_error(autoencoder.encode(inputs["x"]), outputs["h"]),
                      "quant": max_error(quant, outputs["quant"]),
                      "decode": max_error(autoencoder.decode(outputs["h"]), outputs["decode"])}
    assert max(errors.values()) < TOLERANCE, errors


def test_described_shapes_match_the_latents():
    for name, kind, channels, factor, tanh_out in [("kl_attn_tanh", "kl", 4, 2, True), ("kl_f8", "kl", 4, 8, False),
                                                   ("vq_f4", "vq", 3, 4, False)]:
        autoencoder, case = convert(name)
        assert (autoencoder.kind, autoencoder.latent_channels, autoencoder.downsampling_factor,
                autoencoder.tanh_out) == (kind, channels, factor, tanh_out)
        size = case["inputs"]["x"].shape[-1]
        latents = case["outputs"]["mean" if kind == "kl" else "h"]
        assert latents.shape[1:] == (channels, size // factor, size // factor)


def test_diffusers_own_quantizer_picks_the_same_codes():
    # diffusers ranks codes by cdist, LDM by its expanded squared distance; on this fixture's margin they agree.
    autoencoder, case = convert("vq_f4")
    with torch.no_grad():
        _, _, (_, _, indices) = autoencoder.model.quantize(case["outputs"]["h"])
    assert torch.equal(indices.reshape(case["outputs"]["indices"].shape), case["outputs"]["indices"])


def test_yaml_shaped_config_converts_alike():
    import yaml

    from ddgan.spaces.autoencoders import from_ldm

    case = fixture("kl_f8")
    from_yaml = yaml.safe_load(yaml.safe_dump(case["config"]))
    reference, _ = convert("kl_f8")
    converted = from_ldm(from_yaml, case["state_dict"])
    for key, value in reference.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------------------------
# LDDGAN's sampler and its way in.


def test_sampling_replay_matches_lddgan():
    from ddgan.spaces.autoencoders import from_ldm

    run = fixture("lddgan_sampling")
    settings = run["diffusion"]
    diffusion = Diffusion(settings["num_timesteps"], settings["beta_min"], settings["beta_max"],
                          "geometric" if settings["use_geometric"] else "vp")
    replay = replay_sampler(run, diffusion)
    x = replay["final"]
    assert max_error(replay["trace"], run["trace"]["x"]) < TOLERANCE
    assert max_error(replay["x0_pred"], run["trace"]["x0_pred"]) < TOLERANCE
    assert max_error(x, run["latent_sample"]) < TOLERANCE
    assert max_error(replay["sampled"], run["latent_sample"]) < TOLERANCE
    with torch.no_grad():
        weights = fixture(run["autoencoder"]["file"].removesuffix(".pt"))["state_dict"]
        autoencoder = from_ldm(run["autoencoder"]["config"], weights)
        # LDDGAN's latents are the autoencoder's divided by scale_factor: multiply on the way out.
        images = autoencoder.decode(run["latent_sample"] * run["scale_factor"])
        from_replay = autoencoder.decode(x * run["scale_factor"]).clamp(-1, 1)
    assert max_error(images, run["output_unclamped"]) < TOLERANCE
    assert max_error(images.clamp(-1, 1), run["output"]) < TOLERANCE
    assert max_error(from_replay, run["output"]) < TOLERANCE


def test_encode_path_matches_lddgan():
    run = fixture("lddgan_sampling")
    path = run["encode_path"]
    autoencoder, _ = convert(run["autoencoder"]["file"].removesuffix(".pt"))
    with torch.no_grad():
        real_data = autoencoder.encode_latents(path["x0"], path["sample_noise"]) / run["scale_factor"]
    assert max_error(real_data, path["real_data"]) < TOLERANCE


# ---------------------------------------------------------------------------------------------------------
# Errors that say what to fix.


def test_latent_diffusion_block_is_refused_with_the_block_to_pass():
    from ddgan.spaces.autoencoders import from_ldm

    case = fixture("kl_f8")
    latent_diffusion = {"target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                        "params": {"first_stage_config": case["config"], "unet_config": {}}}
    with pytest.raises(ValueError, match="model.params.first_stage_config"):
        from_ldm(latent_diffusion, case["state_dict"])


def test_unknown_target_and_bad_ddconfig_are_named():
    from ddgan.spaces.autoencoders import from_ldm

    case = fixture("kl_f8")
    with pytest.raises(ValueError, match="unknown autoencoder target 'my.Autoencoder'"):
        from_ldm({**case["config"], "target": "my.Autoencoder"}, case["state_dict"])
    params = case["config"]["params"]
    bad = [({"ch_mult": [2, 2]}, "ch_mult must start with 1"),
           ({"double_z": False}, "double_z: True"),
           ({"ch": 24}, "32 groups"),
           ({"attn_type": "linear"}, "attn_type must be 'vanilla'"),
           ({"num_res_blocks": 0, "ch_mult": "1 2"}, "num_res_blocks must be a positive integer, got 0; ch_mult")]
    for change, message in bad:
        config = {**case["config"], "params": {**params, "ddconfig": {**params["ddconfig"], **change}}}
        with pytest.raises(ValueError, match=message):
            from_ldm(config, case["state_dict"])
    without_ch = {k: v for k, v in params["ddconfig"].items() if k != "ch"}
    with pytest.raises(ValueError, match=r"lacks \['ch'\]"):
        from_ldm({**case["config"], "params": {**params, "ddconfig": without_ch}}, case["state_dict"])


def test_missing_and_renamed_keys_are_named():
    from ddgan.spaces.autoencoders import from_ldm

    case = fixture("kl_attn_tanh")
    state = case["state_dict"]
    del state["decoder.up.1.attn.2.q.weight"]
    state["encoder.mid.block_3.conv1.weight"] = state.pop("encoder.mid.block_2.conv1.weight")
    with pytest.raises(ValueError) as raised:
        from_ldm(case["config"], state)
    message = str(raised.value)
    missing = message.split("missing ")[1].split(";")[0]
    assert "decoder.up.1.attn.2.q.weight" in missing and "encoder.mid.block_2.conv1.weight" in missing
    assert missing.endswith("(2)")
    assert "unexpected encoder.mid.block_3.conv1.weight (1)" in message
    assert "Expected exactly 206 LDM first-stage weights" in message


def test_wrong_shape_and_whole_checkpoint_are_named():
    from ddgan.spaces.autoencoders import from_ldm

    case = fixture("vq_f4")
    state = case["state_dict"]
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"][:10]
    with pytest.raises(ValueError, match=r"wrong shape quantize.embedding.weight \(10, 3\) \(expected \(64, 3\)\)"):
        from_ldm(case["config"], state)
    with pytest.raises(ValueError, match=r"pass its \['state_dict'\]"):
        from_ldm(case["config"], {"state_dict": state, "epoch": 1})


# ---------------------------------------------------------------------------------------------------------
# Lightning checkpoints and yaml files, as LDDGAN ships them.


def write_checkpoint(tmp_path, config: dict, state_dict: dict) -> tuple:
    import yaml

    ckpt, config_path = tmp_path / "model.ckpt", tmp_path / "config.yaml"
    torch.save({"state_dict": state_dict, "epoch": 551, "global_step": 12345, "pytorch-lightning_version": "1.4.2"},
               ckpt)
    config_path.write_text(yaml.safe_dump({"model": config}))
    return ckpt, config_path


def test_load_ldm_reads_a_plain_autoencoder_and_ignores_its_loss(tmp_path):
    from ddgan.spaces.autoencoders import load_ldm

    case = fixture("kl_attn_tanh")
    extra = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.ones(8, 3, 4, 4),
             "loss.perceptual_loss.net.slice1.0.weight": torch.ones(64, 3, 3, 3)}
    config = {**case["config"], "params": {**case["config"]["params"], "lossconfig": {
        "target": "ldm.modules.losses.LPIPSWithDiscriminator", "params": {"disc_start": 50001}}}}
    autoencoder = load_ldm(*write_checkpoint(tmp_path, config, {**case["state_dict"], **extra}))
    with torch.no_grad():
        decoded = autoencoder.decode(case["inputs"]["z"])
    assert max_error(decoded, case["outputs"]["decode_z"]) < TOLERANCE


def test_load_ldm_takes_the_first_stage_of_a_latent_diffusion(tmp_path):
    from ddgan.spaces.autoencoders import load_ldm

    case = fixture("vq_f4")
    config = {"base_learning_rate": 2.0e-06, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
              "params": {"first_stage_key": "image", "scale_by_std": False, "first_stage_config": case["config"],
                         "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel"},
                         "cond_stage_config": "__is_unconditional__"}}
    state = {f"first_stage_model.{key}": value for key, value in case["state_dict"].items()}
    state.update({"model.diffusion_model.input_blocks.0.0.weight": torch.ones(8, 3, 3, 3),
                  "model_ema.decay": torch.tensor(0.9999), "betas": torch.linspace(0.1, 0.2, 4),
                  "scale_factor": torch.tensor(1.0)})
    autoencoder = load_ldm(*write_checkpoint(tmp_path, config, state))
    with torch.no_grad():
        assert torch.equal(autoencoder.quantize_indices(case["outputs"]["h"]), case["outputs"]["indices"])
        assert max_error(autoencoder.decode(case["outputs"]["h"]), case["outputs"]["decode"]) < TOLERANCE


def test_load_ldm_refuses_checkpoints_that_need_pickled_classes(tmp_path):
    from ddgan.spaces.autoencoders import load_ldm

    case = fixture("kl_f8")
    ckpt, config_path = write_checkpoint(tmp_path, case["config"], case["state_dict"])
    # Lightning keeps hyperparameters as objects; reading them would run code from the file.
    torch.save({"state_dict": case["state_dict"], "hyper_parameters": argparse.Namespace(lr=1e-4)}, ckpt)
    with pytest.raises(ValueError, match=f"{re.escape(str(ckpt))}.*only tensors.*refused on purpose"):
        load_ldm(ckpt, config_path)


def test_load_ldm_names_a_yaml_without_an_autoencoder(tmp_path):
    from ddgan.spaces.autoencoders import load_ldm

    case = fixture("kl_f8")
    config = {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {"unet_config": {}}}
    ckpt, config_path = write_checkpoint(tmp_path, config, case["state_dict"])
    with pytest.raises(ValueError, match="neither an LDM autoencoder nor a LatentDiffusion"):
        load_ldm(ckpt, config_path)


def test_attention_levels_count_from_the_config_resolution():
    from ddgan.spaces.autoencoders import _attention_levels

    # 32 px, two levels: attention at 16 is level 1 on both sides, whatever size the input has.
    assert _attention_levels(fixture("kl_attn_tanh")["config"]["params"]["ddconfig"]) == ([False, True], [False, True])
    # LDM halves 50 -> 25 -> 12 going down but doubles 12 -> 24 -> 48 coming up, so 25 and 24 land on one side each.
    ddconfig = {"resolution": 50, "ch_mult": [1, 1, 1], "attn_resolutions": [25, 24]}
    assert _attention_levels(ddconfig) == ([False, True, False], [False, True, False])
    assert _attention_levels({**ddconfig, "attn_resolutions": [24]}) == ([False, False, False], [False, True, False])
