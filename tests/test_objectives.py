"""The objectives (--objective=ddgan|siddm|ufogen): loss terms against hand-computed values, the default one unchanged
bit for bit, exact resume and torchrun with each, and the 2-D check `ddgan toy`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.config import make_config
from ddgan.diffusion.objectives import SIDDM, Objective, UFOGen, forward_matching, make_objective
from ddgan.diffusion.process import Diffusion, skipped_steps
from ddgan.models import checkpoint
from ddgan.training.trainer import Trainer
from tests import objective_reference
from tests.helpers import TINY, assert_resumes_exactly, tiny, torchrun_train

REFERENCE = Path(__file__).parent / "data" / "ddgan_objective_reference.json"


def diffusion() -> Diffusion:
    return Diffusion(4).double()


def test_forward_diffusion_of_a_step_is_q_of_the_next_step():
    d = diffusion()
    x_t = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    t = torch.tensor([1])
    # alpha_bar from the marginal's own table: q(x_{t+1} | x_t) has mean sqrt(abar_{t+2}/abar_{t+1}) x_t ...
    abar = d.a_s_cum.square()
    mean = math.sqrt(abar[2] / abar[1]) * x_t
    variance = 1 - abar[2] / abar[1]
    assert torch.allclose(d.q_step(x_t, t, noise=torch.zeros_like(x_t)), mean)
    draws = d.q_step(x_t.expand(200_000, 2), t.expand(200_000), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(draws.mean(0), mean[0], atol=4e-3)
    assert torch.allclose(draws.var(0), torch.full((2,), float(variance), dtype=torch.float64), rtol=2e-2)
    # ... which is how the posterior sample x_t, diffused forward, is matched to the real x_{t+1} (SIDDM).
    x_next = torch.tensor([[0.2, 0.3]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = ((mean + math.sqrt(variance) * noise - x_next) ** 2).mean()
    assert torch.allclose(forward_matching(d, x_t, x_next, t, generator), expected)


def test_siddm_judges_marginals_and_adds_the_weighted_forward_term():
    d = diffusion()
    objective = make_objective("siddm", d, aux_weight=0.7)
    assert isinstance(objective, SIDDM)
    x_t, x_next = torch.ones(2, 1, 2, 2, dtype=torch.float64), torch.full((2, 1, 2, 2), 3.0, dtype=torch.float64)
    sample, condition = objective.real(x_t, x_next)
    assert sample is x_t and torch.equal(condition, torch.zeros_like(x_next))
    t = torch.tensor([0, 2])
    x0_pred = torch.full_like(x_t, 0.25)
    fake = objective.fake(x0_pred, x_next, t, torch.Generator().manual_seed(1))
    # The fake x_t is the posterior sample: mean c1 x'_0 + c2 x_{t+1}, no noise at t = 0.
    c1, c2 = d.posterior_mean_coef1[0], d.posterior_mean_coef2[0]
    assert torch.allclose(fake.sample[0], c1 * 0.25 + c2 * 3.0)
    assert torch.equal(fake.condition, torch.zeros_like(x_next))
    terms = objective.generator_terms(x_t, x0_pred, fake, x_next, t, torch.Generator().manual_seed(5))
    weight, value = terms["aux"]
    assert weight == 0.7
    assert torch.allclose(value, forward_matching(d, fake.sample, x_next, t, torch.Generator().manual_seed(5)))


def test_ufogen_diffuses_x0_forward_and_adds_the_reconstruction_loss():
    d = diffusion()
    objective = make_objective("ufogen", d, rec_weight=2.0)
    assert isinstance(objective, UFOGen)
    x0 = torch.tensor([[[[1.0, -1.0]]]], dtype=torch.float64)
    x0_pred = torch.tensor([[[[0.5, 0.0]]]], dtype=torch.float64)
    x_next = torch.zeros_like(x0)
    t = torch.tensor([2])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    fake = objective.fake(x0_pred, x_next, t, torch.Generator().manual_seed(9))
    abar = d.a_s_cum[2] ** 2
    assert torch.allclose(fake.sample, math.sqrt(abar) * x0_pred + math.sqrt(1 - abar) * noise)
    assert torch.equal(fake.condition, torch.zeros_like(x_next))
    weight, value = objective.generator_terms(x0, x0_pred, fake, x_next, t, None)["diffusion"]
    # The noise in x_{t+1} that x'_0 implies, against the one that x_0 does: SNR(t+1) (x'_0 - x_0)^2.
    a, s = d.a_s_cum[3], d.sigmas_cum[3]
    x_next = a * x0 + s * torch.randn(x0.shape, dtype=torch.float64)
    eps, eps_pred = (x_next - a * x0) / s, (x_next - a * x0_pred) / s
    assert weight == 2.0 and value.item() == pytest.approx(((eps - eps_pred) ** 2).mean().item())
    assert value.item() == pytest.approx(float(a**2 / s**2) * (0.5**2 + 1.0**2) / 2)


def test_ddgan_judges_joint_pairs_and_adds_nothing():
    d = diffusion()
    objective = make_objective("ddgan", d)
    assert type(objective) is Objective
    x_t, x_next = torch.randn(2, 3), torch.randn(2, 3)
    sample, condition = objective.real(x_t, x_next)
    assert sample is x_t and condition is x_next
    assert objective.generator_terms(x_t, x_t, objective.fake(x_t, x_next, torch.tensor([0, 1]), None),
                                     x_next, torch.tensor([0, 1]), None) == {}
    with pytest.raises(ValueError, match="--objective must be one of ddgan, siddm, ufogen"):
        make_objective("sidm", d)


def test_few_step_sampling_diffuses_each_x0_forward():
    d = Diffusion(4)
    assert skipped_steps(4, 1) == [3] and skipped_steps(4, 2) == [3, 0] and skipped_steps(8, 4) == [7, 5, 2, 0]
    calls = []

    def net(x, t, z):
        calls.append(int(t[0]))
        return torch.full_like(x, 0.5)

    noises = torch.randn(4, 1, 2)
    out = d.sample(net, torch.randn(1, 2), nz=1, zs=torch.zeros(4, 1, 1), noises=noises, num_steps=2)
    assert calls == [3, 0]
    assert torch.equal(out, torch.full((1, 2), 0.5))  # the last step's x'_0 is the sample
    one = d.sample(net, torch.randn(1, 2), nz=1, zs=torch.zeros(4, 1, 1), num_steps=1)
    assert torch.equal(one, torch.full((1, 2), 0.5))
    with pytest.raises(ValueError, match="1..4"):
        d.sample(net, torch.randn(1, 2), nz=1, num_steps=5)


def test_the_default_objective_trains_as_before_bit_for_bit():
    """The trainer with --objective=ddgan against the state main's trainer reached before the objectives existed
    (bbb1e25), summarised on each CPU that has a reference file (`python tests/objective_reference.py ROOT OUT`
    with ROOT a checkout of bbb1e25 writes one)."""
    references = [json.loads(path.read_text()) for path in sorted(REFERENCE.parent.glob(REFERENCE.stem + "*.json"))]
    now = objective_reference.summary()
    here = [r for r in references if r["cpu"] == objective_reference.cpu_model()]
    reference = (here or references)[0]
    assert now.keys() == reference["tensors"].keys()
    for key, values in reference["tensors"].items():
        if here:  # the same float kernels: every bit
            assert now[key] == values, key
        else:  # another CPU sums in another order, which three GAN steps amplify (to 1e-5 of a weight between two
            # EPYCs); a change of the arithmetic moves these far more
            assert now[key] == pytest.approx(values, rel=1e-3, abs=2e-5), key


@pytest.mark.parametrize("objective", ["siddm", "ufogen"])
def test_each_objective_trains_and_resumes_exactly(objective, tmp_path):
    config = tiny("demo", tmp_path, objective=objective, batch_size=4, kimg=0.016, ac_w=0.5, ufo_rec_w=0.5)
    run = assert_resumes_exactly(config, stop_after=2, total_steps=4)
    from ddgan.models import describe_checkpoint

    assert f"objective {objective} (" in describe_checkpoint(run)  # `ddgan info` names it


def test_objectives_train_conditional_wavelet_models(tmp_path):
    for objective, extra in (("siddm", dict(space="wavelet")), ("ufogen", dict(cond=True, num_classes=4))):
        config = make_config("cifar10", **{**TINY, "image_size": 16, "ch_mult": (1, 2), "attn_resolutions": (),
                                           "batch_size": 4, "objective": objective, "amp": "none", **extra})
        trainer = Trainer(config)
        x = torch.rand(4, 3, 16, 16) * 2 - 1
        y = torch.randint(0, 4, (4,)) if config.cond else None
        stats = trainer.run_iteration(x, y)
        assert torch.isfinite(stats["loss/G"])
        assert ("loss/aux" if objective == "siddm" else "loss/diffusion") in stats


def test_siddm_under_torchrun_writes_one_checkpoint(tmp_path):
    """A 2-process run (the one torchrun training test besides the cluster and data ones) with SIDDM's objective."""
    flags = [f"--{k}={v}" for k, v in TINY.items()] + [
        "--preset=demo", "--data=demo", "--image_size=8", "--ch_mult=[1,2]", "--batch_size=4", "--kimg=0.012",
        "--objective=siddm", f"--outdir={tmp_path}"]
    torchrun_train(*flags)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    state = checkpoint.load(run)
    assert state["config"]["objective"] == "siddm"
    assert state["images_seen"] == 12 and state["step"] == 3  # 3 steps of 2 images on each of 2 ranks


