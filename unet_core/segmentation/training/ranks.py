"""Training across torchrun ranks: per-sample randomness, the loss of the global batch, validation shares.

The user's batch size is the global batch: each step's samples ``0 .. B-1`` are split into
contiguous slices, one per rank (``distributed.split_batch``), and sample ``i`` of step ``s``
draws its image, crop and augmentation from its own generator seeded by
``(seed, s, i)``; so the samples of a step are the same whatever the number of ranks.

The loss of the global batch is a function of sums over all samples (cross-entropy summed
over pixels, and the Dice intersections and totals per class). :func:`global_batch_loss`
all-reduces those sums, evaluates the loss on them, and returns a local surrogate whose
gradient, averaged over the ranks by DistributedDataParallel, is the gradient of the global
loss: ``world * <dL/dS, s_rank>`` (chain rule through the sums). One process computes the
loss directly. BatchNorm layers see their rank's samples only, unless converted to
SyncBatchNorm (done on CUDA; torch's SyncBatchNorm has no CPU kernel).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ... import distributed
from ...distributed import DistContext
from ...errors import InputError
from .losses import LossSums, loss_from_sums, loss_sums

_STEP_STRIDE = 1_000_003
_SLOT_STRIDE = 65_537


def sample_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The generator of sample ``slot`` of step ``step``: its image pick, crop and augmentation."""
    mixed = ((int(seed) * _STEP_STRIDE + int(step)) * _SLOT_STRIDE + int(slot)) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


@dataclass(frozen=True)
class BatchShare:
    """This rank's slots ``start .. stop - 1`` of a global batch of ``size`` samples over ``world`` ranks."""

    start: int
    stop: int
    size: int
    world: int

    @property
    def slots(self) -> range:
        return range(self.start, self.stop)


def batch_share(global_batch: int, context: DistContext | None) -> BatchShare:
    """Split the user's batch over the job's ranks (contiguous slices; InputError when a rank would get none)."""
    if context is None:
        return BatchShare(0, global_batch, global_batch, 1)
    if global_batch < context.world_size:
        raise InputError(f"training: batch size {global_batch} is smaller than the {context.world_size} processes "
                         "of this torchrun job; each needs at least one sample per step")
    sizes = distributed.split_batch(global_batch, context.world_size)
    start = sum(sizes[:context.rank])
    return BatchShare(start, start + sizes[context.rank], global_batch, context.world_size)


def global_batch_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, pixel_weights: torch.Tensor | None,
                      context: DistContext | None) -> tuple[torch.Tensor, float]:
    """(the tensor to call ``backward`` on, the global batch's loss value); see the module docstring."""
    sums = loss_sums(logits, target, pixel_weights)
    if context is None or context.world_size == 1:
        loss = loss_from_sums(sums, kind)
        return loss, float(loss.detach())
    local = sums.vector()
    summed = local.detach().clone()
    with distributed.guard("adding up the loss of the global batch"):
        dist.all_reduce(summed)
    summed.requires_grad_(True)
    with torch.enable_grad():
        value = loss_from_sums(LossSums.from_vector(summed), kind)
        (slope,) = torch.autograd.grad(value, summed)
    slope[1] = 0.0  # the pixel count is a constant
    return context.world_size * (slope * local).sum(), float(value.detach())


def prepare_model(model: nn.Module, context: DistContext | None) -> nn.Module:
    """The module to train: ``model`` itself alone; under a job, ``model`` in DDP.

    On CUDA the DDP module wraps a copy whose BatchNorm layers are SyncBatchNorm (statistics
    over the global batch); :func:`finish_model` copies its weights back into ``model``.
    """
    if context is None or context.world_size == 1:
        return model
    if context.device.type == "cuda" and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    with distributed.guard("starting DistributedDataParallel"):
        return distributed.wrap_ddp(model, context)


def inner_model(trainee: nn.Module) -> nn.Module:
    """The plain module inside what :func:`prepare_model` returned."""
    return trainee.module if isinstance(trainee, nn.parallel.DistributedDataParallel) else trainee


def finish_model(model: nn.Module, trainee: nn.Module, context: DistContext | None) -> None:
    """Leave ``model`` holding the trained weights and rank 0's buffers on every rank."""
    inner = inner_model(trainee)
    sync_buffers(inner, context)
    if inner is not model:
        model.load_state_dict(inner.state_dict())


def sync_buffers(model: nn.Module, context: DistContext | None) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating or returning."""
    if context is None or context.world_size == 1:
        return
    with distributed.guard("sharing rank 0's BatchNorm statistics"):
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_sum(values: list[float], context: DistContext | None) -> list[float]:
    """``values`` added up over the ranks (float64); ``values`` alone."""
    if context is None or context.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    with distributed.guard("adding up the validation counts"):
        dist.all_reduce(tensor)
    return tensor.tolist()
