"""What D judges and what G adds to its loss: DDGAN's objective and its successors', on one trainer.

Each objective answers three questions of the trainer's D and G steps, for a step index t, data x_0, the
real pair (x_t, x_{t+1}) ~ q and G's x'_0 = G(x_{t+1}, t, z):
- `real`: the (sample, condition) D is to accept;
- `fake`: the (sample, condition) D is to reject, made from x'_0;
- `generator_terms`: the terms G adds to its adversarial loss, each with its weight.

ddgan (Xiao et al. 2022): D judges joint pairs; the fake x_t is drawn from the posterior q(x_t | x_{t+1}, x'_0).
siddm (Xu et al. 2023): D judges the marginal of x_t alone (its condition input zeroed), and G matches the
    conditional q(x_{t+1} | x_t) with an auxiliary forward diffusion: its posterior sample, diffused forward
    one step, should land on the real x_{t+1} (squared error).
ufogen (Xu et al. 2024): D judges the marginal of x_t, the fake one made by diffusing x'_0 forward to t
    (not the posterior), and G adds the diffusion model's own loss: the squared error of the noise in x_{t+1}
    that x'_0 implies, SNR(t+1) ||x'_0 - x_0||^2 (their G is an epsilon-predicting diffusion model; unweighted,
    the term would pull a one-step sample from pure noise to the data's mean).

The 2-D mixture check (`ddgan toy`) trains through this same code with small MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddgan.diffusion.process import Diffusion, Generators

OBJECTIVES = ("ddgan", "siddm", "ufogen")


@dataclass
class Fake:
    """D's fake input: G's sample at step t (the posterior sample, or x'_0 diffused to t) and its condition."""

    sample: torch.Tensor  # what D judges, and what SIDDM's forward term diffuses
    condition: torch.Tensor  # D's x_{t+1} input (zeros where D judges the marginal)


class Objective:
    """DDGAN's: D judges joint pairs (x_t, x_{t+1}); x_t of a fake one comes from the posterior given x'_0."""

    name = "ddgan"
    marginal = False  # D judges x_t alone: its x_{t+1} input is zeroed

    def __init__(self, diffusion: Diffusion, aux_weight: float = 0.0, rec_weight: float = 0.0):
        self.diffusion = diffusion
        self.aux_weight = aux_weight  # siddm: weight of the auxiliary forward-diffusion term
        self.rec_weight = rec_weight  # ufogen: weight of G's diffusion (noise-prediction) loss

    def condition(self, x_next: torch.Tensor) -> torch.Tensor:
        """D's x_{t+1} input: the real x_{t+1}, or zeros where D judges the marginal of x_t."""
        return torch.zeros_like(x_next) if self.marginal else x_next

    def real(self, x_t: torch.Tensor, x_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (sample, condition) D accepts: q's x_t with its condition."""
        return x_t, self.condition(x_next)

    def fake_x_t(self, x0_pred: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor,
                 generator: Generators) -> torch.Tensor:
        """G's sample at step t: x_t ~ q(x_t | x_{t+1}, x'_0)."""
        return self.diffusion.posterior_sample(x0_pred, x_next, t, generator=generator)

    def fake(self, x0_pred: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, generator: Generators) -> Fake:
        """D's fake input made from G's x'_0 (the trainer passes it in float32)."""
        return Fake(self.fake_x_t(x0_pred, x_next, t, generator), self.condition(x_next))

    def generator_terms(self, x0: torch.Tensor, x0_pred: torch.Tensor, fake: Fake, x_next: torch.Tensor,
                        t: torch.Tensor, generator: Generators) -> dict[str, tuple[float, torch.Tensor]]:
        """G's terms besides the adversarial loss, by name: (weight, value)."""
        return {}


class SIDDM(Objective):
    """SIDDM's: D judges the marginal of x_t; G's posterior sample diffused forward one step should give x_{t+1}."""

    name = "siddm"
    marginal = True

    def generator_terms(self, x0, x0_pred, fake, x_next, t, generator):
        return {"aux": (self.aux_weight, forward_matching(self.diffusion, fake.sample, x_next, t, generator))}


class UFOGen(Objective):
    """UFOGen's: D judges the marginal of x_t, G's made by diffusing x'_0 forward to t; G adds the noise-prediction
    error that x'_0 implies in x_{t+1}."""

    name = "ufogen"
    marginal = True

    def fake_x_t(self, x0_pred, x_next, t, generator):
        return self.diffusion.q_sample(x0_pred, t, generator=generator)

    def generator_terms(self, x0, x0_pred, fake, x_next, t, generator):
        return {"diffusion": (self.rec_weight, noise_prediction_error(self.diffusion, x0_pred, x0, t + 1))}


def forward_matching(diffusion: Diffusion, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor,
                     generator: Generators) -> torch.Tensor:
    """Mean squared distance of x_t diffused one step forward (x_{t+1} ~ q(x_{t+1} | x_t)) to the real x_{t+1}."""
    return F.mse_loss(diffusion.q_step(x_t, t, generator=generator), x_next.float())


def noise_prediction_error(diffusion: Diffusion, x0_pred: torch.Tensor, x0: torch.Tensor,
                           t: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the noise that x'_0 implies in x_t = a x_0 + s eps (eps' = (x_t - a x'_0) / s):
    SNR(t) (x'_0 - x_0)^2, averaged, the loss of an epsilon-predicting diffusion model."""
    return (diffusion.snr(t, x0) * (x0_pred.float() - x0.float()).square()).mean()


OBJECTIVE_CLASSES = {cls.name: cls for cls in (Objective, SIDDM, UFOGen)}


def make_objective(name: str, diffusion: Diffusion, aux_weight: float = 0.0, rec_weight: float = 0.0) -> Objective:
    """The objective called `name` (one of OBJECTIVES) on `diffusion`."""
    if name not in OBJECTIVE_CLASSES:
        raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVE_CLASSES[name](diffusion, aux_weight, rec_weight)
