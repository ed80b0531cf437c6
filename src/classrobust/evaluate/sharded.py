"""Evaluation sharded over the processes of a torchrun job, gathered back into one result."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from classrobust.attacks.base import Attack
from classrobust.data import make_loader
from classrobust.runtime import gather, world
from classrobust.evaluate.classwise import evaluate_classwise
from classrobust.results import AttackResult, ClasswiseResult


def evaluate_dataset(model, dataset, attacks: Mapping[str, Attack], *, batch_size: int = 256,
                     classes: list[str] | None = None, device=None, progress: bool = True,
                     meta: dict[str, Any] | None = None, workers: int = 0,
                     resume_dir=None) -> ClasswiseResult:
    """:func:`evaluate_classwise` over ``dataset``; under torchrun each process takes every
    world-th sample and every process receives the whole result, in dataset order.

    Attacks are per-sample deterministic (keyed noise), so the result equals a single-process
    run's sample by sample, up to floating-point effects of batch composition. ``workers``: loader
    processes decoding batches in parallel (the batches are the same). ``resume_dir``: where finished
    batches are kept so that a killed evaluation continues (one subfolder per process under torchrun;
    see :class:`~classrobust.evaluate.classwise.BatchCache`).
    """
    rank, size = world()
    if size == 1:
        return evaluate_classwise(model, make_loader(dataset, batch_size, num_workers=workers), attacks, classes=classes,
                                  device=device, progress=progress, meta=meta, resume_dir=resume_dir)
    positions = torch.arange(rank, len(dataset), size)
    part = evaluate_classwise(model, make_loader(dataset.subset(positions), batch_size, num_workers=workers), attacks,
                              classes=classes or dataset.classes, device=device,
                              progress=progress and rank == 0, meta=meta,
                              resume_dir=None if resume_dir is None else Path(resume_dir) / f"rank{rank}of{size}")
    pieces = gather({"positions": positions.numpy(), "labels": part.labels,
                     "preds": {n: r.predictions for n, r in part.attacks.items()},
                     "seconds": {n: r.seconds for n, r in part.attacks.items()},
                     "distances": {n: r.distances for n, r in part.attacks.items() if r.distances is not None},
                     "breakers": {n: r.breakers for n, r in part.attacks.items() if r.breakers is not None},
                     "members": {n: r.member_stats for n, r in part.attacks.items() if r.member_stats is not None}})
    order = np.concatenate([p["positions"] for p in pieces])
    labels = np.empty(len(dataset), dtype=np.int64)
    labels[order] = np.concatenate([p["labels"] for p in pieces])
    results = {}
    for name, res in part.attacks.items():
        preds = np.empty(len(dataset), dtype=np.int64)
        preds[order] = np.concatenate([p["preds"][name] for p in pieces])
        dist = None
        if res.distances is not None:
            dist = np.empty(len(dataset), dtype=np.float64)
            dist[order] = np.concatenate([p["distances"][name] for p in pieces])
        results[name] = AttackResult(name, labels, preds, res.num_classes, res.config,
                                     max(p["seconds"][name] for p in pieces), dist)
        if res.breakers is not None:  # each process's members ran in parallel: the slowest's seconds
            results[name].breakers = np.empty(len(dataset), dtype=np.int64)
            results[name].breakers[order] = np.concatenate([p["breakers"][name] for p in pieces])
            results[name].member_stats = {m: {"seconds": max(p["members"][name][m]["seconds"] for p in pieces),
                                              "points": sum(p["members"][name][m]["points"] for p in pieces)}
                                          for m in res.member_stats}
    indices = np.asarray(dataset.indices)
    merged_meta = {**part.meta, "processes": size}
    return ClasswiseResult(part.classes, indices, labels, results, merged_meta)
