"""Helpers the tests share: tiny configs and models, checkpoints, comparisons, subprocess runs."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddgan.cli import main
from ddgan.config import make_config
from ddgan.models import build_generator, checkpoint
from ddgan.training.loop import run_training
from ddgan.training.start import config_from_flags
from tests.conftest import perturbed, save_generator_checkpoint

REPO = Path(__file__).resolve().parents[1]

SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


TINY = dict(num_channels_dae=8, nz=4, z_emb_dim=8, t_emb_dim=8, n_mlp=1, ngf=4, workers=0,
            log_every=1, snapshot_kimg=0.0, sample_kimg=0.0, grid_images=4, cond=False)


def tiny(preset: str, tmp_path, **overrides):
    """The preset's architecture shape at a width that trains in a second on the CPU."""
    shape = {
        "cifar10": dict(image_size=16, ch_mult=[1, 2, 2], attn_resolutions=[8]),
        "stackmnist": dict(image_size=16, ch_mult=[1, 2, 2], attn_resolutions=[8]),
        "celeba256": dict(image_size=256, ch_mult=[1, 1, 2, 2, 4, 4], attn_resolutions=[16], num_res_blocks=1),
        "lsun256": dict(image_size=256, ch_mult=[1, 1, 2, 2, 4, 4], attn_resolutions=[16], num_res_blocks=1),
        "demo": dict(image_size=8, ch_mult=[1, 2]),
    }[preset]
    values = dict(TINY, data="demo", batch_size=4, kimg=0.008, outdir=str(tmp_path), **shape)
    return make_config(preset, **{**values, **overrides})


