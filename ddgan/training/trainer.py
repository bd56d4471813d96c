"""One DDGAN training iteration (`Trainer.run_iteration`), the state it changes, and how that state is saved.

An iteration follows the paper: a D step on a real pair (x_t, x_{t+1}) ~ q with the R1 penalty every
`lazy_reg` steps and a fake pair whose x_t is drawn from the posterior given G's x'_0; then a G step on
fresh t and pairs with the non-saturating loss; then the EMA of G. Options off in every preset change the
losses (--loss=relativistic, --r2_gamma) and augment D's pairs (ADA, `ddgan.training.augment`); --objective
(`ddgan.diffusion.objectives`: SIDDM's, UFOGen's) changes what D judges and adds terms to G's loss. The
learning rates follow a cosine in images seen, so the schedule does not depend on the number of processes.
An iteration whose loss is not finite raises NonFiniteError and leaves the networks, optimizers, EMA and
counters as they were. The run around it (folder, data, checkpoints, signals) is `ddgan.training.loop`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from ddgan.config import Config
from ddgan.diffusion import losses
from ddgan.diffusion.objectives import Fake, make_objective
from ddgan.diffusion.process import Diffusion
from ddgan.models import build_discriminator, build_generator
from ddgan.models.space import space_for
from ddgan.runtime import distributed
from ddgan.runtime.distributed import Context
from ddgan.runtime.precision import autocast, run_precision
from ddgan.spaces import Space
from ddgan.training.augment import AdaptiveAugment


class NonFiniteError(ArithmeticError):
    """A loss became NaN or infinite."""


def cosine_lr(base: float, minimum: float, progress: float) -> float:
    """Cosine decay from `base` at progress 0 to `minimum` at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    return minimum + (base - minimum) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """G, D, the EMA of G, their optimizers and the iteration's random stream, for one process."""

    def __init__(self, config: Config, context: Context | None = None, space: Space | None = None,
                 build_networks: Callable[[Config], tuple[torch.nn.Module, torch.nn.Module]] | None = None):
        """build_networks: (G, D) for a config instead of NCSN++ and the image D (`ddgan toy`'s MLPs)."""
        self.config = config
        self.context = context or Context()
        self.space = space or space_for(config)  # what the networks see, made from each data batch
        device = self.device = self.context.device
        if device.type == "cuda" and config.tf32:  # process-wide, so the benchmark's iterations get it too
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        G, D = build_networks(config) if build_networks else (build_generator(config), build_discriminator(config))
        self.G, self.D = G.to(device), D.to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.diffusion = Diffusion.from_config(config).to(device)
        self.objective = make_objective(config.objective, self.diffusion, config.ac_w, config.ufo_rec_w)
        # The fused kernels read and write each parameter once: on the CPU 3x faster than foreach (61 M params).
        betas = (config.beta1, config.beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas, fused=True)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas, fused=True)
        self.amp_dtype, self.channels_last = run_precision(config.amp, device, self.G, config.channels_last)
        if self.channels_last:
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        # fp16 needs loss scaling; bf16 keeps fp32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        # ADA: off (None) unless --ada_target is set; its draws come from the iteration's stream.
        self.augment = AdaptiveAugment(config.ada_target, config.ada_kimg, config.batch_size, self.context) \
            if config.ada_target > 0 else None

        # Every rank draws its own t, noise and z; the stream is part of the saved state.
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(config.seed * 1_000_003 + self.context.rank)
        self.step = 0  # iterations completed (a skipped one does not count)
        self.images_seen = 0  # over all ranks, in completed iterations
        self.batches_drawn = 0  # this rank's data batches used, skipped iterations included: the data position

        self.G_train, self.D_train = self.G, self.D
        if self.context.distributed:
            ids = [device.index] if device.type == "cuda" else None
            # Without time conditioning the blocks' time projections get no gradient.
            self.G_train = DistributedDataParallel(self.G, device_ids=ids, broadcast_buffers=False,
                                                   find_unused_parameters=not config.time_conditioning)
            self.D_train = DistributedDataParallel(self.D, device_ids=ids, broadcast_buffers=False)
        # D is never compiled: R1 needs its double backward, which compiled graphs do not support.
        self.G_forward = self.G
        if config.compile:  # off unless asked: not yet measured to pay off on a GPU
            self.G_forward, self.G_train = torch.compile(self.G), torch.compile(self.G_train)

    # -- one iteration -------------------------------------------------------------------------------

    def autocast(self):
        """The run's mixed precision for the networks' forward passes."""
        return autocast(self.device, self.amp_dtype)

    def _randn(self, *shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.rng, device=self.device)

    def _random_pairs(self, x0: torch.Tensor):
        """t uniform in 0..T-1 and a pair (x_t, x_{t+1}) ~ q given the data batch."""
        t = torch.randint(0, self.config.num_timesteps, (x0.shape[0],), generator=self.rng, device=self.device)
        x_t, x_next = self.diffusion.q_sample_pairs(x0, t, generator=self.rng)
        return t, x_t, x_next

    def _fake_sample(self, generator, x_next: torch.Tensor, t: torch.Tensor,
                     labels: tuple) -> tuple[Fake, torch.Tensor]:
        """(D's fake input, x'_0) with x'_0 = G(x_{t+1}, t, z[, y]); the objective makes the fake from x'_0."""
        z = self._randn(x_next.shape[0], self.config.nz)
        with self.autocast():
            x0_pred = generator(x_next, t, z, *labels).float()
        return self.objective.fake(x0_pred, x_next, t, self.rng), x0_pred

    def set_learning_rates(self) -> float:
        """Cosine decay in images seen (or constant with --no_lr_decay); returns the progress in [0, 1]."""
        c = self.config
        progress = self.images_seen / (c.kimg * 1000)
        for opt, base in ((self.opt_G, c.lr_g), (self.opt_D, c.lr_d)):
            lr = base if c.no_lr_decay else cosine_lr(base, c.lr_min, progress)
            for group in opt.param_groups:
                group["lr"] = lr
        return progress

    def flip_mask(self, batch: int) -> torch.Tensor | None:
        """Which images of a batch to mirror, drawn from the iteration's stream (so a resumed run flips alike)."""
        if not self.config.hflip:
            return None
        return torch.rand(batch, generator=self.rng, device=self.device) < 0.5

    def prepare_batch(self, x0: torch.Tensor) -> torch.Tensor:
        """x_0 of a data batch: on the device, in float32, randomly flipped, in the run's space and layout."""
        x0 = x0.to(self.device, non_blocking=True).float()
        x0 = self.space.training_batch(x0, self.flip_mask(x0.shape[0]), self._randn)
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return x0

    def r1_due(self) -> bool:
        """Whether this iteration's D step adds the R1 penalty (every lazy_reg steps)."""
        return self.config.r1_gamma > 0 and self._penalty_step()

    def r2_due(self) -> bool:
        """Whether this iteration's D step adds the R2 penalty (on the same steps as R1)."""
        return self.config.r2_gamma > 0 and self._penalty_step()

    def _penalty_step(self) -> bool:
        return self.config.lazy_reg is None or self.step % self.config.lazy_reg == 0

    def _augmented(self, x: torch.Tensor, x_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D's pairs as D sees them: augmented alike (ADA), in the run's layout; unchanged without ADA."""
        if self.augment is None:
            return x, x_next
        x, x_next = self.augment.augment(x, x_next, self.rng)
        if self.channels_last:
            x, x_next = (v.contiguous(memory_format=torch.channels_last) for v in (x, x_next))
        return x, x_next

    def run_iteration(self, x0: torch.Tensor, y: torch.Tensor | None = None, check_finite: bool = True) -> dict:
        """One D step and one G step on a data batch in [-1, 1]; returns the step's scalars as tensors.

        y: the batch's class labels for a conditional run: real pairs carry them, and G makes its fake
        pairs for the same labels in both steps.

        With check_finite, a non-finite D or G loss raises NonFiniteError on every rank and the iteration
        changes nothing but the random stream and the data position (`batches_drawn`): D's step is undone
        when G's loss turns out non-finite.
        """
        self.batches_drawn += 1
        x0 = self.prepare_batch(x0)
        labels = () if y is None else (y.to(self.device, non_blocking=True),)
        progress = self.set_learning_rates()
        stats = {}
        undo_D_step, d_scalars = self.d_step(x0, labels, stats, check_finite)
        loss_G = self.g_step(x0, labels, progress, stats, undo_D_step)
        self.scaler.update()
        self.update_ema()
        self.step += 1
        self.images_seen += x0.shape[0] * self.context.world_size
        evidence = d_scalars.pop("evidence")
        if self.augment is not None:  # after both steps, so that a skipped iteration leaves p as it was
            self.augment.observe(evidence)
            stats["augment/p"] = self.augment.p
        real_logits, fake_logits = d_scalars.pop("logits/D_real"), d_scalars.pop("logits/D_fake")
        stats.update({**d_scalars, "loss/G": loss_G, "logits/D_real": real_logits, "logits/D_fake": fake_logits})
        return stats

    def _classify(self, labels: tuple) -> dict:
        """D's keyword asking for class logits too, when the run trains with the class loss."""
        return {"class_logits": True} if self.config.class_loss > 0 and labels else {}

    def d_step(self, x0: torch.Tensor, labels: tuple, stats: dict,
               check_finite: bool) -> tuple[StepUndo | None, dict]:
        """D's step: real pairs (+ R1) and fake pairs from the current G, judged in one pass of D. Adds its
        penalties to `stats`; returns what undoes the step (with check_finite, else None) and its losses."""
        c = self.config
        classify = self._classify(labels)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        t, x_t, x_next = self._random_pairs(x0)
        apply_r1, apply_r2 = self.r1_due(), self.r2_due()
        x_real, real_condition = self.objective.real(x_t, x_next)
        x_real.requires_grad_(apply_r1)
        with torch.no_grad():
            fake, _ = self._fake_sample(self.G_forward, x_next, t, labels)
        x_fake = fake.sample.requires_grad_(apply_r2)
        pairs, pairs_next = self._augmented(torch.cat([x_real, x_fake]), torch.cat([real_condition, fake.condition]))
        with self.autocast():
            # One batch of twice the size costs less than two (per-op overhead, larger GEMMs on the CPU);
            # D's minibatch-stddev groups stay within each half, so the logits are those of two calls.
            out = self.D_train(pairs, t.repeat(2), pairs_next, *(y.repeat(2) for y in labels), batches=2, **classify)
        logits, class_logits = out if classify else (out, None)
        real_logits, fake_logits = logits.view(-1).chunk(2)
        if c.loss == "relativistic":  # one term, each real pair against its fake
            adversarial = losses.d_loss_relativistic(real_logits, fake_logits)
            terms = {"loss/D": adversarial.detach()}
            evidence = real_logits.detach() - fake_logits.detach()
        else:
            loss_real, loss_fake = losses.d_loss_real(real_logits), losses.d_loss_fake(fake_logits)
            adversarial = loss_real + loss_fake
            terms = {"loss/D": loss_real.detach() + loss_fake.detach(), "loss/D_real": loss_real.detach(),
                     "loss/D_fake": loss_fake.detach()}
            evidence = real_logits.detach()
        loss = adversarial
        if classify:  # D learns to name the class of real pairs only, so that it cannot learn G's mistakes
            d_class = losses.class_loss(class_logits[:x_real.shape[0]], labels[0])
            stats["loss/D_class"] = d_class.detach()
            loss = loss + c.class_loss * d_class
        if apply_r1:
            r1 = losses.gradient_penalty(real_logits, x_real, c.r1_gamma, self.scaler)
            loss = loss + r1
            stats["loss/r1"] = r1.detach()
        if apply_r2:
            r2 = losses.gradient_penalty(fake_logits, x_fake, c.r2_gamma, self.scaler)
            loss = loss + r2
            stats["loss/r2"] = r2.detach()
        self.scaler.scale(loss).backward()
        undo = None
        if check_finite:
            self._check_finite("D loss", terms["loss/D"])
            undo = StepUndo(self.D, self.opt_D, self.scaler)
        self.scaler.step(self.opt_D)
        return undo, {**terms, "logits/D_real": real_logits.detach().float().mean(),
                      "logits/D_fake": fake_logits.detach().float().mean(), "evidence": evidence}

    def g_step(self, x0: torch.Tensor, labels: tuple, progress: float, stats: dict,
               undo_D_step: StepUndo | None) -> torch.Tensor:
        """G's step on fresh t and pairs; D is only read, so its plain module is used (no DDP sync). A non-finite
        loss undoes D's step (`undo_D_step`, given when the iteration checks) and raises NonFiniteError. Adds
        its extra terms to `stats`; returns G's loss."""
        c = self.config
        classify = self._classify(labels)
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        t, x_t, x_next = self._random_pairs(x0)
        fake, x0_pred = self._fake_sample(self.G_train, x_next, t, labels)
        x_fake = fake.sample
        if c.loss == "relativistic":  # D judges the real pair beside the fake one made from its x_{t+1}
            x_real, real_condition = self.objective.real(x_t, x_next)
            pairs, pairs_next = self._augmented(torch.cat([x_real, x_fake]),
                                                torch.cat([real_condition, fake.condition]))
            with self.autocast():
                out = self.D(pairs, t.repeat(2), pairs_next, *(y.repeat(2) for y in labels), batches=2, **classify)
            logits, class_logits = out if classify else (out, None)
            real_logits, fake_logits = logits.view(-1).chunk(2)
            class_logits = None if class_logits is None else class_logits[x_fake.shape[0]:]
            loss_G = losses.g_loss_relativistic(fake_logits, real_logits)
        else:
            pairs, pairs_next = self._augmented(x_fake, fake.condition)
            with self.autocast():
                out = self.D(pairs, t, pairs_next, *labels, **classify)
            logits, class_logits = out if classify else (out, None)
            loss_G = losses.g_loss(logits.view(-1))
        if classify:  # G's pairs should be named as the label they were made for
            g_class = losses.class_loss(class_logits, labels[0])
            stats["loss/G_class"] = g_class.detach()
            loss_G = loss_G + c.class_loss * g_class
        for name, (weight, value) in self.objective.generator_terms(x0, x0_pred, fake, x_next, t, self.rng).items():
            stats[f"loss/{name}"] = value.detach()
            loss_G = loss_G + weight * value
        if c.rec_loss:  # WaveDiff: G's x'_0 should also be close to the x_0 its pair came from
            rec = losses.reconstruction(x0_pred, x0)
            stats["loss/rec"] = rec.detach()
            loss_G = loss_G + losses.reconstruction_weight(c.rec_loss_schedule, progress, c.rec_loss_weight) * rec
        self.scaler.scale(loss_G).backward()
        if undo_D_step is not None:
            self._check_finite("G loss", loss_G.detach(), before_raising=undo_D_step.undo)
        self.scaler.step(self.opt_G)
        return loss_G.detach()

    def _check_finite(self, quantity: str, value: torch.Tensor, before_raising=None) -> None:
        """Raise NonFiniteError on every rank when `value` is NaN or infinite on any (so all skip alike)."""
        finite_here = bool(torch.isfinite(value).all())
        if distributed.any_true(not finite_here, self.context):
            if before_raising is not None:
                before_raising()
            became = "became non-finite on another rank" if finite_here else f"became {value.item()}"
            raise NonFiniteError(
                f"{quantity} {became} at step {self.step} ({self.images_seen / 1000:.1f} kimg); "
                "lower --lr_g/--lr_d or raise --r1_gamma, or pass --skip_nonfinite=N to tolerate a few")

    @torch.no_grad()
    def update_ema(self) -> None:
        """G_ema <- decay * G_ema + (1 - decay) * G (buffers copied)."""
        decay = self.config.ema_decay if self.config.use_ema else 0.0
        ema_params, params = list(self.G_ema.parameters()), list(self.G.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buffer, buffer in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def grad_norms(self) -> dict:
        """Global gradient norms of G and D from the last step (for monitoring; syncs the host)."""
        out = {}
        for name, net in (("G", self.G), ("D", self.D)):
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            if grads:
                out[f"grad_norm/{name}"] = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(g.float()) for g in grads]))
        return out

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything that a resumed run needs to continue exactly (this rank's random stream included)."""
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "scaler": self.scaler.state_dict(), "step": self.step, "images_seen": self.images_seen,
            "batches_drawn": self.batches_drawn,
            **({"augment": self.augment.state_dict()} if self.augment is not None else {}),
            "rng": {"iteration": self.rng.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from `state_dict` (or a checkpoint holding the same keys)."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        for opt, key in ((self.opt_G, "opt_G"), (self.opt_D, "opt_D")):
            opt.load_state_dict(state[key])
            match_optimizer_state(opt)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        if self.augment is not None and state.get("augment") is not None:
            self.augment.load_state_dict(state["augment"])
        # Checkpoints from before skipped iterations were counted: every drawn batch was a completed step.
        self.batches_drawn = int(state.get("batches_drawn", self.step))
        rng = state.get("rng") or {}
        saved_stream = rng.get("iteration")
        # A CPU and a CUDA generator have states of different kinds (and sizes): a run resumed on the
        # other kind of device, like every rank of a distributed run but rank 0, starts a new stream.
        if (saved_stream is not None and not self.context.distributed
                and saved_stream.numel() == self.rng.get_state().numel()):
            self.rng.set_state(saved_stream)
        else:
            self.rng.manual_seed(self.config.seed * 1_000_003 + self.context.rank + 7919 * self.step)
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            for index, cuda_state in enumerate(rng["cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, index)


class StepUndo:
    """A copy of a network, its optimizer and the loss scaler before an optimizer step, to undo that step.

    Taken only when the iteration checks its losses; it costs one copy of D's weights and Adam moments
    (about 1% of a CIFAR-10 iteration on the CPU).
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.module, self.optimizer, self.scaler = module, optimizer, scaler
        self.params = [p.detach().clone() for p in module.parameters()]
        self.optimizer_state = {param: {name: value.clone() if torch.is_tensor(value) else value
                                        for name, value in state.items()}
                                for param, state in optimizer.state.items()}
        self.scaler_state = scaler.state_dict()

    @torch.no_grad()
    def undo(self) -> None:
        """Put the weights, optimizer moments and loss scale back as they were."""
        torch._foreach_copy_([p.detach() for p in self.module.parameters()], self.params)
        self.optimizer.state.clear()
        self.optimizer.state.update(self.optimizer_state)
        if self.scaler.is_enabled():
            self.scaler.update()  # closes the scaler's iteration, or its next step() refuses to run
            self.scaler.load_state_dict(self.scaler_state)


def match_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Make a loaded Adam state fit its parameters: fused kernels, their layout and device.

    A saved group brings its own flags (older runs saved foreach Adam), and a saved moment keeps the
    memory layout it was saved with, which the fused kernels would read as the parameter's: a run resumed
    with another --channels_last would update with scrambled moments. Every tensor is copied, so the
    in-place updates never reach the state dict it was loaded from.
    """
    for group in opt.param_groups:
        group["foreach"], group["fused"] = None, True
    for param, param_state in opt.state.items():
        for name, value in param_state.items():
            if not torch.is_tensor(value):
                continue
            if name == "step":  # fused Adam keeps the step count as a float32 tensor on the parameter's device
                param_state[name] = value.to(device=param.device, dtype=torch.float32, copy=True)
            elif value.shape == param.shape:
                param_state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
            else:
                param_state[name] = value.clone()
