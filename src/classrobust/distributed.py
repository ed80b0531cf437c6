"""Multi-process helpers (torchrun): process-group set-up from the environment, sharding, gathering.

Under ``torchrun --nproc_per_node=N -m classrobust ...`` every process runs the same command;
gloo on the CPU, nccl on GPUs. Only rank 0 writes files and prints results.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """On GPUs each process takes the GPU of its local rank."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` in a single process)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
