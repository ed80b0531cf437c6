"""Grids beyond one process: --jobs N local processes and submitit (its local executor standing in
for Slurm) give the sequential runner's results; locks, failed runs, --status."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch

from conftest import run

GRID = """
name: tiny-grid
seeds: [0, 1]
train: {{epochs: 1, attack_steps: 1, batch_size: 50, val_size: 60, train_subset: 300, lr: 0.02}}
datasets: {datasets}
methods:
  pgd-at: {{}}
eval: {{attacks: "pgd:steps=2", limit: 40}}
"""


def write(tmp_path, datasets="[fashion-mnist]", name="grid.yaml"):
    path = tmp_path / name
    path.write_text(GRID.format(datasets=datasets))
    return path


def weights(out, seed, dataset="fashion-mnist"):
    return (out / f"runs/{dataset}/pgd-at/seed{seed}/model.safetensors").read_bytes()


@pytest.fixture
def sequential(synthetic_env, tmp_path_factory, capsys):
    """The grid run in this process, one thread (the per-process thread count of the launched runs)."""
    out = tmp_path_factory.mktemp("sequential") / "exp"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = run(["experiment", write(out.parent), "--out", out, "--no-progress"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    return out


def test_jobs_run_the_grid_in_parallel_processes_with_the_sequential_results(sequential, tmp_path, capsys):
    out = tmp_path / "exp"
    code, stdout, err = run(["experiment", write(tmp_path), "--out", out, "--jobs", "2", "--threads", "1",
                             "--no-progress"], capsys)
    assert code == 0, err
    assert "every run is finished" in stdout and (out / "report" / "report.html").is_file()
    for seed in (0, 1):  # which job slot ran a run does not change it
        assert weights(out, seed) == weights(sequential, seed)
        a = json.loads((out / f"runs/fashion-mnist/pgd-at/seed{seed}/eval/summary.json").read_text())
        b = json.loads((sequential / f"runs/fashion-mnist/pgd-at/seed{seed}/eval/summary.json").read_text())
        assert a["attacks"]["pgd"]["accuracy"] == b["attacks"]["pgd"]["accuracy"]
    launch = json.loads((out / "launch.json").read_text())
    assert launch["jobs"] == 2 and launch["threads"] == 1 and all(r["exit"] == 0 for r in launch["runs"].values())
    assert not list(out.rglob("*.lock"))
    code, stdout, _ = run(["experiment", write(tmp_path), "--out", out, "--status"], capsys)
    assert code == 0 and stdout.count("finished") >= 2 and "2 finished" in stdout


def test_submitit_array_then_collect(sequential, tmp_path, capsys):
    """--launcher submitit-local submits and returns; --status follows the jobs; a rerun after they end
    collects the results into the report, the same as the sequential runner's."""
    out = tmp_path / "exp"
    args = ["experiment", write(tmp_path), "--out", out, "--launcher", "submitit-local", "--no-progress"]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    launch = json.loads((out / "launch.json").read_text())
    assert len(launch["runs"]) == 2 and all("job_id" in r for r in launch["runs"].values())
    for _ in range(600):  # the local executor's jobs run as processes of their own
        code, status, _ = run(["experiment", write(tmp_path), "--out", out, "--status"], capsys)
        if "2 finished" in status or "failed" in status:
            break
        assert "queued" in status or "running" in status or "not started" in status
        time.sleep(0.5)
    assert "2 finished" in status, status
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    assert (out / "report" / "report.html").is_file()
    for seed in (0, 1):
        a = json.loads((out / f"runs/fashion-mnist/pgd-at/seed{seed}/eval/summary.json").read_text())
        b = json.loads((sequential / f"runs/fashion-mnist/pgd-at/seed{seed}/eval/summary.json").read_text())
        assert a["attacks"]["pgd"]["accuracy"] == b["attacks"]["pgd"]["accuracy"]


