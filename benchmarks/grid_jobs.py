"""`classrobust experiment --jobs 2` (one thread per run) against the sequential runner (two threads),
on benchmarks/grid_jobs.yaml, in one benchmark on an otherwise idle machine (issue #36):

    python benchmarks/grid_jobs.py --out benchmarks/results/grid_jobs.json

Records each side's wall time, each run's weights (SHA-256) and PGD accuracy, and the machine."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = Path(__file__).with_name("grid_jobs.yaml")
SIDES = {"sequential, 2 threads": (["--jobs", "1"], "2"), "--jobs 2, 1 thread each": (["--jobs", "2", "--threads", "1"], "1")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/grid_jobs.json"))
    args = p.parse_args()
    record = {"grid": str(GRID), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "sides": {}}
    for side, (flags, threads) in SIDES.items():
        out = Path(tempfile.mkdtemp()) / "exp"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "classrobust", "experiment", str(GRID), "--out", str(out), *flags,
                        "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
        runs = {}
        for seed in (0, 1):
            folder = out / f"runs/fashion-mnist/pgd-at/seed{seed}"
            summary = json.loads((folder / "eval" / "summary.json").read_text())
            runs[f"seed{seed}"] = {"sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
                                   "pgd": summary["attacks"]["pgd"]["accuracy"]}
        record["sides"][side] = {"seconds": round(time.perf_counter() - t0, 1), "runs": runs}
        print(side, record["sides"][side], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
