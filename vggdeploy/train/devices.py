"""Where training runs: the device, bf16 autocast, and the process group when launched by torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vggdeploy.config import TrainConfig
from vggdeploy.errors import (
    ProviderUnavailable,
)

PROGRESS_EVERY = 20  # steps between progress updates (each one synchronises with the device)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ProviderUnavailable("--device cuda was asked for, but torch sees no CUDA GPU")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast with channels_last: tensor cores on a GPU; on a CPU only when asked (fast only with AMX)."""
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def uses_channels_last(config: TrainConfig, device: torch.device) -> bool:
    """Train the model and its batches channels_last: with bf16 (tensor cores), and on every CPU, where the quick
    model's fp32 step ran 35-40 % faster than contiguous (BENCHMARKS.md, "CPU training layout")."""
    return uses_bf16(config, device) or device.type == "cpu"


def start_distributed(device: torch.device) -> Distributed:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world)
