"""Per-sample random numbers keyed by (seed, image content), independent of the batch.

A random start drawn from one generator for the whole batch depends on where
a sample sits in the batch, so the same image attacked alone or in another
batch (or on another process of a sharded evaluation) would start elsewhere.
Instead each sample's noise is a counter-based hash of the seed, the sample's
own pixels, a stream number and the position: reproducible, order-free,
vectorised, and it never touches the global RNG.
"""

from __future__ import annotations

import math

import torch

_M31 = 0x7FFFFFFF


def _mix(h: torch.Tensor) -> torch.Tensor:
    # An integer finaliser in 31-bit arithmetic: every product stays below 2**63.
    h = h ^ (h >> 16)
    h = (h * 0x45D9F3B) & _M31
    h = h ^ (h >> 16)
    h = (h * 0x45D9F3B) & _M31
    return h ^ (h >> 16)


def sample_keys(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One 31-bit key per sample from its float32 bit pattern and ``seed``; x: (N, ...) -> (N,) int64."""
    bits = x.detach().float().reshape(x.shape[0], -1).contiguous().view(torch.int32).long() & _M31
    pos = _mix(torch.arange(bits.shape[1], device=x.device, dtype=torch.long) + 1)
    per_pixel = _mix(bits ^ pos)
    return _mix((per_pixel.sum(dim=1) & _M31) ^ _mix(torch.tensor(seed & _M31, device=x.device)))


def uniform_from_keys(keys: torch.Tensor, shape: tuple[int, ...], stream: int = 0,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) numbers of shape ``(N, *shape)``, a function of (key, stream, position)."""
    n = math.prod(shape)
    salt = _mix(torch.tensor((stream * 0x3C6EF35) & _M31 | 1, device=keys.device))
    pos = _mix((torch.arange(n, device=keys.device, dtype=torch.long) + 1) ^ salt)
    h = _mix(((keys[:, None] * 0x9E3779B1) & _M31) ^ pos[None, :])
    h = _mix(h ^ salt)
    return (h.to(torch.float64) / float(1 << 31)).to(dtype).reshape(keys.shape[0], *shape)


def uniform_like(x: torch.Tensor, seed: int, stream: int = 0) -> torch.Tensor:
    """Uniform [0, 1) noise shaped like ``x``, keyed by ``seed`` and each sample's pixels."""
    return uniform_from_keys(sample_keys(x, seed), tuple(x.shape[1:]), stream, x.dtype)


def uniform_per_sample(x: torch.Tensor, seed: int, stream: int = 0) -> torch.Tensor:
    """One uniform [0, 1) number per sample, shape (N,), keyed like :func:`uniform_like`."""
    return uniform_from_keys(sample_keys(x, seed), (1,), stream, x.dtype)[:, 0]


def normal_like(x: torch.Tensor, seed: int, stream: int = 0) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (Box-Muller over two uniform streams)."""
    u1 = uniform_like(x, seed, 2 * stream + 100).clamp_min(1e-12)
    u2 = uniform_like(x, seed, 2 * stream + 101)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
