"""Benchmarks, each printed as a ratio against a baseline measured in the same run.

1. TD3+BC gradient updates per second: ocrl's update (twin critics as one batched ensemble, sampling on
   the device, no host synchronisation), eager and torch.compile'd, against a plain eager update written
   the way the original TD3+BC code does it (two separate critic networks in one module, host-side
   numpy index sampling copied to the device every step, a Python loop for the target updates, the
   actor loss back-propagated into the critic too). Rounds of the variants are interleaved and the
   median is reported, so background load affects all of them alike.
2. Peak memory of loading a 1M-transition D4RL-format file into the training buffer, as a multiple of
   the float32 size of its arrays (target: at most 2x).
3. PRDC's nearest-neighbour search (`ocrl.nets.NearestNeighbors`): milliseconds per batch of 256 queries
   against a 1M-point set of MuJoCo size (S+A = 11+3 = 14 and 17+6 = 23), for every backend, as a ratio
   against a plain `scipy.spatial.KDTree` query in the same run, for queries near the data (dataset
   points, action + N(0, 0.1)) and far from it (dataset states with uniform actions, like an untrained
   policy). The point sets are synthetic stand-ins for PRDC's (beta * standardised state, action):
   smooth Ornstein-Uhlenbeck state trajectories of 1,000 steps with OU actions in [-1, 1].
4. HDPO's simulator (`ocrl.envs.inventory`, one store, lost sales, L = 2, the vanilla [32, 32, 32] ELU
   policy): simulated path-periods per second, forward only and forward + backward through T = 50
   periods, and the time of one epoch at the reference's N = 32768 paths, batch 8192, against a plain
   version of the same dynamics written with clones and slice assignments in the same run.
5. Diffusion (`ocrl.nets.diffusion`, `algos/diffusion.py`) against the original SynthER code
   (conglu1997/SynthER @ e6835a5, imported from an outside source tree given by --synther-path; not part
   of ocrl), on the same rows and network size (the cpu-small preset: residual MLP width 256, depth 4,
   dim_t 128, no LayerNorm; Hopper rows d_in = 27, batch 256; --diffusion-width for 1024/2048): training
   steps per second (`Diffusion.update` against ElucidatedDiffusion.forward + backward + clip 1.0 + AdamW
   + CosineAnnealingLR + ema_pytorch EMA, as SynthER's Trainer.train_on_batch does it) and samples per
   second (`heun_sample`, 128 steps with churn, + unnormalise against ElucidatedDiffusion.sample), as
   ratios against SynthER, interleaved rounds, medians. First a same-maths check with SynthER's weights
   loaded into ours: D(x; sigma), the network alone in float64, the loss with the same draws, the sampler
   with the same noise. On CUDA also ours in bf16 autocast + TF32 (and with --compile the CUDA-graph
   sampler) and the achieved FLOP/s as a fraction of --peak-tflops. SynthER's unused heavy imports
   (wandb, accelerate, redq, torchdiffeq, gym) are stubbed for the import only; it needs
   `pip install einops gin-config ema-pytorch` in the environment.

    python scripts/bench.py                    # CPU, Hopper sizes, batch 256
    python scripts/bench.py --device cuda
    python scripts/bench.py --only updates     # the TD3+BC update benchmark alone
    python scripts/bench.py --only knn         # the nearest-neighbour benchmark alone (--knn-rows for smaller)
    python scripts/bench.py --only hdpo        # the inventory simulator alone
    python scripts/bench.py --only diffusion   # ocrl's diffusion against SynthER's (--synther-path, default
                                               # ../SynthER; --diffusion-sample-steps 16 for a quick run)
    python scripts/bench.py --only pgd         # PGD's regeneration, guided against unguided
    python scripts/bench.py --only lot_sizing  # ocrl's lot-sizing env against PDPPO's (--pdppo-path)
    python scripts/bench.py --only pgd --pgd-model M/model.pt --pgd-run R --pgd-quality   # + the table

6. PGD (`algos/pgd.py`): seconds per regeneration of the synthetic set (--pgd-trajectories windows of the
   trajectory U-Net, --pgd-sample-steps Heun steps), unguided (the plain sampler) against guided (the
   policy's log-likelihood gradient before every step: one actor forward + backward per step, plus one
   extra U-Net call with --pgd-denoised-guidance), interleaved rounds, medians, and the ratio. Without
   --pgd-model a U-Net of random weights of the same size stands in (the cost does not depend on the
   weights); without --pgd-run a fresh actor guides. With --pgd-quality (needs both) it prints, per
   guidance coefficient in --pgd-coefs, the target policy's mean log-likelihood of the synthetic actions
   and the one-step dynamics error of the synthetic transitions, with the real data's beside them.
7. GGD-TD (`algos/ggd_td.py`, sb3-faithful networks: 2 twins x 5 members, Tanh [256, 256]): seconds per
   SAC update (critic step, one actor and temperature step, Polyak, and the `agent.diagnostics()` the
   loop logs) for --loss mse (the plain-SAC baseline, the same networks), --loss gaussian, --loss ggd
   --reg none, the default (ggd + BIEV with the on-device xi search) and the default with the released
   CPU Nelder-Mead xi solver, on a device buffer of synthetic transitions; interleaved rounds, medians,
   ratios against --loss mse. `python scripts/bench.py --only ggd_td --updates 50 --rounds 3`
8. EXPO (`algos/expo.py`, the scripts' networks and N = 8 + K = 8 candidates): wall time per environment
   step, i.e. one OTF action (EMA diffusion chain for the N samples, edits, subset-min Q) plus the
   --expo-utd critic steps with their OTF backups and the diffusion, edit and temperature steps, against
   RLPD (`--policy gaussian`, the same critics) in the same run; interleaved rounds of --expo-steps, medians,
   the ratio; on CUDA with --compile also EXPO with the OTF selection compiled into CUDA graphs
   (`--compile` of algos/expo.py). At UTD 20 an EXPO step is ~1.4 TFLOP, tens of seconds on one CPU core:
   lower --expo-utd there.
   `python scripts/bench.py --only expo --expo-utd 2 --expo-steps 2 --rounds 3`
"""

from __future__ import annotations

import copy
import gc
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from torch import nn

from ocrl.algos import td3_bc
from ocrl.data import OfflineDataset, ReplayBuffer, load_dataset
from ocrl.data.d4rl import write_d4rl_hdf5
from ocrl.data.windows import windows_to_transitions
from ocrl.experiment import TrainingLoop
from ocrl.nets import NearestNeighbors


