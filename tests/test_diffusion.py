"""The diffusion tables, the forward process, the posterior and the sampler."""

import math

import pytest
import torch

from ddgan.diffusion.process import Diffusion
from tests.conftest import load_fixture

TABLES = ("a_s", "sigmas", "a_s_cum", "sigmas_cum", "posterior_mean_coef1", "posterior_mean_coef2",
          "posterior_variance", "posterior_log_variance_clipped")


@pytest.mark.parametrize("case", [f"{s}_T{n}" for s in ("vp", "geometric") for n in (1, 2, 4, 8)])
def test_tables_match_reference(case):
    ref = load_fixture("diffusion_coefficients.pt")[case]
    schedule = "geometric" if case.startswith("geometric") else "vp"
    diffusion = Diffusion(ref["num_timesteps"], ref["beta_min"], ref["beta_max"], schedule=schedule)
    for name in TABLES:
        ours = getattr(diffusion, name)
        assert ours.dtype == torch.float64
        expected = ref[name].double()
        assert ours.shape == expected.shape, name
        # The log of a clipped zero variance is -46; compare it relatively.
        tol = 1e-6 * max(1.0, expected.abs().max().item()) if name.endswith("clipped") else 1e-6
        torch.testing.assert_close(ours, expected, atol=tol, rtol=0, msg=lambda m, n=name: f"{case} {n}: {m}")


def test_vp_schedule_endpoints():
    d = Diffusion(4)
    assert d.a_s_cum[0] == 1 and d.sigmas_cum[0] == 0
    # At t = 1 the VP marginal keeps exp(-0.25*19.9 - 0.05) of the signal, relative to t = eps.
    t0 = 1e-3
    log_mean = lambda t: -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    # Steps are float32 numbers as in the original, so the product agrees to float32 rounding of beta.
    assert d.a_s_cum[-1].item() == pytest.approx(math.exp(log_mean(1.0) - log_mean(t0)), rel=1e-5)


def test_q_sample_pairs_moments_match_closed_form():
    d = Diffusion(4)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    for step in range(4):
        t = torch.full((n,), step, dtype=torch.int64)
        x_t, x_next = d.q_sample_pairs(x0, t, generator=g)
        a_cum, s_cum = d.a_s_cum[step].item(), d.sigmas_cum[step].item()
        a_next, s_next = d.a_s_cum[step + 1].item(), d.sigmas_cum[step + 1].item()
        se = 5 / math.sqrt(n)
        assert x_t.mean().item() == pytest.approx(a_cum * 0.7, abs=se)
        assert x_t.var().item() == pytest.approx(s_cum**2, abs=5 * se)
        assert x_next.mean().item() == pytest.approx(a_next * 0.7, abs=se)
        assert x_next.var().item() == pytest.approx(s_next**2, abs=5 * se)
        cov = ((x_t - x_t.mean()) * (x_next - x_next.mean())).mean().item()
        assert cov == pytest.approx(d.a_s[step + 1].item() * s_cum**2, abs=5 * se)


def test_posterior_equals_gaussian_conditioning():
    for schedule, bmin, bmax in (("vp", 0.1, 20.0), ("geometric", 0.01, 0.9)):
        d = Diffusion(8, bmin, bmax, schedule=schedule)
        x0, x_next = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-1.1, dtype=torch.float64)
        for step in range(8):
            # Joint of (x_t, x_{t+1}) given x_0, written from the one-step kernel and the marginal.
            a, s = d.a_s_cum[step], d.sigmas_cum[step]
            k, sk = d.a_s[step + 1], d.sigmas[step + 1]
            var_t, var_next, cov = s**2, (k * s) ** 2 + sk**2, k * s**2
            mean_t, mean_next = a * x0, k * a * x0
            if step == 0:
                # x_0 is the data itself: the posterior is a point mass on x_0.
                want_mean, want_var = x0, torch.tensor(0.0, dtype=torch.float64)
            else:
                want_mean = mean_t + cov / var_next * (x_next - mean_next)
                want_var = var_t - cov**2 / var_next
            t = torch.tensor([step])
            mean, var, log_var = d.posterior(x0.view(1, 1), x_next.view(1, 1), t)
            # Steps are defined by float32 betas and alphas (as in the original), which agree with
            # alpha = 1 - beta only to float32 precision: compare at that level.
            assert mean.item() == pytest.approx(want_mean.item(), abs=1e-5)
            assert var.item() == pytest.approx(want_var.item(), abs=1e-6)
            if step > 0:
                assert log_var.item() == pytest.approx(math.log(want_var.item()), abs=1e-4)


