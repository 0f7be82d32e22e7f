"""Atomic output helpers: write to a temporary file in the target folder, then rename.

The renamed file gets the permissions a plain ``open(path, "w")`` would give it (0666 less the user's umask,
e.g. 0644 under umask 022, 0664 under 002), not the private 0600 of a ``mkstemp`` file."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import LssrError


def _umask() -> int:
    """The process's umask. ``os.umask`` reads it only by setting it, so it is set to 077 for a moment (a file
    another thread creates meanwhile is then private, never more open than the user's umask allows)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp_path = Path(tmp)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        raise LssrError(
            f"cannot write {path}: {exc.strerror or exc}. Check that {path.parent} is writable and has free "
            f"space, then rerun; nothing at {path} was changed."
        ) from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` (the old folder, if any, is
    renamed aside and removed), so ``path`` holds either the old contents or all of the new ones."""
    import shutil

    path = Path(path)
    tmp: Path | None = None
    old: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if old is not None and not path.exists():
            os.replace(old / path.name, path)  # put the old folder back
        raise LssrError(
            f"cannot write the folder {path}: {exc.strerror or exc}. Check that {path.parent} is writable and has "
            f"free space, then rerun; nothing at {path} was changed."
        ) from exc
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically (no index)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically. Written through a file handle, so the zip's member names are the
    fixed ``archive/...`` rather than the random temporary file name: the same object gives the same bytes."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else repr(value)  # NaN -> empty, floats round-trip exactly
    return str(value)


class CsvLog:
    """An append-only CSV table kept in ``<name>.partial`` until :meth:`finalize` renames it.

    Resumable: :meth:`flush` returns the byte offset of everything written so far (store it in a
    checkpoint); :meth:`truncate` cuts the partial file back to such an offset on resume, so the
    final table holds no duplicate and no missing rows. The final file appears only complete.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.columns = list(columns)
        self._fh = None

    def _open(self) -> None:
        if self._fh is None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            new = not self.partial.exists() or self.partial.stat().st_size == 0
            self._fh = open(self.partial, "a", newline="")
            if new:
                self._fh.write(",".join(self.columns) + "\n")

    def append(self, row: dict) -> None:
        self._open()
        self._fh.write(",".join(_fmt(row.get(c)) for c in self.columns) + "\n")

    def flush(self, sync: bool = True) -> int:
        """Hand everything appended so far to the OS (with ``sync``, also to the disk: ``fsync``); the byte
        offset of the end of the file. Without ``sync`` the rows survive the process being killed, not
        necessarily a crash of the machine."""
        self._open()
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())
        return self._fh.tell()

    def truncate(self, offset: int) -> None:
        """Cut the partial file back to ``offset`` bytes (a value :meth:`flush` returned)."""
        self.close()
        if not self.partial.exists() or self.partial.stat().st_size < offset:
            raise FileNotFoundError(
                f"{self.partial} is missing or shorter than the checkpoint says ({offset} bytes); "
                "delete the checkpoint to restart the run"
            )
        with open(self.partial, "r+b") as fh:
            fh.truncate(offset)

    def reset(self) -> None:
        self.close()
        if self.partial.exists():
            self.partial.unlink()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finalize(self) -> Path:
        """Flush and rename the partial file onto the final path (atomic)."""
        self.flush()
        self.close()
        os.replace(self.partial, self.path)
        return self.path


def out_folder(out: str) -> str:
    """``--out`` must name a folder (or a path that does not exist yet), never an existing file."""
    path = Path(out)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = f"--out {out}" if p == path else f"--out {out}: {p}"
                raise LssrError(f"{what} is a file, not a folder; give a folder path, or move the file")
            break
    return out
