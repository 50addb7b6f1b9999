"""Collect D4RL-style offline datasets for a Gymnasium task by training a SAC behaviour policy.

Recipe (D4RL, arXiv 2004.07219, adapted to one training budget):
- random: the untrained (randomly initialised) SAC actor, actions sampled;
- medium: the policy snapshot whose evaluation return is closest to --medium-fraction (default 0.4,
  i.e. between a third and a half) of the best return reached, actions sampled;
- medium-replay: the replay buffer of the SAC run up to the medium snapshot;
- expert: the best snapshot this budget reached (not necessarily a converged expert; the metadata says so);
- medium-expert: medium and expert concatenated.
Reference scores: D4RL's table for hopper / halfcheetah / walker2d (so scores compare with published
ones); for any other task the measured random and best evaluation returns, stored in the metadata.

Each dataset is written atomically in Minari's on-disk format under OUT/<namespace>/<task>/<kind>-v0
(or D4RL HDF5 with --format d4rl). An interrupted collection resumes: SAC continues from its last
checkpoint and finished datasets are not collected again.

    python scripts/collect_dataset.py Hopper-v4 --out-dir data/datasets --sac-steps 120000 --steps-per-dataset 50000
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from ocrl.algos import sac
from ocrl.data import OfflineDataset
from ocrl.data.collect import rollout
from ocrl.data.d4rl import D4RL_ENV_IDS, D4RL_REF_SCORES, write_d4rl_hdf5
from ocrl.data.minari_io import write_minari
from ocrl.envs import make_env
from ocrl.experiment import friendly_errors, load_checkpoint, seed_everything
from ocrl.nets import TanhGaussianActor

KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")


@dataclass
class Args:
    env_id: tyro.conf.Positional[str]
    """Gymnasium task to collect on, e.g. Hopper-v4"""
    out_dir: str = "datasets"
    """root folder of the written datasets (a Minari datasets root)"""
    work_dir: str | None = None
    """where the SAC run and its snapshots live; default OUT_DIR/.collect/<env-id>"""
    namespace: str = "ocrl"
    """Minari namespace of the dataset ids"""
    format: Literal["minari", "d4rl"] = "minari"
    """on-disk format of the written datasets"""
    kinds: tuple[str, ...] = KINDS
    """which datasets to write"""
    sac_steps: int = 200_000
    """environment steps of SAC training"""
    eval_every: int = 5_000
    """steps between SAC evaluations, i.e. between policy snapshots"""
    steps_per_dataset: int = 50_000
    """transitions in each of random, medium and expert (medium-expert has twice as many)"""
    random_steps: int | None = None
    """transitions in the random dataset (default: --steps-per-dataset)"""
    medium_fraction: float = 0.4
    """the medium policy's target return, as a fraction of the best return reached"""
    seed: int = 0
    """seed of SAC training and of the rollouts"""
    device: str = "auto"
    """device of SAC training"""
    sac_overrides: dict[str, float] = field(default_factory=dict)
    """extra SAC arguments, e.g. --sac-overrides learning_starts 10000"""


def task_name(env_id: str) -> str:
    """hopper for Hopper-v4: the env part of the dataset ids."""
    return re.sub(r"-v\d+$", "", env_id).lower()


def load_actor(snapshot: Path, env_id: str, hidden: tuple[int, ...]) -> TanhGaussianActor:
    env = make_env(env_id)
    actor = TanhGaussianActor(
        env.observation_space.shape[0],
        env.action_space.shape[0],
        hidden,
        env.action_space.low,
        env.action_space.high,
    )
    env.close()
    actor.load_state_dict(load_checkpoint(snapshot)["actor"])
    return actor.eval()


