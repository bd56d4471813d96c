"""An endless, resumable, rank-aware stream of training batches."""

import signal
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


class InfiniteSampler(Sampler[int]):
    """Dataset indices forever: epoch after epoch, each a fresh permutation, dealt out across ranks.

    The global stream is the concatenation of permutations P_0, P_1, ... of range(len(dataset)), P_e drawn
    from a generator seeded with seed + e (the identity order when shuffle is False). Rank r takes global
    positions r, r + num_replicas, r + 2 * num_replicas, ...: ranks never share a position, and after k
    indices on every rank they have together consumed exactly the first k * num_replicas of the stream.

    `start_index` counts indices in this rank's own stream: a run that has drawn k indices on this rank
    (k = steps * per-rank batch size) resumes with start_index=k and yields exactly what the
    uninterrupted stream would have yielded from its k-th index on.
    """

    def __init__(self, dataset: Sized, rank: int = 0, num_replicas: int = 1, shuffle: bool = True,
                 seed: int = 0, start_index: int = 0):
        if len(dataset) < 1:
            raise ValueError("dataset: the sampler needs at least one item, got an empty dataset")
        if num_replicas < 1:
            raise ValueError(f"num_replicas={num_replicas}: expected at least 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank}: expected 0 <= rank < num_replicas={num_replicas}")
        if start_index < 0:
            raise ValueError(f"start_index={start_index}: expected an index >= 0 in this rank's stream")
        self.size = len(dataset)
        self.rank, self.num_replicas = rank, num_replicas
        self.shuffle, self.seed, self.start_index = shuffle, seed, start_index

    def permutation(self, epoch: int) -> list[int]:
        """The order of the dataset in one epoch of the global stream."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        position = self.rank + self.start_index * self.num_replicas
        epoch, order = -1, []
        while True:
            current, offset = divmod(position, self.size)
            if current != epoch:
                epoch, order = current, self.permutation(current)
            yield order[offset]
            position += self.num_replicas


def make_loader(dataset: Dataset, batch_size: int, rank: int = 0, num_replicas: int = 1, seed: int = 0,
                workers: int = 2, pin_memory: bool | None = None, start_index: int = 0) -> Iterator:
    """An endless iterator of batches of `batch_size` items for this rank (see InfiniteSampler for the order).

    To resume exactly, pass start_index = batches already drawn on this rank * batch_size. Random flips
    come from torch's generator: the main process's with workers=0, else per worker seeded from (seed, rank).
    A stream of shards (ddgan.data.shards.ShardStream) deals its shards to ranks and workers itself, resuming
    the same way.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1 (the per-rank batch size)")
    if workers < 0:
        raise ValueError(f"workers={workers}: expected 0 (load in this process) or more")
    if isinstance(dataset, IterableDataset):  # a stream of shards deals itself out (ddgan.data.shards)
        dataset, sampler = dataset.dealt(rank, num_replicas, workers, batch_size, seed, start_index), None
    else:
        sampler = InfiniteSampler(dataset, rank=rank, num_replicas=num_replicas, seed=seed, start_index=start_index)
    # DataLoader seeds each worker from this generator, so augmentation differs per rank yet repeats per seed.
    worker_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(worker_seed),
                        worker_init_fn=ignore_interrupts if workers > 0 else None)
    return iter(loader)


def ignore_interrupts(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group; workers leave it to the trainer, which saves and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
