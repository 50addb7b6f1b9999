"""scripts/export.py: an exported algorithm runs where `import ocrl` fails and matches the in-repo run exactly."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALGOS = sorted(p.stem for p in (ROOT / "algos").glob("*.py") if p.name != "__init__.py")

# Runs a file as __main__ in an interpreter where every `import ocrl` raises ImportError; it first
# proves that the import fails.
NO_OCRL = """
import importlib.abc, runpy, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ocrl" or name.startswith("ocrl."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

sys.meta_path.insert(0, Block())
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p, "algos"))]
try:
    import ocrl
except ImportError:
    print("import ocrl fails", file=sys.stderr)
else:
    raise SystemExit("ocrl is importable")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
""".replace("import importlib.abc,", "import importlib.abc, os,")


def export(name: str, out: Path, root: Path = ROOT, options: tuple[str, ...] = ()) -> Path:
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "export.py"), f"algos/{name}.py", "--out", str(out),
         *options],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def run_without_ocrl(file: Path, *flags: str, tmp: Path) -> subprocess.CompletedProcess:
    runner = tmp / "no_ocrl.py"
    runner.write_text(NO_OCRL)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-I", str(runner), str(file), *flags],
        cwd=tmp, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def run_in_repo(name: str, *flags: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "algos" / f"{name}.py"), *flags],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def metrics(run_dir: Path) -> dict:
    """metrics.json less timings, with the run folder's path written as RUN."""
    out = json.loads((run_dir / "metrics.json").read_text())
    timing = ("wall_time", "time_s", "seconds", "per_s")
    return {
        k: v.replace(str(run_dir), "RUN") if isinstance(v, str) else v
        for k, v in out.items()
        if not any(t in k for t in timing)
    }


def ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed")
    return [found]


OFFLINE = {"td3_bc": 300, "iql": 300}
ONLINE = {
    # registers the ocrl/LotSizing-v0 id in the copy, as importing ocrl.envs does
    "pdppo": "--instance generated --n-items 4 --n-machines 3 --total-steps 1200 --update-every 200 "
    "--k-epochs 3 --hidden 16 --eval-every 600 --log-every 400".split(),
    "sac": ["--env-id", "Pendulum-v1", "--total-steps", "300", "--learning-starts", "100"],
    "ppo": [
        "--env-id",
        "Pendulum-v1",
        "--total-steps",
        "512",
        "--num-envs",
        "2",
        "--num-steps",
        "128",
    ],
}


@pytest.mark.parametrize(
    "name",
    ["td3_bc", "ppo", *(pytest.param(n, marks=pytest.mark.slow) for n in ("iql", "sac", "pdppo"))],
)
def test_export_runs_without_ocrl_and_matches(name, hopper_random_file, tmp_path):
    file = export(name, tmp_path / f"my_{name}.py")
    if name in OFFLINE:
        flags = ["--dataset", hopper_random_file, "--total-steps", str(OFFLINE[name])]
        flags += ["--eval-every", str(OFFLINE[name]), "--eval-episodes", "1"]
    else:
        flags = [*ONLINE[name], "--eval-episodes", "1"]
    flags += ["--seed", "3", "--threads", "1", "--no-progress"]
    copy = run_without_ocrl(file, *flags, "--run-dir", str(tmp_path / "copy"), tmp=tmp_path)
    assert copy.returncode == 0, copy.stderr[-2000:]
    assert "import ocrl fails" in copy.stderr
    repo = run_in_repo(name, *flags, "--run-dir", str(tmp_path / "repo"))
    assert repo.returncode == 0, repo.stderr[-2000:]
    got, want = metrics(tmp_path / "copy"), metrics(tmp_path / "repo")
    assert got == want and got["steps"] > 0


@pytest.mark.slow
def test_export_diffusion_runs_without_ocrl_and_matches(hopper_random_file, tmp_path):
    file = export("diffusion", tmp_path / "my_diffusion.py")
    flags = ["--dataset", hopper_random_file, "--width", "32", "--depth", "2", "--dim-t", "16"]
    flags += ["--total-steps", "200", "--batch-size", "64", "--log-every", "100"]
    flags += ["--sample-steps", "4", "--num-samples", "500", "--sample-batch-size", "200"]
    flags += ["--quality-samples", "100", "--seed", "3", "--threads", "1", "--no-progress"]
    copy = run_without_ocrl(file, *flags, "--run-dir", str(tmp_path / "copy"), tmp=tmp_path)
    assert copy.returncode == 0, copy.stderr[-2000:]
    assert "import ocrl fails" in copy.stderr
    repo = run_in_repo("diffusion", *flags, "--run-dir", str(tmp_path / "repo"))
    assert repo.returncode == 0, repo.stderr[-2000:]
    got, want = metrics(tmp_path / "copy"), metrics(tmp_path / "repo")
    assert got == want and got


