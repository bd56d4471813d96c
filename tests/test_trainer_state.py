"""Trainer state across resumes that change the device kind, the memory layout or the Adam flavour."""

import pytest
import torch

from ddgan import losses
from ddgan.config import make_config
from ddgan.iteration import NonFiniteError, Trainer
from tests.test_training import TINY as TRAINING_TINY

TINY = TRAINING_TINY | dict(image_size=8, ch_mult=[1, 2], batch_size=4, lazy_reg=2)
X0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_resume_with_another_layout_steps_like_the_saved_layout():
    """Saved moments keep their layout; the fused kernels would read them as the parameter's."""
    saved = Trainer(make_config("demo", **TINY, channels_last=False))
    saved.run_iteration(X0)
    state = saved.state_dict()
    results = []
    for channels_last in (False, True):
        resumed = Trainer(make_config("demo", **TINY, channels_last=channels_last))
        resumed.load_state_dict(state)
        for param, param_state in resumed.opt_G.state.items():
            assert param_state["exp_avg"].stride() == param.stride()
        # The same gradients in each layout, so only the optimizer's reading of its state can differ.
        for param in resumed.G.parameters():
            values = torch.linspace(-1e-3, 1e-3, param.numel()).view(param.shape)
            param.grad = torch.empty_like(param).copy_(values)
        resumed.opt_G.step()
        results.append(torch.cat([p.detach().flatten() for p in resumed.G.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


def test_checkpoint_of_foreach_adam_resumes_on_fused_adam():
    older = Trainer(make_config("demo", **TINY))
    for opt in (older.opt_G, older.opt_D):
        for group in opt.param_groups:
            group["foreach"], group["fused"] = True, None
    older.run_iteration(X0)
    state = older.state_dict()
    assert state["opt_G"]["param_groups"][0]["foreach"] is True
    resumed = Trainer(make_config("demo", **TINY))
    resumed.load_state_dict(state)
    group = resumed.opt_G.param_groups[0]
    assert group["fused"] is True and not group["foreach"]
    steps = [s["step"] for s in resumed.opt_G.state.values()]
    assert all(s.dtype == torch.float32 and s.item() == 1 for s in steps)
    resumed.run_iteration(X0)
    assert all(s.item() == 2 for s in (st["step"] for st in resumed.opt_G.state.values()))


def test_random_stream_of_another_device_kind_is_replaced_not_loaded():
    """A CUDA generator's state (16 bytes) cannot be set on a CPU generator: the run reseeds instead."""
    trainer = Trainer(make_config("demo", **TINY))
    trainer.run_iteration(X0)
    state = trainer.state_dict()
    state["rng"]["iteration"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA run saves
    resumed = Trainer(make_config("demo", **TINY))
    resumed.load_state_dict(state)
    resumed.run_iteration(X0)
    assert resumed.step == 2


def test_fp16_step_after_a_skipped_g_step_runs(monkeypatch):
    """The D step has used the scaler when the G loss is found non-finite; the next step must still run."""
    trainer = Trainer(make_config("demo", **TINY, amp="fp16"))
    assert trainer.scaler.is_enabled()
    real = losses.g_loss
    monkeypatch.setattr(losses, "g_loss", lambda logits: real(logits) * float("nan"))
    with pytest.raises(NonFiniteError, match="G loss became nan"):
        trainer.run_iteration(X0)
    monkeypatch.setattr(losses, "g_loss", real)
    trainer.run_iteration(X0)
    assert trainer.step == 1
