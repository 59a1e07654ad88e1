"""Data-parallel training of an objective: DDP or FSDP wrapping, synchronised BatchNorm, world-size-independent
checkpoint state, and the per-step reductions the trainer needs (:class:`ParallelTraining`).

For one process every method is a no-op or the identity, so the trainer has one code path.

- DDP: the student's forward goes through ``DistributedDataParallel`` (``Objective.wrap_student``); the
  teacher stays a plain module on every rank. Every rank starts from rank 0's weights (DDP broadcasts the
  student; the teacher and the objective's buffers are broadcast here).
- FSDP (FSDP2 ``fully_shard``): every ViT block, then the whole network, of the student *and* the teacher is
  sharded the same way, so the teacher EMA runs on each rank's local shards.
- BatchNorm layers (the DINO head with ``use_bn``) are replaced by versions that normalise with the global
  batch's statistics: :class:`torch.nn.SyncBatchNorm` on CUDA, :class:`GlobalBatchNorm` elsewhere (torch's
  has no CPU kernel). State-dict keys do not change.

Checkpoints hold plain, full tensors with the single-process keys and layout (sharded tensors are gathered,
only rank 0 writes), and load into any world size and either strategy: a run saved with 2 processes resumes
with 1 and vice versa.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cellssl.distributed import DistEnv, get_rank, get_world_size, is_initialized
from cellssl.train.checkpointing import load_objective_state, restore_rng_state
from cellssl.train.config import DistributedConfig
from cellssl.train.data import derive_seed

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- BatchNorm over the global batch


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of each rank's input is the sum of the output gradients
    of all ranks (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks, differentiable (see :class:`_AllReduceSum`)."""
    return _AllReduceSum.apply(tensor)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch (all ranks), on any device.

    Two differentiable all-reduces per call (sums and counts, then squared deviations), so the result and its
    gradient equal single-process BatchNorm on the concatenated batch. Outside training, or without a process
    group, it is plain BatchNorm. Keys and buffers are those of ``nn.BatchNorm*d``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of shape (N, C, ...), got {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized() and get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input.float()
        count = x.new_tensor([float(input.numel() // channels)])
        totals = all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        centred = x - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out.to(input.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm*d`` inside ``module`` by a global-batch version (in place; returns ``module``).

    CUDA: :class:`torch.nn.SyncBatchNorm`; other devices: :class:`GlobalBatchNorm`. Parameters and buffers are
    kept (same tensors), so state-dict keys do not change.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, _BatchNorm) and not isinstance(child, (GlobalBatchNorm, nn.SyncBatchNorm)):
            replacement = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(replacement, buffer, getattr(child, buffer))
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            convert_batchnorm(child, device)
    return module


# ----------------------------------------------------------------------------- state conversion


def _is_dtensor(value: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed
        return False
    return isinstance(value, DTensor)


def full_tensor(value: Any) -> Any:
    """A sharded (DTensor) value gathered into a plain tensor (a collective: every rank must call it);
    anything else unchanged."""
    return value.full_tensor() if _is_dtensor(value) else value


def plain_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a module state dict) with every sharded tensor gathered (collective under FSDP)."""
    return {key: full_tensor(value) for key, value in state.items()}


def _shard_like(full: torch.Tensor, like: Any) -> Any:
    """``full`` sharded as the DTensor ``like`` (every rank holds ``full``: no communication)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def plain_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with sharded state gathered: the single-process layout (collective under FSDP)."""
    state = optimizer.state_dict()
    state["state"] = {index: {key: full_tensor(value) for key, value in entry.items()}
                      for index, entry in state["state"].items()}
    return state


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """A plain optimizer state dict with its per-parameter tensors sharded like ``optimizer``'s parameters."""
    params = _optimizer_params(optimizer)
    out = dict(state)
    out["state"] = {}
    for index, entry in state.get("state", {}).items():
        param = params[int(index)] if int(index) < len(params) else None
        converted = {}
        for key, value in entry.items():
            if param is not None and _is_dtensor(param) and isinstance(value, torch.Tensor) \
                    and tuple(value.shape) == tuple(param.shape):
                value = _shard_like(value, param)
            converted[key] = value
        out["state"][index] = converted
    return out


# ----------------------------------------------------------------------------- the trainer's helper


class ParallelTraining:
    """Everything the trainer does differently on several processes (see the module docstring).

    :param config: ``train.distributed``. :param env: this process's :class:`DistEnv` (default: from the
        current process group). :param seed: the run seed (per-rank RNG streams derive from it).
    """

    def __init__(self, config: DistributedConfig, env: DistEnv | None = None, seed: int = 0) -> None:
        self.config = config
        if env is None:
            env = DistEnv(get_rank(), get_world_size())
        self.env = env
        self.seed = seed
        if env.distributed and not is_initialized():
            raise RuntimeError("ParallelTraining with world_size > 1 needs an initialised process group")

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def strategy(self) -> str | None:
        """``ddp`` / ``fsdp`` when distributed, else None."""
        return self.config.strategy if self.env.distributed else None

    def barrier(self) -> None:
        if self.env.distributed:
            dist.barrier()

    # ------------------------------------------------------------------ model

    def prepare(self, objective: Any, device: torch.device) -> None:
        """Global-batch BatchNorm, identical starting weights on every rank, DDP / FSDP wrapping of the student
        (and FSDP sharding of the teacher). Call before the optimizer is built. Ranks above 0 get their own
        torch RNG stream (dropout, stochastic depth)."""
        if not self.env.distributed:
            return
        if self.config.sync_batchnorm:
            convert_batchnorm(objective.student, device)
            convert_batchnorm(objective.teacher, device)
        with torch.no_grad():
            for value in objective.state_dict().values():
                dist.broadcast(value.data if isinstance(value, nn.Parameter) else value, src=0)
        if self.config.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
            objective.wrap_student(lambda module: DistributedDataParallel(
                module, device_ids=device_ids, find_unused_parameters=self.config.find_unused_parameters))
        else:
            objective.wrap_student(self._fully_shard)
            self._fully_shard(objective.teacher)
        if self.env.rank:
            torch.manual_seed(derive_seed(self.seed, self.env.rank, 0x5EED))
        logger.info("%s over %d processes (sync BatchNorm: %s)", self.config.strategy.upper(), self.world_size,
                    self.config.sync_batchnorm)

    def _fully_shard(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        from cellssl.models.vit_blocks import Block

        # the networks return slices of one head output; nothing modifies them in place, which is what
        # FSDP2's warning about returned views is about
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        reshard = self.config.fsdp_reshard_after_forward
        for sub in list(module.modules()):
            if isinstance(sub, Block):
                fully_shard(sub, reshard_after_forward=reshard)
        fully_shard(module, reshard_after_forward=reshard)
        return module

    # ------------------------------------------------------------------ checkpoints

    def objective_state(self, objective: nn.Module) -> dict[str, Any]:
        """The objective's state dict with full tensors (every rank must call it under FSDP)."""
        state = objective.state_dict()
        return plain_state(state) if self.strategy == "fsdp" else state

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state dict in the single-process layout (every rank must call it under FSDP)."""
        return plain_optimizer_state(optimizer) if self.strategy == "fsdp" else optimizer.state_dict()

    def module_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """A submodule's state dict (e.g. the teacher backbone) as full CPU tensors (collective under FSDP)."""
        return {k: full_tensor(v).detach().cpu() for k, v in module.state_dict().items()}

    def load_objective_state(self, objective: nn.Module, state: dict[str, Any], source: Any) -> None:
        """Load a plain (checkpoint) state into the possibly sharded objective.

        :raises cellssl.errors.CheckpointError: when keys or shapes differ.
        """
        if self.strategy == "fsdp":
            current = objective.state_dict()
            state = {k: _shard_like(v, current[k]) if k in current and _is_dtensor(current[k])
                     and tuple(v.shape) == tuple(current[k].shape) else v for k, v in state.items()}
        load_objective_state(objective, state, source)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a plain optimizer state (single-process layout) into ``optimizer``."""
        if self.strategy == "fsdp":
            state = shard_optimizer_state(optimizer, state)
        optimizer.load_state_dict(state)

    def rng_states(self, own: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Every rank's RNG state, in rank order (None for one process). A collective."""
        if not self.env.distributed:
            return None
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, own)
        return gathered

    def restore_rng(self, data: Mapping[str, Any], device: torch.device) -> None:
        """Restore this rank's RNG state: its own when the checkpoint was written with as many processes,
        else rank 0's (ranks above 0 then derive their own stream from it)."""
        per_rank = data.get("rng_ranks")
        if per_rank is not None and len(per_rank) == self.world_size:
            restore_rng_state(per_rank[self.env.rank], device)
            return
        restore_rng_state(data["rng"], device)
        if self.env.rank:
            torch.manual_seed(derive_seed(self.seed, self.env.rank, int(data.get("step", 0)), 0x5EED))

    # ------------------------------------------------------------------ per step

    def reduce_terms(self, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms averaged over ranks (one all-reduce), as floats: the loss of the global batch."""
        names = list(terms)
        if not names:
            return {}
        values = torch.stack([terms[n].detach().float().reshape(()) for n in names])
        if self.env.distributed:
            values = values.to(self.env.device) if self.env.backend == "nccl" else values.cpu()
            dist.all_reduce(values)
            values /= self.world_size
        return dict(zip(names, values.tolist()))

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (keeps stop decisions in step)."""
        if not self.env.distributed:
            return flag
        device = self.env.device if self.env.backend == "nccl" else torch.device("cpu")
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    @staticmethod
    def norm_value(norm: Any) -> float:
        """A gradient norm (a DTensor under FSDP) as a float."""
        return float(full_tensor(norm))