# td3_bc, ppo, ggd_ppo (a module imported as a namespace) and pdppo (an ocrl env id) in the quick run.
QUICK = ("td3_bc", "ppo", "ggd_ppo", "pdppo")


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in ALGOS]
)
def test_every_export_is_clean_and_helps_without_ocrl(name, tmp_path):
    file = export(name, tmp_path / f"my_{name}.py")
    text = file.read_text()
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "ocrl" not in imported
    head = text.splitlines()[:3]
    assert head[0].startswith("# Exported from ocrl ") and "pip install" in head[2]
    algo = (ROOT / "algos" / f"{name}.py").read_text()
    main_at = algo.index("\ndef main(")  # the algorithm's code is copied as written
    assert algo[main_at:] in text
    config = ["--config", str(ROOT / "pyproject.toml")]
    check = subprocess.run([*ruff(), "check", *config, str(file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([*ruff(), "format", "--check", *config, str(file)], capture_output=True)
    assert fmt.returncode == 0
    helped = run_without_ocrl(file, "--help", tmp=tmp_path)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "import ocrl fails" in helped.stderr and "usage" in helped.stdout.lower()


def test_export_carries_only_what_is_reached(tmp_path):
    text = export("ppo", tmp_path / "my_ppo.py").read_text()
    assert "def gae(" in text  # ppo's rollout needs it
    assert "def write_minari(" not in text and "def load_dataset(" not in text
    assert "class ReplayBuffer" not in text


# What the library reaches only by name (ocrl.data.offline.READERS, ocrl.plugins.FEATURES).
BY_NAME = {
    "def read_minari(": ("--formats", "minari"),
    "def download_d4rl(": ("--formats", "d4rl"),
    "class WandbTracker": ("--features", "track"),
    "def record_episodes(": ("--features", "video"),
    "class PolicyProgram": ("--features", "policy"),
}


def test_a_d4rl_file_copy_carries_no_minari_download_or_optional_features(tmp_path):
    text = export("td3_bc", tmp_path / "my_td3_bc.py").read_text()
    assert "def read_d4rl_hdf5(" in text and "def load_dataset(" in text
    for piece in BY_NAME:
        assert piece not in text, piece
    assert (
        "def write_minari(" not in text and "# -------------------- ocrl.data.collect" not in text
    )
    assert "import minari" not in text and "wandb" not in text.split("\n", 3)[2]
    # Methods of library classes that nothing names are left out (synthetic data's constructor),
    # those the code calls stay.
    assert "def from_transitions(" not in text and "def episode_returns(" not in text
    assert "def transitions(" in text and "def validate(" in text and "def checkpoint(" in text
    # Each option brings its pieces, and the written tables name them.
    options = ["--formats", "hdf5"]
    options += [e for option, e in BY_NAME.values() if option == "--formats"] + ["--features"]
    options += [e for option, e in BY_NAME.values() if option == "--features"]
    full = export("td3_bc", tmp_path / "full.py", options=tuple(options)).read_text()
    for piece in BY_NAME:
        assert piece in full, piece
    assert "READERS: dict[str, Any] = {" in full and '"minari": read_minari' in full
    assert '"track": WandbTracker' in full and '"policy": write_policy' in full


def test_optional_packages_are_listed_as_optional(tmp_path):
    text = export("td3_bc", tmp_path / "t.py", options=("--features", "track")).read_text()
    needs, optional = text.splitlines()[2], text.splitlines()[3]
    assert needs.startswith("# Needs: pip install") and "wandb" not in needs
    assert optional.startswith("# Optional: pip install") and " wandb " in optional
    assert (
        "--track" in optional and "h5py" in needs and "tyro" in needs
    )  # imported in functions too


def test_a_copy_says_what_it_cannot_read_or_do_in_one_line(tmp_path):
    file = export("td3_bc", tmp_path / "my_td3_bc.py")
    helped = run_without_ocrl(file, "--help", tmp=tmp_path)
    assert "--formats hdf5 d4rl minari" in " ".join(helped.stdout.split())
    minari_folder = ROOT / "data" / "datasets" / "ocrl" / "hopper" / "medium-v0"
    for flags, words in (
        (["--dataset", str(minari_folder)], ["Minari", "--formats hdf5 minari"]),
        (["--dataset", "hopper-medium-v2"], ["D4RL name", "--formats hdf5 d4rl"]),
        (["--dataset", "x.hdf5", "--track"], ["--track", "--features track"]),
    ):
        run = run_without_ocrl(file, *flags, "--run-dir", str(tmp_path / "run"), tmp=tmp_path)
        lines = [line for line in run.stderr.splitlines() if line != "import ocrl fails"]
        assert run.returncode == 2 and len(lines) == 1, run.stderr
        assert all(w in lines[0] for w in words), lines[0]
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_copy_with_minari_reads_a_minari_folder_as_the_repo_does(tmp_path):
    file = export("td3_bc", tmp_path / "my_td3_bc.py", options=("--formats", "hdf5", "minari"))
    folder = ROOT / "data" / "datasets" / "ocrl" / "hopper" / "random-v0"
    flags = ["--dataset", str(folder), "--total-steps", "100", "--eval-every", "100"]
    flags += ["--eval-episodes", "1", "--seed", "3", "--threads", "1", "--no-progress"]
    copy = run_without_ocrl(file, *flags, "--run-dir", str(tmp_path / "copy"), tmp=tmp_path)
    assert copy.returncode == 0, copy.stderr[-2000:]
    repo = run_in_repo("td3_bc", *flags, "--run-dir", str(tmp_path / "repo"))
    assert repo.returncode == 0, repo.stderr[-2000:]
    assert metrics(tmp_path / "copy") == metrics(tmp_path / "repo")


def test_library_change_shows_in_next_export(tmp_path):
    tree = tmp_path / "ocrl"
    skip = shutil.ignore_patterns(".*", "runs", "__pycache__", "tests", "docs", "datasets")
    shutil.copytree(ROOT, tree, ignore=skip)  # the code only: no venv, data or git
    core = tree / "nets" / "core.py"
    source = core.read_text()
    assert "def polyak_update(" in source
    core.write_text(source.replace("def polyak_update(", "def polyak_update(  # changed\n", 1))
    text = export("td3_bc", tmp_path / "my_td3_bc.py", root=tree).read_text()
    assert "def polyak_update(  # changed" in text


def test_check_flag_says_whether_an_export_is_current(tmp_path):
    file = export("ppo", tmp_path / "my_ppo.py")
    check = [
        sys.executable,
        str(ROOT / "scripts" / "export.py"),
        "algos/ppo.py",
        "--check",
        str(file),
    ]
    assert subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 0
    file.write_text(file.read_text().replace("def gae(", "def gae_(", 1))
    assert subprocess.run(check, cwd=ROOT, capture_output=True).returncode == 1


def test_shipped_dataset_cannot_travel_and_the_copy_says_so(tmp_path):
    file = export("td3_bc", tmp_path / "my_td3_bc.py")
    helped = run_without_ocrl(file, "--help", tmp=tmp_path)
    assert "does not carry the datasets shipped with ocrl" in helped.stdout
    run = run_without_ocrl(file, "--run-dir", str(tmp_path / "run"), tmp=tmp_path)  # the default
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line != "import ocrl fails"]
    assert len(lines) == 1 and "ocrl/hopper/medium-v0" in lines[0] and "pass --dataset" in lines[0]
    assert not (tmp_path / "run").exists()
    # In the repository the shipped id is found, and --help has no such note.
    helped = run_in_repo("td3_bc", "--help")
    assert helped.returncode == 0 and "does not carry" not in helped.stdout


@pytest.mark.slow
def test_a_copy_resumes_from_its_checkpoint_as_the_repo_does(hopper_random_file, tmp_path):
    file = export("td3_bc", tmp_path / "my_td3_bc.py")
    flags = ["--dataset", hopper_random_file, "--eval-every", "100", "--eval-episodes", "1"]
    flags += ["--seed", "3", "--threads", "1", "--no-progress", "--save-model"]
    for where, run in (("copy", lambda *f: run_without_ocrl(file, *f, tmp=tmp_path)),
                       ("repo", lambda *f: run_in_repo("td3_bc", *f))):  # fmt: skip
        first = run(*flags, "--total-steps", "100", "--run-dir", str(tmp_path / where))
        assert first.returncode == 0, first.stderr[-2000:]
        resumed = run("--resume", str(tmp_path / where), "--total-steps", "200", "--no-progress")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    got, want = metrics(tmp_path / "copy"), metrics(tmp_path / "repo")
    assert got == want and got["resumed_from"] == 100 and got["steps"] == 200
    assert not (tmp_path / "copy" / "policy.pt2").exists()  # the copy has no --features policy
    assert (tmp_path / "repo" / "policy.pt2").exists()
