"""Presets, flag validation and the config round trip."""

import pytest

from ddgan.config import PRESETS, Config, architecture_changes, make_config


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_and_round_trip(preset):
    # A latent preset leaves --autoencoder to the user (tests/test_latent_presets.py checks that error).
    given = {"autoencoder": "given"} if PRESETS[preset].get("space") == "latent" else {}
    config = make_config(preset, **given)
    assert config.preset == preset
    assert Config.from_dict(config.to_dict()) == config


def test_cifar10_preset_is_the_original_recipe():
    c = make_config("cifar10")
    assert (c.num_channels_dae, c.ch_mult, c.num_res_blocks, c.num_timesteps) == (128, (1, 2, 2, 2), 2, 4)
    assert (c.nz, c.z_emb_dim, c.n_mlp, c.ngf) == (100, 256, 4, 64)
    assert (c.lr_g, c.lr_d, c.r1_gamma, c.lazy_reg, c.ema_decay) == (1.6e-4, 1.25e-4, 0.02, 15, 0.9999)
    assert c.batch_size == 256 and c.discriminator_kind == "Discriminator_small"
    assert make_config("celeba256").discriminator_kind == "Discriminator_large"


def test_overrides_are_coerced():
    c = make_config("demo", ch_mult=[1, 2], attn_resolutions=8, kimg=3, lazy_reg=None)
    assert c.ch_mult == (1, 2) and c.attn_resolutions == (8,) and c.kimg == 3.0 and c.lazy_reg is None


@pytest.mark.parametrize("flags, message", [
    (dict(num_chanels_dae=64), "did you mean --num_channels_dae"),
    (dict(image_size=30), "image_size=30 must be divisible"),
    (dict(attn_resolutions=[5]), "never occurs"),
    (dict(beta_min=30.0), "beta_min"),
    (dict(use_geometric=True), "geometric"),
    (dict(amp="fp8"), "--amp"),
    (dict(ch_mult="1,2"), "list"),
    (dict(hflip="yes"), "True/False"),
])
def test_bad_flags_are_rejected_with_the_fix(flags, message):
    with pytest.raises(ValueError, match=message):
        make_config("demo", **flags)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown --preset 'cifar100'; choose one of"):
        make_config("cifar100")


def test_architecture_changes_lists_fields():
    a, b = make_config("demo"), make_config("demo", ngf=8, lr_g=1e-3)
    assert architecture_changes(a, b) == ["ngf: 16 -> 8"]


def test_time_conditioning_keeps_the_originals_name_as_an_alias():
    """`--conditional` (the original's flag, and the key in configs saved before the rename) is time conditioning;
    class conditioning stays `--cond`."""
    assert make_config("cifar10").time_conditioning is True
    assert make_config("cifar10", conditional=False).time_conditioning is False
    saved = make_config("cifar10").to_dict()
    saved["conditional"] = saved.pop("time_conditioning")
    assert Config.from_dict(saved).time_conditioning is True
    assert Config.from_dict({**saved, "conditional": False}).time_conditioning is False
    assert make_config("cifar10", conditional=False).network_kwargs()["conditional"] is False  # the networks' name
    with pytest.raises(ValueError, match="did you mean --time_conditioning"):
        make_config("cifar10", time_conditionng=False)
