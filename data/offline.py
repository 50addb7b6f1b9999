"""Loading offline datasets by path or name, and the datasets shipped with ocrl.

`load_dataset(name_or_path)` understands

* a path to a D4RL-layout ``.hdf5``/``.h5`` file (read with h5py, see `ocrl.data.d4rl`);
* a path to a Minari dataset folder (``<...>/data`` holding ``metadata.json``, or its parent);
* a D4RL name such as ``hopper-medium-v2`` (downloaded once into ``$OCRL_DATA_DIR`` or
  ``~/.cache/ocrl/d4rl``);
* an id of a dataset shipped with ocrl (``ocrl/data/datasets/<id>/data``);
* a Minari id such as ``mujoco/hopper/medium-v0`` (read through `minari`).

The dataset model (rows, the D4RL transition semantics, independent-transition datasets) lives in
`ocrl.data.dataset`, the metadata rules in `ocrl.data.metadata`; their names are importable from
here too. This module needs numpy only; h5py and minari are imported by the readers when used.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ocrl.data.dataset import (
    TRANSITIONS_LAYOUT,
    DatasetError,
    OfflineDataset,
    Transitions,
)
from ocrl.data.metadata import (
    metadata_obs_stats,
    metadata_return_range,
    normalize,
    reward_range,
    source_statistics_metadata,
)

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "Transitions",
    "load_dataset",
    "normalize",
    "reward_range",
    "source_statistics_metadata",
    "metadata_obs_stats",
    "metadata_return_range",
    "TRANSITIONS_LAYOUT",
    "shipped_datasets",
    "SHIPPED_ROOT",
    "READERS",
    "dataset_reader",
]

#: Root of the Minari-format datasets shipped inside the package (``ocrl/data/datasets``).
SHIPPED_ROOT = Path(__file__).resolve().parent / "datasets"


def shipped_datasets() -> list[str]:
    """Ids of the Minari-format datasets shipped with ocrl (``ocrl/data/datasets``)."""
    if not SHIPPED_ROOT.is_dir():
        return []
    found = []
    for meta in sorted(SHIPPED_ROOT.glob("**/data/metadata.json")):
        rel = meta.parent.parent.relative_to(SHIPPED_ROOT)
        if not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return found


# ---------------------------------------------------------------- loading
#: The reader of each kind of input, as "module:function", imported on first use: nothing reaches
#: a reader statically, so a copy made by scripts/export.py carries only the kinds its --formats
#: names (and says so in its --help), e.g. no Minari or download code for D4RL-layout files.
READERS: dict[str, Any] = {
    "hdf5": "ocrl.data.d4rl_hdf5:read_d4rl_hdf5",
    "d4rl": "ocrl.data.d4rl:load_d4rl",
    "minari": "ocrl.data.minari_io:read_minari",
}
#: What each kind of `READERS` is, for messages.
READER_INPUTS = {
    "hdf5": "a D4RL-layout .hdf5 file",
    "d4rl": "a D4RL name (hopper-medium-v2, downloaded once)",
    "minari": "a Minari dataset (folder or id)",
}


def dataset_reader(kind: str, name: str) -> Callable[..., OfflineDataset]:
    """The reader of `kind` from `READERS`; a DatasetError naming what to do where this copy has none."""
    reader = READERS.get(kind)
    if reader is None:
        have = "; ".join(READER_INPUTS[k] for k in READERS)
        raise DatasetError(
            f"dataset '{name}' is {READER_INPUTS[kind]}, which this copy of the algorithm does not "
            f"read (it reads {have}); pass --dataset one of those, or export the algorithm again "
            f"with scripts/export.py --formats {' '.join([*READERS, kind])}"
        )
    if isinstance(reader, str):
        module, function = reader.split(":")
        reader = getattr(importlib.import_module(module), function)
    return reader


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    download: bool = True,
    cache_dir: str | None = None,
    env_id: str | None = None,
) -> OfflineDataset:
    """Load a dataset by path, D4RL name, shipped id or Minari id; always validated.

    Resolution order: an existing path (a file is read as D4RL HDF5, a folder as Minari); a D4RL
    name (``hopper-medium-v2``; downloaded into ``cache_dir``, ``$OCRL_DATA_DIR`` or
    ``~/.cache/ocrl/d4rl`` unless ``download=False``); an id shipped in ``ocrl/data/datasets``; a
    Minari id (local Minari root, then Minari's remote when ``download``).

    ``env_id`` names the Gymnasium environment the data were recorded on, for sources that do not
    say (it wins over what the source says). A D4RL-layout file without ``timeouts`` needs it, or
    a D4RL file name, to know where its episodes end.
    """
    from ocrl.data import d4rl, minari_io

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            read_minari = dataset_reader("minari", name)
            ds = _read_path(path, lambda: read_minari(path), "Minari dataset folder")
        else:
            read_hdf5 = dataset_reader("hdf5", name)
            ds = _read_path(path, lambda: read_hdf5(path, env_id=env_id), "file")
        return _finish(ds, env_id)

    if d4rl.parse_d4rl_name(name) is not None:
        ds = dataset_reader("d4rl", name)(name, download=download, cache_dir=cache_dir)
        return _finish(ds, env_id)

    if name.startswith("ocrl/") and not SHIPPED_ROOT.is_dir():  # a copy made by scripts/export.py
        raise DatasetError(
            f"dataset '{name}' ships with ocrl, not with this copy of the algorithm: pass --dataset "
            f"{' or '.join(READER_INPUTS[k] for k in READERS)}"
        )
    if minari_io.is_shipped(name) or minari_io.is_local_minari(name):
        ds = dataset_reader("minari", name)(name)
        return _finish(ds, env_id)

    d4rl.check_near_miss(name)  # raises a helpful error for e.g. "hopper-mediun-v2"

    why = ""
    if download and minari_io.looks_like_minari_id(name):
        read_minari = dataset_reader("minari", name)
        try:
            ds = read_minari(name, download=True)
        except DatasetError as e:
            why = f" ({e})"
        else:
            return _finish(ds, env_id)
    if name.endswith((".hdf5", ".h5")):
        raise DatasetError(
            f"dataset file '{name}' does not exist (resolved to {path.resolve()}); check the path"
        )
    if not why and minari_io.looks_like_minari_id(name):
        why = f" (not found in the Minari root {minari_io.minari_root()})"
    shipped = ", ".join(shipped_datasets()) or "none"
    raise DatasetError(
        f"unknown dataset '{name}'{why}: expected a D4RL name like hopper-medium-v2, a path to a "
        f".hdf5 file or Minari folder, or a Minari id (e.g. mujoco/hopper/medium-v0, found in "
        f"$MINARI_DATASETS_PATH or ~/.minari/datasets); shipped datasets: {shipped}"
    )


def _finish(ds: OfflineDataset, env_id: str | None) -> OfflineDataset:
    if env_id is not None:
        ds.env_id = env_id
    ds.validate()
    return ds


def _read_path(path: Path, read, what: str) -> OfflineDataset:
    """Run a reader; a library error it did not translate (h5py, json, KeyError) becomes one clear line."""
    # The readers translate every failure they know of; this is the net for the ones they do not,
    # so that a damaged file never shows a raw traceback from deep inside h5py or minari.
    try:
        return read()
    except DatasetError:
        raise
    except (
        OSError,
        KeyError,
        ValueError,
        TypeError,
        IndexError,
        RuntimeError,
        AttributeError,
    ) as e:
        fix = (
            "check its metadata.json and main_data.hdf5, or re-create the dataset"
            if what.startswith("Minari")
            else "it is probably truncated or corrupt: delete it and download or write it again"
        )
        raise DatasetError(f"{what} {path} cannot be read ({type(e).__name__}: {e}); {fix}") from e
