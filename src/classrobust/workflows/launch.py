"""Several runs of an experiment at once: ``--jobs N`` local processes (each on its own GPU, or its
share of the CPU cores), or a Slurm job array through submitit (``--launcher slurm``).

Each run is one process (``classrobust experiment FILE --run KEY``, or a submitit job calling
:func:`run_one`) that writes only its own folder, under its lock (:func:`run_lock`): two launchers
never run one run. When every run is finished, the launcher (or a rerun of the command, after
Slurm jobs end) runs what needs the whole grid (ablation, temperature step) and builds the report,
which is refused while runs are missing or failed. ``<out>/launch.json`` records what was launched,
and :func:`grid_status` reads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import TYPE_CHECKING, Any, Callable

from classrobust.errors import UsageError
from classrobust.io import atomic_write_json
from classrobust.workflows.locks import alive, lock_path
from classrobust.workflows.spec import ExperimentSpec, RunSpec

if TYPE_CHECKING:  # --status and the lock helpers load no torch
    from classrobust.runtime import Runtime

LAUNCH = "launch.json"
LAUNCHERS = ("local", "slurm", "submitit-local")


def log_path(spec: ExperimentSpec, run: RunSpec) -> Path:
    return spec.out / "logs" / (run.key.replace("/", "__") + ".log")


@dataclass
class LocalOptions:
    """``--jobs``: how many runs at once; ``devices``: GPUs to spread them over (one per job slot);
    ``threads``: CPU threads per run (default: the cores divided among the jobs)."""

    jobs: int = 1
    devices: list[str] = field(default_factory=list)
    threads: int | None = None


def _wave(runs: list[RunSpec], done: set[str]) -> list[RunSpec]:
    """The runs whose prerequisites are finished: trained runs at once, calibrations after their base."""
    return [r for r in runs if r.calibrate is None or r.base_key in done]


def run_local(spec: ExperimentSpec, options: LocalOptions, *, log: Callable[[str], None] = print,
              data_dir=None, download: bool = False) -> dict[str, Any]:
    """Every unfinished run of ``spec`` as its own process, ``options.jobs`` at a time. Returns what
    ``launch.json`` records: per run key, its exit code and log."""
    from classrobust.workflows.experiment import run_state

    if options.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {options.jobs}")
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.jobs)
    slots: Queue = Queue()
    for i in range(options.jobs):
        slots.put(options.devices[i % len(options.devices)] if options.devices else None)
    todo = [r for r in spec.runs if run_state(spec, r) not in ("done", "diverged")]
    finished = {r.key for r in spec.runs if r not in todo}
    record = {"launcher": "local", "jobs": options.jobs, "threads": threads, "devices": options.devices, "runs": {}}
    spec.out.mkdir(parents=True, exist_ok=True)

    def one(run: RunSpec) -> int:
        device = slots.get()
        try:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = device
            path = log_path(spec, run)
            path.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "classrobust", "experiment", str(spec.source), "--out", str(spec.out),
                       "--run", run.key, "--no-progress"]
            if data_dir is not None:
                command += ["--data-dir", str(data_dir)]
            if download:
                command.append("--download")
            log(f"{run.key}: started ({'device ' + device if device is not None else f'{threads} thread(s)'}; "
                f"log {path})")
            with open(path, "w") as out:
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
            log(f"{run.key}: {'finished' if code == 0 else f'failed (exit {code}), see {path}'}")
            return code
        finally:
            slots.put(device)

    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        while todo:
            wave = _wave(todo, finished)
            if not wave:  # what is left builds on runs that failed
                for run in todo:
                    record["runs"][run.key] = {"exit": None, "log": str(log_path(spec, run)),
                                               "skipped": f"its base {run.base_key} did not finish"}
                break
            for run, code in zip(wave, pool.map(one, wave)):
                record["runs"][run.key] = {"exit": code, "log": str(log_path(spec, run))}
                if code == 0:
                    finished.add(run.key)
            todo = [r for r in todo if r not in wave]
    atomic_write_json(spec.out / LAUNCH, record)
    return record


@dataclass
class SlurmOptions:
    """Where and how each run is submitted (submitit's Slurm executor); ``extra``: further sbatch
    options, ``name=value``."""

    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    time_min: int = 240
    extra: dict[str, str] = field(default_factory=dict)


def run_one(source: str, out: str, key: str, data_dir: str | None = None) -> str:
    """One run of an experiment file, in a submitted job: its state afterwards."""
    from classrobust.workflows.experiment import ensure_run
    from classrobust.workflows.spec import load_spec

    spec = load_spec(source, out)
    run = next(r for r in spec.runs if r.key == key)
    from classrobust.runtime import Runtime

    ensure_run(spec, run, Runtime(data_dir=data_dir, progress=False))
    return key


def make_executor(spec: ExperimentSpec, launcher: str, options: SlurmOptions):
    """submitit's executor for ``launcher``: Slurm with ``options`` (one run per array task), or
    the local executor (processes of this machine), writing under ``<out>/submitit``."""
    import submitit

    folder = spec.out / "submitit"
    if launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(timeout_min=options.time_min, cpus_per_task=options.cpus_per_run,
                                   gpus_per_node=options.gpus_per_run, slurm_partition=options.partition,
                                   slurm_additional_parameters=dict(options.extra), name=spec.name)
        return executor
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=options.time_min)
    return executor


def submit(spec: ExperimentSpec, launcher: str, options: SlurmOptions, *, data_dir=None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Submit the unfinished runs whose prerequisites are finished as one job array (``slurm``, or
    ``submitit-local`` for a machine without Slurm) and return at once; ``launch.json`` records the
    job ids. Calibrations of runs not yet trained wait for a later call."""
    from classrobust.workflows.experiment import run_state

    states = {r.key: run_state(spec, r) for r in spec.runs}
    finished = {k for k, s in states.items() if s in ("done", "diverged")}
    waiting = {row["run"] for row in grid_status(spec) if row["status"] in ("queued", "running")}
    todo = _wave([r for r in spec.runs if r.key not in finished | waiting], finished)
    executor = make_executor(spec, launcher, options)
    previous = read_launch(spec)
    record = {"launcher": launcher, "runs": dict(previous.get("runs", {})) if previous.get("launcher") == launcher else {}}
    if todo:
        jobs = executor.map_array(run_one, [str(spec.source)] * len(todo), [str(spec.out)] * len(todo),
                                  [r.key for r in todo], [None if data_dir is None else str(data_dir)] * len(todo))
        for run, job in zip(todo, jobs):
            record["runs"][run.key] = {"job_id": job.job_id, "log": str(job.paths.stderr)}
            log(f"{run.key}: submitted as job {job.job_id}")
    spec.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec.out / LAUNCH, record)
    return record