@dataclass
class Args:
    device: str = "cpu"
    """device of the update benchmark"""
    obs_dim: int = 11
    """observation size (Hopper: 11)"""
    act_dim: int = 3
    """action size (Hopper: 3)"""
    batch_size: int = 256
    """minibatch size"""
    updates: int = 300
    """updates per timed round"""
    rounds: int = 5
    """interleaved rounds per variant; the median is reported"""
    compile: bool = True
    """also time the torch.compile'd update"""
    memory: bool = True
    """run the 1M-transition loading benchmark"""
    memory_rows: int = 1_000_000
    """rows of the synthetic D4RL file"""
    knn: bool = True
    """run the nearest-neighbour search benchmark"""
    knn_rows: int = 1_000_000
    """points in the nearest-neighbour index"""
    knn_rounds: int = 5
    """timed batches per backend and query kind; the median is reported"""
    knn_device: str | None = None
    """device of the brute-force backend; default: --device"""
    hdpo: bool = True
    """run the inventory-simulator benchmark"""
    hdpo_batches: tuple[int, ...] = (1024, 8192)
    """paths per simulated batch"""
    diffusion: bool = True
    """run the diffusion benchmark (ocrl against SynthER's code)"""
    synther_path: str = "../SynthER"
    """folder holding SynthER's source tree (its synther/ package): `git clone https://github.com/conglu1997/SynthER ../SynthER`"""
    diffusion_width: int = 256
    """residual-MLP width (algos/diffusion.py's cpu-small preset: 256; SynthER: 1024/2048)"""
    diffusion_depth: int = 4
    """residual blocks (cpu-small: 4; SynthER: 6)"""
    diffusion_d_in: int = 27
    """row size (Hopper [s, a, r, s', terminal]: 11 + 3 + 1 + 11 + 1)"""
    diffusion_train_steps: int = 100
    """training steps per timed round"""
    diffusion_sample_batch: int = 10_000
    """rows per sampling pass"""
    diffusion_sample_steps: int = 128
    """Heun steps N of the sampler (2N - 1 network evaluations per row)"""
    diffusion_sample_rounds: int = 3
    """interleaved sampling passes per variant; the median is reported"""
    peak_tflops: float = 989.0
    """the device's dense bf16 matmul peak in TFLOP/s for the roofline fraction (H100/H200 SXM: 989)"""
    threads: int | None = None
    """torch CPU threads (default: torch's); benchmark on a shared machine with 1"""
    pgd: bool = True
    """run PGD's regeneration benchmark (guided against unguided sampling)"""
    pgd_model: str | None = None
    """model.pt of algos/diffusion.py --level trajectory; default a random U-Net of --pgd-unet-features"""
    pgd_run: str | None = None
    """an algos/pgd.py run folder written with --save-model: its actor guides (default: a fresh actor)"""
    pgd_agent: Literal["td3_bc", "iql"] = "td3_bc"
    """the guiding actor's kind when --pgd-run is not given"""
    pgd_unet_features: int = 64
    """U-Net width of the stand-in model (the docs/results/pgd.md model: 64, 2 blocks)"""
    pgd_length: int = 16
    """rows per window of the stand-in model"""
    pgd_trajectories: int = 1024
    """windows per regeneration (algos/pgd.py's cpu-small preset: 1024; PGD: 8192)"""
    pgd_sample_steps: int = 32
    """Heun steps per regeneration (cpu-small: 32; PGD: 256)"""
    pgd_rounds: int = 3
    """interleaved timed regenerations per variant; the median is reported"""
    pgd_coef: float = 1.0
    """guidance coefficient of the timed guided variant"""
    pgd_normalize: bool = True
    """--normalize-action-guidance for the guided variants"""
    pgd_denoised_guidance: bool = False
    """--denoised-guidance for the guided variants"""
    pgd_quality: bool = False
    """also print the log-likelihood / dynamics-error table over --pgd-coefs (needs --pgd-model and --pgd-run)"""
    pgd_coefs: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)
    """guidance coefficients of the table"""
    pgd_quality_transitions: int = 5000
    """transitions (synthetic and real each) of the dynamics error"""
    ggd_td: bool = True
    """run the GGD-TD critic cost benchmark (against --loss mse)"""
    expo: bool = True
    """run the EXPO per-environment-step cost benchmark (against RLPD, --policy gaussian)"""
    expo_utd: int = 20
    """critic steps per environment step in the EXPO benchmark (the scripts: 20)"""
    expo_steps: int = 2
    """environment steps per timed round of the EXPO benchmark"""
    lot_sizing: bool = True
    """run the lot-sizing environment benchmark (ocrl's against leokan92/pdppo's SimplePlant)"""
    pdppo_path: str = "../pdppo/code/Lot-sizing"
    """PDPPO's code/Lot-sizing folder (envs/simplePlant.py): `git clone https://github.com/leokan92/pdppo ../pdppo`"""
    lot_sizing_instance: str | None = None
    """instance JSON of the lot-sizing benchmark (default: a generated 25 items x 10 machines instance)"""
    lot_sizing_steps: int = 10_000
    """single-env steps per timed round (episodes of 100 periods, reset timed)"""
    only: (
        Literal[
            "updates", "memory", "knn", "hdpo", "diffusion", "pgd", "ggd_td", "expo", "lot_sizing"
        ]
        | None
    ) = None
    """run this one benchmark alone"""


# ----------------------------------------------------------------------------- baseline
class _TwoCritics(nn.Module):
    """Two separate Q-networks in one module, as the original code's Critic class."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.q1 = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.q2 = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs, act):
        sa = torch.cat([obs, act], 1)
        return self.q1(sa), self.q2(sa)


class _BaselineActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, act_dim),
        )

    def forward(self, obs):
        return torch.tanh(self.net(obs))


def baseline_trainer(
    data: dict[str, np.ndarray], obs_dim: int, act_dim: int, batch: int, device: torch.device
) -> Callable[[int], None]:
    """An eager TD3+BC iteration in the original code's style; returns step(iteration)."""
    actor = _BaselineActor(obs_dim, act_dim).to(device)
    critic = _TwoCritics(obs_dim, act_dim).to(device)
    actor_t, critic_t = copy.deepcopy(actor), copy.deepcopy(critic)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=3e-4)
    n = len(data["rewards"])

    def step(it: int) -> None:
        idx = np.random.randint(0, n, size=batch)
        s = torch.FloatTensor(data["observations"][idx]).to(device)
        a = torch.FloatTensor(data["actions"][idx]).to(device)
        s2 = torch.FloatTensor(data["next_observations"][idx]).to(device)
        r = torch.FloatTensor(data["rewards"][idx]).reshape(-1, 1).to(device)
        not_done = torch.FloatTensor(1.0 - data["terminals"][idx]).reshape(-1, 1).to(device)
        with torch.no_grad():
            noise = (torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)
            a2 = (actor_t(s2) + noise).clamp(-1.0, 1.0)
            tq1, tq2 = critic_t(s2, a2)
            target = r + not_done * 0.99 * torch.min(tq1, tq2)
        q1, q2 = critic(s, a)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        critic_opt.zero_grad()
        critic_loss.backward()
        critic_opt.step()
        if it % 2 == 0:
            pi = actor(s)
            q = critic.q1(torch.cat([s, pi], 1))
            lmbda = 2.5 / q.abs().mean().detach()
            actor_loss = -lmbda * q.mean() + F.mse_loss(pi, a)
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            for p, tp in zip(critic.parameters(), critic_t.parameters(), strict=True):
                tp.data.copy_(0.005 * p.data + 0.995 * tp.data)
            for p, tp in zip(actor.parameters(), actor_t.parameters(), strict=True):
                tp.data.copy_(0.005 * p.data + 0.995 * tp.data)

    return step


# ----------------------------------------------------------------------------- ours
def ocrl_trainer(
    data: dict[str, np.ndarray],
    obs_dim: int,
    act_dim: int,
    batch: int,
    device: torch.device,
    compiled: bool,
) -> Callable[[int], None]:
    """`TD3BC.update` of algos/td3_bc.py, on a device-resident buffer; returns step(iteration)."""
    buffer = ReplayBuffer.from_arrays(
        data["observations"],
        data["actions"],
        data["rewards"],
        data["next_observations"],
        data["terminals"],
        device,
    )
    # The defaults match the baseline: hidden (256, 256), lr 3e-4, alpha 2.5, discount 0.99, tau 0.005.
    agent = td3_bc.TD3BC(td3_bc.Args(), obs_dim, act_dim, -1.0, 1.0, device)
    update = torch.compile(agent.update) if compiled else agent.update

    def step(it: int) -> None:
        update(buffer.sample(batch), it % 2 == 0)

    return step