def test_objective_flags_are_checked():
    with pytest.raises(ValueError, match="--objective must be one of"):
        make_config("cifar10", objective="gan")
    with pytest.raises(ValueError, match="--ac_w must be >= 0"):
        make_config("cifar10", objective="siddm", ac_w=-1.0)


def test_published_presets_keep_ddgans_objective_and_cifar10_siddm_changes_only_it():
    from ddgan.config import PRESETS

    for name in PRESETS:
        config = make_config(name, **({"autoencoder": "x"} if name.endswith("_latent") else {}))
        assert config.objective == ("siddm" if name == "cifar10_siddm" else "ddgan"), name
    siddm, cifar10 = make_config("cifar10_siddm").to_dict(), make_config("cifar10").to_dict()
    assert {k for k in siddm if siddm[k] != cifar10[k]} == {"objective", "preset"}
    assert siddm["ac_w"] == 1.0


def test_toy_scores_real_points_as_every_mode_and_noise_as_few():
    from eval import toy

    data = toy.sample_mixture(20_000, torch.Generator().manual_seed(0)).numpy()
    other = toy.sample_mixture(20_000, torch.Generator().manual_seed(1)).numpy()
    real = toy.score(other, data, mmd_points=2000)
    assert real["modes"] == 25 and real["high_quality"] > 0.98  # clamped to 3 std per coordinate, so a few lie beyond
    assert real["frechet"] < 0.05 and abs(real["mmd"]) < 0.01
    one_mode = toy.score(np.zeros((1000, 2)) + np.array([5.0, 10.0]), data, mmd_points=1000)
    assert one_mode["modes"] == 1 and one_mode["high_quality"] == 1.0 and one_mode["frechet"] > 10
    noise = toy.score(np.random.default_rng(0).normal(10, 3, (5000, 2)), data, mmd_points=2000)
    assert noise["high_quality"] < 0.2 and noise["mmd"] > real["mmd"] + 0.1