def assert_resumes_exactly(config, stop_after: int, total_steps: int) -> Path:
    """A run stopped after `stop_after` steps and resumed ends in the very weights of an uninterrupted one,
    whose run folder is returned."""
    whole = run_training(config)
    half = run_training(config, max_steps=stop_after)  # stops early, as an interrupted run would
    assert checkpoint.load(half)["step"] == stop_after
    run_training(config_from_flags(resume=str(half)))
    a, b = checkpoint.load(whole), checkpoint.load(half)
    assert a["step"] == b["step"] == total_steps
    for net in ("G", "D", "G_ema"):
        for key, tensor in a[net].items():
            assert torch.equal(tensor, b[net][key]), f"{net}.{key} differs after resume"
    return whole


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 train.py FLAGS` on the CPU (gloo, one thread each); a non-zero exit fails."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "train.py"), *flags]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


class TinyFeatures(torch.nn.Module):
    """A fixed random strided conv and average pooling: 24-dim features of 299x299 images in [0, 255]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 24, kernel_size=23, stride=23).requires_grad_(False)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1)  # the same extractor in every process
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(0.1 * torch.randn(self.conv.bias.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x / 255 - 0.5)).mean((2, 3))


def tiny_generator(config, seed: int = 0):
    """A tiny generator with perturbed weights: at init its output layer is zero, so every image is flat grey."""
    with torch.random.fork_rng():  # the same weights whatever ran before (the init draws from the global RNG)
        torch.manual_seed(seed)
        G = build_generator(config)
    return perturbed(G, seed).eval().requires_grad_(False)


def write_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A ddgan checkpoint of the tiny generator in `folder`."""
    config = tiny_config()
    return save_generator_checkpoint(folder, config, tiny_generator(config, seed))


def tiny_autoencoder(folder, seed: int = 0, levels: int = 2, in_channels: int = 3):
    """A random diffusers AutoencoderKL of width 8 (f = 2 ** (levels - 1), 4 latent channels), saved to `folder`."""
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = diffusers.AutoencoderKL(
            in_channels=in_channels, out_channels=in_channels, down_block_types=["DownEncoderBlock2D"] * levels,
            up_block_types=["UpDecoderBlock2D"] * levels, block_out_channels=[8] * levels, layers_per_block=1,
            latent_channels=4, norm_num_groups=8, mid_block_add_attention=False)
    model.save_pretrained(folder)
    return folder


TINY_FLAGS = [f"--{k}={v}" for k, v in TINY.items()] + ["--preset=demo", "--data=demo", "--image_size=8",
                                                         "--ch_mult=[1,2]", "--batch_size=4"]


def wait_for(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early with {proc.returncode}:\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("timed out waiting for training to get going")


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ddgan ARGV`."""
    try:
        main(argv)
        code = 0
    except SystemExit as exited:
        code = exited.code
    out = capsys.readouterr()
    return code, out.out, out.err


class EmulatedBiasActPlugin:
    @staticmethod
    def bias_act(x, b, dy, grad, dim, act, alpha, gain, clamp):
        """Stand-in for the compiled bias_act kernel: value (grad=0) or dy times a derivative."""
        x = x.detach()
        z = x + b.detach().reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b.numel() else x
        value, first, second = derivatives(act, z, alpha)
        y = value * gain
        if grad == 0:
            return y.clamp(-clamp, clamp) if clamp >= 0 else y
        bound = torch.tensor(clamp, dtype=x.dtype)  # compared in the storage type, strictly, as torch.clamp does
        inside = (y > -bound) & (y < bound) if clamp >= 0 else torch.ones_like(y, dtype=torch.bool)
        return torch.where(inside, dy.detach() * gain * (first if grad == 1 else second), 0.0)


def value_and_two_derivatives(fn, x: torch.Tensor) -> list[torch.Tensor]:
    """fn(x), d fn/dx and d2 fn/dx2 (summed over elements), zeros where autograd has no path."""
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (first,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    # a piecewise-linear first derivative may not depend on x differentiably at all
    (second,) = torch.autograd.grad(first.sum(), x, allow_unused=True) if first.requires_grad else (None,)
    return [y, first, second if second is not None else torch.zeros_like(x)]


def emulated_upfirdn2d_kernel(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain):
    """Stand-in for the compiled upfirdn2d kernel on the CPU (float64 numpy)."""
    taps = f.detach().double().contiguous().numpy()
    matrix = kernel_matrix(*x.shape[2:], taps.tobytes(), *taps.shape, upx, upy, downx, downy,
                            padx0, padx1, pady0, pady1, flip_filter)
    y = np.einsum("yxhw,nchw->ncyx", matrix, x.detach().double().numpy()) * gain
    return torch.from_numpy(y).to(x.dtype)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Equal keys and bit-identical tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def tiny_config():
    return make_config("demo", cond=False, image_size=8, num_channels_dae=8, ch_mult=[1, 2], nz=4, z_emb_dim=8,
                       t_emb_dim=8, n_mlp=1, ngf=8)


def derivatives(act_id: int, z: torch.Tensor, alpha: float):
    """act(z), act'(z), act''(z) as the CUDA kernel evaluates them (ids as in ACTIVATIONS)."""
    one, zero, pos = torch.ones_like(z), torch.zeros_like(z), z > 0
    s, e = torch.sigmoid(z), torch.exp(z)
    if act_id == 2:
        return torch.where(pos, z, zero), torch.where(pos, one, zero), zero
    if act_id == 3:
        return torch.where(pos, z, alpha * z), torch.where(pos, one, alpha * one), zero
    if act_id == 4:
        t = torch.tanh(z)
        return t, 1 - t * t, -2 * t * (1 - t * t)
    if act_id == 5:
        return s, s * (1 - s), s * (1 - s) * (1 - 2 * s)
    if act_id == 6:
        return torch.where(pos, z, e - 1), torch.where(pos, one, e), torch.where(z < 0, e, zero)
    if act_id == 7:
        neg = SELU_SCALE * SELU_ALPHA * e
        return (torch.where(pos, SELU_SCALE * z, neg - SELU_SCALE * SELU_ALPHA),
                torch.where(pos, SELU_SCALE * one, neg), torch.where(z < 0, neg, zero))
    if act_id == 8:
        return torch.log1p(e), s, s * (1 - s)
    if act_id == 9:
        return z * s, s + z * s * (1 - s), s * (1 - s) * (2 + z * (1 - 2 * s))
    return z, one, zero


@functools.cache
def kernel_matrix(in_h, in_w, taps_bytes, f_h, f_w, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip):
    """The CUDA kernel's loop, run once per configuration to record the linear map it applies."""
    taps = np.frombuffer(taps_bytes).reshape(f_h, f_w)
    out_h = (in_h * upy + pady0 + pady1 - f_h) // downy + 1
    out_w = (in_w * upx + padx0 + padx1 - f_w) // downx + 1
    matrix = np.zeros((out_h, out_w, in_h, in_w))
    for oy in range(out_h):
        for ox in range(out_w):
            # Per output sample, visit only the taps that land on real (not inserted) input samples.
            base_y, base_x = oy * downy - pady0, ox * downx - padx0
            for ky in range(-base_y % upy, f_h, upy):
                iy = (base_y + ky) // upy
                if not 0 <= iy < in_h:
                    continue
                for kx in range(-base_x % upx, f_w, upx):
                    ix = (base_x + kx) // upx
                    if 0 <= ix < in_w:
                        fy, fx = (ky, kx) if flip else (f_h - 1 - ky, f_w - 1 - kx)
                        matrix[oy, ox, iy, ix] += taps[fy, fx]
    return matrix
