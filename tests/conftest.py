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
        message = (f"reference fixture {path} not found: the fixtures must sit in ../shared/fixtures beside "
                   "the repo")
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return torch.load(path, weights_only=True, map_location="cpu")


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