def main(args: Args) -> list[str]:
    seed_everything(args.seed)
    task = task_name(args.env_id)
    out_root = Path(args.out_dir)
    work = Path(args.work_dir or out_root / ".collect" / args.env_id)
    sac_dir = work / "sac"
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"error: unknown --kinds {sorted(unknown)}; choose from {KINDS}")
    sac_fields = {f.name for f in fields(sac.Args)}
    unknown = sorted(set(args.sac_overrides) - sac_fields)
    if unknown:
        raise SystemExit(
            f"error: unknown --sac-overrides {unknown}; SAC's arguments are {sorted(sac_fields)}"
        )

    # 1. Train the behaviour policy (or resume / reuse it).
    sac_args = sac.Args(
        env_id=args.env_id, seed=args.seed, device=args.device, total_steps=args.sac_steps,
        buffer_size=max(args.sac_steps, 1), eval_every=args.eval_every, save_model=True, save_snapshots=True,
        run_dir=str(sac_dir), **{k: type(getattr(sac.Args, k))(v) for k, v in args.sac_overrides.items()},
    )  # fmt: skip
    if not (sac_dir / "metrics.json").exists():
        if (sac_dir / "checkpoint.pt").exists():
            print(f"resuming SAC from {sac_dir}")
            sac_args.resume = str(sac_dir)
        sac.main(sac_args)
    snapshots = [
        json.loads(line)
        for line in (sac_dir / "snapshots" / "index.jsonl").read_text().splitlines()
    ]
    by_step = {s["step"]: s for s in snapshots}  # a resumed run may have re-evaluated a step
    snapshots = [by_step[k] for k in sorted(by_step)]

    # 2. Pick the policies.
    random_snap = snapshots[0]
    expert_snap = max(snapshots, key=lambda s: s["return"])
    target = random_snap["return"] + args.medium_fraction * (
        expert_snap["return"] - random_snap["return"]
    )
    trained = [s for s in snapshots if 0 < s["step"] <= expert_snap["step"]]
    if not trained:
        raise SystemExit(
            f"error: no trained SAC snapshot in {sac_dir}; raise --sac-steps above --eval-every"
        )
    medium_snap = min(trained, key=lambda s: abs(s["return"] - target))
    chosen = {"random": random_snap, "medium": medium_snap, "expert": expert_snap}
    for kind, snap in chosen.items():
        print(f"{kind:>7}: SAC step {snap['step']:>8}, evaluation return {snap['return']:.1f}")

    if task in D4RL_REF_SCORES and D4RL_ENV_IDS.get(task) == args.env_id:
        ref_min, ref_max = D4RL_REF_SCORES[task]
        ref_source = "D4RL reference scores (d4rl/infos.py)"
    else:
        ref_min, ref_max = random_snap["return"], expert_snap["return"]
        ref_source = "measured by the collector: untrained-policy and best SAC evaluation returns"
    config = json.loads((sac_dir / "config.json").read_text())
    hidden = tuple(config["hidden"])

    def build(kind: str) -> dict[str, np.ndarray]:
        if kind in chosen:
            actor = load_actor(sac_dir / "snapshots" / chosen[kind]["file"], args.env_id, hidden)
            seed = args.seed * 1_000_003 + KINDS.index(kind) * 10_007

            @torch.no_grad()
            def sample_action(
                obs: np.ndarray,
            ) -> np.ndarray:  # D4RL records sampled, not mean, actions
                return actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()

            env = make_env(args.env_id)
            num_steps = (
                args.random_steps
                if kind == "random" and args.random_steps
                else args.steps_per_dataset
            )
            rows = rollout(env, sample_action, num_steps, seed, desc=kind)
            env.close()
            return rows
        if kind == "medium-replay":
            buf = load_checkpoint(sac_dir / "checkpoint.pt")["buffer"]
            n = min(int(medium_snap["step"]), int(buf["size"]))
            terminals = buf["terminals"][:n].numpy() > 0.5
            timeouts = buf["timeouts"][:n].numpy() & ~terminals
            timeouts[-1] |= not terminals[-1]  # the cut ends the last episode
            return {
                "observations": buf["observations"][:n].numpy(), "actions": buf["actions"][:n].numpy(),
                "rewards": buf["rewards"][:n].numpy(), "next_observations": buf["next_observations"][:n].numpy(),
                "terminals": terminals, "timeouts": timeouts,
            }  # fmt: skip
        parts = [build("medium"), build("expert")]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    written = []
    for kind in args.kinds:
        dataset_id = f"{args.namespace}/{task}/{kind}-v0"
        target_path = (
            out_root / dataset_id if args.format == "minari" else out_root / f"{task}_{kind}.hdf5"
        )
        if target_path.exists():
            print(f"{dataset_id}: already written at {target_path}, skipped")
            written.append(str(target_path))
            continue
        arrays = build(kind)
        policy_note = {
            "random": "the untrained SAC actor",
            "medium": f"the SAC snapshot at step {medium_snap['step']} (evaluation return {medium_snap['return']:.1f})",
            "expert": f"the best SAC snapshot this budget ({args.sac_steps} steps) reached: step "
            f"{expert_snap['step']}, evaluation return {expert_snap['return']:.1f}; not a converged expert",
            "medium-replay": f"the SAC replay buffer up to step {medium_snap['step']}",
            "medium-expert": "medium and expert concatenated",
        }[kind]
        dataset = OfflineDataset(
            **arrays, name=dataset_id, env_id=args.env_id, ref_min_score=ref_min, ref_max_score=ref_max,
            source=str(target_path),
            metadata={"collector": "scripts/collect_dataset.py", "policy": policy_note, "ref_score_source": ref_source,
                      "sac_steps": args.sac_steps, "seed": args.seed},
        )  # fmt: skip
        dataset.validate()
        description = (
            f"{kind} data for {args.env_id}: {policy_note}. Reference scores: {ref_source}."
        )
        if args.format == "minari":
            write_minari(
                dataset, str(out_root), dataset_id, description=description, algorithm_name="SAC",
                extra_metadata=dataset.metadata,
            )  # fmt: skip
        else:
            write_d4rl_hdf5(dataset, target_path)
        returns = dataset.episode_returns()
        print(
            f"{dataset_id}: {len(dataset)} steps, {len(returns)} episodes, mean return {returns.mean():.1f}, "
            f"normalised {float(np.mean(dataset.normalized_score(returns))):.1f} -> {target_path}"
        )
        written.append(str(target_path))
    return written


if __name__ == "__main__":
    with friendly_errors():
        main(tyro.cli(Args))
