"""Where and how code runs: device and precision resolution, autocast, model modes, and the
multi-process helpers (torchrun).

Under ``torchrun --nproc_per_node=N -m classrobust ...`` every process runs the same command;
gloo on the CPU, nccl on GPUs. Only rank 0 writes files and prints results.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

from classrobust.errors import UsageError

#: the arithmetic choices of training and attacks (predictions are always judged in fp32)
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    """Where and how a workflow runs, one object instead of five arguments handed down by hand:
    ``device`` (None: cuda if available, else cpu), ``data_dir`` (None: the dataset's default
    folders), ``download`` (fetch a missing torchvision dataset), ``progress`` (progress bars, or lines
    when not a terminal), ``log`` (where messages go). None of them changes a result.

    ``cr.evaluate_checkpoint(path, runtime=cr.Runtime(device="cuda:1", data_dir="data"))``."""

    device: str | None = None
    data_dir: str | Path | None = None
    download: bool = False
    progress: bool = True
    log: Callable[[str], None] = print

    def indented(self, prefix: str = "  ") -> "Runtime":
        """The same runtime with every message prefixed (a step inside a larger one)."""
        outer = self.log
        return Runtime(self.device, self.data_dir, self.download, self.progress, lambda m: outer(f"{prefix}{m}"))

    def quiet(self) -> "Runtime":
        """The same runtime without progress bars (inner steps whose outer step reports)."""
        return Runtime(self.device, self.data_dir, self.download, False, self.log)


#: how each random stream derives its seed from a base seed: ``base * scale + sum(weight * index)``,
#: the weights primes so that no two (epoch, step, rank, restart, target) collide in practice. The
#: values are those every committed result was made with: changing one changes results.
SEED_STREAMS = {
    "epoch_order": (100_003, (1,)),           # (epoch,): the training loader's shuffle
    "training_step": (1_000_003, (7, 1)),     # (step, rank): the inner attack's random start
    "restart": (1, (7919, 104729)),           # (restart, target): an attack's random restarts
}


def derive_seed(base: int, stream: str, *indices: int) -> int:
    """The seed of one draw of ``stream`` (:data:`SEED_STREAMS`) from ``base`` and its indices,
    e.g. ``derive_seed(seed, "restart", restart, target)``."""
    scale, weights = SEED_STREAMS[stream]
    if len(indices) > len(weights):
        raise ValueError(f"seed stream {stream!r} takes at most {len(weights)} indices, got {len(indices)}")
    return int(base) * scale + sum(w * int(i) for w, i in zip(weights, indices))


#: where channels-last convolutions are faster: oneDNN on the CPU, tensor cores on NVIDIA GPUs
FAST_LAYOUT_DEVICES = ("cpu", "cuda")


@contextlib.contextmanager
def fast_weights(model: nn.Module):
    """Weights of plain ``nn.Conv2d`` layers (CPU or CUDA) in channels-last order while inside.

    Measured on smallcnn (benchmarks/README.md): forward + input gradient 1.2x faster than with
    the default layout. Values are unchanged; on exit each parameter gets back its original
    tensor (same storage), so the caller's model is exactly as it was. Subclasses with their own
    ``forward`` and parametrised layers are left alone: their code may ``view`` the weight.
    """
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        for m in model.modules():
            w = getattr(m, "weight", None)
            if (type(m).forward is nn.Conv2d.forward and isinstance(w, nn.Parameter) and w.dim() == 4
                    and w.device.type in FAST_LAYOUT_DEVICES and not parametrize.is_parametrized(m)):
                # .to, not .contiguous: a one-input-channel weight counts as channels-last already,
                # but only .to gives it the strides that make the convolution pick that layout
                # (measured: without it the first layer, and the whole gain, stayed behind)
                # (a weight shared by two layers is converted once: the second time .to returns it as is)
                fast = w.data.to(memory_format=torch.channels_last)
                if fast.stride() != w.stride():
                    swapped.append((w, w.data))
                    w.data = fast
        yield model
    finally:
        for w, original in swapped:
            w.data = original


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last memory order on the CPU and CUDA (values and shape unchanged).

    Measured on smallcnn (benchmarks/README.md): a forward pass of contiguous input runs 2.4x
    faster this way; inside PGD (forward + input gradient) the gain was within noise."""
    if x.dim() == 4 and x.device.type in FAST_LAYOUT_DEVICES:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None`` -> cuda if available, else cpu; a bad or unavailable name is a one-line error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda requested but CUDA is not available")
    return device


def default_precision(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (AVX-512 BF16 / AMX on CPU, Ampere+ on GPU); a GPU
    that only emulates bf16 (pre-Ampere) gets fp32."""
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before the argument existed counted emulation as support
            native = torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if native else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def set_tf32(allowed: bool) -> dict[str, bool]:
    """Allow or forbid TF32 in CUDA matmuls and convolutions (Ampere and newer round fp32 inputs to
    10 mantissa bits there, far coarser than the attacks' fooling margin). Returns the setting, for
    the results' metadata. Off unless asked for: an "fp32" verdict is then fp32."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
    return {"tf32": allowed}


def set_deterministic(on: bool) -> None:
    """Deterministic kernels where asked (``--deterministic``): cuDNN deterministic and not
    benchmarking, cuBLAS with a fixed workspace, and torch's deterministic algorithms (a warning,
    not an error, where an operation has none). Off leaves torch's defaults."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision="bf16"``, nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``model`` in train (``True``) or eval mode inside; its previous mode restored on exit, also
    after an error."""
    was_training = model.training
    try:
        model.train(training)
        yield model
    finally:
        model.train(was_training)


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
        # sharded AutoAttack work is uneven across ranks: wait longer than NCCL's default 10 minutes
        minutes = float(os.environ.get("CLASSROBUST_DIST_TIMEOUT_MIN", "180"))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    return True


def setup_device(name: str | torch.device | None) -> tuple[torch.device, bool]:
    """(this process's device, whether it runs under torchrun): ``name`` resolved, the process group
    joined when torchrun launched the command, and on GPUs the GPU of the local rank."""
    device = resolve_device(name)
    distributed = init_from_env(device)
    return local_device(device), distributed


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


def barrier() -> None:
    """Wait for every process (nothing outside torchrun): files rank 0 wrote are then complete."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: torch.Tensor) -> bool:
    """True if ``flag`` (a bool tensor, 0-d) is true on any process; one synchronisation."""
    if dist.is_available() and dist.is_initialized():
        flag = flag.to(torch.int32).clone()
        dist.all_reduce(flag)
    return bool(flag)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class SyncCounter:
    """Counts the tensor reads that make the host wait for a GPU, on any device.

    ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``.tolist()``, ``.cpu()`` and ``.nonzero()``
    are wrapped while inside ``counting()``; on CUDA each is a host synchronisation, on the CPU
    they cost nothing but are counted the same, so the count is a property of the code and a CPU
    test can bound it. Not counted: synchronisations inside torch operators (boolean-mask
    indexing, ``torch.nonzero`` called as a function); CUDA's own
    ``torch.cuda.set_sync_debug_mode("warn")`` sees those too (benchmarks/gpu_check.sh).
    """

    NAMES = ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "nonzero")

    def __init__(self):
        self.counts = dict.fromkeys(self.NAMES, 0)

    @contextlib.contextmanager
    def counting(self):
        originals = {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def wrap(name, fn):
            def inner(*args, **kwargs):
                self.counts[name] += 1
                return fn(*args, **kwargs)
            return inner

        try:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, wrap(name, fn))
            yield self
        finally:
            for name, fn in originals.items():
                setattr(torch.Tensor, name, fn)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
