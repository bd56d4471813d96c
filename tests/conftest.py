"""Shared test helpers: where the reference fixtures live."""

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def load_fixture(name: str):
    """Load one reference test vector from ../shared/fixtures, skipping when that folder is absent."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"reference fixture {path} not found (the fixtures live in ../shared/fixtures beside the repo)")
    return torch.load(path, weights_only=False, map_location="cpu")


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