def read_launch(spec: ExperimentSpec) -> dict[str, Any]:
    path = spec.out / LAUNCH
    return json.loads(path.read_text()) if path.is_file() else {}


def _last_line(path: str | Path | None) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except (OSError, TypeError):
        return ""
    return lines[-1][:160] if lines else ""


def grid_status(spec: ExperimentSpec) -> list[dict[str, str]]:
    """Per run: ``finished``, ``diverged``, ``running`` (its lock is held), ``queued`` (submitted, not
    started), ``failed`` (its process or job ended without finishing it) or ``not started``, with the
    last line of its log."""
    from classrobust.workflows.experiment import run_dir, run_state

    launch = read_launch(spec)
    rows = []
    for run in spec.runs:
        entry = launch.get("runs", {}).get(run.key, {})
        state = run_state(spec, run)
        lock = lock_path(run_dir(spec, run))
        if state == "done":
            status = "finished"
        elif state == "diverged":
            status = "diverged"
        elif lock.is_file():
            status = "running"
        elif "job_id" in entry:
            status = _job_state(spec, launch["launcher"], entry["job_id"])
        elif entry.get("exit") not in (None, 0) or entry.get("skipped"):
            status = "failed"
        else:
            status = "not started"
        rows.append({"run": run.key, "status": status, "log": entry.get("log", ""),
                     "last_line": _last_line(entry.get("log"))})
    return rows


def _job_state(spec: ExperimentSpec, launcher: str, job_id: str) -> str:
    """A submitted job's state, for a run that has not finished: queued, running or failed."""
    import submitit

    if launcher != "slurm":  # a local job's id is its process id; a job rebuilt from it knows no more
        return "running" if str(job_id).isdigit() and alive(int(job_id)) else "failed"
    try:
        state = submitit.SlurmJob(folder=spec.out / "submitit", job_id=job_id).state.upper()
    except Exception:  # noqa: BLE001 - a scheduler that no longer knows the job: it ended
        state = "UNKNOWN"
    if state in ("PENDING", "REQUEUED", "CONFIGURING"):
        return "queued"
    if state in ("RUNNING", "COMPLETING"):
        return "running"
    return "failed"  # ended (completed, failed, cancelled, timed out) without the run finishing


def status_text(spec: ExperimentSpec) -> str:
    """``--status``: one line per run (status, its log's last line), then the counts."""
    rows = grid_status(spec)
    width = max(len(r["run"]) for r in rows)
    lines = [f"{r['run']:<{width}}  {r['status']:<11}  {r['last_line']}".rstrip() for r in rows]
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    return "\n".join(lines + [", ".join(f"{n} {s}" for s, n in counts.items())])


def parse_slurm_extra(items: list[str]) -> dict[str, str]:
    """``--slurm-extra NAME=VALUE`` items as a mapping."""
    extra = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--slurm-extra takes NAME=VALUE, got {item!r}")
        extra[name] = value
    return extra


def launch_grid(spec: ExperimentSpec, *, runtime: Runtime | None = None, launcher: str = "local",
                local: LocalOptions | None = None, slurm: SlurmOptions | None = None) -> tuple[str, int | None]:
    """Run the grid's open runs in parallel processes (``launcher="local"``, ``local``'s jobs, devices
    and threads) or submit them (``slurm`` / ``submitit-local``, ``slurm``'s resources): (what to print,
    the exit code, or None when every run is finished and the caller builds the report)."""
    from classrobust.runtime import Runtime

    runtime = runtime or Runtime()
    if launcher == "local":
        run_local(spec, local or LocalOptions(), data_dir=runtime.data_dir, download=runtime.download)
    else:
        submit(spec, launcher, slurm or SlurmOptions(), data_dir=runtime.data_dir)
    rows = grid_status(spec)
    open_rows = [r for r in rows if r["status"] not in ("finished", "diverged")]
    if not open_rows:
        return "every run is finished: the combined report follows", None
    failed = [r for r in open_rows if r["status"] == "failed"]
    lines = [f"{len(rows) - len(open_rows)} of {len(rows)} runs finished; no combined report until all are in"]
    lines += [f"  {r['run']}: {r['status']}" + (f" ({r['log']}: {r['last_line']})" if r["status"] == "failed" else "")
              for r in open_rows]
    if failed:
        lines.append("rerun the command to retry the failed runs")
    else:
        lines.append(f"rerun `classrobust experiment {spec.source} --launcher {launcher}` once they end; "
                     "--status shows where they are")
    return "\n".join(lines), 1 if failed else 0