def ocrl_loop_trainer(
    data: dict[str, np.ndarray], obs_dim: int, act_dim: int, batch: int, device: torch.device
) -> Callable[[int], None]:
    """The same update with the plumbing every algorithm file now runs per step (`TrainingLoop.log`)."""
    buffer = ReplayBuffer.from_arrays(
        data["observations"], data["actions"], data["rewards"], data["next_observations"],
        data["terminals"], device,
    )  # fmt: skip
    args = td3_bc.Args(progress=False, run_dir=tempfile.mkdtemp(prefix="ocrl-bench-"))
    ocrl_agent = td3_bc.TD3BC(args, obs_dim, act_dim, -1.0, 1.0, device)
    loop = TrainingLoop("bench", "synthetic", args, ocrl_agent.parts(), None)

    def step(it: int) -> None:
        loop.step = it + 1  # what loop.steps() sets before each iteration
        loop.log(ocrl_agent.update(buffer.sample(batch), it % 2 == 0))

    return step


def synthetic(rows: int, obs_dim: int, act_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((rows, obs_dim), dtype=np.float32)
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, (rows, act_dim)).astype(np.float32),
        "rewards": rng.standard_normal(rows, dtype=np.float32),
        "next_observations": np.roll(obs, -1, axis=0),
        "terminals": (rng.random(rows) < 0.001).astype(np.float32),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round(step: Callable[[int], None], updates: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for it in range(updates):
        step(it)
    sync(device)
    return updates / (time.perf_counter() - start)


def bench_updates(args: Args) -> dict[str, float]:
    device = torch.device(args.device)
    data = synthetic(100_000, args.obs_dim, args.act_dim)
    variants = {
        "baseline (original-style eager)": baseline_trainer(
            data, args.obs_dim, args.act_dim, args.batch_size, device
        ),
        "ocrl eager": ocrl_trainer(
            data, args.obs_dim, args.act_dim, args.batch_size, device, compiled=False
        ),
    }
    variants["ocrl eager + TrainingLoop.log"] = ocrl_loop_trainer(
        data, args.obs_dim, args.act_dim, args.batch_size, device
    )
    if args.compile:
        variants["ocrl compiled"] = ocrl_trainer(
            data, args.obs_dim, args.act_dim, args.batch_size, device, compiled=True
        )
    for name, step in variants.items():  # warm-up (and compilation)
        t = time.perf_counter()
        time_round(step, 20, device)
        print(f"warm-up {name}: {time.perf_counter() - t:.1f}s")
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            rates[name].append(time_round(step, args.updates, device))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    base = medians["baseline (original-style eager)"]
    print(f"\nTD3+BC updates/s on {device} (obs {args.obs_dim}, act {args.act_dim}, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}; median of {args.rounds} interleaved rounds of {args.updates})")  # fmt: skip
    print("| variant | updates/s | ratio vs baseline | min per 1M updates |\n|---|---|---|---|")
    for name, rate in medians.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {1e6 / rate / 60:.1f} |")
    return medians


def bench_memory(args: Args) -> float:
    rows = args.memory_rows
    data = synthetic(rows, args.obs_dim, args.act_dim)
    ds = OfflineDataset(
        observations=data["observations"], actions=data["actions"], rewards=data["rewards"],
        terminals=data["terminals"] > 0.5, timeouts=(np.arange(rows) % 1000) == 999,
        next_observations=data["next_observations"], name="synthetic", env_id="Hopper-v4",
    )  # fmt: skip
    float32_bytes = sum(
        a.size * 4
        for a in (
            ds.observations,
            ds.actions,
            ds.rewards,
            ds.next_observations,
            ds.terminals,
            ds.timeouts,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic_1m.hdf5"
        write_d4rl_hdf5(ds, path)
        del ds, data
        gc.collect()
        tracemalloc.start()
        loaded = load_dataset(str(path))
        trans = loaded.transitions()
        mean, std = loaded.obs_mean_std()
        for arr in (trans.observations, trans.next_observations):
            arr -= mean
            arr /= std
        buffer = ReplayBuffer.from_arrays(
            trans.observations,
            trans.actions,
            trans.rewards,
            trans.next_observations,
            trans.terminals,
            "cpu",
        )
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del buffer, trans, loaded
    ratio = peak / float32_bytes
    print(f"\nLoading a {rows:,}-row D4RL file into the training buffer (CPU): float32 size {float32_bytes / 2**20:.1f} MiB, "
          f"peak traced {peak / 2**20:.1f} MiB, held after loading {current / 2**20:.1f} MiB -> peak {ratio:.2f}x the float32 size "
          f"(target <= 2x)")  # fmt: skip
    return ratio


# ----------------------------------------------------------------------------- nearest neighbours
def knn_point_set(
    rows: int, obs_dim: int, act_dim: int, beta: float = 2.0, seed: int = 0
) -> np.ndarray:
    """PRDC's [beta * standardised state, action] for synthetic smooth trajectories (episodes of 1,000 steps)."""
    rng = np.random.default_rng(seed)
    episodes = -(-rows // 1000)
    obs = np.empty((episodes, 1000, obs_dim), np.float32)
    act = np.empty((episodes, 1000, act_dim), np.float32)
    x = rng.standard_normal((episodes, obs_dim)).astype(np.float32)
    a = np.zeros((episodes, act_dim), np.float32)
    for t in range(
        1000
    ):  # OU processes: states drift slowly, actions change faster and are clipped
        x += -0.02 * x + 0.2 * rng.standard_normal(x.shape, dtype=np.float32)
        a += -0.15 * a + 0.3 * rng.standard_normal(a.shape, dtype=np.float32)
        obs[:, t], act[:, t] = x, np.clip(a, -1.0, 1.0)
    obs, act = obs.reshape(-1, obs_dim)[:rows], act.reshape(-1, act_dim)[:rows]
    obs = (obs - obs.mean(0)) / (obs.std(0) + 1e-3)
    return np.concatenate([beta * obs, act], axis=1).astype(np.float32)


def bench_knn(args: Args) -> dict[str, float]:
    from scipy.spatial import KDTree

    device = torch.device(args.knn_device or args.device)
    rng = np.random.default_rng(1)
    results: dict[str, float] = {}
    print(f"\nNearest-neighbour search, ms per batch of {args.batch_size} queries against {args.knn_rows:,} "
          f"points (synthetic MuJoCo-size sets; median of {args.knn_rounds} batches; torch threads "
          f"{torch.get_num_threads()}; ratio = KDTree time / backend time, >1 is faster)")  # fmt: skip
    print("| S+A | queries | scipy KDTree ms | backend | ms | ratio vs KDTree | own-point NN |")
    print("|---|---|---|---|---|---|---|")
    for obs_dim, act_dim in ((11, 3), (17, 6)):
        points = knn_point_set(args.knn_rows, obs_dim, act_dim)
        t = time.perf_counter()
        baseline = KDTree(points)
        build = {"scipy KDTree": time.perf_counter() - t}
        backends: dict[str, NearestNeighbors] = {}
        for name in ("kdtree", "adaptive", "brute"):
            t = time.perf_counter()
            backends[f"{name} (cpu)"] = NearestNeighbors(torch.from_numpy(points), name)
            build[f"{name} (cpu)"] = time.perf_counter() - t
        if device.type == "cuda":
            t = time.perf_counter()
            backends["brute (cuda)"] = NearestNeighbors(
                torch.from_numpy(points).to(device), "brute"
            )
            torch.cuda.synchronize()
            build["brute (cuda)"] = time.perf_counter() - t
        print(f"| {obs_dim + act_dim} | (build, s) | {build['scipy KDTree']:.2f} | "
              + ", ".join(f"{k} {v:.2f}" for k, v in build.items() if k != "scipy KDTree") + " | | | |")  # fmt: skip
        for kind in ("near", "far"):
            batches = []
            for _ in range(args.knn_rounds):
                rows = rng.integers(0, len(points), args.batch_size)
                q = points[rows].copy()
                if kind == "near":
                    q[:, obs_dim:] += 0.1 * rng.standard_normal(
                        (len(rows), act_dim), dtype=np.float32
                    )
                else:
                    q[:, obs_dim:] = rng.uniform(-1, 1, (len(rows), act_dim)).astype(np.float32)
                batches.append((rows, q))
            times: dict[str, list[float]] = {"scipy KDTree": []}
            refs, own = [], []
            for rows, q in batches:  # the plain baseline, as PRDC's code calls it
                t = time.perf_counter()
                _, ref = baseline.query(q, k=1, workers=-1)
                times["scipy KDTree"].append(time.perf_counter() - t)
                refs.append(ref)
                own.append(float(np.mean(ref == rows)))
            for name, index in backends.items():
                times[name] = []
                for _ in range(
                    4 if index.backend == "adaptive" else 1
                ):  # warm-up (adaptive: time its arms)
                    index.query(torch.from_numpy(batches[0][1]).to(index.device))
                for (_, q), ref in zip(batches, refs, strict=True):
                    qt = torch.from_numpy(q).to(index.device)
                    sync(index.device)
                    t = time.perf_counter()
                    idx, _ = index.query(qt)
                    sync(index.device)
                    times[name].append(time.perf_counter() - t)
                    got = idx[:, 0].cpu().numpy()
                    if not np.array_equal(got, ref):  # only ties may differ
                        d_ref = np.linalg.norm(points[ref] - q, axis=1)
                        d_got = np.linalg.norm(points[got] - q, axis=1)
                        assert np.allclose(d_ref, d_got, rtol=0, atol=1e-6), f"{name} is not exact"
            base = statistics.median(times["scipy KDTree"]) * 1e3
            frac = statistics.mean(own)
            print(
                f"| {obs_dim + act_dim} | {kind} | {base:.1f} | scipy KDTree | {base:.1f} | 1.00x | {frac:.2f} |"
            )
            for name in backends:
                ms = statistics.median(times[name]) * 1e3
                results[f"{obs_dim + act_dim}/{kind}/{name}"] = ms
                print(
                    f"| {obs_dim + act_dim} | {kind} | {base:.1f} | {name} | {ms:.1f} | {base / ms:.2f}x | |"
                )
    return results


# ----------------------------------------------------------------------------- HDPO simulator


def plain_lost_sales_rollout(
    policy: nn.Module, initial: torch.Tensor, demand: torch.Tensor, p: float, lead_time: int
) -> torch.Tensor:
    """Baseline: one store, lost sales, written with a clone and slice assignments per period."""
    inv, total = initial.clone(), 0.0
    for t in range(demand.shape[-1]):
        orders = policy(inv)
        inv = inv.clone()
        y = inv[:, :, 0] - demand[:, :, t]
        cost = p * torch.clip(-y, min=0) + torch.clip(y, min=0)
        new = torch.zeros_like(inv)
        new[:, :, 0] = torch.clip(y, min=0) + inv[:, :, 1]
        new[:, :, 1:-1] = inv[:, :, 2:]
        new[:, :, lead_time - 1] += orders
        inv, total = new, total + cost.sum(-1)
    return total


def bench_hdpo(args: Args) -> dict[str, float]:
    from ocrl.algos import hdpo
    from ocrl.envs.inventory import (
        InventorySimulator,
        InventoryState,
        make_problem,
        sample_scenario,
    )

    device = torch.device(args.device)
    problem = make_problem("one_store_lost", p=9, lead_time=2)
    sim = InventorySimulator(problem, device)
    policy = hdpo.make_policy(hdpo.Args(), problem)[0].to(device)
    periods, out = 50, {}
    print(
        f"\nHDPO simulator on {device}: one store, lost sales, L = 2, T = {periods}, [32, 32, 32] ELU"
    )
    for batch in args.hdpo_batches:
        scenario = sample_scenario(problem, batch, periods, seed=0).to(device)

        def ours(scenario=scenario):
            return hdpo.simulate(policy, sim, scenario, periods)

        def plain(scenario=scenario):
            return plain_lost_sales_rollout(
                lambda inv: policy(InventoryState(inv, inv[:, :0]))[0],
                scenario.initial_stores, scenario.demand, 9.0, 2,
            )  # fmt: skip

        if not torch.allclose(ours(), plain(), rtol=1e-4):
            raise AssertionError("the plain rollout and ocrl's simulator disagree")
        for mode in ("forward", "forward+backward"):
            times: dict[str, list[float]] = {"plain": [], "ocrl": []}
            for _ in range(args.rounds):
                for name, fn in (("plain", plain), ("ocrl", ours)):
                    sync(device)
                    start = time.perf_counter()
                    if mode == "forward":
                        with torch.no_grad():
                            fn()
                    else:
                        fn().mean().backward()
                    sync(device)
                    times[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) for k, v in times.items()}
            rate = {k: batch * periods / v / 1e6 for k, v in med.items()}
            out[f"{mode} {batch}"] = med["plain"] / med["ocrl"]
            print(
                f"  batch {batch:5d} {mode:16s}: plain {rate['plain']:.2f}M, ocrl {rate['ocrl']:.2f}M "
                f"path-periods/s ({out[f'{mode} {batch}']:.2f}x)"
            )
    step = statistics.median(
        [time_round(lambda _: ours().mean().backward(), 1, device) for _ in range(args.rounds)]
    ) if 8192 in args.hdpo_batches else None  # fmt: skip
    if step is not None:
        print(f"  one epoch at N = 32768, batch 8192 (4 gradient steps): {4 / step:.2f} s")
    return out


# ----------------------------------------------------------------------------- diffusion (SynthER)
def import_synther(path: str):
    """SynthER's (ElucidatedDiffusion, ResidualMLPDenoiser, Normalizer) from a source tree at `path`, or None.

    synther/diffusion/elucidated_diffusion.py imports packages that forward/sample never touch (wandb,
    accelerate, redq, torchdiffeq, synther.online.utils -> gym/redq). Those that are not installed are
    replaced by empty stand-in modules in sys.modules for the import only, and removed again afterwards.
    einops, gin-config and ema-pytorch (what forward/sample/EMA use) must be installed; nothing of SynthER
    is modified or copied.
    """
    import importlib
    import importlib.util
    import sys
    import types

    if not (Path(path) / "synther" / "diffusion" / "elucidated_diffusion.py").is_file():
        return None
    stubs: dict[str, types.ModuleType] = {}

    def stub(name: str, **attrs) -> None:
        root = name.split(".")[0]
        if name in sys.modules and name not in stubs:
            return
        if root != "synther" and root not in stubs and importlib.util.find_spec(root):
            return
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        stubs[name] = sys.modules[name] = module

    class _Unused:  # stands for a class the benchmark never instantiates
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError("a stand-in of the SynthER benchmark was called")

    stub("wandb", log=lambda *a, **k: None)
    stub("accelerate", Accelerator=_Unused)
    stub("torchdiffeq", odeint=_Unused)
    for name in ("redq", "redq.algos"):
        stub(name)
    stub("redq.algos.core", ReplayBuffer=_Unused)
    stub("synther.online.utils", make_inputs_from_replay_buffer=_Unused)
    sys.path.insert(0, str(path))
    try:
        ed = importlib.import_module("synther.diffusion.elucidated_diffusion")
        dn = importlib.import_module("synther.diffusion.denoiser_network")
        norm = importlib.import_module("synther.diffusion.norm")
    except ImportError as e:
        print(f"SynthER import failed ({e}); pip install einops gin-config ema-pytorch")
        return None
    finally:
        sys.path.remove(str(path))
        for name in stubs:
            sys.modules.pop(name, None)
    return ed.ElucidatedDiffusion, dn.ResidualMLPDenoiser, norm.Normalizer


def synther_to_ocrl_state(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """SynthER ResidualMLPDenoiser state_dict -> ocrl ResidualMLPDenoiser names.

    time_mlp.* (RandomOrLearnedSinusoidalPosEmb.weights, a frozen Parameter there, is a buffer in ours) and
    proj.* keep their names; residual_mlp.network.0 -> input_layer, residual_mlp.network.{i+1}.linear ->
    blocks.{i}, .ln -> norms.{i}, residual_mlp.network.{depth+1} (final LayerNorm) -> final_norm,
    residual_mlp.final_linear -> output_layer.
    """
    out = {}
    for key, value in state.items():
        if key.startswith(("time_mlp.", "proj.")):
            new = key
        elif key.startswith("residual_mlp.final_linear."):
            new = "output_layer." + key.split(".", 2)[2]
        else:
            _, _, index, rest = key.split(".", 3)  # residual_mlp.network.<i>.<rest>
            i = int(index)
            if i == 0:
                new = f"input_layer.{rest}"
            elif i == depth + 1:
                new = f"final_norm.{rest}"
            else:
                part, leaf = rest.split(".", 1)
                group = {"linear": "blocks", "ln": "norms"}[part]
                new = f"{group}.{i - 1}.{leaf}"
        out[new] = value
    return out


def resmlp_macs(d_in: int, width: int, depth: int, dim_t: int, fourier: int = 16) -> int:
    """Multiply-accumulates of one residual-MLP evaluation (one row)."""
    return (
        (fourier + 1) * dim_t
        + dim_t * dim_t
        + d_in * dim_t
        + dim_t * width
        + depth * width**2
        + width * d_in
    )


def diffusion_same_maths(args: Args, synther) -> str:
    """Load SynthER's network weights into ours and compare F, D(x; sigma), the loss and the sampler."""
    from ocrl.nets.diffusion import EDMDenoiser, ResidualMLPDenoiser, heun_sample

    ElucidatedDiffusion, SynResMLP, SynNormalizer = synther
    d_in, width, depth, dim_t = args.diffusion_d_in, args.diffusion_width, args.diffusion_depth, 128
    lines = []
    for layer_norm in (False, True):
        torch.manual_seed(1)
        theirs = SynResMLP(
            d_in, dim_t=dim_t, mlp_width=width, num_layers=depth, layer_norm=layer_norm
        )
        # Non-trivial LayerNorm affine parameters, so that a misplaced norm would show.
        if layer_norm:
            with torch.no_grad():
                for m in theirs.modules():
                    if isinstance(m, nn.LayerNorm):
                        m.weight.normal_(1.0, 0.3), m.bias.normal_(0.0, 0.3)
        ours = ResidualMLPDenoiser(d_in, width, depth, dim_t, layer_norm=layer_norm)
        ours.load_state_dict(synther_to_ocrl_state(theirs.state_dict(), depth), strict=True)
        torch.manual_seed(5)
        x = torch.randn(4096, d_in) * 2
        sigma = (-1.2 + 1.2 * torch.randn(4096)).exp()
        sigma[:2] = torch.tensor([0.002, 80.0])
        x = x + sigma[:, None] * torch.randn_like(x)
        # F alone in float64: a structural difference (layer order, activation placement) would show far
        # above rounding; D(x; sigma) in float32, ours through EDMDenoiser, theirs through
        # ElucidatedDiffusion.preconditioned_network_forward.
        with torch.no_grad():
            th64, ou64 = copy.deepcopy(theirs).double(), copy.deepcopy(ours).double()
            c_noise = 0.25 * sigma.double().log()
            f_diff = (ou64(x.double(), c_noise) - th64(x.double(), c_noise)).abs().max().item()
            edm = ElucidatedDiffusion(theirs, normalizer=nn.Identity(), event_shape=[d_in])
            d_ours, d_theirs = (
                EDMDenoiser(ours)(x, sigma),
                edm.preconditioned_network_forward(x, sigma),
            )
        diff = (d_ours - d_theirs).abs().max().item()
        rel = ((d_ours - d_theirs).abs() / d_theirs.abs().clamp_min(1.0)).max().item()
        lines.append(f"LayerNorm {layer_norm}: max |D_ours - D_synther| = {diff:.2e} (float32; relative to "
                     f"max(|D|, 1) {rel:.1e}); network F alone in float64: {f_diff:.1e}")  # fmt: skip
    # The loss with the same sigma and noise draws (SynthER draws from the global RNG, ours from a generator
    # seeded alike: sigma first, then the noise), through SynthER's Normalizer on raw rows.
    torch.manual_seed(2)
    theirs = SynResMLP(d_in, dim_t=dim_t, mlp_width=width, num_layers=depth, layer_norm=False)
    ours = ResidualMLPDenoiser(d_in, width, depth, dim_t)
    ours.load_state_dict(synther_to_ocrl_state(theirs.state_dict(), depth))
    raw = torch.randn(20_000, d_in) * 3 + 1
    raw[:, -1] = (torch.rand(20_000) < 0.01).float()
    normalizer = _quiet(SynNormalizer, raw, skip_dims=[d_in - 1])
    edm = ElucidatedDiffusion(theirs, normalizer=normalizer, event_shape=[d_in])
    den = EDMDenoiser(ours)
    batch = raw[:256]
    torch.manual_seed(3)
    loss_theirs = edm(batch).item()
    loss_ours = den.loss(normalizer.normalize(batch), torch.Generator().manual_seed(3)).item()
    lines.append(f"EDM loss, same draws: ours {loss_ours:.6f}, SynthER {loss_theirs:.6f}, "
                 f"|diff| {abs(loss_ours - loss_theirs):.1e}")  # fmt: skip
    # The stochastic Heun sampler with the same noise (x_0 then one eps per step, in the same order).
    steps = min(args.diffusion_sample_steps, 32)
    torch.manual_seed(4)
    with torch.no_grad():
        s_theirs = edm.sample(512, num_sample_steps=steps, clamp=False, disable_tqdm=True)
        s_ours = normalizer.unnormalize(
            heun_sample(den, (512, d_in), steps, generator=torch.Generator().manual_seed(4))
        )
    diff = (s_ours - s_theirs).abs().max().item()
    scale = s_theirs.abs().max().item()
    lines.append(f"sampler, same noise, {steps} steps, 512 rows: max |x_ours - x_synther| = {diff:.2e} "
                 f"(max |x| {scale:.1f}; schedules in float64->32 vs float32)")  # fmt: skip
    return "\n".join(lines)


def _quiet(fn, *a, **k):
    """SynthER's Normalizer prints its statistics; keep the benchmark's output readable."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


def bench_diffusion(args: Args) -> dict[str, float]:
    from ocrl.algos import diffusion as algo
    from ocrl.nets.diffusion import (
        DiffusionNormalizer,
        EDMConfig,
        EDMDenoiser,
        build_network,
        heun_sample,
    )

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    d_in, width, depth, dim_t = args.diffusion_d_in, args.diffusion_width, args.diffusion_depth, 128
    batch, steps = args.batch_size, args.diffusion_sample_steps
    n_sample = args.diffusion_sample_batch
    synther = import_synther(args.synther_path)
    if synther is None:
        print(f"\nSynthER not found at {args.synther_path}: only ocrl's numbers")
    # Hopper-sized rows [s, a, r, s', terminal] (11 + 3 + 1 + 11 + 1 = 27 by default), on the device.
    gen = np.random.default_rng(0)
    rows = gen.standard_normal((100_000, d_in)).astype(np.float32) * 2 + 0.5
    rows[:, -1] = gen.random(100_000) < 0.01
    raw = torch.from_numpy(rows)
    normalizer = DiffusionNormalizer.fit(raw, skip=(d_in - 1,))
    raw_dev, norm_dev = raw.to(device), normalizer.normalize(raw).to(device)

    # ---- ours: algos/diffusion.py's Diffusion agent (cpu-small network), fp32 and (CUDA) bf16 autocast
    def ours_agent(bf16: bool):
        dargs = algo.Args(width=width, depth=depth, dim_t=dim_t, total_steps=100_000, bf16=bf16)
        kwargs = dict(d_in=d_in, width=width, depth=depth, dim_t=dim_t, layer_norm=False)
        return algo.Diffusion(dargs, build_network("resmlp", kwargs), normalizer, device)

    def tf32(on: bool) -> None:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = on
            torch.backends.cudnn.allow_tf32 = on

    train: dict[str, Callable[[int], None]] = {}
    sample: dict[str, Callable[[], torch.Tensor]] = {}
    agent = ours_agent(bf16=False)

    def ours_step(_: int, agent=agent) -> None:
        agent.update(norm_dev[torch.randint(len(norm_dev), (batch,), device=device)])

    def ours_sample(net=EDMDenoiser(agent.ema.ema_model, EDMConfig()), gen=None) -> torch.Tensor:
        g = gen or torch.Generator(device).manual_seed(0)
        x = heun_sample(net, (n_sample, d_in), steps, device=device, generator=g)
        return agent.normalizer.unnormalize(x)

    if synther is not None:
        from ema_pytorch import EMA as SynEMA

        ElucidatedDiffusion, SynResMLP, SynNormalizer = synther
        net = SynResMLP(d_in, dim_t=dim_t, mlp_width=width, num_layers=depth, layer_norm=False)
        syn_norm = _quiet(SynNormalizer, raw, skip_dims=[d_in - 1])
        model = ElucidatedDiffusion(net, normalizer=syn_norm, event_shape=[d_in]).to(device)
        # Trainer.__init__: AdamW over two (weight-decay 0) groups, betas (0.9, 0.99), lr 3e-4 (SynthER's
        # offline config), ema_pytorch EMA 0.995 every 10, CosineAnnealingLR over the training steps.
        no_decay = ["bias", "LayerNorm.weight", "norm.weight", ".g"]
        named = list(model.named_parameters())
        opt = torch.optim.AdamW(
            [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": 0.0},
             {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}],
            lr=3e-4, betas=(0.9, 0.99),
        )  # fmt: skip
        ema = SynEMA(model, beta=0.995, update_every=10)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100_000)

        def synther_step(_: int) -> None:  # Trainer.train_on_batch without wandb/accelerate
            data = raw_dev[torch.randint(len(raw_dev), (batch,), device=device)]
            loss = model(data)
            loss.item()  # train_on_batch reads the loss every step (total_loss += loss.item())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            ema.update()
            sched.step()

        def synther_sample() -> torch.Tensor:
            return ema.ema_model.sample(
                n_sample, num_sample_steps=steps, clamp=False, disable_tqdm=True
            )

        train["SynthER"], sample["SynthER"] = synther_step, synther_sample
    train["ocrl fp32"], sample["ocrl fp32"] = ours_step, ours_sample
    if cuda:
        agent16 = ours_agent(bf16=True)
        den16 = EDMDenoiser(agent16.ema.ema_model, EDMConfig(), torch.bfloat16)

        def ours16_step(it: int) -> None:
            tf32(True)
            ours_step(it, agent16)
            tf32(False)

        def ours16_sample(net=den16) -> torch.Tensor:
            tf32(True)
            x = ours_sample(net)
            tf32(False)
            return x

        train["ocrl bf16+TF32"], sample["ocrl bf16+TF32"] = ours16_step, ours16_sample
        if args.compile:
            compiled = torch.compile(den16, mode="reduce-overhead", dynamic=False)
            sample["ocrl bf16+TF32 compiled"] = lambda: ours16_sample(compiled)

    macs = resmlp_macs(d_in, width, depth, dim_t)
    print(f"\nDiffusion (SynthER residual MLP: d_in {d_in}, width {width}, depth {depth}, dim_t {dim_t}, no "
          f"LayerNorm; {macs * 1e-6:.2f}M MACs/row) on {device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    if synther is not None:
        print("same maths (SynthER's weights loaded into ours):")
        for line in diffusion_same_maths(args, synther).splitlines():
            print(f"  {line}")
    tf32(False)
    for step in train.values():  # warm-up (compilation; also the EMA's first copies)
        time_round(step, 20, device)
    for name, fn in sample.items():
        if "compiled" in name:
            fn()
    rounds = args.rounds
    t_rates: dict[str, list[float]] = {n: [] for n in train}
    s_rates: dict[str, list[float]] = {n: [] for n in sample}
    # Interleaved: a training round of every variant in turn, then one sampling pass of each in turn.
    for _ in range(rounds):
        for name, step in train.items():
            t_rates[name].append(time_round(step, args.diffusion_train_steps, device))
    for _ in range(args.diffusion_sample_rounds):
        for name, fn in sample.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            s_rates[name].append(n_sample / (time.perf_counter() - t))
    t_med = {n: statistics.median(r) for n, r in t_rates.items()}
    s_med = {n: statistics.median(r) for n, r in s_rates.items()}
    base_name = "SynthER" if synther is not None else "ocrl fp32"
    # FLOPs: a training step is forward + backward (~3x the forward MACs) on `batch` rows; sampling is
    # (2N - 1) forward evaluations per row.
    t_flop = 2 * 3 * macs * batch
    s_flop = 2 * macs * (2 * steps - 1)

    def roof(flops: float) -> str:
        return f"{flops / 1e12:.3f} TFLOP/s" + (
            f" = {flops / (args.peak_tflops * 1e12):.1%} of peak" if cuda else ""
        )

    print(f"| variant | train steps/s (batch {batch}) | ratio vs {base_name} | achieved | "
          f"samples/s ({n_sample} rows, {steps} steps) | ratio vs {base_name} | achieved |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    out: dict[str, float] = {}
    for name in dict.fromkeys([*train, *sample]):
        tr, sr = t_med.get(name), s_med.get(name)
        cells = []
        for rate, base, flop in (
            (tr, t_med.get(base_name), t_flop),
            (sr, s_med.get(base_name), s_flop),
        ):
            if rate is None:
                cells += ["", "", ""]
            else:
                cells += [f"{rate:.1f}", f"{rate / base:.2f}x", roof(rate * flop)]
        print(f"| {name} | " + " | ".join(cells) + " |")
        if tr is not None:
            out[f"train {name}"] = tr
        if sr is not None:
            out[f"sample {name}"] = sr
    print(f"(median of {rounds} interleaved rounds of {args.diffusion_train_steps} steps and "
          f"{args.diffusion_sample_rounds} interleaved sampling passes; ocrl trains on pre-normalised rows "
          "as algos/diffusion.py does, SynthER normalises inside forward)")  # fmt: skip
    if cuda:
        print(
            f"roofline: achieved = 2 x MACs x evaluations / time against --peak-tflops {args.peak_tflops}"
        )
    else:
        print("CUDA: not measured: no device")
    return out


# ------------------------------------------------------------------------------------------- PGD
def pgd_setup(args: Args, device: torch.device):
    """(pgd module, trajectory model, guiding actor, agent name, obs mean, obs std, run config)."""
    import json

    from ocrl.algos import pgd
    from ocrl.nets.diffusion import DiffusionNormalizer, EDMConfig, EDMDenoiser, TemporalUNet

    obs_dim, act_dim = args.obs_dim, args.act_dim
    if args.pgd_model is not None:
        model = pgd.load_trajectory_model(args.pgd_model, device, bf16=True)
        obs_dim, act_dim = model.obs_dim, model.act_dim
    else:
        channels = obs_dim + act_dim + 2
        net = TemporalUNet(channels, features=args.pgd_unet_features, num_blocks=2)
        net.to(device).eval().requires_grad_(False)
        normalizer = DiffusionNormalizer(torch.zeros(channels), torch.ones(channels)).to(device)
        model = pgd.TrajectoryModel(
            EDMDenoiser(net, EDMConfig()), normalizer, obs_dim, act_dim, args.pgd_length
        )
    config: dict = {"agent": args.pgd_agent}
    obs_mean = obs_std = None
    if args.pgd_run is not None:
        config = json.loads((Path(args.pgd_run) / "config.json").read_text())
    low, high = -torch.ones(act_dim), torch.ones(act_dim)
    hidden = tuple(config.get("hidden", (256, 256)))
    if config["agent"] == "td3_bc":
        from ocrl.nets import DeterministicActor

        actor = DeterministicActor(obs_dim, act_dim, hidden, low, high)
    else:
        actor = pgd.GaussianActor(obs_dim, act_dim, hidden, low, high)
    if args.pgd_run is not None:
        ckpt = torch.load(
            Path(args.pgd_run) / "checkpoint.pt", map_location="cpu", weights_only=True
        )
        actor.load_state_dict(ckpt["actor"])
        if "obs_mean" in ckpt.get("normalizer", {}):
            obs_mean = ckpt["normalizer"]["obs_mean"].float().to(device)
            obs_std = ckpt["normalizer"]["obs_std"].float().to(device)
    return pgd, model, actor.to(device).requires_grad_(False), config, obs_mean, obs_std


def bench_pgd(args: Args) -> dict[str, float]:
    device = torch.device(args.device)
    pgd, model, actor, config, obs_mean, obs_std = pgd_setup(args, device)
    rows = model.trajectory_length

    def regenerate(coef: float, seed: int = 0) -> torch.Tensor:
        pargs = pgd.Args(
            agent=config["agent"], guidance_coef=coef, sample_steps=args.pgd_sample_steps,
            num_synth_trajectories=args.pgd_trajectories, sample_batch_size=256,
            normalize_action_guidance=args.pgd_normalize, denoised_guidance=args.pgd_denoised_guidance,
        )  # fmt: skip
        guide = pgd.Guidance(pargs, model, actor, obs_mean, obs_std) if coef != 0 else None
        gen = torch.Generator(device).manual_seed(seed)
        return pgd.sample_trajectories(model, pargs, rows, gen, device, guide)

    times: dict[str, list[float]] = {"unguided": [], "guided": []}
    for _ in range(args.pgd_rounds):
        for name, coef in (("unguided", 0.0), ("guided", args.pgd_coef)):
            sync(device)
            start = time.perf_counter()
            regenerate(coef)
            sync(device)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    source = args.pgd_model or f"random U-Net F={args.pgd_unet_features}"
    print(
        f"\nPGD regeneration ({source}; {args.pgd_trajectories} windows x {rows} rows, "
        f"{args.pgd_sample_steps} Heun steps, {config['agent']} actor, device {device}):"
    )
    print(f"  unguided: {med['unguided']:.2f} s per regeneration")
    print(
        f"  guided (coef {args.pgd_coef}, normalised {args.pgd_normalize}, denoised "
        f"{args.pgd_denoised_guidance}): {med['guided']:.2f} s, "
        f"{med['guided'] / med['unguided']:.2f}x the unguided"
    )
    out = {f"pgd_{k}_s": v for k, v in med.items()}
    if args.pgd_quality:
        out.update(pgd_quality(args, pgd, model, actor, config, obs_mean, obs_std, regenerate))
    return out


def pgd_quality(args, pgd, model, actor, config, obs_mean, obs_std, regenerate) -> dict:
    """Target-policy log-likelihood and one-step dynamics error of the synthetic set per coefficient."""
    from ocrl.envs.dynamics import dynamics_error

    if args.pgd_model is None or args.pgd_run is None:
        raise SystemExit("--pgd-quality needs --pgd-model and --pgd-run")
    state = torch.load(args.pgd_model, map_location="cpu", weights_only=True)
    real = load_dataset(config["dataset"])  # the run's real data
    real = real.transitions()
    env_id = state["env_id"]
    scale = real.next_observations.std(axis=0) + 1e-6
    device = obs_mean.device if obs_mean is not None else torch.device(args.device)
    n = args.pgd_quality_transitions

    def loglik(obs: np.ndarray | torch.Tensor, act) -> float:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        act = torch.as_tensor(act, dtype=torch.float32, device=device)
        if obs_mean is not None:
            obs = (obs - obs_mean) / obs_std
        with torch.no_grad():
            return float(pgd.policy_log_prob(config["agent"], actor, obs, act).mean())

    def dyn(obs, act, nxt, rew, term) -> float:
        keep = ~np.asarray(term, dtype=bool)
        err = dynamics_error(
            env_id, obs[keep], act[keep], nxt[keep], rewards=rew[keep], scale=scale,
            max_transitions=min(n, int(keep.sum())), seed=0,
        )  # fmt: skip
        return float(err["normalized_mse"])

    print(
        f"\nPGD on-policyness ({config['agent']} actor of {args.pgd_run}; mean log pi(a|s) per "
        "transition; dynamics error = one-step normalised MSE, non-terminal transitions):"
    )
    print("| coefficient | log pi(a|s) synthetic | dynamics error synthetic | transitions |")
    print("|---|---|---|---|")
    out = {}
    for coef in args.pgd_coefs:
        t = windows_to_transitions(regenerate(coef, seed=1), model.obs_dim, model.act_dim)
        t = {k: v.cpu().numpy() for k, v in t.items()}
        ll = loglik(t["observations"], t["actions"])
        de = dyn(t["observations"], t["actions"], t["next_observations"], t["rewards"], t["terminals"] > 0.5)  # fmt: skip
        print(f"| {coef:g} | {ll:.3f} | {de:.4f} | {len(t['rewards'])} |")
        out[f"pgd_loglik_{coef:g}"], out[f"pgd_dynamics_{coef:g}"] = ll, de
    idx = np.random.default_rng(0).choice(len(real.rewards), min(20 * n, len(real.rewards)), replace=False)  # fmt: skip
    ll = loglik(real.observations[idx], real.actions[idx])
    de = dyn(real.observations[idx], real.actions[idx], real.next_observations[idx], real.rewards[idx], real.terminals[idx] > 0.5)  # fmt: skip
    print(f"| real data (floor) | {ll:.3f} | {de:.2e} | {len(idx)} |")
    out["pgd_loglik_real"], out["pgd_dynamics_real"] = ll, de
    return out


# ------------------------------------------------------------------------------------------- GGD-TD
def bench_ggd_td(args: Args) -> dict[str, float]:
    from ocrl.algos import ggd_td

    device = torch.device(args.device)
    data = synthetic(100_000, args.obs_dim, args.act_dim)
    buffer = ReplayBuffer.from_arrays(
        data["observations"], data["actions"], data["rewards"], data["next_observations"],
        data["terminals"], device,
    )  # fmt: skip
    flags = {
        "--loss mse (plain SAC)": dict(loss="mse"),
        "--loss gaussian": dict(loss="gaussian"),
        "--loss ggd --reg none": dict(loss="ggd", reg="none"),
        "default (ggd + BIEV, device xi)": dict(),
        "default, --xi-solver nelder-mead": dict(xi_solver="nelder-mead"),
    }
    steps: dict[str, Callable[[int], None]] = {}
    for name, over in flags.items():
        torch.manual_seed(0)
        gargs = ggd_td.Args(batch_size=args.batch_size, **over)
        agent = ggd_td.GGDSAC(gargs, args.obs_dim, args.act_dim, -1.0, 1.0, device)

        def step(_: int, agent=agent) -> None:
            agent.update(buffer.sample(args.batch_size), 1)
            agent.diagnostics()

        steps[name] = step
    for step in steps.values():  # warm-up
        time_round(step, 5, device)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(time_round(step, args.updates, device))
    ms = {name: 1e3 / statistics.median(r) for name, r in rates.items()}
    base = ms["--loss mse (plain SAC)"]
    print(f"\nGGD-TD SAC update on {device} (obs {args.obs_dim}, act {args.act_dim}, batch {args.batch_size}, "
          f"2 twins x 5 members, Tanh [256, 256], torch threads {torch.get_num_threads()}; median of "
          f"{args.rounds} interleaved rounds of {args.updates})")  # fmt: skip
    print("| variant | ms per update | ratio vs --loss mse |\n|---|---|---|")
    for name, t in ms.items():
        print(f"| {name} | {t:.2f} | {t / base:.2f}x |")
    return ms


def bench_expo(args: Args) -> dict[str, float]:
    from ocrl.algos import expo

    device = torch.device(args.device)
    data = synthetic(100_000, args.obs_dim, args.act_dim)
    offline, online = (
        ReplayBuffer.from_arrays(
            data["observations"][rows], data["actions"][rows], data["rewards"][rows],
            data["next_observations"][rows], data["terminals"][rows], device,
        )
        for rows in (slice(None), slice(0, 10_000))
    )  # fmt: skip
    obs = torch.as_tensor(data["observations"][:1], device=device)
    steps: dict[str, Callable[[int], None]] = {}
    variants = [("RLPD (--policy gaussian)", "gaussian", False), ("EXPO", "expo", False)]
    if args.compile and device.type == "cuda":
        variants.append(("EXPO --compile (CUDA graphs)", "expo", True))
    for name, policy, compiled in variants:
        torch.manual_seed(0)
        eargs = expo.Args(
            policy=policy, utd_ratio=args.expo_utd, batch_size=args.batch_size, compile=compiled
        )
        agent = expo.EXPO(eargs, args.obs_dim, args.act_dim, device)

        def step(_: int, agent=agent) -> None:
            agent.act(obs)
            agent.update(expo.mixed_minibatches(offline, online, args.batch_size, args.expo_utd))
            agent.diagnostics()

        steps[name] = step
    for step in steps.values():  # warm-up
        time_round(step, 1, device)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(time_round(step, args.expo_steps, device))
    seconds = {name: 1.0 / statistics.median(r) for name, r in rates.items()}
    base = seconds["RLPD (--policy gaussian)"]
    print(f"\nEXPO vs RLPD per environment step on {device} (obs {args.obs_dim}, act {args.act_dim}, "
          f"batch {args.batch_size}, UTD {args.expo_utd}, 10 critics (256, 256, 256), N 8 + K 8, T 10, "
          f"torch threads {torch.get_num_threads()}; median of {args.rounds} interleaved rounds of "
          f"{args.expo_steps} steps)")  # fmt: skip
    print("| variant | s per env step | ratio vs RLPD |\n|---|---|---|")
    for name, t in seconds.items():
        print(f"| {name} | {t:.3f} | {t / base:.1f}x |")
    return seconds


def import_pdppo_env(path: str):
    """(SimplePlant, StochasticDemandModel) of PDPPO's code/Lot-sizing at `path`, or None.

    The two files are loaded by path: the repository's scenarioManager/__init__.py imports a module the
    repository lacks (scenario_reducer), and SimplePlant uses the old `gym` only as its base class (an empty
    stand-in when gym is not installed). Nothing of PDPPO is modified or copied."""
    import importlib.util
    import sys
    import types

    root = Path(path)
    files = root / "envs" / "simplePlant.py", root / "scenarioManager" / "stochasticDemandModel.py"
    if not all(f.is_file() for f in files):
        return None

    def load(name: str, file: Path):
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    stubs = {}
    if importlib.util.find_spec("gym") is None:
        stubs["gym"] = types.ModuleType("gym")
        stubs["gym"].Env = type("Env", (), {})
    demand = load("pdppo_stochastic_demand", files[1])
    stubs["scenarioManager"] = types.ModuleType("scenarioManager")
    stubs["scenarioManager"].StochasticDemandModel = demand.StochasticDemandModel
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        plant = load("pdppo_simple_plant", files[0])
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return plant.SimplePlant, demand.StochasticDemandModel


def bench_lot_sizing(args: Args) -> dict[str, float]:
    from ocrl.envs.lot_sizing import (
        LotSizingEnv,
        LotSizingVectorEnv,
        generate_instance,
        load_instance,
    )

    instance = (
        load_instance(args.lot_sizing_instance)
        if args.lot_sizing_instance
        else generate_instance(25, 10, 100, seed=0)
    )
    horizon, n = instance.horizon, args.lot_sizing_steps
    rng = np.random.default_rng(0)
    actions = rng.integers(0, instance.n_items + 1, size=(n, instance.n_machines))

    def episodes(env) -> float:  # the PDPPO agents' loop: reset, then `horizon` steps
        start = time.perf_counter()
        for k in range(n):
            if k % horizon == 0:
                env.reset()
            env.step(actions[k])
        return n / (time.perf_counter() - start)

    rounds: dict[str, Callable[[], float]] = {}
    original = import_pdppo_env(args.pdppo_path)
    if original is None:
        print(f"\nPDPPO's code not found at {args.pdppo_path}: only ocrl's numbers")
    else:
        simple_plant, demand_model = original
        settings = instance.to_dict()
        plant = simple_plant(settings, demand_model(settings))
        rounds["PDPPO SimplePlant (one episode)"] = lambda: episodes(plant)
    single = LotSizingEnv(instance=instance)
    single.reset(seed=0)
    rounds["ocrl LotSizingEnv (one episode)"] = lambda: episodes(single)
    for b in (4, 4096):
        venv = LotSizingVectorEnv(b, seed=0, instance=instance)
        venv.reset(seed=0)
        batch = rng.integers(0, instance.n_items + 1, size=(max(1, n // b), b, instance.n_machines))

        def vector(venv=venv, batch=batch) -> float:
            start = time.perf_counter()
            for a in batch:
                venv.step(a)
            return batch.shape[0] * batch.shape[1] / (time.perf_counter() - start)

        rounds[f"ocrl LotSizingVectorEnv ({b} episodes)"] = vector
    rates: dict[str, list[float]] = {name: [] for name in rounds}
    for _ in range(args.rounds):
        for name, run in rounds.items():
            rates[name].append(run())
    medians = {name: statistics.median(r) for name, r in rates.items()}
    base = next(iter(medians.values()))
    print(f"\nlot sizing, {instance.n_items} items x {instance.n_machines} machines, uniform random "
          f"actions, env steps/s (median of {args.rounds} interleaved rounds)")  # fmt: skip
    print(f"| env | steps/s | ratio vs {next(iter(medians))} |\n|---|---|---|")
    for name, rate in medians.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")
    return medians


def main(args: Args) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.only in (None, "updates"):
        bench_updates(args)
    if (args.memory and args.only is None) or args.only == "memory":
        bench_memory(args)
    if (args.knn and args.only is None) or args.only == "knn":
        bench_knn(args)
    if (args.hdpo and args.only is None) or args.only == "hdpo":
        bench_hdpo(args)
    if (args.diffusion and args.only is None) or args.only == "diffusion":
        bench_diffusion(args)
    if (args.pgd and args.only is None) or args.only == "pgd":
        bench_pgd(args)
    if (args.ggd_td and args.only is None) or args.only == "ggd_td":
        bench_ggd_td(args)
    if (args.expo and args.only is None) or args.only == "expo":
        bench_expo(args)
    if (args.lot_sizing and args.only is None) or args.only == "lot_sizing":
        bench_lot_sizing(args)


if __name__ == "__main__":
    main(tyro.cli(Args))