def test_one_step_with_oracle_lands_on_exact_posterior():
    d = Diffusion(2)
    n, x0_value = 100_000, -0.4
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((n, 1, 1, 1), x0_value, dtype=torch.float64)
    t = torch.ones(n, dtype=torch.int64)
    x_t, x_next = d.q_sample_pairs(x0, t, generator=g)
    oracle = lambda x, t, z: x0
    out = d.posterior_sample(oracle(x_next, t, None), x_next, t, generator=g)
    mean, var, _ = d.posterior(x0, x_next, t)
    residual = (out - mean) / var.sqrt()
    assert residual.mean().item() == pytest.approx(0.0, abs=0.02)
    assert residual.std().item() == pytest.approx(1.0, abs=0.02)
    # The sampled x_t and the true x_t are exchangeable given (x_0, x_{t+1}): same distribution.
    assert out.mean().item() == pytest.approx(x_t.mean().item(), abs=0.02)
    assert out.std().item() == pytest.approx(x_t.std().item(), abs=0.02)


def test_no_noise_at_step_zero():
    d = Diffusion(4)
    x0, x_next = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.zeros(3, dtype=torch.int64)
    a = d.posterior_sample(x0, x_next, t, generator=torch.Generator().manual_seed(0))
    b = d.posterior_sample(x0, x_next, t, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, d.posterior(x0, x_next, t)[0])


class RecordingNet(torch.nn.Module):
    """A stand-in generator that records the steps it sees and returns a fixed function of its input."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def forward(self, x, t, z):
        self.steps.append(t[0].item())
        assert t.dtype == torch.int64 and z.shape == (x.shape[0], 5)
        return torch.tanh(x + z.mean(dim=1).view(-1, 1, 1, 1))


@pytest.mark.parametrize("num_timesteps", [1, 2, 4])
def test_sampler_shapes_and_determinism(num_timesteps):
    d = Diffusion(num_timesteps)
    net = RecordingNet()
    x_T = d.prior((3, 2, 8, 8), generator=torch.Generator().manual_seed(5))
    a = d.sample(net, x_T, nz=5, generator=torch.Generator().manual_seed(7))
    assert net.steps == list(reversed(range(num_timesteps)))
    b = d.sample(net, x_T, nz=5, generator=torch.Generator().manual_seed(7))
    c = d.sample(net, x_T, nz=5, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 2, 8, 8)
    torch.testing.assert_close(a, b)
    if num_timesteps > 1:  # with T=1 the only step is noise-free and z enters only through the net
        assert not torch.allclose(a, c)


def test_per_row_generators_make_rows_independent_of_batch():
    d = Diffusion(2)
    net = RecordingNet()
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    full = d.sample(net, d.prior((4, 1, 4, 4), gens(range(4))), nz=5, generator=gens(range(4)))
    part = d.sample(net, d.prior((2, 1, 4, 4), gens([2, 3])), nz=5, generator=gens([2, 3]))
    torch.testing.assert_close(full[2:], part)


def test_tables_stay_float64_and_follow_device():
    d = Diffusion(2).to(torch.float16)
    assert d.a_s_cum.dtype == torch.float64
    x = torch.randn(2, 1, 2, 2, dtype=torch.float16)
    assert d.q_sample(x, torch.tensor([0, 2])).dtype == torch.float16


@pytest.mark.parametrize("kwargs, word", [
    (dict(num_timesteps=0), "num_timesteps"),
    (dict(num_timesteps=2.5), "num_timesteps"),
    (dict(num_timesteps=4, beta_min=20.0, beta_max=0.1), "beta_min"),
    (dict(num_timesteps=4, beta_min=0.01, beta_max=1.0, schedule="geometric"), "geometric"),
    (dict(num_timesteps=4, schedule="cosine"), "schedule"),
])
def test_bad_schedule_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Diffusion(**kwargs)


def test_bad_step_index():
    d = Diffusion(4)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"t must lie in 0\.\.3"):
        d.q_sample_pairs(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"t must lie in 0\.\.3"):
        d.posterior(x, x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer"):
        d.q_sample(x, torch.tensor([0.5, 1.0]))


def test_precomputed_noise_equals_generator_draws():
    d = Diffusion(2)
    net = RecordingNet()
    x_T = torch.randn(2, 1, 4, 4)
    g = torch.Generator().manual_seed(3)
    zs, noises = [], []
    for _ in range(2):  # the sampler draws z, then the posterior noise, at each step from T-1 down
        zs.append(torch.randn(2, 5, generator=g))
        noises.append(torch.randn(2, 1, 4, 4, generator=g))
    by_step = lambda draws: torch.stack(draws[::-1])
    a = d.sample(net, x_T, nz=5, zs=by_step(zs), noises=by_step(noises))
    b = d.sample(net, x_T, nz=5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
