"""The trainer state that --objective=ddgan must keep: a few iterations of tiny runs, summarised per tensor.

`python tests/objective_reference.py REPO OUT.json` writes the summary of the trainer found in REPO; the
stored tests/data/ddgan_objective_reference.json was written with main before the objectives were added
(commit bbb1e25) and test_objectives compares today's trainer against it.
"""

from __future__ import annotations

import json
import platform
import sys

CASES = {  # name: (preset, overrides)
    "pixel": ("cifar10", dict()),
    "conditional": ("demo", dict(cond=True, num_classes=4, class_loss=1.0, num_channels=1)),
    "relativistic": ("cifar10", dict(loss="relativistic", r2_gamma=0.3, lazy_reg=2)),
}
TINY = dict(num_channels_dae=8, nz=4, z_emb_dim=8, t_emb_dim=8, n_mlp=1, ngf=4, workers=0, image_size=8,
            ch_mult=(1, 2), attn_resolutions=(4,), num_res_blocks=1, batch_size=4, amp="none", channels_last=False)
SIZE = TINY["image_size"]
STEPS = 3


def cpu_model() -> str:
    """The CPU's model name, family and model numbers: bit-for-bit equality of float kernels is only expected on
    the same one (two hosts both named "AMD EPYC", one with AVX-512 and one without, sum differently)."""
    fields = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor()
    return f"{fields.get('model name', platform.processor())} (family {fields.get('cpu family')}, " \
           f"model {fields.get('model')})"


def summary() -> dict:
    """{case/net/tensor: [float64 sum, float64 sum of squares, float64 sum of |x| * index weights]} after STEPS."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order, whatever OMP_NUM_THREADS the suite runs with
    try:
        return _summary()
    finally:
        torch.set_num_threads(threads)


def _summary() -> dict:
    import torch

    from ddgan.config import make_config
    from ddgan.training.trainer import Trainer

    out = {}
    for name, (preset, extra) in CASES.items():
        config = make_config(preset, **{**TINY, **extra})
        trainer = Trainer(config)
        data = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            x = torch.rand(4, config.num_channels, SIZE, SIZE, generator=data) * 2 - 1
            y = torch.randint(0, 4, (4,), generator=data) if config.cond else None
            trainer.run_iteration(x, y)
        state = trainer.state_dict()
        for net in ("G", "D", "G_ema"):
            for key, tensor in state[net].items():
                if tensor.is_floating_point():
                    flat = tensor.detach().double().flatten()
                    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
                    out[f"{name}/{net}/{key}"] = [flat.sum().item(), flat.square().sum().item(),
                                                  (flat * weights).sum().item()]
    return out


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    with open(sys.argv[2], "w") as f:
        json.dump({"cpu": cpu_model(), "steps": STEPS, "tensors": summary()}, f)
