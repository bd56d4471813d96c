"""WaveDiff: the Haar transform, the wavelet generator and discriminators against its test vectors, sampling."""

from __future__ import annotations

import pytest
import torch

import networks
from ddgan.diffusion.process import Diffusion
from ddgan.spaces.wavelet import ORDERS, from_wavelet, to_wavelet
from networks.discriminator import DiscriminatorLarge, DiscriminatorSmall
from networks.wavelet_generator import WaveletResnetBlock, patchify, unpatchify
from ops.haar import dwt, idwt, lowpass
from tests.conftest import load_fixture, replay_sampler
from tests.helpers import assert_same_state

NETWORK_CASES = ["wavelet_generator_cifar10_tiny", "ncsnpp_generator_cifar10_tiny", "wavelet_generator_celeba256_tiny",
                 "wavelet_generator_ablation_tiny", "wavelet_generator_no_fbn_tiny", "wavelet_generator_no_freq_tiny",
                 "wavelet_generator_no_residual_tiny", "wavelet_generator_patch2_tiny",
                 "wavelet_discriminator_small_tiny", "wavelet_discriminator_large_tiny"]
# The fixtures' names of the two Haar implementations -> ddgan.spaces.wavelet's orders.
ORDER_OF = {"DWT_IDWT": "bundled", "pytorch_wavelets": "pytorch_wavelets"}
SWITCHES = ("no_use_fbn", "no_use_freq", "no_use_residual")
# A small wavelet generator in our config names (image_size and num_channels in wavelet space).
TINY = dict(image_size=16, num_channels=12, num_channels_dae=8, ch_mult=[1, 2, 2], num_res_blocks=1,
            attn_resolutions=[8], nz=4, z_emb_dim=8, n_mlp=1)
TINY_VARIANTS = {
    "wavelet": {},
    **{name: {name: True} for name in SWITCHES},
    "ablation": dict.fromkeys(SWITCHES, True),
    "patch2": dict(image_size=32, patch_size=2),
    "input_skip_output_skip": dict(progressive="output_skip", progressive_input="input_skip",
                                   progressive_combine="cat", no_use_fbn=True),
}


def load(name: str) -> dict:
    return load_fixture(f"wavediff/{name}.pt")


