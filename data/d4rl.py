"""D4RL Gym-MuJoCo datasets without the ``d4rl`` package: URLs, a verified atomic download into a
cache folder and loading by name. The names, reference scores and the file format (reader and
writer) are `ocrl.data.d4rl_hdf5`'s, importable from here too.

Evaluation uses the Gymnasium ``-v4`` environment of the same task (see reference/datasets.md).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

from ocrl.data.d4rl_hdf5 import (
    D4RL_DIMS,
    D4RL_ENV_IDS,
    D4RL_KINDS,
    D4RL_MAX_EPISODE_STEPS,
    D4RL_REF_SCORES,
    parse_d4rl_name,
    read_d4rl_hdf5,
    synthesize_timeouts,
    verify_d4rl_file,
    write_d4rl_hdf5,
)
from ocrl.data.dataset import DatasetError, OfflineDataset
from ocrl.files import atomic_path

__all__ = [
    "D4RL_DIMS",
    "D4RL_ENV_IDS",
    "D4RL_KINDS",
    "D4RL_MAX_EPISODE_STEPS",
    "D4RL_REF_SCORES",
    "check_near_miss",
    "d4rl_cache_dir",
    "d4rl_path",
    "d4rl_url",
    "download_d4rl",
    "load_d4rl",
    "parse_d4rl_name",
    "read_d4rl_hdf5",
    "synthesize_timeouts",
    "verify_d4rl_file",
    "write_d4rl_hdf5",
]

_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
_VERSION_DIRS = {2: "gym_mujoco_v2", 1: "gym_mujoco_v1"}


def _parse_or_raise(name: str) -> tuple[str, str, int]:
    parsed = parse_d4rl_name(name)
    if parsed is None:
        raise DatasetError(
            f"'{name}' is not a D4RL Gym-MuJoCo dataset name: expected "
            f"{{halfcheetah,hopper,walker2d}}-{{{','.join(D4RL_KINDS)}}}-v2, e.g. hopper-medium-v2"
        )
    return parsed


def d4rl_url(name: str) -> str:
    """Download URL of a D4RL dataset (v2 and v1; v0 is refused)."""
    domain, kind, version = _parse_or_raise(name)
    if version not in _VERSION_DIRS:
        raise DatasetError(
            f"'{name}': D4RL v0 datasets are not supported (their file layout differs and their "
            f"data differ materially from v2; never mix v0 and v2 results). Use "
            f"{domain}-{kind}-v2. A v0 file you already have can be loaded by path."
        )
    fname = f"{domain}_{kind.replace('-', '_')}-v{version}.hdf5"
    return f"{_BASE_URL}/{_VERSION_DIRS[version]}/{fname}"


def d4rl_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$OCRL_DATA_DIR``, else ``~/.cache/ocrl/d4rl``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("OCRL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/ocrl/d4rl").expanduser()


def d4rl_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the file of a D4RL dataset lives in the cache (filename = URL basename)."""
    return d4rl_cache_dir(cache_dir) / d4rl_url(name).rsplit("/", 1)[1]


def _where_to_put(name: str, url: str, path: Path) -> str:
    return (
        f"Download {url} by hand and put it at {path} (or set $OCRL_DATA_DIR to a folder "
        f"holding {path.name}), or pass the file's path to load_dataset instead of '{name}'."
    )


def check_near_miss(name: str) -> None:
    """Raise a helpful `DatasetError` for strings that look like, but are not, D4RL names."""
    if "/" in name or os.sep in name:
        return
    m = re.match(r"^(halfcheetah|hopper|walker2d|ant)[-_]", name.lower())
    if m is None or parse_d4rl_name(name) is not None:
        return
    raise DatasetError(
        f"unknown D4RL dataset '{name}': expected {m[1]}-<kind>-v<version> with kind one of "
        f"{', '.join(D4RL_KINDS)} and version v2 (or v1), e.g. {m[1]}-medium-v2"
    )


# --------------------------------------------------------------- download
def _fetch(url: str, dest_path: str | os.PathLike) -> None:
    """Stream ``url`` into ``dest_path`` (tests replace this function)."""
    req = urllib.request.Request(url, headers={"User-Agent": "ocrl"})
    with urllib.request.urlopen(req, timeout=60) as resp, open(dest_path, "wb") as out:
        expected = resp.headers.get("Content-Length")
        shutil.copyfileobj(resp, out, length=1 << 20)
    got = os.path.getsize(dest_path)
    if expected is not None and got != int(expected):
        raise OSError(f"incomplete download: received {got} of {expected} bytes")


def download_d4rl(url: str, path: str | os.PathLike, *, name: str | None = None) -> Path:
    """Download ``url`` to ``path`` atomically: a temporary file in the same folder, verified with
    `verify_d4rl_file`, then renamed into place. On any failure nothing is left behind."""
    path = Path(path)
    label = name or path.name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"cannot create the D4RL cache folder {path.parent} ({e}). "
            + _where_to_put(label, url, path)
        ) from e
    with atomic_path(path, suffix=".part") as tmp:
        print(f"ocrl: downloading {url} -> {path}", file=sys.stderr)
        try:
            _fetch(url, tmp)
        except Exception as e:  # network, HTTP, disk: all become one clear error
            raise DatasetError(
                f"could not download D4RL dataset '{label}' from {url} ({type(e).__name__}: {e}). "
                + _where_to_put(label, url, path)
            ) from e
        try:
            verify_d4rl_file(tmp)
        except DatasetError as e:
            raise DatasetError(
                f"the file downloaded from {url} failed verification and was deleted: {e}. "
                "Try again; if it keeps failing, the server may be serving a broken file. "
                + _where_to_put(label, url, path)
            ) from e
    return path


def load_d4rl(
    name: str, *, download: bool = True, cache_dir: str | os.PathLike | None = None
) -> OfflineDataset:
    """Load a D4RL dataset by name from the cache, downloading it first if needed and allowed."""
    domain, kind, version = _parse_or_raise(name)
    if domain == "ant":
        raise DatasetError(
            f"'{name}': ant's 111-dim observation layout is not validated against Gymnasium "
            "Ant-v4 (27 dims by default; D4RL's v2 observations include contact forces), so ocrl "
            "does not pair ant datasets with an evaluation environment. Use halfcheetah, hopper "
            "or walker2d; to only read the data, load the downloaded file by path."
        )
    url = d4rl_url(name)
    path = d4rl_path(name, cache_dir)
    if not path.exists():
        legacy = _legacy_d4rl_file(path.name) if cache_dir is None else None
        if legacy is not None:
            path = legacy
        elif not download:
            raise DatasetError(
                f"D4RL dataset '{name}' is not in the cache ({path} does not exist) and "
                f"download=False. " + _where_to_put(name, url, path)
            )
        else:
            download_d4rl(url, path, name=name)
    ds = read_d4rl_hdf5(path, name=name)
    ds.name = name
    return ds


def _legacy_d4rl_file(fname: str) -> Path | None:
    """A file already in D4RL's own cache (``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``)."""
    folder = os.environ.get("D4RL_DATASET_DIR") or os.path.expanduser("~/.d4rl/datasets")
    cand = Path(folder) / fname
    return cand if cand.is_file() else None
