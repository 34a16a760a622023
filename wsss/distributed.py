"""Data-parallel training across processes (``torchrun``): the process group, the data
split and the gradient average, for the classifier and the stage-2 segmenter.

One process per GPU (or per CPU process with the gloo backend) on one node, started by
``torchrun --standalone --nproc_per_node=N -m wsss.cli ...``; torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``. Without them (a plain ``wsss``
job) every function here is a no-op and the training loops run exactly as before.

The recipe does not depend on the process count:

- ``train.batch_size`` / ``segmentation.batch_size`` are the GLOBAL batch; each of N
  ranks takes ``batch / N`` images (:func:`per_rank_batch`). MCTformer's official code
  gives a per-GPU batch and scales the lr by ``batch * world_size / 512``; the global batch
  here is that product, and the lr scaling uses it, so the same params give the same lr.
- :class:`GlobalBatchSampler` draws the one-process permutation from the same seeded
  generator and gives rank r the r-th slice of every global batch, so the N ranks together
  see exactly the batches the one-process run sees; augmentation is seeded per (seed,
  epoch, image index) and does not depend on the split either.
- :func:`average_gradients` all-reduces the gradients after ``backward()`` and divides by
  N: for a loss that is a mean over the batch's images this is the gradient of the global
  batch's mean, as DistributedDataParallel computes it. A loss normalised by a batch-level
  count instead (AReAM's balanced affinity loss, ClusterCAM's balanced segmentation loss:
  a sum over the batch's pixel pairs or pixels divided by how many there are) takes its
  count over the global batch with :func:`global_count`, so that the average of the
  ranks' gradients is again the one-process gradient. (DDP's wrapper module is not used:
  the methods call the model's own attributes and run several forward passes per step,
  which the wrapper hides or forbids; the reduction is the same sum / N, after the
  backward pass instead of overlapped with it.)

What still differs from one process: float reduction order, and draws from the global
RNG (drop path, dropout), which every rank makes from the same stream for its own
images: rank r's k-th image gets the draw rank 0's k-th image gets, where one process
draws for the whole batch. The global RNG stays identical on every rank, so rank 0's
checkpoint restores every rank exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

log = logging.getLogger("wsss")
T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place in the data-parallel group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and the log."""
        return self.rank == 0


SINGLE = Group()


