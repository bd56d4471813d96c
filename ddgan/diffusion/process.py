"""The forward process q and its Gaussian posterior, discretised into T steps, and the T-step sampler.

Indexing follows the original implementation: step index t in 0..T-1 names the output x_t of one
denoising step whose input is x_{t+1}; x_0 is data and x_T is (nearly) pure noise. Tables are computed
once in float64 and cast to the input's dtype at use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

SCHEDULES = ("vp", "geometric")
EPS_TIME = 1e-3  # the continuous time of step 0; t_i = i / T * (1 - eps) + eps
FIRST_BETA = 1e-8  # placeholder beta of the (unused) step into x_0, kept so tables align with the original
Generators = torch.Generator | Sequence[torch.Generator] | None


def vp_variance(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """Marginal variance 1 - alpha_bar(t) of the VP SDE with a linear beta(t)."""
    log_mean = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    return 1.0 - torch.exp(2.0 * log_mean)


def geometric_variance(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """Marginal variance growing geometrically from beta_min (t=0) to beta_max (t=1)."""
    return beta_min * (beta_max / beta_min) ** t


def time_grid(num_timesteps: int) -> torch.Tensor:
    """The T+1 continuous times of the discretisation, in float64."""
    i = torch.arange(num_timesteps + 1, dtype=torch.float64)
    return i / num_timesteps * (1.0 - EPS_TIME) + EPS_TIME


def check_schedule(num_timesteps: int, beta_min: float, beta_max: float, schedule: str) -> None:
    """Raise ValueError naming the argument when a schedule cannot be built."""
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not (math.isfinite(beta_min) and math.isfinite(beta_max)) or beta_min >= beta_max:
        raise ValueError(f"beta_min must be < beta_max (both finite), got beta_min={beta_min}, beta_max={beta_max}")
    if schedule == "vp" and beta_min < 0:
        raise ValueError(f"beta_min must be >= 0 for the vp schedule, got {beta_min}")
    if schedule == "geometric" and not (0 < beta_min and beta_max < 1):
        raise ValueError(
            "the geometric schedule needs 0 < beta_min < beta_max < 1 (its variance reaches beta_max at t=1 "
            f"and must stay below 1), got beta_min={beta_min}, beta_max={beta_max}"
        )


def randn(shape: Sequence[int], generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; a list of generators draws row i of the batch from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per row")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator]
    return torch.stack(rows)


def is_step_count(steps, num_timesteps: int) -> bool:
    """Whether `steps` is a number of sampling steps a T-step model can take: an integer (not a bool) in 1..T."""
    return isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= num_timesteps


def skipped_steps(num_timesteps: int, num_steps: int) -> list[int]:
    """The step indices a `num_steps`-step sampler runs, from T-1 down to 0, evenly spread (1 step: [T-1])."""
    if num_steps == 1:
        return [num_timesteps - 1]
    return [round((num_timesteps - 1) * (1 - i / (num_steps - 1))) for i in range(num_steps)]


class Diffusion(nn.Module):
    """A T-step discretised diffusion: q(x_t | x_0), q(x_{t+1} | x_t) and the posterior q(x_t | x_{t+1}, x_0)."""

    def __init__(self, num_timesteps: int, beta_min: float = 0.1, beta_max: float = 20.0, schedule: str = "vp"):
        super().__init__()
        check_schedule(num_timesteps, beta_min, beta_max, schedule)
        self.num_timesteps = num_timesteps
        self.beta_min, self.beta_max, self.schedule = float(beta_min), float(beta_max), schedule

        variance_fn = vp_variance if schedule == "vp" else geometric_variance
        alpha_bar = 1.0 - variance_fn(time_grid(num_timesteps), beta_min, beta_max)
        betas = torch.cat([torch.tensor([FIRST_BETA], dtype=torch.float64), 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
        # The original defines each step by float32 beta and alpha = 1 - beta; every table derived from
        # them is computed here in float64. (alpha[0] rounds to exactly 1, so index 0 of the marginal is
        # the data itself.)
        alphas = (1.0 - betas.float()).double()
        betas = betas.float().double()

        a_s = torch.sqrt(alphas)
        a_s_cum = torch.cumprod(a_s, 0)
        step_betas, step_alphas = betas[1:], alphas[1:]  # the T real steps x_i -> x_{i+1}
        alphas_cumprod = torch.cumprod(step_alphas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = step_betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)

        tables = {
            "betas": betas,
            "a_s": a_s,
            "sigmas": torch.sqrt(betas),
            "a_s_cum": a_s_cum,
            "sigmas_cum": torch.sqrt(1.0 - a_s_cum**2),
            "posterior_mean_coef1": step_betas * torch.sqrt(alphas_cumprod_prev) / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * torch.sqrt(step_alphas) / (1 - alphas_cumprod),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
        }
        for name, table in tables.items():
            self.register_buffer(name, table, persistent=False)

    @classmethod
    def from_config(cls, config) -> Diffusion:
        """The diffusion of a run's Config (its num_timesteps, beta_min, beta_max and schedule)."""
        return cls(config.num_timesteps, config.beta_min, config.beta_max, config.schedule)

    def extra_repr(self) -> str:
        beta = f"[{self.beta_min}, {self.beta_max}]"
        return f"num_timesteps={self.num_timesteps}, schedule={self.schedule!r}, beta={beta}"

    def _apply(self, fn, recurse=True):
        # Keep tables in float64 whatever module.to(dtype) asks: they are cast per use instead.
        tables = {name: buf for name, buf in self._buffers.items()}
        super()._apply(fn, recurse)
        for name, old in tables.items():
            new = self._buffers[name]
            if new.dtype != torch.float64:
                self._buffers[name] = old.to(device=new.device)
        return self

    def _check_index(self, t: torch.Tensor, upper: int) -> None:
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"t must be an integer step index tensor (int64), got dtype {t.dtype}")
        # A range check needs the values on the host; skip it on accelerators to keep steps sync-free, and
        # while torch.compile or torch.export (the ONNX sampler) traces, where the values are unknown.
        if (t.device.type == "cpu" and not torch.compiler.is_compiling() and t.numel()
                and (int(t.min()) < 0 or int(t.max()) > upper)):
            raise ValueError(f"t must lie in 0..{upper} for num_timesteps={self.num_timesteps}, got {t.tolist()}")

    def _at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped to broadcast over a batch like `like`, in its dtype."""
        values = table.to(like.device)[t.to(like.device)]
        return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def snr(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The signal-to-noise ratio a_s_cum[t]^2 / sigmas_cum[t]^2 of q(x_t | x_0), t in 1..T, shaped like `like`."""
        self._check_index(t, self.num_timesteps)
        return self._at(self.a_s_cum, t, like).square() / self._at(self.sigmas_cum, t, like).square()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 generator: Generators = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(a_s_cum[t] x_0, sigmas_cum[t]^2), t in 0..T."""
        self._check_index(t, self.num_timesteps)
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        return self._at(self.a_s_cum, t, x0) * x0 + self._at(self.sigmas_cum, t, x0) * noise

    def q_step(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
               generator: Generators = None) -> torch.Tensor:
        """Draw x_{t+1} ~ q(x_{t+1} | x_t) = N(a_s[t+1] x_t, sigmas[t+1]^2), t in 0..T-1."""
        self._check_index(t, self.num_timesteps - 1)
        if noise is None:
            noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return self._at(self.a_s, t + 1, x_t) * x_t + self._at(self.sigmas, t + 1, x_t) * noise

    def q_sample_pairs(self, x0: torch.Tensor, t: torch.Tensor, generator: Generators = None):
        """Draw a training pair (x_t, x_{t+1}) from q given data x_0, t in 0..T-1."""
        self._check_index(t, self.num_timesteps - 1)
        x_t = self.q_sample(x0, t, generator=generator)
        return x_t, self.q_step(x_t, t, generator=generator)

    def posterior(self, x0_pred: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_t | x_{t+1}, x_0), t in 0..T-1."""
        self._check_index(t, self.num_timesteps - 1)
        mean = self._at(self.posterior_mean_coef1, t, x_next) * x0_pred + \
            self._at(self.posterior_mean_coef2, t, x_next) * x_next
        variance = self._at(self.posterior_variance, t, x_next)
        log_variance = self._at(self.posterior_log_variance_clipped, t, x_next)
        return mean, variance, log_variance

    def posterior_sample(self, x0_pred: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor,
                         generator: Generators = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_{t+1}, x'_0); no noise is added at t = 0."""
        mean, _, log_variance = self.posterior(x0_pred, x_next, t)
        if noise is None:
            noise = randn(x_next.shape, generator, x_next.device, x_next.dtype)
        nonzero = (t != 0).to(x_next.dtype).to(x_next.device).view(-1, *([1] * (x_next.ndim - 1)))
        return mean + nonzero * torch.exp(0.5 * log_variance) * noise

    @torch.no_grad()
    def sample(self, net: Callable, x_T: torch.Tensor, nz: int, generator: Generators = None,
               zs: torch.Tensor | None = None, noises: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, start_step: int | None = None,
               num_steps: int | None = None) -> torch.Tensor:
        """Run the denoising steps from x_T: x'_0 = G(x_{t+1}, t, z[, y]) with fresh z, then x_t ~ posterior.

        `zs` [T, B, nz] and `noises` [T, B, C, H, W], indexed by step t, replace the draws from
        `generator` when given (precomputed noise makes each image a function of its own seed). `labels`
        [B] are the classes of a conditional G. With `start_step=k` the input is x_k instead of x_T and
        only the k remaining steps run (editing: diffuse an image to step k, then denoise it).

        With `num_steps` below T, only that many of the T steps run (`skipped_steps`), as UFOGen samples: each
        x'_0 is diffused forward to the next step's input, x_{s+1} ~ q(x_{s+1} | x'_0), and the last x'_0 is
        the sample. (The T steps themselves draw from the posterior, the sampler every objective trains.)
        """
        start_step = self.num_timesteps if start_step is None else start_step
        if not 1 <= start_step <= self.num_timesteps:
            raise ValueError(f"start_step must lie in 1..{self.num_timesteps}, got {start_step}")
        if num_steps is not None and not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"the number of sampling steps must lie in 1..{self.num_timesteps} (T), got {num_steps}")
        skipping = num_steps is not None and num_steps < self.num_timesteps
        if skipping and start_step != self.num_timesteps:
            raise ValueError("fewer sampling steps than T start from x_T: leave start_step out")
        steps = skipped_steps(self.num_timesteps, num_steps) if skipping else list(reversed(range(start_step)))
        x = x_T
        for i, step in enumerate(steps):
            t = torch.full((x.shape[0],), step, dtype=torch.int64, device=x.device)
            z = zs[step] if zs is not None else randn((x.shape[0], nz), generator, x.device, x.dtype)
            x0_pred = net(x, t, z) if labels is None else net(x, t, z, labels)
            noise = noises[step] if noises is not None else None
            if not skipping:
                x = self.posterior_sample(x0_pred.to(x.dtype), x, t, generator=generator, noise=noise)
            elif i + 1 < len(steps):
                next_input = torch.full_like(t, steps[i + 1] + 1)
                x = self.q_sample(x0_pred.to(x.dtype), next_input, noise=noise, generator=generator)
            else:
                x = x0_pred.to(x.dtype)
        return x

    def prior(self, shape: Sequence[int], generator: Generators = None, device=None,
              dtype=torch.float32) -> torch.Tensor:
        """Draw x_T ~ N(0, I), the sampler's starting point."""
        return randn(shape, generator, device, dtype)
