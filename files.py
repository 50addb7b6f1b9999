"""Writing files safely (a temporary file beside the target, given ordinary permissions and renamed into place),
and the source commit that wrote them.

A neutral module (numpy- and torch-free) so that both `ocrl.data` and `ocrl.experiment` import it
without importing each other.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "set_ordinary_permissions", "source_commit"]


def set_ordinary_permissions(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give a file (0600) or folder (0700) made by `tempfile` the mode a plain open()/mkdir() would get."""
    # tempfile makes private files so nobody reads a half-written one; once complete, the renamed
    # result must be as readable as any file the user writes (shared caches, group-readable data).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it gets ordinary permissions and is renamed into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        # Name the path the user gave, not the temporary file beside it.
        raise PermissionError(
            f"cannot write {path} ({err.strerror or err}); choose a writable place"
        ) from None
    os.close(fd)
    try:
        yield Path(tmp)
        set_ordinary_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file in the same folder, renamed into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def source_commit(root: str | os.PathLike | None = None) -> str | None:
    """The git commit of `root` (default: the ocrl source tree), with '-dirty' when tracked files changed; None outside git."""
    where = str(root if root is not None else Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
