"""Networks: exact agreement with the original implementation, weight conversion, loading, errors."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch

import networks
from ddgan.config import make_config, validate
from networks.discriminator import minibatch_stddev
from networks.layers import conv2d, variance_scaling_
from tests.conftest import load_fixture
from tests.helpers import assert_same_state

FIXTURE_CASES = ["generator_cifar10_tiny", "generator_celeba256_tiny", "generator_fourier_tiny",
                 "discriminator_small_tiny", "discriminator_large_tiny"]

# Small configs, in the original's argument names, that together exercise every supported option.
TINY_GENERATORS = {
    "default": dict(image_size=16, num_channels_dae=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8],
                    nz=4, z_emb_dim=8, n_mlp=1),
    "output_skip_input_skip_cat": dict(image_size=16, num_channels_dae=8, ch_mult=[1, 2, 1], num_res_blocks=1,
                                       attn_resolutions=[16, 4], progressive="output_skip",
                                       progressive_input="input_skip", progressive_combine="cat",
                                       nz=4, z_emb_dim=8, n_mlp=1),
    "no_fir_unconditional": dict(image_size=8, num_channels_dae=8, ch_mult=[1, 1], num_res_blocks=2,
                                 attn_resolutions=[], fir=False, conditional=False, skip_rescale=False,
                                 progressive_input="none", centered=False, nz=4, z_emb_dim=8, n_mlp=0),
    "fourier_no_fir_residual": dict(image_size=8, num_channels=1, num_channels_dae=8, ch_mult=[1, 2],
                                    num_res_blocks=1, attn_resolutions=[4], fir=False,
                                    embedding_type="fourier", not_use_tanh=True, nz=4, z_emb_dim=8, n_mlp=1),
}
TINY_DISCRIMINATOR = dict(num_channels=3, ngf=2, t_emb_dim=8)
CIFAR10 = dict(num_channels_dae=128, ch_mult=[1, 2, 2, 2], num_res_blocks=2, attn_resolutions=[16], nz=100,
               z_emb_dim=256, n_mlp=4, ngf=64, t_emb_dim=256)


def run(kind: str, net: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Forward a network on a fixture's inputs.

    The fixtures key the discriminator's pair by the original's names: its `x_prev` is the candidate
    (our x_t), its `x_t` the condition (our x_next = x_{t+1}).
    """
    if kind == "NCSNpp":
        return net(inputs["x_t"], inputs["t"], inputs["z"])
    return net(x_t=inputs["x_prev"], t=inputs["t"], x_next=inputs["x_t"])


def tiny_inputs(kind: str, config: dict, batch: int = 2, seed: int = 0) -> dict:
    """Random inputs matching a reference config, under the forward's argument names."""
    cfg = networks.with_reference_defaults(config)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, cfg["num_channels"], cfg["image_size"], cfg["image_size"])
    if kind == "NCSNpp":
        t = (torch.rand(batch, generator=gen) + 0.1 if cfg["embedding_type"] == "fourier"
             else torch.randint(0, 4, (batch,), generator=gen))
        z = torch.randn(batch, cfg["nz"], generator=gen)
        return {"x_t": torch.randn(shape, generator=gen), "t": t, "z": z}
    return {"x_t": torch.randn(shape, generator=gen), "t": torch.randint(0, 4, (batch,), generator=gen),
            "x_next": torch.randn(shape, generator=gen)}


