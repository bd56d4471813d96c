"""torch.distributed for torchrun (one process per GPU, or several CPU processes with gloo): joining the group,
agreeing on stops, and the rounds in which sampling and FID share their batches out and gather them in order."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Who this process is: rank among world_size, and the device it drives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | None = None) -> Context:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs), or run alone."""
    cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if not launched_by_torchrun():
        chosen = torch.device(device) if device else torch.device("cuda" if cuda else "cpu")
        return Context(device=chosen)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=30)
        # device_id binds NCCL to this rank's GPU, so barriers need not guess it.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout, device_id=chosen if cuda else None,
                                **restarted_group_store(rank, world_size, timeout))
    return Context(rank, world_size, local_rank, chosen)


def restarted_group_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dict:
    """init_process_group's store for a worker group that torchrun restarted (--max-restarts), else nothing.

    torchrun's agent keeps its key-value store across restarts of the group, where the keys the last group
    left (every rank's address) would send the new ranks to dead peers ("Connection refused"); each attempt
    gets keys of its own.
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt == 0:
        return {}
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    return {"store": dist.PrefixStore(f"ddgan/attempt-{attempt}", store), "rank": rank, "world_size": world_size}


@contextlib.contextmanager
def joined(device: str | torch.device | None = None) -> Iterator[Context]:
    """setup() for the length of a command; the group is left at the end only if it was joined here (a caller
    that set it up keeps it), without waiting for peers when leaving on an error."""
    joins = launched_by_torchrun() and not (dist.is_available() and dist.is_initialized())
    context = setup(device)
    try:
        yield context
    except BaseException:
        if joins:
            teardown(wait_for_peers=False)
        raise
    if joins:
        teardown()


def current(device: torch.device | str | None = None) -> Context:
    """This process's place in the process group already joined (by training or a command), else alone."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not (dist.is_available() and dist.is_initialized()):
        return Context(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device)


def teardown(wait_for_peers: bool = True) -> None:
    """Leave the process group, by default once every rank is done with it (drop DDP-wrapped models first).

    A rank leaving on an error passes wait_for_peers=False: its peers may never reach the barrier, and
    its exit is what lets torchrun stop them.
    """
    if dist.is_available() and dist.is_initialized():
        # A DDP reducer that outlives the group is destroyed during interpreter shutdown, where
        # gloo's worker threads abort the process ("terminate called without an active exception").
        gc.collect()
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def any_true(flag: bool, context: Context) -> bool:
    """True on every rank when `flag` is true on any rank (so all ranks stop together)."""
    return any_true_each([flag], context)[0]


def any_true_each(flags: list[bool], context: Context) -> list[bool]:
    """any_true for several flags in one exchange: flag i is True on every rank when it is true on any."""
    if not context.distributed:
        return [bool(flag) for flag in flags]
    device = context.device if context.device.type == "cuda" else torch.device("cpu")
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value > 0) for value in values.tolist()]


def gather_on_main(value, context: Context) -> list | None:
    """Every rank's `value`, in rank order, on rank 0 (None elsewhere); every rank must call it."""
    if not context.distributed:
        return [value]
    gathered = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def round_shares(count: int, batch: int, context: Context) -> list[range]:
    """This rank's indices in every round of work on `count` items: round r is world_size consecutive batches,
    one per rank in rank order, so batch b holds items b*batch .. (b+1)*batch-1 for any number of processes.

    Every rank gets the same number of rounds; a rank whose share of a round is empty (near the end, or when
    there are fewer items than ranks) still takes part in its exchange.
    """
    per_round = batch * context.world_size
    first = context.rank * batch
    return [range(min(start + first, count), min(start + first + batch, count)) for start in range(0, count, per_round)]


def gather_rounds(local_results: Iterator, shares: list[range], context: Context) -> Iterator[list]:
    """Per round, every rank's result for its share, in rank order, on rank 0 (ranks with an empty share send
    nothing); other ranks yield nothing but must still run to the end, since every round is an exchange.

    local_results yields one result per non-empty share of this rank, in order.
    """
    for share in shares:
        result = next(local_results) if len(share) else None
        if not context.distributed:
            yield [result] if result is not None else []
            continue
        gathered = [None] * context.world_size if context.is_main else None
        dist.gather_object(result, gathered, dst=0)
        if context.is_main:
            yield [r for r in gathered if r is not None]


def share_from_main(value, context: Context):
    """Rank 0's `value` on every rank (other ranks pass anything, e.g. None)."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_only(function, context: Context):
    """function() on rank 0 alone, its result returned there (None elsewhere); an error it raises is raised on
    every rank, so that all stop with the same message instead of waiting for rank 0."""
    result, error = None, None
    if context.is_main:
        try:
            result = function()
        except (ValueError, OSError) as raised:
            error = raised
    error = share_from_main(error, context)
    if error is not None:
        raise error
    return result


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when there is a GPU, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sum_over_ranks(values: torch.Tensor, context: Context) -> torch.Tensor:
    """A tensor's sum over every rank, on the CPU (a copy of it in a single process); every rank must call it."""
    if not context.distributed:
        return values.cpu().clone()
    device = context.device if context.device.type == "cuda" else torch.device("cpu")
    total = values.to(device).clone()
    dist.all_reduce(total)
    return total.cpu()
