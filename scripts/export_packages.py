"""The packages an exported copy needs (pip names, the optional extras from pyproject.toml) and the ruff pass
that tidies it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from export_names import ROOT  # beside this file: scripts/ is on the path when it runs

#: pip names of import names that differ.
PIP_NAMES = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "cv2": "opencv-python",
    "gymnasium_robotics": "gymnasium-robotics",
}
#: Packages imported only for some inputs or flags, with what for (besides pyproject's extras).
OPTIONAL = {
    "gymnasium_robotics": "AntMaze/Adroit envs",
    "minari": "Minari datasets",
    "wandb": "--track",
    "moviepy": "--capture-video",
}
#: Packages a submodule import needs besides its top-level one.
PIP_EXTRA = {"torch.utils.tensorboard": "tensorboard"}


def optional_extras() -> dict[str, str]:
    """Import name -> extra, of the packages pyproject.toml lists in an optional extra and not in its
    dependencies (none on Python 3.10, which has no tomllib)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        return {}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("project", {})

    def base(requirement: str) -> str:
        return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()

    required = {base(r) for r in project.get("dependencies", [])}
    by_pip = {pip: name for name, pip in PIP_NAMES.items()}
    out: dict[str, str] = {}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for r in requirements:
            if base(r) not in required:
                out.setdefault(by_pip.get(base(r), base(r).replace("-", "_")), extra)
    return out


def ruff_tidy(path: Path) -> None:
    """Sort the imports and format with ruff when it is installed, under ocrl's ruff settings."""
    ruff = _ruff()
    if ruff is None:
        return
    config = ["--config", str(ROOT / "pyproject.toml")]
    subprocess.run([*ruff, "check", *config, "--select", "I", "--fix", "-q", str(path)],
                   capture_output=True)  # fmt: skip
    subprocess.run([*ruff, "format", *config, "-q", str(path)], capture_output=True)


def _ruff() -> list[str] | None:
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    try:
        import ruff  # noqa: F401
    except ImportError:
        import shutil

        found = shutil.which("ruff")
        return [found] if found else None
    return [sys.executable, "-m", "ruff"]