# ---------------------------------------------------------------------------------------------------------
# Agreement with the original implementation.


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_matches_reference_outputs(name):
    fixture = load_fixture(f"{name}.pt")
    net = networks.from_reference(fixture["reference_kind"], fixture["config"], fixture["state_dict"]).eval()
    with torch.no_grad():
        out = run(fixture["reference_kind"], net, fixture["inputs"])
    assert out.shape == fixture["output"].shape
    assert (out - fixture["output"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", FIXTURE_CASES)
def test_reference_layout_round_trip(name):
    fixture = load_fixture(f"{name}.pt")
    kind = fixture["reference_kind"]
    net = networks.from_reference(kind, fixture["config"], fixture["state_dict"])
    back = networks.to_reference(kind, net)
    assert list(back) == list(fixture["state_dict"])  # same keys, in the original's order
    for key, value in fixture["state_dict"].items():
        assert torch.equal(back[key], value), key


# ---------------------------------------------------------------------------------------------------------
# Our layout <-> reference layout.



@pytest.mark.parametrize("variant", list(TINY_GENERATORS))
def test_generator_round_trip_is_identity(variant):
    config = TINY_GENERATORS[variant]
    net = networks.build("NCSNpp", config)
    copy = networks.from_reference("NCSNpp", config, networks.to_reference("NCSNpp", net))
    assert_same_state(net, copy)
    inputs = tiny_inputs("NCSNpp", config)
    with torch.no_grad():
        out = run("NCSNpp", net.eval(), inputs)
        assert torch.equal(out, run("NCSNpp", copy.eval(), inputs))
    assert out.shape == inputs["x_t"].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["Discriminator_small", "Discriminator_large"])
def test_discriminator_round_trip_is_identity(kind):
    net = networks.build(kind, TINY_DISCRIMINATOR)
    copy = networks.from_reference(kind, TINY_DISCRIMINATOR, networks.to_reference(kind, net))
    assert_same_state(net, copy)


def test_to_reference_uses_original_names():
    net = networks.build("NCSNpp", TINY_GENERATORS["default"])
    keys = networks.to_reference("NCSNpp", net)
    # Positional, conditional: two time dense layers, then the input conv at index 2, then the first block.
    assert {"all_modules.0.weight", "all_modules.2.weight", "all_modules.3.GroupNorm_0.style.weight",
            "z_transform.1.weight", "z_transform.3.weight"} <= set(keys)
    # Attention projections are stored as the original's NIN matrices W [in, out].
    nin = [key for key in keys if key.endswith("NIN_0.W")]
    assert nin and keys[nin[0]].ndim == 2


# ---------------------------------------------------------------------------------------------------------
# Sizes and initialisation.


def test_cifar10_parameter_counts():
    millions = lambda kind, config: round(networks.count_parameters(networks.build(kind, config)) / 1e6, 2)
    # The README's CIFAR-10 command (n_mlp 4) gives 48.43 M; train_ddgan.py's default n_mlp 3 gives 48.37 M.
    assert millions("NCSNpp", CIFAR10) == 48.43
    assert millions("NCSNpp", {**CIFAR10, "n_mlp": 3}) == 48.37
    assert millions("Discriminator_small", CIFAR10) == 12.74


def uniform_bound(tensor: torch.Tensor) -> float:
    """sqrt(3) * std: the half-width of a uniform distribution with the tensor's spread."""
    return math.sqrt(3) * tensor.std().item()


def test_initialisation_matches_reference_rules():
    torch.manual_seed(0)
    net = networks.build("NCSNpp", {**TINY_GENERATORS["default"], "num_channels_dae": 32, "z_emb_dim": 64})
    block = net.encoder.levels[0].blocks[0]
    # DDPM's init (fan="avg") on a 3x3 conv 32 -> 32: bound sqrt(3 / (32 * 9)).
    assert uniform_bound(block.conv_0.weight) == pytest.approx(math.sqrt(3 / 288), rel=0.05)
    assert block.conv_0.weight.abs().max() <= math.sqrt(3 / 288)
    # The original `dense` init (fan="out"): AdaGN style 64 -> 64 gives bound sqrt(3 / 64).
    assert uniform_bound(block.norm_0.style.weight) == pytest.approx(math.sqrt(3 / 64), rel=0.05)
    assert torch.equal(block.norm_0.style.bias, torch.cat([torch.ones(32), torch.zeros(32)]))
    # Zero-initialised layers (scale 1e-10) and zero biases.
    assert block.conv_1.weight.abs().max() < 1e-5 and not block.conv_1.bias.any()
    assert net.output_conv.weight.abs().max() < 1e-5
    torch.manual_seed(0)
    disc = networks.build("Discriminator_small", dict(ngf=32, t_emb_dim=64))
    # Discriminator conv 3x3 64 -> 128 with fan="out": bound sqrt(3 / (128 * 9)).
    assert uniform_bound(disc.blocks[1].conv_0.weight) == pytest.approx(math.sqrt(3 / 1152), rel=0.05)
    assert disc.final_conv.weight.abs().max() < 1e-5


def test_variance_scaling_names_its_fan():
    weight = torch.empty(2, 8, 3, 3)  # fan_in 72, fan_out 18
    assert variance_scaling_(weight, fan="avg").abs().max() <= math.sqrt(3 / 45)
    assert variance_scaling_(weight, fan="out").abs().max() <= math.sqrt(3 / 18)
    with pytest.raises(ValueError, match="fan"):
        variance_scaling_(weight, fan="in")
    with pytest.raises(TypeError, match="fan"):
        conv2d(8, 2)  # the init is never implicit


# ---------------------------------------------------------------------------------------------------------
# Checkpoint files of the original code.


def test_load_netG_file_with_ddp_prefix(tmp_path):
    config = TINY_GENERATORS["default"]
    net = networks.build("NCSNpp", config).eval()
    ddp = {f"module.{key}": value for key, value in networks.to_reference("NCSNpp", net).items()}
    torch.save(ddp, tmp_path / "netG_1200.pth")
    loaded = networks.load_reference_file(tmp_path / "netG_1200.pth", config).eval()
    assert_same_state(net, loaded)


def test_load_content_file(tmp_path):
    config = {**TINY_GENERATORS["default"], "ngf": 2, "t_emb_dim": 8}
    gen = networks.build("NCSNpp", config)
    disc = networks.build("Discriminator_small", config)
    prefixed = lambda kind, net: {f"module.{k}": v for k, v in networks.to_reference(kind, net).items()}
    optimizer = torch.optim.Adam(gen.parameters())
    content = {"epoch": 5, "global_step": 10, "args": argparse.Namespace(**config),
               "netG_dict": prefixed("NCSNpp", gen), "optimizerG": optimizer.state_dict(),
               "netD_dict": prefixed("Discriminator_small", disc), "optimizerD": optimizer.state_dict()}
    torch.save(content, tmp_path / "content.pth")
    assert_same_state(gen, networks.load_reference_file(tmp_path / "content.pth", config))
    # Without a config, the saved args are used.
    loaded = networks.load_reference_file(tmp_path / "content.pth", kind="Discriminator_small")
    assert_same_state(disc, loaded)


# ---------------------------------------------------------------------------------------------------------
# Bad input.


def test_shape_mismatch_names_first_parameter():
    config = TINY_GENERATORS["default"]
    state = networks.to_reference("NCSNpp", networks.build("NCSNpp", {**config, "num_channels_dae": 16}))
    with pytest.raises(ValueError, match=r"all_modules\.0\.weight.*\(64, 16\).*\(32, 8\)"):
        networks.from_reference("NCSNpp", config, state)


def test_missing_and_unexpected_keys_are_listed():
    config = TINY_GENERATORS["default"]
    state = networks.to_reference("NCSNpp", networks.build("NCSNpp", config))
    del state["all_modules.3.Conv_0.bias"]
    state["all_modules.99.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\): all_modules\.3\.Conv_0\.bias") as info:
        networks.from_reference("NCSNpp", config, state)
    assert "unexpected keys (1): all_modules.99.weight" in str(info.value)


BAD_ARCHITECTURES = [
    (dict(image_size=12, ch_mult=[1, 2, 2, 2]),
     r"--image_size=12 must be divisible by 2\*\*\(len\(ch_mult\)-1\)=8 for --ch_mult=\[1, 2, 2, 2\]"),
    (dict(image_size=0), "--image_size must be a positive"),
    (dict(ch_mult=[]), "--ch_mult needs at least one level"),
    (dict(attn_resolutions=[12]), r"--attn_resolutions contains 12, which never occurs.*\[16, 8\] px"),
    (dict(progressive="residual"), "--progressive=residual is not supported: it crashes in the original"),
    (dict(resblock_type="ddpm"), "--resblock_type=ddpm is not supported: it crashes in the original"),
    (dict(progressive_input="skip"), "--progressive_input must be one of none, input_skip, residual"),
    (dict(progressive_combine="mean"), "--progressive_combine must be one of sum, cat, got 'mean'"),
    (dict(embedding_type="learned"), "--embedding_type must be one of positional, fourier"),
]


@pytest.mark.parametrize("change, match", BAD_ARCHITECTURES + [(dict(ch_mult=None), "ch_mult")])
def test_bad_generator_config(change, match):
    with pytest.raises(ValueError, match=match):
        networks.build("NCSNpp", {**TINY_GENERATORS["default"], **change})


@pytest.mark.parametrize("change, match", BAD_ARCHITECTURES)
def test_config_validation_runs_the_generators_check(change, match):
    """`ddgan train` refuses a bad architecture up front with the very message NCSNpp would give."""
    config = dataclasses.replace(make_config("demo"), **{"image_size": 16, "ch_mult": (1, 2), **change})
    with pytest.raises(ValueError, match=match) as from_config:
        validate(config)
    with pytest.raises(ValueError) as from_network:
        networks.build("NCSNpp", config.network_kwargs())
    assert str(from_config.value) == str(from_network.value)


def test_resamp_with_conv_false_is_refused():
    # BigGAN blocks resample inside themselves, so the flag would silently do nothing.
    with pytest.raises(ValueError, match="resamp_with_conv"):
        make_config("demo", resamp_with_conv=False)
    # The networks still accept it: the original's configs carry either value.
    networks.build("NCSNpp", {**TINY_GENERATORS["default"], "resamp_with_conv": False})


def test_fourier_generator_needs_float_time():
    config = TINY_GENERATORS["fourier_no_fir_residual"]
    inputs = tiny_inputs("NCSNpp", config)
    with pytest.raises(ValueError, match="float time"):
        networks.build("NCSNpp", config)(inputs["x_t"], torch.tensor([1, 2]), inputs["z"])


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        networks.build("Discriminator_medium", {})


def test_minibatch_stddev_needs_divisible_batch():
    with pytest.raises(ValueError, match="batch size"):
        minibatch_stddev(torch.zeros(6, 2, 2, 2), group_size=4)


def test_discriminator_judges_stacked_batches_as_separate_calls():
    """batches=2 (the D step's real and fake pairs in one pass) keeps each half's minibatch-stddev groups."""
    disc = networks.build("Discriminator_small", {**TINY_DISCRIMINATOR, "image_size": 32})
    with torch.no_grad():  # away from the zero-initialised final layer, whose logits are all about 0
        for param in disc.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    real = tiny_inputs("Discriminator_small", {**TINY_DISCRIMINATOR, "image_size": 32}, batch=8, seed=1)
    fake = tiny_inputs("Discriminator_small", {**TINY_DISCRIMINATOR, "image_size": 32}, batch=8, seed=2)
    separate = torch.cat([disc(**real), disc(**fake)])
    stacked = disc(*(torch.cat([real[k], fake[k]]) for k in ("x_t", "t", "x_next")), batches=2)
    torch.testing.assert_close(stacked, separate, rtol=1e-5, atol=1e-6)
    mixed = disc(*(torch.cat([real[k], fake[k]]) for k in ("x_t", "t", "x_next")))  # groups across halves
    assert not torch.allclose(mixed, separate, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 equal batches"):
        minibatch_stddev(torch.zeros(8, 2, 2, 2), group_size=4, batches=3)


def test_minibatch_stddev_of_identical_fp16_samples_has_finite_gradients():
    """Zero variance: in fp16 sqrt(0 + 1e-8) would be sqrt(0), whose gradient is infinite."""
    x = torch.ones(4, 3, 2, 2, dtype=torch.float16, requires_grad=True)
    out = minibatch_stddev(x, group_size=4)
    out.square().sum().backward()
    assert out.dtype == torch.float16 and torch.isfinite(x.grad).all()


def test_discriminator_fp16_autocast_gradients_are_finite():
    disc = networks.build("Discriminator_small", TINY_DISCRIMINATOR)
    inputs = tiny_inputs("Discriminator_small", {**TINY_DISCRIMINATOR, "image_size": 32}, batch=4)
    with torch.autocast("cpu", dtype=torch.float16):
        logits = disc(inputs["x_t"], inputs["t"], inputs["x_next"])
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in disc.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------------------
# Training-time behaviour.


def test_discriminator_r1_double_backward():
    disc = networks.build("Discriminator_small", TINY_DISCRIMINATOR)
    inputs = tiny_inputs("Discriminator_small", {**TINY_DISCRIMINATOR, "image_size": 32}, batch=4)
    x_t = inputs["x_t"].requires_grad_(True)
    logits = disc(x_t, inputs["t"], inputs["x_next"])
    (grad,) = torch.autograd.grad(logits.sum(), x_t, create_graph=True)
    grad.square().sum().backward()
    assert logits.shape == (4, 1)
    assert disc.blocks[0].conv_0.weight.grad is not None and disc.blocks[0].conv_0.weight.grad.abs().sum() > 0


def test_discriminator_input_conv_is_float32_under_cpu_autocast():
    """R1 at a D batch of 256 in bf16 crashed oneDNN (SIGFPE) in this conv's double backward: it runs float32."""
    disc = networks.build("Discriminator_small", TINY_DISCRIMINATOR)
    inputs = tiny_inputs("Discriminator_small", {**TINY_DISCRIMINATOR, "image_size": 32}, batch=4)
    seen = []
    disc.input_conv.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    x_t = inputs["x_t"].requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = disc(x_t, inputs["t"], inputs["x_next"])
    (grad,) = torch.autograd.grad(logits.float().sum(), x_t, create_graph=True)
    grad.square().sum().backward()
    assert seen == [(torch.float32, torch.float32)] and logits.dtype == torch.bfloat16
    assert disc.input_conv.weight.grad is not None and disc.input_conv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# Class-conditional networks.

NUM_CLASSES = 3
CONDITIONAL_G = {**TINY_GENERATORS["default"], "num_classes": NUM_CLASSES}
CONDITIONAL_D = {**TINY_DISCRIMINATOR, "image_size": 32, "num_classes": NUM_CLASSES}
# sum_i (i + 1) * sum(tensor_i) over the state_dict of build(kind, config) after torch.manual_seed(0),
# recorded before class conditioning existed: the argument must not move any initial number.
UNCONDITIONAL_INIT_FINGERPRINTS = [("NCSNpp", TINY_GENERATORS["default"], 31443.758187911928),
                                   ("Discriminator_small", TINY_DISCRIMINATOR, 5.6592073289696)]


def fingerprint(net: torch.nn.Module) -> float:
    """A number that changes with any initial value, or with the order of the state_dict."""
    return sum((i + 1) * value.double().sum().item() for i, value in enumerate(net.state_dict().values()))


def without_zero_init(net: torch.nn.Module) -> torch.nn.Module:
    """Give the (almost) zero-initialised layers ordinary weights, as training would, so inputs visibly matter."""
    with torch.no_grad():
        for param in net.parameters():
            if param.ndim > 1 and param.abs().max() < 1e-4:  # init scale 1e-10, see networks.layers
                variance_scaling_(param, fan="avg")
    return net


def conditional_inputs(kind: str) -> tuple[torch.nn.Module, dict]:
    """A fresh conditional network of `kind` and inputs for it, without labels."""
    config = CONDITIONAL_G if kind == "NCSNpp" else CONDITIONAL_D
    torch.manual_seed(0)
    return networks.build(kind, config), tiny_inputs(kind, config, batch=4)


@pytest.mark.parametrize("kind, config, expected", UNCONDITIONAL_INIT_FINGERPRINTS)
def test_unconditional_init_is_unchanged(kind, config, expected):
    torch.manual_seed(0)
    assert fingerprint(networks.build(kind, config)) == pytest.approx(expected, rel=1e-12, abs=0)
    torch.manual_seed(0)
    assert fingerprint(networks.build(kind, {**config, "num_classes": 0})) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kind", ["NCSNpp", "Discriminator_small", "Discriminator_large"])
def test_conditional_network_shares_the_unconditional_init(kind):
    """The class modules are built last, so every existing layer draws the numbers it draws unconditionally."""
    config = TINY_GENERATORS["default"] if kind == "NCSNpp" else TINY_DISCRIMINATOR
    torch.manual_seed(0)
    plain = networks.build(kind, config).state_dict()
    torch.manual_seed(0)
    conditional = networks.build(kind, {**config, "num_classes": NUM_CLASSES}).state_dict()
    class_keys = [key for key in conditional if key not in plain]
    expected = ["z_mapping.class_embed.weight"] if kind == "NCSNpp" else ["class_embed.weight"]
    assert class_keys == expected + ["class_temb.weight"]
    assert [key for key in conditional if key in plain] == list(plain)
    for key, value in plain.items():
        if key == "z_mapping.layers.0.weight":  # widened by the class inputs: the z columns come first
            assert torch.equal(conditional[key][:, : value.shape[1]], value)
        else:
            assert torch.equal(conditional[key], value), key


def test_conditional_parameter_counts():
    cfg = networks.with_reference_defaults(CONDITIONAL_G)
    nz, z_emb_dim, top = cfg["nz"], cfg["z_emb_dim"], 8 * TINY_DISCRIMINATOR["ngf"]
    temb, d_temb = 4 * cfg["num_channels_dae"], TINY_DISCRIMINATOR["t_emb_dim"]
    count = lambda kind, config: networks.count_parameters(networks.build(kind, config))
    # G: the class embedding (num_classes x nz), nz more inputs of the first mapping layer (z_emb_dim x nz),
    # and a class vector added to the time embedding (num_classes x 4 nf).
    assert (count("NCSNpp", CONDITIONAL_G) - count("NCSNpp", TINY_GENERATORS["default"])
            == NUM_CLASSES * nz + z_emb_dim * nz + NUM_CLASSES * temb)
    # D: one projection vector per class, as wide as the pooled features (8 ngf channels), and one added to
    # the time embedding (t_emb_dim).
    for kind in ["Discriminator_small", "Discriminator_large"]:
        assert count(kind, CONDITIONAL_D) - count(kind, TINY_DISCRIMINATOR) == NUM_CLASSES * (top + d_temb)


@pytest.mark.parametrize("kind", ["NCSNpp", "Discriminator_small"])
def test_outputs_depend_on_the_class_label(kind):
    net, inputs = conditional_inputs(kind)
    net = without_zero_init(net).eval()
    y = torch.tensor([0, 1, 2, 0])
    other = torch.tensor([1, 1, 0, 0])  # samples 0 and 2 change class, 1 and 3 keep theirs

    def outputs(labels):
        if kind == "NCSNpp":
            return net(*inputs.values(), labels)
        # D's minibatch-stddev feature mixes the samples of a group, and the class reaches its blocks:
        # judge one sample at a time to see each label's own effect.
        return torch.cat([net(*(v[i:i + 1] for v in inputs.values()), labels[i:i + 1]) for i in range(4)])

    with torch.no_grad():
        out, again, changed = outputs(y), outputs(y.clone()), outputs(other)
    assert torch.equal(out, again)
    difference = (out - changed).flatten(1).abs().amax(dim=1)
    assert (difference[[0, 2]] > 1e-3 * out.abs().max()).all(), difference
    assert not difference[[1, 3]].any(), difference


@pytest.mark.parametrize("kind", ["NCSNpp", "Discriminator_small"])
def test_every_parameter_gets_a_gradient(kind):
    """Including the class embedding: DDP then needs no find_unused_parameters (G with time conditioning on)."""
    net, inputs = conditional_inputs(kind)
    assert kind != "NCSNpp" or net.conditional
    net(*inputs.values(), torch.tensor([0, 2, 2, 0])).square().sum().backward()
    unused = [name for name, param in net.named_parameters() if param.grad is None]
    assert not unused
    embedding = net.z_mapping.class_embed if kind == "NCSNpp" else net.class_embed
    assert embedding.weight.grad is not None
    # Only the classes in the batch receive a gradient; the label's column is its embedding.
    grad_per_class = embedding.weight.grad.abs().sum(dim=0)
    assert (grad_per_class[[0, 2]] > 0).all() and grad_per_class[1] == 0


BAD_LABELS = [
    (None, r"class-conditional \(num_classes=3\): pass class labels y"),
    (torch.tensor([0, 1, 2, 3]), r"must lie in 0\.\.2 for num_classes=3, got \[0, 1, 2, 3\]"),
    (torch.tensor([0, -1, 2, 0]), r"must lie in 0\.\.2"),
    (torch.tensor([0.0, 1.0, 2.0, 0.0]), r"int64 tensor of shape \[4\].*torch\.float32"),
    (torch.tensor([0, 1]), r"int64 tensor of shape \[4\].*shape \[2\]"),
]


@pytest.mark.parametrize("kind", ["NCSNpp", "Discriminator_small"])
@pytest.mark.parametrize("y, match", BAD_LABELS)
def test_bad_class_labels(kind, y, match):
    net, inputs = conditional_inputs(kind)
    with pytest.raises(ValueError, match=match):
        net(*inputs.values(), y)


@pytest.mark.parametrize("kind", ["NCSNpp", "Discriminator_small"])
def test_unconditional_network_refuses_labels(kind):
    config = TINY_GENERATORS["default"] if kind == "NCSNpp" else {**TINY_DISCRIMINATOR, "image_size": 32}
    net, inputs = networks.build(kind, config), tiny_inputs(kind, config, batch=4)
    with pytest.raises(ValueError, match=r"unconditional network \(num_classes=0\): pass y=None"):
        net(*inputs.values(), torch.zeros(4, dtype=torch.int64))


@pytest.mark.parametrize("kind", ["NCSNpp", "Discriminator_small"])
def test_conditional_networks_have_no_reference_layout(kind):
    net, _ = conditional_inputs(kind)
    config = CONDITIONAL_G if kind == "NCSNpp" else CONDITIONAL_D
    with pytest.raises(ValueError, match="class-conditional.*no class-conditional networks"):
        networks.to_reference(kind, net)
    state = networks.to_reference(kind, networks.build(kind, {**config, "num_classes": 0}))
    with pytest.raises(ValueError, match="class-conditional.*no class-conditional networks"):
        networks.from_reference(kind, config, state)


def test_negative_num_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        networks.build("NCSNpp", {**TINY_GENERATORS["default"], "num_classes": -1})
    with pytest.raises(ValueError, match="num_classes"):
        networks.build("Discriminator_small", {**TINY_DISCRIMINATOR, "num_classes": -1})
