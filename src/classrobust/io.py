"""Atomic file and directory writes: a failed run never leaves a half-written result."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from classrobust.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: results get the modes of any new file
    return Path(tmp)


def make_stage(path: Path) -> Path:
    """A new staging folder beside ``path`` with the mode of any new folder (mkdtemp makes 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(stage, 0o777 & ~_umask())
    return stage


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_files(contents: dict[Path, bytes]) -> None:
    """Write several files so that a failure while writing leaves all earlier versions intact.

    Every file is written and synced to a temporary sibling first; only then are
    they renamed into place, one after the other.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_sibling(path)
            temps.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex: how records name the files they were made from."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_output_dir(path: str | os.PathLike) -> Path:
    """Refuse an output path that exists and is not a directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path {str(path)!r} exists and is not a directory")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"output path {str(path)!r} lies under {str(parent)!r}, which is a file")
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output path whose nearest existing folder cannot be written."""
    path = check_output_dir(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if existing != path and not existing.is_dir():
        raise UsageError(f"{str(existing)!r} is a file, not a folder, so {str(path)!r} cannot be created; "
                         "choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {str(existing)!r} (for {str(path)!r}); choose another output path")
    return path


def check_own_directory(path: str | os.PathLike, marker: str, flag: str = "--out") -> Path:
    """Refuse an existing, non-empty ``path`` that lacks ``marker`` (the file this command writes
    there): it holds someone else's files, which a rerun must never delete."""
    path = check_writable(path)
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise UsageError(f"{str(path)!r} already holds files that classrobust did not write there; choose "
                         f"another {flag} (nothing there is touched)")
    return path


@contextlib.contextmanager
def staged_files(out_dir: Path, stale: list[str] | tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder; when the block succeeds, move each of its files into ``out_dir`` (an
    atomic rename each) and delete the named ``stale`` files of an earlier result there. Other files
    in ``out_dir`` (a user's notes, folders other commands wrote) are left alone; on an error nothing
    in ``out_dir`` changes. (:func:`atomic_directory` replaces a whole folder instead.)"""
    stage = make_stage(out_dir)
    try:
        yield stage
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(stage.iterdir()):
            os.replace(f, out_dir / f.name)
        for name in stale:
            (out_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory that replaces ``path`` only if the block succeeds.

    On an exception the staging directory is removed and an existing ``path``
    is left exactly as it was.
    """
    path = check_output_dir(path)
    stage = make_stage(path)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_directory(stage, path)


def replace_directory(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing ``dst`` only after ``src`` is complete."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
