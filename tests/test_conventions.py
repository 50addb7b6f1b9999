"""What every algorithm file promises, checked for each: help text, a smoke run, tags, metrics.json,
bit-exact resume and clean failures on bad flags. A new file gets these tests by adding a row to ALGOS."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.experiment import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"dataset", "env_id"}

# name -> (tiny flags as Args fields, the rate tag, the loss tags it must log). "{data}" is the
# session's small D4RL file; budgets are steps of the file's own loop. Online files restore their
# environments mid-episode too (ocrl.envs.TrainingEnvs; the on-policy ones' ocrl.data.VectorRollout).
ALGOS: dict[str, tuple[dict, str, set[str]]] = {
    "td3_bc": (
        dict(dataset="{data}", total_steps=40, eval_every=20, log_every=10, hidden=(16, 16)),
        "charts/updates_per_s",
        {"losses/critic_loss", "losses/actor_loss", "losses/bc_mse"},
    ),
    "prdc": (
        dict(dataset="{data}", total_steps=40, eval_every=20, log_every=10, hidden=(16, 16)),
        "charts/updates_per_s",
        {"losses/critic_loss", "losses/dc_mse", "prdc/nn_distance"},
    ),
    "a2pr": (
        dict(
            dataset="{data}",
            total_steps=40,
            eval_every=20,
            log_every=10,
            actor_hidden=(16,),
            critic_hidden=(16,),
            vae_hidden=(16, 16),
        ),  # fmt: skip
        "charts/updates_per_s",
        {"losses/critic_loss", "losses/value_loss", "losses/bc_loss", "a2pr/vae_target_fraction"},
    ),
    "iql": (
        dict(dataset="{data}", total_steps=40, eval_every=20, log_every=10, hidden=(16, 16)),
        "charts/updates_per_s",
        {"losses/value_loss", "losses/actor_loss", "iql/weight_clip_fraction"},
    ),
    "sac": (
        dict(
            env_id="Pendulum-v1",
            total_steps=120,
            learning_starts=40,
            eval_every=60,
            log_every=20,
            batch_size=16,
        ),  # fmt: skip
        "charts/steps_per_s",
        {"losses/critic_loss", "losses/actor_loss", "losses/alpha"},
    ),
    "ggd_td": (
        dict(
            env_id="Pendulum-v1",
            total_steps=120,
            learning_starts=40,
            eval_every=60,
            log_every=20,
            batch_size=16,
            hidden=(16, 16),
        ),  # fmt: skip
        "charts/steps_per_s",
        {"losses/critic_loss", "losses/reg_loss", "ggd/beta_mean", "ggd/xi", "ggd/nonfinite"},
    ),
    "ppo": (
        dict(
            env_id="Pendulum-v1",
            total_steps=128,
            num_steps=32,
            batch_size=16,
            update_epochs=2,
            eval_every=64,
            log_every=32,
            hidden=(16, 16),
        ),  # fmt: skip
        "charts/steps_per_s",
        {"losses/value_loss", "losses/policy_loss", "ppo/clipfrac"},
    ),
    "ggd_ppo": (
        dict(
            env_id="Pendulum-v1",
            total_steps=128,
            num_envs=2,
            num_steps=16,
            batch_size=16,
            update_epochs=2,
            eval_every=64,
            log_every=32,
            hidden=(16, 16),
        ),  # fmt: skip
        "charts/steps_per_s",
        {"losses/value_loss", "losses/reg_loss", "ggd/beta_mean", "ggd/xi", "ggd/nonfinite"},
    ),
    "expo": (
        dict(
            dataset="{data}",
            total_steps=60,
            learning_starts=20,
            eval_every=30,
            log_every=10,
            batch_size=16,
            utd_ratio=2,
            num_qs=4,
            hidden=(16, 16),
            diffusion_width=16,
            diffusion_blocks=1,
            time_dim=8,
            n_samples=2,
            n_edit_samples=2,
        ),  # fmt: skip
        "charts/steps_per_s",
        {"losses/critic_loss", "losses/edit_loss", "expo/log_alpha", "expo/bc_loss_offline"},
    ),
}

# Every file in algos/ gets the help and exit-code tests; these have no evaluation episodes or --resume,
# and their own smoke and flag tests, with the reason why.
OWN_LOOP = {
    "hdpo": "trains on simulated paths with dev selection; see tests/test_hdpo.py",
    "diffusion": "a generative model with no policy to evaluate; see tests/test_diffusion.py",
    "pgd": "needs a trajectory model (--diffusion-model, or --diffusion-steps trains one); smoke, tags, "
    "bit-exact resume and bad flags with a tiny model in tests/test_pgd.py",
    "pdppo": "trains on lot-sizing instances (--instance), no --env-id or --batch-size; smoke, bit-exact "
    "resume and bad flags in tests/test_pdppo.py",
}
ALL_FILES = sorted(p.stem for p in (ROOT / "algos").glob("*.py") if p.stem != "__init__")


def test_every_algorithm_file_is_covered():
    assert set(ALL_FILES) == set(ALGOS) | set(OWN_LOOP), ALL_FILES


def module(name: str):
    return importlib.import_module(f"ocrl.algos.{name}")


def make_args(name: str, data: str, **over):
    flags, _, _ = ALGOS[name]
    fields = {k: (v.format(data=data) if isinstance(v, str) else v) for k, v in flags.items()}
    fields.update(eval_episodes=1, progress=False)
    fields.update(over)
    return module(name).Args(**fields)


def tags(run_dir: Path) -> set[str]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_args_field_has_a_docstring_and_a_flag(name):
    # Args and the shared bases it extends (ocrl.experiment.args): every field written with a docstring, on one
    # line (tyro keeps a docstring's line breaks, so a wrapped one prints as ragged lines in --help).
    documented, missing, wrapped = set(), [], []
    for cls in module(name).Args.__mro__:
        if not dataclasses.is_dataclass(cls):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for i, stmt in enumerate(body):
            if not isinstance(stmt, ast.AnnAssign):
                continue
            doc = i + 1 < len(body) and isinstance(body[i + 1], ast.Expr)
            if doc and isinstance(body[i + 1].value.value, str):
                documented.add(stmt.target.id)
                if "\n" in body[i + 1].value.value:
                    wrapped.append(f"{cls.__qualname__}.{stmt.target.id}")
            else:
                missing.append(f"{cls.__qualname__}.{stmt.target.id}")
    assert not missing, f"Args fields without a docstring in algos/{name}.py: {missing}"
    assert not wrapped, f"Args field docstrings over several lines (algos/{name}.py): {wrapped}"
    assert documented == {f.name for f in dataclasses.fields(module(name).Args)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / f"{name}.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for field in dataclasses.fields(module(name).Args):
        flag = "--" + field.name.replace("_", "-")
        assert flag in proc.stdout, flag
    assert (module(name).__doc__ or "").count("arXiv") >= 1  # the paper is named


@pytest.mark.parametrize("name", ALGOS)
def test_smoke_run_writes_the_run_folder(name, hopper_random_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    metrics = module(name).main(make_args(name, hopper_random_file, run_dir=str(run_dir)))
    _, rate_tag, loss_tags = ALGOS[name]
    assert f"run folder: {run_dir}" in capsys.readouterr().out  # printed when the run starts
    assert metrics["steps"] == make_args(name, hopper_random_file).total_steps
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["steps"] == metrics["steps"] and on_disk["return"] == pytest.approx(
        metrics["return"]
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert config["total_steps"] == metrics["steps"] and config["run_dir"] == str(run_dir)
    assert {"eval/return", rate_tag, *loss_tags} <= tags(run_dir)
    if "dataset" in ALGOS[name][0]:
        # The small Hopper file has D4RL reference scores: offline runs report a normalised score.
        assert isinstance(metrics["normalized_score"], float)
        assert metrics["normalized_score_best"] >= metrics["normalized_score"]


@pytest.mark.parametrize("name", ALGOS)
def test_resume_after_interruption_is_bit_exact(
    name,
    hopper_random_file,
    tmp_path,
    interrupt_evaluation,
    assert_same_checkpoints,
    assert_same_state,
):
    base = make_args(name, hopper_random_file, save_model=True, seed=3)
    straight = module(name).main(dataclasses.replace(base, run_dir=str(tmp_path / "straight")))
    interrupt_evaluation(2)
    with pytest.raises(KeyboardInterrupt):
        module(name).main(dataclasses.replace(base, run_dir=str(tmp_path / "interrupted")))
    interrupt_evaluation(0)
    first_eval = base.eval_every
    assert load_checkpoint(tmp_path / "interrupted")["step"] == first_eval
    assert not (tmp_path / "interrupted" / "metrics.json").exists()

    resumed = module(name).main(
        module(name).Args(resume=str(tmp_path / "interrupted"), total_steps=base.total_steps)
    )
    assert resumed["resumed_from"] == first_eval and resumed["steps"] == base.total_steps
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    assert a.keys() == b.keys() and a["step"] == b["step"] == base.total_steps
    assert assert_same_checkpoints(tmp_path / "straight", tmp_path / "interrupted") > 10
    # Everything else too: RNG states, the training envs' states (online), the run's best scores.
    a["run"].pop("wall_time"), b["run"].pop("wall_time")
    assert_same_state(a, b)
    skip = {"wall_time_s", "run_dir", "resumed_from"}
    assert {k: v for k, v in resumed.items() if k not in skip} == {
        k: v for k, v in straight.items() if k not in skip
    }


BAD_FLAGS = [
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "-5"], "--batch-size -5"),
    (["--eval-every", "0"], "--eval-every 0"),
    (["--eval-episodes", "0"], "--eval-episodes 0"),
    (["--total-steps", "0"], "--total-steps 0"),
    (["--env-id", "Hoper-v4"], "did you mean 'Hopper-v4'"),
]


@pytest.mark.parametrize("argv, expected", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
@pytest.mark.parametrize("name", ALGOS)
def test_bad_flag_is_one_line_exit_2_and_no_folder(name, argv, expected, tmp_path, run_algorithm):
    run_dir = tmp_path / "run"
    code, err = run_algorithm(module(name), [*argv, "--run-dir", str(run_dir), "--no-progress"])
    assert code == 2
    assert err.startswith("error:") and "\n" not in err and expected in err, err
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ALGOS)
def test_garbage_checkpoint_for_resume_is_refused(
    name, hopper_random_file, tmp_path, capsys, run_algorithm
):
    run_dir = tmp_path / "run"
    module(name).main(make_args(name, hopper_random_file, run_dir=str(run_dir), total_steps=20))
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    before = sorted(p.name for p in run_dir.iterdir())
    capsys.readouterr()
    code, err = run_algorithm(module(name), ["--resume", str(run_dir), "--no-progress"])
    assert code == 2 and "\n" not in err and "checkpoint.pt" in err, err
    assert "weights_only" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written


@pytest.mark.parametrize("name", ALL_FILES)
def test_the_real_command_exits_2_without_a_traceback(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / f"{name}.py"), "--batch-size", "0", "--run-dir",
         str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_damaged_minari_folder_is_refused_cleanly(tmp_path, run_algorithm):
    folder = tmp_path / "broken" / "data"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text('{"dataset_id": "broken-v0", "total_ep')  # truncated
    (folder / "main_data.hdf5").write_bytes(b"\x89HDF\r\n")
    run_dir = tmp_path / "run"
    code, err = run_algorithm(
        module("td3_bc"), ["--dataset", str(folder), "--run-dir", str(run_dir)]
    )
    assert code == 2 and "\n" not in err and "metadata.json" in err, err
    assert not run_dir.exists()


def test_float_flag_file_reports_a_normalised_score_on_hopper_v5(hopper_random_file, tmp_path):
    # A D4RL-layout file written by another tool: float 0/1 flags, no name or metadata to go by.
    import h5py

    path = tmp_path / "from_elsewhere.hdf5"
    with h5py.File(hopper_random_file, "r") as src, h5py.File(path, "w") as dst:
        for key in ("observations", "actions", "rewards", "next_observations"):
            dst.create_dataset(key, data=src[key][()])
        for key in ("terminals", "timeouts"):
            dst.create_dataset(key, data=src[key][()].astype("float32"))
    metrics = module("td3_bc").main(
        make_args("td3_bc", str(path), env_id="Hopper-v5", run_dir=str(tmp_path / "run"))
    )
    assert isinstance(metrics["normalized_score"], float)
    hopper_random_return = -20.272305  # D4RL's hopper reference: a score of 0
    expected = 100 * (metrics["return"] - hopper_random_return) / (3234.3 - hopper_random_return)
    assert metrics["normalized_score"] == pytest.approx(expected, rel=1e-4)


# --- First contact: inputs that once crashed with a traceback or changed a finished run (issue 25) ---


def _first_field(name: str, test) -> str:
    """The flag of the first Args field of algos/<name>.py whose (name, type) passes `test`."""
    hints = typing.get_type_hints(module(name).Args)
    field = next(
        f.name for f in dataclasses.fields(module(name).Args) if test(f.name, hints[f.name])
    )
    return "--" + field.replace("_", "-")


def _is_lr(field: str, tp) -> bool:
    return (field == "lr" or field.endswith("_lr") or field.startswith("lr_")) and float in (
        tp,
        *typing.get_args(tp),
    )


def _one_line_refusal(module_, argv, run_algorithm, tmp_path, *expected) -> str:
    run_dir = tmp_path / "run"
    code, err = run_algorithm(module_, [*argv, "--run-dir", str(run_dir), "--no-progress"])
    assert code == 2, err
    assert err.startswith("error:") and "\n" not in err, err
    for text in expected:
        assert text in err, err
    assert not run_dir.exists()
    return err


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
@pytest.mark.parametrize("name", ALL_FILES)
def test_a_seed_out_of_range_is_one_line(name, seed, tmp_path, run_algorithm):
    _one_line_refusal(
        module(name), ["--seed", seed], run_algorithm, tmp_path, f"--seed {seed}", "4294967295"
    )


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
@pytest.mark.parametrize("name", ALL_FILES)
def test_a_learning_rate_that_is_not_positive_and_finite_is_one_line(
    name, value, tmp_path, run_algorithm
):
    flag = _first_field(name, _is_lr)
    _one_line_refusal(module(name), [flag, value], run_algorithm, tmp_path, flag)


@pytest.mark.parametrize("name", ALL_FILES)
def test_a_mistyped_number_names_the_flag_the_value_and_what_it_takes(
    name, tmp_path, run_algorithm
):
    flag = _first_field(name, lambda field, tp: tp is int and field != "seed")
    _one_line_refusal(
        module(name),
        [flag, "abc"],
        run_algorithm,
        tmp_path,
        f"{flag} abc",
        "expected a whole number",
    )


@pytest.mark.parametrize("name", ALL_FILES)
def test_an_unknown_choice_lists_the_choices_and_the_closest(name, tmp_path, run_algorithm):
    hints = typing.get_type_hints(module(name).Args)
    literals = [
        f.name
        for f in dataclasses.fields(module(name).Args)
        if typing.Literal
        in (
            typing.get_origin(hints[f.name]),
            *map(typing.get_origin, typing.get_args(hints[f.name])),
        )
    ]
    if not literals:
        pytest.skip(f"algos/{name}.py has no flag with a fixed set of choices")
    field = literals[
        -1
    ]  # --preset is often first; any other choice flag is tested where there is one
    tp = hints[field]
    literal = (
        tp
        if typing.get_origin(tp) is typing.Literal
        else next(a for a in typing.get_args(tp) if typing.get_origin(a) is typing.Literal)
    )
    choices = [str(c) for c in typing.get_args(literal)]
    flag = "--" + field.replace("_", "-")
    typo = choices[0][:-1] + ("x" if choices[0][-1] != "x" else "y")
    err = _one_line_refusal(module(name), [flag, typo], run_algorithm, tmp_path, f"{flag} {typo}")
    assert all(c in err for c in choices) and f"did you mean {choices[0]}?" in err, err


def test_an_unknown_setting_is_one_line_from_the_real_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / "hdpo.py"), "--setting", "nonsense"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--setting nonsense: expected one of one_store_lost, " in proc.stderr
    assert "╭" not in proc.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ALL_FILES)
def test_an_unwritable_run_dir_is_refused_before_any_work(name, tmp_path, run_algorithm):
    code, err = run_algorithm(module(name), ["--run-dir", "/proc/ocrl-run", "--no-progress"])
    assert code == 2 and "\n" not in err and "--run-dir /proc/ocrl-run: cannot be written" in err


def test_an_unwritable_diffusion_output_is_refused_before_training(
    hopper_random_file, tmp_path, monkeypatch, run_algorithm
):
    monkeypatch.chdir(tmp_path)  # the default run folder would be made under ./runs
    code, err = run_algorithm(
        module("diffusion"), ["--dataset", hopper_random_file, "--out", "/proc/x.hdf5"]
    )
    assert code == 2 and "\n" not in err, err
    assert "--out /proc/x.hdf5: cannot be written" in err and ".tmp" not in err
    assert not any(tmp_path.iterdir())  # no run folder


@pytest.mark.parametrize("name", ALL_FILES)
def test_a_run_dir_that_holds_a_run_is_not_reused_without_resume(name, tmp_path, run_algorithm):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    for file in ("config.json", "metrics.json", "checkpoint.pt"):
        (run_dir / file).write_text("{}")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, err = run_algorithm(module(name), ["--run-dir", str(run_dir), "--no-progress"])
    assert code == 2 and "\n" not in err, err
    assert f"--run-dir {run_dir}: holds a run already" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_overwrite_empties_a_finished_run_first(hopper_random_file, tmp_path, run_algorithm):
    run_dir = tmp_path / "run"
    first = make_args("td3_bc", hopper_random_file, run_dir=str(run_dir), save_model=True)
    module("td3_bc").main(first)
    old_events = {p.name for p in run_dir.glob("events.*")}
    code, err = run_algorithm(
        module("td3_bc"),
        ["--dataset", hopper_random_file, "--total-steps", "20", "--eval-every", "20",
         "--eval-episodes", "1", "--hidden", "16", "16", "--run-dir", str(run_dir), "--no-progress"],
    )  # fmt: skip
    assert code == 2 and "holds a run already" in err
    code, _ = run_algorithm(
        module("td3_bc"),
        ["--dataset", hopper_random_file, "--total-steps", "20", "--eval-every", "20",
         "--eval-episodes", "1", "--hidden", "16", "16", "--run-dir", str(run_dir), "--no-progress",
         "--overwrite"],
    )  # fmt: skip
    assert code == 0
    assert not (run_dir / "checkpoint.pt").exists()  # the old run's, not written by this one
    assert not old_events & {p.name for p in run_dir.glob("events.*")}
    assert len(list(run_dir.glob("events.*"))) == 1
    assert json.loads((run_dir / "config.json").read_text())["total_steps"] == 20
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 20


@pytest.mark.parametrize("name", ALL_FILES)
def test_threads_flag_is_checked(name, tmp_path, run_algorithm):
    _one_line_refusal(
        module(name), ["--threads", "-1"], run_algorithm, tmp_path, "--threads -1", ">= 0"
    )


def test_threads_sets_torchs_cpu_threads():
    from ocrl.experiment import pick_device

    before = torch.get_num_threads()
    try:
        pick_device("cpu", 1)
        assert torch.get_num_threads() == 1
        pick_device("cpu", 0)  # 0 leaves torch's setting alone
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_halfcheetah_run_writes_nothing_outside_its_run_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / "ppo.py"), "--env-id", "HalfCheetah-v4",
         "--total-steps", "64", "--num-steps", "32", "--batch-size", "16", "--update-epochs", "1",
         "--eval-every", "64", "--eval-episodes", "1", "--hidden", "8", "--run-dir", "run",
         "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no MUJOCO_LOG.TXT beside it
    assert "WARNING" not in proc.stdout + proc.stderr and "deprecated" not in proc.stderr


def test_mujoco_warnings_reach_python_warnings_and_no_log_file(tmp_path, monkeypatch):
    import mujoco

    from ocrl.envs import make_env

    monkeypatch.chdir(tmp_path)
    env = make_env("Hopper-v4")
    env.reset(seed=0)
    data = env.unwrapped.data
    data.qpos[:] = float("nan")
    with pytest.warns(RuntimeWarning, match="MuJoCo: Nan, Inf or huge value in QPOS"):
        mujoco.mj_step(env.unwrapped.model, data)
    env.close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