def test_a_held_lock_refuses_a_second_launcher_and_a_stale_one_is_taken_over(synthetic_env, tmp_path, capsys):
    out = tmp_path / "exp"
    folder = out / "runs/fashion-mnist/pgd-at/seed0"
    folder.parent.mkdir(parents=True)
    lock = folder.parent / ".seed0.lock"
    held = {"host": socket.gethostname(), "pid": os.getpid(), "since": "now"}  # this live process
    lock.write_text(json.dumps(held))
    code, _, err = run(["experiment", write(tmp_path), "--out", out, "--no-progress"], capsys)
    assert code == 2 and f"being run by pid {os.getpid()}" in err and err.count("\n") == 1
    assert not (folder / "model.safetensors").exists()
    dead = 2 ** 22 + 12345  # above Linux's default pid_max: no such process
    lock.write_text(json.dumps({**held, "pid": dead}))
    code, _, err = run(["experiment", write(tmp_path), "--out", out, "--no-progress", "--run",
                        "fashion-mnist/pgd-at/seed0"], capsys)
    assert code == 0, err
    assert (folder / "model.safetensors").is_file() and not lock.exists()


def test_a_failed_run_is_listed_with_its_log_and_the_others_finish(synthetic_env, tmp_path, capsys):
    """A run that fails (its dataset folder does not exist) does not stop the others; the combined report
    is refused while it is missing."""
    out = tmp_path / "exp"
    grid = write(tmp_path, datasets=f"{{fashion-mnist: {{}}, broken: {{name: 'folder:{tmp_path / 'nowhere'}'}}}}")
    code, stdout, err = run(["experiment", grid, "--out", out, "--jobs", "2", "--threads", "1", "--no-progress"],
                            capsys)
    assert code == 1
    assert "2 of 4 runs finished; no combined report" in stdout and "broken/pgd-at/seed0: failed" in stdout
    assert "rerun the command to retry" in stdout and not (out / "report").exists()
    assert (out / "runs/fashion-mnist/pgd-at/seed1/eval/summary.json").is_file()
    code, status, _ = run(["experiment", grid, "--out", out, "--status"], capsys)
    assert "2 finished, 2 failed" in status and "nowhere" in status  # the log's last line names the cause
    # a run that keeps failing is declared failed with a reason: the grid finishes, the report lists it
    for seed in (0, 1):
        code, stdout, err = run(["experiment", grid, "--out", out, "--declare-failed", f"broken/pgd-at/seed{seed}",
                                 "its data folder does not exist"], capsys)
        assert code == 0, err
    code, stdout, err = run(["experiment", grid, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    report = (out / "report" / "report.md").read_text()
    assert "declared failed: its data folder does not exist" in report
    code, _, err = run(["experiment", grid, "--out", out, "--declare-failed", "fashion-mnist/pgd-at/seed0", "x"], capsys)
    assert code == 2 and "finished; nothing to declare" in err


def test_slurm_options_reach_the_sbatch_file(tmp_path, monkeypatch):
    """What --partition, --gpus-per-run, --cpus-per-run, --time and --slurm-extra put in the sbatch
    file submitit writes (no cluster here: a stand-in srun on PATH lets submitit build it)."""
    from classrobust.workflows.launch import SlurmOptions, make_executor
    from classrobust.workflows.spec import load_spec

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    spec = load_spec(write(tmp_path), tmp_path / "exp")
    executor = make_executor(spec, "slurm", SlurmOptions("gpu", 2, 12, 90, {"qos": "high", "account": "lab"}))
    text = executor._executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=12", "--time=90", "--qos=high",
                 "--account=lab", "--job-name=tiny-grid"):
        assert f"#SBATCH {line}" in text, line



def test_a_lock_left_by_an_ended_slurm_job_is_taken_over(tmp_path, monkeypatch):
    """A Slurm job killed at its time limit leaves its lock on another host: once squeue no longer lists
    the job the lock is stale; while it does, the lock holds."""
    from classrobust.errors import UsageError
    from classrobust.workflows.locks import run_lock

    (tmp_path / "bin").mkdir()
    squeue = tmp_path / "bin" / "squeue"
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    folder = tmp_path / "runs" / "seed0"
    lock = tmp_path / "runs" / ".seed0.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "node17", "pid": 4242, "since": "earlier", "slurm_job": "991"}))
    squeue.write_text("#!/bin/sh\necho RUNNING\n")
    squeue.chmod(0o755)
    with pytest.raises(UsageError, match="pid 4242 on node17"):
        with run_lock(folder, "seed0"):
            pass
    squeue.write_text("#!/bin/sh\nexit 0\n")  # the job is gone
    with run_lock(folder, "seed0"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