def run(kind: str, net: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Forward a fixture's inputs; for D its `x_prev` is our candidate x_t and its `x_t` our x_next."""
    if kind.startswith("Discriminator"):
        return net(inputs["x_prev"], inputs["t"], inputs["x_t"])
    return net(inputs["x_t"], inputs["t"], inputs["z"])


def tiny_inputs(config: dict, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = config["image_size"]
    return (torch.randn(batch, config["num_channels"], size, size, generator=gen),
            torch.randint(0, 4, (batch,), generator=gen), torch.randn(batch, config["nz"], generator=gen))


# ---------------------------------------------------------------------------------------------------------
# Agreement with WaveDiff.


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_matches_wavediff_outputs(name):
    fixture = load(name)
    kind = fixture["reference_kind"]
    net = networks.from_wavediff(kind, fixture["config"], fixture["state_dict"]).eval()
    with torch.no_grad():
        out = run(kind, net, fixture["inputs"])
    assert out.shape == fixture["output"].shape
    assert (out - fixture["output"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", NETWORK_CASES)
def test_wavediff_layout_round_trip(name):
    fixture = load(name)
    kind = fixture["reference_kind"]
    back = networks.to_wavediff(kind, networks.from_wavediff(kind, fixture["config"], fixture["state_dict"]))
    assert list(back) == list(fixture["state_dict"])  # WaveDiff's keys, in its order
    for key, value in fixture["state_dict"].items():
        assert torch.equal(back[key], value), key


@pytest.mark.parametrize("size", ["size32", "size64"])
@pytest.mark.parametrize("implementation", list(ORDER_OF))
def test_transform_matches_wavediff(size, implementation):
    case = load("dwt")["cases"][size]
    order = ORDER_OF[implementation]
    forward = to_wavelet(case["inputs"]["images"], order)
    inverse = from_wavelet(case["inputs"]["wavelets"], order)
    assert forward.shape == case["forward"][implementation].shape
    assert (forward - case["forward"][implementation]).abs().max().item() < 1e-5
    assert (inverse - case["inverse"][implementation]).abs().max().item() < 1e-5


def test_sampling_replay_matches_wavediff():
    fixture = load("wavediff_sampling")
    cfg = fixture["generator"]["config"]
    diffusion = Diffusion(cfg["num_timesteps"], cfg["beta_min"], cfg["beta_max"],
                          "geometric" if cfg["use_geometric"] else "vp")
    replay = replay_sampler(fixture, diffusion)
    x = replay["final"]
    assert (replay["trace"] - fixture["trace"]["x"]).abs().max().item() < 1e-4
    assert (replay["x0_pred"] - fixture["trace"]["x0_pred"]).abs().max().item() < 1e-4
    assert (x - fixture["wavelet_sample"]).abs().max().item() < 1e-4
    assert (replay["sampled"] - fixture["wavelet_sample"]).abs().max().item() < 1e-4
    images = from_wavelet(x, ORDER_OF[fixture["transform"]])
    assert (images.clamp(-1, 1) - fixture["output"]).abs().max().item() < 1e-4
    for implementation, expected in fixture["output_unclamped_by_transform"].items():
        assert (from_wavelet(x, ORDER_OF[implementation]) - expected).abs().max().item() < 1e-4


# ---------------------------------------------------------------------------------------------------------
# Our layout <-> WaveDiff's, the ablation switches, construction.


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_round_trip_through_wavediff_keys_is_identity(variant):
    config = {**TINY, **TINY_VARIANTS[variant]}
    net = networks.build("WaveletNCSNpp", config).eval()
    copy = networks.from_wavediff("WaveletNCSNpp", config, networks.to_wavediff("WaveletNCSNpp", net)).eval()
    assert_same_state(net, copy)
    x, t, z = tiny_inputs(config)
    with torch.no_grad():
        out = net(x, t, z)
        assert torch.equal(out, copy(x, t, z))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("kind, layers", [("Discriminator_small", 3), ("Discriminator_large", 5)])
def test_discriminator_round_trip_is_identity(kind, layers):
    config = dict(num_channels=12, ngf=2, t_emb_dim=8, num_disc_layers=layers)
    net = networks.build(kind, config)
    assert len(net.blocks) == layers
    assert_same_state(net, networks.from_wavediff(kind, config, networks.to_wavediff(kind, net)))


def test_all_switches_give_exactly_ncsnpp():
    fixture = load("wavelet_generator_ablation_tiny")
    config, state = fixture["config"], fixture["state_dict"]
    wavelet = networks.from_wavediff("WaveletNCSNpp", config, state).eval()
    plain = networks.from_reference("NCSNpp", config, state).eval()
    assert type(plain) is networks.NCSNpp
    assert_same_state(wavelet, plain)
    with torch.no_grad():
        assert torch.equal(run("NCSNpp", wavelet, fixture["inputs"]), run("NCSNpp", plain, fixture["inputs"]))
    # Freshly built, the two draw the same initial numbers too.
    torch.manual_seed(0)
    wavelet = networks.build("WaveletNCSNpp", {**TINY, **dict.fromkeys(SWITCHES, True)})
    torch.manual_seed(0)
    assert_same_state(wavelet, networks.build("NCSNpp", TINY))


def test_wavelet_generator_structure():
    net = networks.build("WaveletNCSNpp", TINY)
    downs = [level.down for level in net.encoder.levels if level.down is not None]
    ups = [level.up for level in net.decoder.levels if level.up is not None]
    assert all(isinstance(block, WaveletResnetBlock) for block in downs + ups)
    # conv_h maps the three bands of the down block's width to three of the up block's, one group per band.
    conv_h = net.decoder.levels[1].up.conv_h
    assert conv_h.groups == 3 and tuple(conv_h.weight.shape) == (3 * 16, 8, 3, 3)
    keys = networks.to_wavediff("WaveletNCSNpp", net)
    # Time MLP (0, 1), input conv (2), block (3), down block (4), then the wavelet input pyramid's bare conv.
    assert {"all_modules.5.weight", "all_modules.5.bias"} <= set(keys)
    assert sum(key.endswith("convH_0.weight") for key in keys) == 2


def test_cifar10_recipe_builds_plain_ncsnpp_and_patched_ncsnpp_is_the_ablation():
    config = load("ncsnpp_generator_cifar10_tiny")["config"]
    assert type(networks.from_wavediff("NCSNpp", config, load("ncsnpp_generator_cifar10_tiny")["state_dict"])) \
        is networks.NCSNpp
    # WaveDiff's NCSNpp patchifies as well: ours is then the wavelet generator with every component off.
    patched = {**config, "image_size": 32, "patch_size": 2, "attn_resolutions": [8]}
    net = networks.build("WaveletNCSNpp", {**patched, **dict.fromkeys(SWITCHES, True)})
    loaded = networks.from_wavediff("NCSNpp", patched, networks.to_wavediff("NCSNpp", net))
    assert isinstance(loaded, networks.WaveletNCSNpp) and loaded.patch_size == 2
    assert_same_state(net, loaded)


def test_discriminator_num_layers():
    for cls, full in ((DiscriminatorSmall, 4), (DiscriminatorLarge, 6)):
        assert len(cls(nc=24, ngf=2, t_emb_dim=8).blocks) == full  # the default keeps today's networks
    small = DiscriminatorSmall(nc=24, ngf=2, t_emb_dim=8, num_layers=3)
    assert small.final_conv.in_channels == 8 * 2 + 1 and not hasattr(small.blocks, "3")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 12, 16, 16, generator=gen)
    assert small(x, torch.tensor([0, 1, 2, 3]), x).shape == (4, 1)
    # The head follows the last block's width.
    assert DiscriminatorSmall(nc=24, ngf=2, t_emb_dim=8, num_layers=1).head.in_features == 2 * 2


def test_conditional_wavelet_generator():
    config = {**TINY, "num_classes": 3}
    torch.manual_seed(0)
    net = networks.build("WaveletNCSNpp", config).eval()
    with torch.no_grad():
        for param in net.parameters():
            if param.ndim > 1 and param.abs().max() < 1e-4:  # wake the zero-initialised layers
                param.normal_(0, 0.2)
    x, t, z = tiny_inputs(config, batch=3)
    with torch.no_grad():
        a = net(x, t, z, torch.tensor([0, 1, 2]))
        b = net(x, t, z, torch.tensor([0, 2, 2]))
    difference = (a - b).flatten(1).abs().amax(dim=1)
    assert difference[1] > 1e-4 and not difference[[0, 2]].any()
    with pytest.raises(ValueError, match="class-conditional"):
        networks.to_wavediff("WaveletNCSNpp", net)


def test_every_parameter_gets_a_gradient():
    net = networks.build("WaveletNCSNpp", {**TINY, "num_classes": 2})
    x, t, z = tiny_inputs(TINY)
    net(x, t, z, torch.tensor([0, 1])).square().sum().backward()
    assert not [name for name, param in net.named_parameters() if param.grad is None]


def test_channels_last_input():
    net = networks.build("WaveletNCSNpp", TINY).eval()
    x, t, z = tiny_inputs(TINY)
    with torch.no_grad():
        out = net(x.contiguous(memory_format=torch.channels_last), t, z)
        assert (out - net(x, t, z)).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------------------
# The Haar transform.


def test_haar_formulas_and_inverse():
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    ll, lh, hl, hh = dwt(x)
    for band, expected in ((ll, a + b + c + d), (lh, a - b + c - d), (hl, a + b - c - d), (hh, a - b - c + d)):
        torch.testing.assert_close(band, expected / 2, rtol=0, atol=1e-12)
    assert torch.equal(lowpass(x), ll)
    torch.testing.assert_close(idwt(ll, lh, hl, hh), x, rtol=0, atol=1e-12)
    # Orthonormal: the energy is kept.
    torch.testing.assert_close(sum(band.square().sum() for band in (ll, lh, hl, hh)), x.square().sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_haar_dtypes_and_memory_formats(dtype):
    x = torch.randn(2, 4, 8, 8).to(dtype).contiguous(memory_format=torch.channels_last)
    bands = dwt(x)
    assert all(band.dtype == dtype and band.is_contiguous(memory_format=torch.channels_last) for band in bands)
    back = idwt(*bands)
    assert back.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-6 if dtype == torch.float32 else 5e-2
    assert (back.float() - x.float()).abs().max().item() < tol


def test_haar_gradients():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: dwt(v), (x,))
    bands = tuple(torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(idwt, bands)


def test_patchify_orders():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    patches = patchify(x, 2)
    # Channel (p1 * 2 + p2) * C + c holds pixel (2h + p1, 2w + p2) of channel c.
    assert torch.equal(patches[:, 1 * 3 + 2], x[:, 2, 0::2, 1::2])
    # WaveDiff's unpatchify reads channel c * 4 + p1 * 2 + p2: not patchify's inverse.
    y = unpatchify(patches, 2)
    assert torch.equal(y[:, 0, 0::2, 1::2], patches[:, 1])
    assert y.shape == x.shape and not torch.equal(y, x)


# ---------------------------------------------------------------------------------------------------------
# Bad input.


def test_odd_sizes_are_refused():
    with pytest.raises(ValueError, match=r"image_size must be even in wavelet space.*5x6"):
        to_wavelet(torch.zeros(1, 3, 5, 6), "bundled")
    with pytest.raises(ValueError, match=r"even height and width, got 6x7"):
        dwt(torch.zeros(1, 3, 6, 7))
    with pytest.raises(ValueError, match="one shape"):
        idwt(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match=r"\[B, 4C, H, W\]"):
        from_wavelet(torch.zeros(1, 6, 4, 4), "bundled")


@pytest.mark.parametrize("function", [to_wavelet, from_wavelet])
def test_unknown_order(function):
    with pytest.raises(ValueError, match=r"order must be one of 'bundled', 'pytorch_wavelets'.*got 'haar'") as info:
        function(torch.zeros(1, 12, 4, 4), "haar")
    assert all(order in str(info.value) for order in ORDERS)


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match=r"patch_size=3 must divide image_size=16"):
        networks.build("WaveletNCSNpp", {**TINY, "patch_size": 3})
    net = networks.build("WaveletNCSNpp", {**TINY, "image_size": 32, "patch_size": 2})
    with pytest.raises(ValueError, match=r"patch_size=2 must divide the input's height and width, got 15x15"):
        net(torch.zeros(1, 12, 15, 15), torch.zeros(1, dtype=torch.int64), torch.zeros(1, 4))


def test_frequency_bottleneck_needs_an_even_bottom():
    config = {**TINY, "image_size": 12, "attn_resolutions": []}  # 12 -> 6 -> 3 px: no lower band at 3 px
    with pytest.raises(ValueError, match=r"frequency bottleneck.*= 12 must be divisible by 2\*\*len\(ch_mult\) = 8"):
        networks.build("WaveletNCSNpp", config)
    networks.build("WaveletNCSNpp", {**config, "no_use_fbn": True})


def test_bad_num_layers_and_kind():
    with pytest.raises(ValueError, match=r"num_layers \(num_disc_layers\) of DiscriminatorSmall must be 1\.\.4, got 6"):
        networks.build("Discriminator_small", {"num_channels": 12, "num_disc_layers": 6})
    with pytest.raises(ValueError, match="kind must be one of"):
        networks.from_wavediff("Discriminator_medium", {}, {})


def test_wavediff_attention_resolutions_that_never_occur_are_dropped():
    fixture = load("wavelet_generator_cifar10_tiny")
    assert fixture["config"]["attn_resolutions"] == [32]
    net = networks.from_wavediff("WaveletNCSNpp", fixture["config"], fixture["state_dict"])
    assert net.attn_resolutions == ()
    # Our own configs keep refusing them.
    with pytest.raises(ValueError, match="--attn_resolutions contains 32, which never occurs"):
        networks.build("WaveletNCSNpp", fixture["config"])
