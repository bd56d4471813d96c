"""Trainer state across resumes that change the device kind, the memory layout or the Adam flavour."""

import pytest
import torch

from ddgan.config import make_config
from ddgan.diffusion import losses
from ddgan.training.trainer import NonFiniteError, Trainer
from tests.helpers import TINY as TRAINING_TINY

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
    """A CUDA generator's state (16 bytes) cannot be set on a CPU generator: the run reseeds instead, from the
    step, so that a resumed run does not replay the noise of its first iteration and two resumes agree."""
    config = make_config("demo", **TINY)
    trainer = Trainer(config)
    trainer.run_iteration(X0)
    state = trainer.state_dict()
    state["rng"]["iteration"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA run saves
    first_stream = Trainer(config).rng.get_state()
    streams = []
    for _ in range(2):
        resumed = Trainer(config)
        resumed.load_state_dict(state)
        streams.append(resumed.rng.get_state())
    assert torch.equal(streams[0], streams[1])
    assert not torch.equal(streams[0], first_stream)
    stats = resumed.run_iteration(X0)
    assert resumed.step == 2 and all(torch.isfinite(value) for value in stats.values())


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


# -- an iteration whose loss is not finite changes nothing but the random stream and the data position ----


def _state_of(trainer: Trainer) -> dict:
    """Copies of everything a skipped iteration must leave alone: weights, optimizer state, counters."""
    state = {"step": trainer.step, "images_seen": trainer.images_seen}
    for name in ("G", "D", "G_ema"):
        state |= {f"{name}.{key}": value.clone() for key, value in getattr(trainer, name).state_dict().items()}
    for name in ("opt_G", "opt_D"):
        opt_state = getattr(trainer, name).state_dict()
        # Not the learning rate: every iteration sets it afresh from images_seen before stepping.
        state[f"{name}.param_groups"] = [{key: value for key, value in group.items() if key != "lr"}
                                         for group in opt_state["param_groups"]]
        for index, param_state in opt_state["state"].items():
            state |= {f"{name}.state.{index}.{key}": value.clone() for key, value in param_state.items()}
    return state


def _assert_unchanged(before: dict, after: dict) -> None:
    assert after.keys() == before.keys()
    for key, value in before.items():
        if torch.is_tensor(value):
            assert torch.equal(after[key], value), key
        else:
            assert after[key] == value, key


def _nan_once(monkeypatch, name: str, before_returning=lambda: None) -> None:
    """Make `losses.<name>` return NaN on its next call only (calling `before_returning` then)."""
    real, calls = getattr(losses, name), []

    def patched(logits):
        calls.append(None)
        if len(calls) == 1:
            before_returning()
            return real(logits) * float("nan")
        return real(logits)

    monkeypatch.setattr(losses, name, patched)


def _trained_once() -> Trainer:
    """A trainer after one iteration, so that both optimizers hold moments a skipped step could disturb."""
    trainer = Trainer(make_config("demo", **TINY))
    trainer.run_iteration(X0)
    return trainer


def _assert_next_iteration_is_the_second(trainer: Trainer) -> None:
    stats = trainer.run_iteration(X0)
    assert all(torch.isfinite(value) for value in stats.values())
    assert (trainer.step, trainer.images_seen, trainer.batches_drawn) == (2, 8, 3)
    # A skipped step that leaked into Adam would show as a third step.
    for opt in (trainer.opt_G, trainer.opt_D):
        assert [state["step"].item() for state in opt.state.values()] == [2.0] * len(opt.state)


def test_non_finite_g_loss_undoes_the_d_step_and_changes_nothing(monkeypatch):
    trainer = _trained_once()
    before = _state_of(trainer)
    d_after_its_step = []

    def remember_d():
        d_after_its_step.extend(param.detach().clone() for param in trainer.D.parameters())

    _nan_once(monkeypatch, "g_loss", before_returning=remember_d)
    with pytest.raises(NonFiniteError, match="G loss became nan at step 1"):
        trainer.run_iteration(X0)
    # D had really stepped when G's loss was found non-finite, so the equality below shows an undo.
    assert any(not torch.equal(moved, before[f"D.{name}"])
               for moved, (name, _) in zip(d_after_its_step, trainer.D.named_parameters(), strict=True))
    _assert_unchanged(before, _state_of(trainer))
    assert trainer.batches_drawn == 2  # the batch was used up: a resumed run must not draw it again
    _assert_next_iteration_is_the_second(trainer)


def test_non_finite_d_loss_changes_nothing_and_skips_the_g_step(monkeypatch):
    trainer = _trained_once()
    before = _state_of(trainer)
    _nan_once(monkeypatch, "d_loss_fake")
    real_g_loss, g_calls = losses.g_loss, []
    monkeypatch.setattr(losses, "g_loss", lambda logits: g_calls.append(None) or real_g_loss(logits))
    with pytest.raises(NonFiniteError, match="D loss became nan at step 1"):
        trainer.run_iteration(X0)
    assert g_calls == []
    _assert_unchanged(before, _state_of(trainer))
    assert trainer.batches_drawn == 2
    _assert_next_iteration_is_the_second(trainer)


def test_batches_drawn_survives_a_resume_and_older_checkpoints_count_steps(monkeypatch):
    trainer = _trained_once()
    _nan_once(monkeypatch, "g_loss")
    with pytest.raises(NonFiniteError):
        trainer.run_iteration(X0)
    state = trainer.state_dict()
    assert (state["step"], state["batches_drawn"]) == (1, 2)
    resumed = Trainer(make_config("demo", **TINY))
    resumed.load_state_dict(state)
    assert (resumed.step, resumed.batches_drawn) == (1, 2)
    # Before skipped iterations were counted, every batch drawn was a completed step.
    del state["batches_drawn"]
    older = Trainer(make_config("demo", **TINY))
    older.load_state_dict(state)
    assert (older.step, older.batches_drawn) == (1, 1)
