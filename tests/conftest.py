"""Shared test helpers: where the reference fixtures live."""

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def in_ci() -> bool:
    """Whether the tests run in CI (CI=true or CI=1), where nothing they need may be missing."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def load_fixture(name: str):
    """Load one reference test vector from ../shared/fixtures.

    A missing fixture fails the test in CI, where skipping would let a broken checkout pass without
    comparing against the reference at all; elsewhere the test is skipped.
    """
    path = FIXTURES / name
    if not path.is_file():
        skip_or_fail(f"reference fixture {path} not found: the fixtures must sit in ../shared/fixtures beside "
                     "the repo")
    return torch.load(path, weights_only=True, map_location="cpu")


def skip_or_fail(message: str) -> None:
    """Skip the test for something it needs that is missing here; in CI, where nothing may be, fail it."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def latent_extra():
    """Latent models need the `latent` extra (diffusers, pyyaml); CI installs it."""
    import importlib.util

    absent = [name for name in ("diffusers", "yaml") if importlib.util.find_spec(name) is None]
    if absent:
        skip_or_fail(f"{absent} not installed: pip install -e '.[latent]'")


def replay_sampler(run: dict, diffusion) -> dict:
    """A reference sampling run replayed with its own draws, step by step and through `Diffusion.sample`.

    `run` holds the fixture's `generator`, `coefficients`, `inputs` (x_T, z and noise per step) and `steps`;
    the diffusion's tables are checked against its coefficients first.
    """
    import networks

    gen = run["generator"]
    net = networks.from_wavediff(gen["reference_kind"], gen["config"], gen["state_dict"]).eval()
    for name, table in run["coefficients"].items():
        # The log of a clipped zero variance is -46; compare it relatively.
        tol = 1e-5 * max(1.0, table.abs().max().item()) if name.endswith("clipped") else 1e-5
        assert (getattr(diffusion, name).float() - table).abs().max().item() < tol, name
    inputs, steps = run["inputs"], run["steps"]
    x, xs, preds = inputs["x_T"], [inputs["x_T"]], []
    with torch.no_grad():
        for k, step in enumerate(steps):
            t = torch.full((x.shape[0],), step, dtype=torch.int64)
            preds.append(net(x, t, inputs["z"][k]))
            x = diffusion.posterior_sample(preds[-1], x, t, noise=inputs["noise"][k])
            xs.append(x)
        # The library's sampler, fed the same draws by step index, takes the same path.
        by_step = lambda draws: torch.stack([draws[steps.index(t)] for t in range(len(steps))])  # noqa: E731
        sampled = diffusion.sample(net, inputs["x_T"], gen["config"]["nz"], zs=by_step(inputs["z"]),
                                   noises=by_step(inputs["noise"]))
    return {"trace": torch.stack(xs), "x0_pred": torch.stack(preds), "final": x, "sampled": sampled}


@pytest.fixture(autouse=True)
def _few_threads():
    # CI has 2 cores; oversubscription makes tiny ops slower, not faster.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def seeded_single_thread():
    """One thread and a fixed seed: tiny tensors gain nothing from threads, and on a loaded machine
    their spin-waits cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def put_in_hub_cache(cache: Path, repo: str, folder: Path, revision: str = "main") -> Path:
    """Lay `folder`'s files out in a Hugging Face Hub cache as if `repo` at `revision` had been downloaded."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot


def perturbed(G: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """G with its weights pushed away from init, whose zero output layers make every image flat grey."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return G


def save_generator_checkpoint(folder: Path, config, G: torch.nn.Module, images_seen: int = 0, **extra) -> Path:
    """A ddgan checkpoint in `folder` holding G as both its G and its EMA (no D, no optimizers)."""
    from ddgan.models import checkpoint

    state = G.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    return checkpoint.save_atomic({"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                                   "config": config.to_dict(), "G": state, "G_ema": state, "images_seen": images_seen,
                                   "kimg": images_seen / 1000, **extra},
                                  folder / checkpoint.checkpoint_name(images_seen))


@pytest.fixture
def quick_ceilings(monkeypatch):
    """Roofline ceilings measured on a small matmul for a few milliseconds each, and none kept from other tests."""
    from eval import roofline

    monkeypatch.setattr(roofline, "MATMUL_SIZES", {"cpu": 128})
    monkeypatch.setattr(roofline, "MIN_SECONDS", 0.01)
    monkeypatch.setattr(roofline, "_ceiling_cache", {})