def test_toy_networks_see_points_through_fixed_fourier_features_kept_in_their_state():
    from networks.mlp import FourierFeatures, MLPDiscriminator, MLPGenerator

    features = FourierFeatures(2, 3, 0.5)
    x = torch.tensor([[0.25, -0.5], [1.0, 0.0]])
    angles = x @ features.projection
    assert torch.equal(features(x), torch.cat([x, angles.sin(), angles.cos()], 1))
    torch.manual_seed(0)
    many = FourierFeatures(2, 20_000, 0.5).projection
    assert abs(many.std().item() / (2 * math.pi) - 0.5) < 0.01  # frequencies in cycles per unit, std 0.5

    torch.manual_seed(1)
    G = MLPGenerator(fourier_features=8)
    torch.manual_seed(2)
    other = MLPGenerator(fourier_features=8)
    assert "features.projection" in G.state_dict() and not torch.equal(G.features.projection, other.features.projection)
    other.load_state_dict(G.state_dict())  # a checkpoint restores the projection it was trained with
    t, z = torch.tensor([0, 3]), torch.randn(2, 2)
    assert torch.equal(G(x, t, z), other(x, t, z))
    D = MLPDiscriminator(fourier_features=8)
    assert D(x, t, x).shape == (2, 1) and MLPDiscriminator(fourier_features=0)(x, t, x).shape == (2, 1)
    assert "features.projection" not in MLPGenerator(fourier_features=0).state_dict()
    with pytest.raises(ValueError, match="Fourier features"):
        MLPGenerator(fourier_features=4, fourier_scale=0.0)