def from_environment(env: Mapping[str, str] | None = None) -> Group:
    """The group torchrun describes in ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; :data:`SINGLE`
    when ``WORLD_SIZE`` is unset or 1. ValueError naming the variable when one is missing or
    not an integer in range."""
    env = os.environ if env is None else env
    if int(env.get("WORLD_SIZE", "1") or 1) <= 1:
        return SINGLE
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        try:
            values[name] = int(env[name])
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"torchrun environment: {name}={env.get(name)!r} is not an integer "
                "(start multi-process training with torchrun)"
            ) from err
    if not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise ValueError(f"torchrun environment: inconsistent ranks {values}")
    return Group(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def start(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group torchrun set up and pick this rank's device.

    ``device`` is the job's execution device (:func:`wsss.runtime.resolve_device`): ``cuda``
    becomes ``cuda:LOCAL_RANK`` with the NCCL backend, ``cpu`` stays ``cpu`` with gloo.
    Ranks other than 0 log warnings only. Without torchrun: (:data:`SINGLE`, ``device``),
    nothing initialized. ValueError for a device naming one GPU (``cuda:N``) under torchrun,
    or a device type without a backend.
    """
    group = from_environment()
    if not group.enabled:
        return group, device
    if dist.is_initialized():
        return group, _rank_device(device, group)
    device = _rank_device(device, group)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not group.is_main:
        log.setLevel(logging.WARNING)
    log.info(
        "data-parallel: %d processes (%s backend), rank 0 writes the outputs",
        group.world_size,
        dist.get_backend(),
    )
    return group, device


def _rank_device(device: torch.device, group: Group) -> torch.device:
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"device {device} names one GPU, but under torchrun each process uses "
                "cuda:LOCAL_RANK: give the device as cuda or auto (train.device)"
            )
        return torch.device("cuda", group.local_rank)
    if device.type != "cpu":
        raise ValueError(f"device {device}: multi-process training runs on cuda or cpu only")
    return device


def stop(group: Group) -> None:
    """Leave the process group; nothing without torchrun. No barrier: after the last
    collective the other ranks have nothing left to do while rank 0 writes the outputs
    (which may take longer than a collective's timeout, e.g. the classifier's train mAP
    pass), and torchrun waits for every process before it exits."""
    if group.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(group: Group) -> None:
    if group.enabled:
        dist.barrier()


def main_first(group: Group, action: Callable[[], T]) -> T:
    """``action()`` on every rank, rank 0 first and the others after a barrier: for reading a
    file that rank 0 may first tidy (set an unreadable checkpoint aside, remove temporaries)."""
    if group.is_main:
        result = action()
    barrier(group)
    if not group.is_main:
        result = action()
    return result


def per_rank_batch(batch_size: int, group: Group, key: str) -> int:
    """Images per rank of a global batch of ``batch_size`` (ValueError naming ``key``, the
    params key of the batch, when the ranks cannot share it equally)."""
    if batch_size % group.world_size:
        raise ValueError(
            f"{key}: the global batch of {batch_size} images does not split evenly over "
            f"{group.world_size} processes; give a multiple of {group.world_size} (each "
            "process takes batch / processes images)"
        )
    return batch_size // group.world_size


class GlobalBatchSampler(Sampler[list[int]]):
    """Rank ``group.rank``'s share of the global batches of ``sampler``.

    The global batches are those of ``BatchSampler(sampler, batch_size, drop_last)``, what a
    one-process DataLoader with ``batch_size`` draws; rank r gets items ``[r * b, (r + 1) * b)``
    of each, with ``b = batch_size / world_size`` (:func:`per_rank_batch`). Given a
    ``RandomSampler`` on the DataLoader's own generator, the draws (the DataLoader's worker
    seed, then the permutation) are the one-process run's, so the ranks together see its
    batches. Every global batch must be full (``drop_last``, or a dataset that is a multiple
    of the batch): a short last batch would leave ranks with unequal shares.
    """

    def __init__(
        self, sampler: Sampler[int], batch_size: int, drop_last: bool, group: Group, key: str
    ) -> None:
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.share = per_rank_batch(batch_size, group, key)
        self.rank = group.rank
        if not drop_last and len(sampler) % batch_size:  # type: ignore[arg-type]
            raise ValueError(
                f"{key}: {len(sampler)} images leave a last global batch of "  # type: ignore[arg-type]
                f"{len(sampler) % batch_size}, which {group.world_size} processes cannot share"  # type: ignore[arg-type]
            )

    def __iter__(self) -> Iterator[list[int]]:
        start = self.rank * self.share
        for batch in self.batches:
            yield batch[start : start + self.share]

    def __len__(self) -> int:
        return len(self.batches)


def loader_batching(
    data, batch_size: int, drop_last: bool, generator: torch.Generator, group: Group, key: str
) -> dict:
    """The DataLoader arguments that shuffle ``data`` with ``generator`` into global batches of
    ``batch_size``: without torchrun, plain ``batch_size``/``shuffle``/``drop_last`` (the
    loader exactly as before); under torchrun, this rank's :class:`GlobalBatchSampler`."""
    if not group.enabled:
        return {"batch_size": batch_size, "shuffle": True, "drop_last": drop_last}
    sampler = RandomSampler(data, generator=generator)
    return {"batch_sampler": GlobalBatchSampler(sampler, batch_size, drop_last, group, key)}


def training_loader(
    data,
    batch_size: int,
    generator: torch.Generator,
    group: Group,
    key: str,
    workers: int,
    device: torch.device,
) -> DataLoader:
    """The training DataLoader of the classifier and the segmenter: ``data`` shuffled by
    ``generator`` into global batches of ``batch_size`` (:func:`loader_batching`; the last
    short batch dropped when there is more than one), ``workers`` worker processes, pinned
    memory on CUDA. The caller owns ``generator``: the classifier carries its state across
    epochs (and checkpoints it), the segmenter reseeds it every epoch.

    Workers are not persistent: each holds a copy of the dataset, and the per-epoch
    augmentation seed (``data.set_epoch``) only reaches fresh workers.
    """
    return DataLoader(
        data,
        **loader_batching(data, batch_size, len(data) > batch_size, generator, group, key),
        num_workers=workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def average_gradients(model: torch.nn.Module, group: Group) -> None:
    """Replace each parameter's gradient by its mean over the ranks (sum / N, one all-reduce
    of all gradients flattened, as DistributedDataParallel's buckets do). Parameters without
    a gradient are left without one (every rank runs the same code, so they are the same
    parameters on every rank). Nothing without torchrun."""
    if not group.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= group.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(value: torch.Tensor, group: Group) -> torch.Tensor:
    """``value`` summed over the ranks (a new tensor; ``value`` itself without torchrun)."""
    if not group.enabled:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def global_count(count: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(count summed over the ranks, number of ranks)`` for a batch-level normaliser.

    For a loss ``total / f(count)`` over the whole batch (``total`` a sum of per-element
    terms, ``count`` how many elements the sum runs over, a tensor without gradient), rank r
    returns ``ranks * total_r / f(global count)``: :func:`average_gradients` divides the sum
    of the ranks' gradients by ``ranks``, which leaves ``sum_r d total_r / f(global count)``,
    the gradient of the one-process loss on the global batch; and the ranks' mean of the
    logged values (:func:`mean_over_ranks`) is the one-process value. The count carries no
    gradient (it counts labels), so a plain all-reduce suffices. Without a process group
    (one process, or outside training): ``(count, 1)``, the loss exactly as before.

    Every rank must call this at the same point (it is a collective): the training loop runs
    the same loss code on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count, 1
    total = count.detach().clone()
    dist.all_reduce(total)
    return total, dist.get_world_size()


def mean_over_ranks(
    values: dict[str, float], group: Group, device: torch.device
) -> dict[str, float]:
    """Each value averaged over the ranks (the same dict without torchrun). With equal
    per-rank batches, the mean of the ranks' batch-mean losses is the global batch's mean."""
    if not group.enabled:
        return values
    keys = list(values)  # the same insertion order on every rank: history columns keep theirs
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / group.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}