def test_ddgan_toy_prints_its_scores_last_and_draws_each_step_count(tmp_path, capsys):
    from eval import toy

    toy.main(["--objective=siddm", "--iterations=3", "--batch_size=64", "--samples=300", f"--out={tmp_path}"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["objective"] == "siddm" and set(report["by_steps"]) == {"1", "2", "4"}
    assert {"modes", "high_quality", "frechet", "mmd"} <= set(report)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"siddm-steps{n}.png" for n in (1, 2, 4)]
    assert report["ema_decay"] == 0 and report["lr_decay"] is False


def test_ddgan_toy_samples_from_the_average_of_g_when_asked(tmp_path, capsys):
    from eval import toy

    def scores(*flags):
        toy.main(["--iterations=4", "--batch_size=32", "--samples=200", "--steps=[4]", f"--out={tmp_path}", *flags])
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    plain, averaged = scores(), scores("--ema_decay=0.999999", "--lr_decay=True")
    assert averaged["ema_decay"] == 0.999999 and averaged["lr_decay"] is True
    assert averaged["by_steps"]["4"] != plain["by_steps"]["4"]  # G_ema is still about the initial G


def test_ddgan_sample_draws_with_fewer_steps(tmp_path, capsys):
    from tests.helpers import run_cli, write_checkpoint

    ckpt = write_checkpoint(tmp_path)
    T = torch.load(ckpt, weights_only=True)["config"]["num_timesteps"]
    arrays = {}
    for steps in (None, 1, T):
        out = tmp_path / f"s{steps}.npz"
        flags = [] if steps is None else [f"--steps={steps}"]
        code, _, err = run_cli(["sample", str(ckpt), "--n=4", f"--out={out}", *flags], capsys)
        assert code == 0, err
        arrays[steps] = np.load(out)["x"]
    assert np.array_equal(arrays[None], arrays[T])  # all T steps: the usual sampler
    assert not np.array_equal(arrays[None], arrays[1])
    code, _, err = run_cli(["sample", str(ckpt), "--n=4", f"--out={tmp_path / 'bad.npz'}", f"--steps={T + 1}"], capsys)
    assert code == 2 and f"--steps must be an integer in 1..{T}" in err


def test_a_model_samples_in_its_sample_steps_unless_asked_otherwise():
    """--sample_steps sets the steps of every sample the model draws (grids, ddgan sample, FID, ONNX)."""
    from ddgan.config import PRESETS, make_config, replace
    from ddgan.export import card_text
    from ddgan.models import build_generator
    from ddgan.sampling import generate
    from eval.modes import sampling_steps
    from tests.conftest import perturbed

    config = make_config("demo", image_size=8, ch_mult=[1, 2], cond=False, num_classes=0, class_names=())
    G = perturbed(build_generator(config)).eval()
    one_step = replace(config, sample_steps=1)

    def images(c, **options):
        return np.concatenate(list(generate(G, c, range(4), progress=False, **options)))

    assert np.array_equal(images(one_step), images(config, num_steps=1))
    assert not np.array_equal(images(one_step), images(config))
    assert np.array_equal(images(one_step, num_steps=2), images(config))  # asking for all T still runs all T
    assert sampling_steps(one_step, None) == {"steps": 1} and sampling_steps(one_step, 2) == {"steps": 2}
    card = {c.sample_steps: card_text(c, {}, None, "model") for c in (config, one_step)}
    assert "sampled in 1 of them" in card[1] and "sampled in" not in card[None]
    assert {**PRESETS["demo"], "sample_steps": 1} == PRESETS["demo_onestep"]
    for bad in (0, 3, True):
        with pytest.raises(ValueError, match=r"--sample_steps must be an integer in 1\.\.2"):
            make_config("demo", sample_steps=bad)
