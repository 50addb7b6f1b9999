"""PRDC: exactness of the nearest-neighbour backends, smoke run, logging, resume, --num-seeds and a learning
test."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from formulas import assert_critic_gradient, td3_critic_step
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ocrl.algos import prdc
from ocrl.data import Batch, ReplayBuffer
from ocrl.nets import NearestNeighbors, knn

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["kdtree", "brute", "adaptive"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(points: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Exact float64 distances (no matmul expansion) from every query to every point."""
    return torch.cdist(
        queries.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist"
    )


def check_exact(index: NearestNeighbors, points: torch.Tensor, queries: torch.Tensor, k: int):
    idx, dist = index.query(queries.to(index.device), k=k)
    assert idx.shape == dist.shape == (len(queries), k)
    ref = reference(points, queries)
    ref_k = ref.topk(k, dim=1, largest=False).values
    got = ref.gather(1, idx.cpu())  # the true distances of the returned points
    # Exact up to ties: the returned points are at exactly the k smallest distances, nearest first.
    torch.testing.assert_close(got, ref_k, rtol=1e-12, atol=0)
    torch.testing.assert_close(dist.cpu().double(), ref_k, rtol=1e-6, atol=1e-6)
    assert all(len(set(row)) == k for row in idx.tolist())  # k distinct points
    # argmin of a plain brute force; a differing index must be a tie
    plain = torch.cdist(queries.double(), points.double()).argmin(dim=1)
    ties = ref.gather(1, plain[:, None])[:, 0] == ref_k[:, 0]
    assert bool(((idx[:, 0].cpu() == plain) | ties).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [14, 23])
def test_knn_is_exact_on_random_data(dim, backend, device):
    if device == "cuda" and backend != "brute":
        pytest.skip("KD-tree backends run on the CPU")
    gen = torch.Generator().manual_seed(dim)
    points = torch.randn(30_000, dim, generator=gen) * torch.rand(dim, generator=gen) * 4
    points[:200] = points[200:400]  # exact duplicates: ties
    near = points[torch.randint(0, len(points), (128,), generator=gen)]
    near = near + 0.01 * torch.randn(near.shape, generator=gen)
    far = 3 * torch.randn(128, dim, generator=gen) + 5.0
    dup = points[:16]  # queries exactly on duplicated points (distance 0, two candidates)
    queries = torch.cat([near, far, dup])
    index = NearestNeighbors(points.to(device), backend, chunk_size=4096)
    for k in (1, 3):
        check_exact(index, points, queries, k)
    for _ in range(6):  # the adaptive backend switches arms; every arm must stay exact
        check_exact(index, points, near, 1)


@pytest.mark.parametrize("vectorised", [True, False])
def test_brute_certificate_fallback_with_many_equidistant_points(vectorised, monkeypatch):
    # 2,000 points on a sphere around the query: every strip holds candidates within rounding of the best.
    if not vectorised:
        monkeypatch.setattr(knn, "FALLBACK_POINTS", 0)
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(2000, 14, generator=gen)
    points = torch.cat(
        [100 + d / d.norm(dim=1, keepdim=True), torch.randn(5000, 14, generator=gen)]
    )
    index = NearestNeighbors(points, "brute", chunk_size=1024)
    check_exact(index, points, torch.full((4, 14), 100.0), 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rows_neighbour_does_not_depend_on_the_other_rows(backend):
    # --num-seeds asks one search for every seed's rows: each row's answer must be the one it gets alone.
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(5000, 14, generator=gen)
    groups = [points[:256] + s * torch.randn(256, 14, generator=gen) for s in (0.01, 0.3, 1.0, 3.0)]
    index = NearestNeighbors(points, backend, chunk_size=1024)
    together = index.query(torch.cat(groups), k=2)
    alone = [index.query(group, k=2) for group in groups]
    for i, got in enumerate(together):  # indices, then distances
        assert torch.equal(got, torch.cat([answer[i] for answer in alone]))


def one_seed(batch):
    """A (B, ...) batch as the (N = 1, B, ...) minibatch of a seed-stacked update."""
    return Batch(*(t.unsqueeze(0) for t in batch))


def test_knn_rejects_bad_input():
    index = NearestNeighbors(torch.randn(100, 5), "brute")
    with pytest.raises(ValueError, match="shape"):
        index.query(torch.randn(3, 4))
    with pytest.raises(ValueError, match="unknown backend"):
        NearestNeighbors(torch.randn(10, 3), "faiss")  # type: ignore[arg-type]


def tags(run_dir: str) -> set[str]:
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return set(acc.Tags()["scalars"])


def scalars(run_dir: str, tag: str) -> list[float]:
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_prdc_smoke_logs_search_statistics(hopper_random_file, tmp_path):
    args = prdc.Args(
        dataset=hopper_random_file, total_steps=200, eval_every=100, eval_episodes=2, log_every=50,
        run_dir=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    metrics = prdc.main(args)
    assert metrics["steps"] == 200 and metrics["normalized_score"] is not None
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 200
    logged = tags(str(tmp_path / "run"))
    assert {
        "eval/normalized_score", "losses/critic_loss", "losses/actor_loss", "losses/dc_mse",
        "prdc/nn_self_fraction", "prdc/nn_distance", "prdc/search_ms", "charts/updates_per_s",
    } <= logged  # fmt: skip
    frac = scalars(str(tmp_path / "run"), "prdc/nn_self_fraction")
    assert len(frac) == 4  # interval means, one per log interval
    assert all(ms > 0 for ms in scalars(str(tmp_path / "run"), "prdc/search_ms"))


def test_prdc_large_beta_finds_own_transition(hopper_random_file, tmp_path):
    # beta -> infinity: the neighbour is the query's own transition and PRDC is TD3+BC.
    args = prdc.Args(
        dataset=hopper_random_file, total_steps=20, log_every=10, eval_every=20, eval_episodes=1,
        beta=1e4, nn_backend="kdtree", run_dir=str(tmp_path), progress=False,
    )  # fmt: skip
    prdc.main(args)
    assert scalars(str(tmp_path), "prdc/nn_self_fraction") == [1.0, 1.0]


def test_prdc_presets_and_eval_protocol_in_help():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "algos" / "prdc.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0
    for text in ("halfcheetah-medium-v2", "antmaze-umaze-v2", "walker2d", "--eval-protocol"):
        assert text in proc.stdout, text
    assert prdc.PRESETS["halfcheetah"]["alpha"] == 40.0
    assert prdc.PRESETS["antmaze-large-play-v2"]["reward_scale"] == 10000.0


def test_prdc_actor_loss_equals_the_nearest_neighbour_formula():
    # L_pi = -lambda mean Q1(s, pi(s)) + mean (pi(s) - a_hat)^2, a_hat the action of the dataset point
    # nearest to [beta s, pi(s)], found here by a plain argmin over all points.
    g = torch.Generator().manual_seed(3)
    n, obs_dim, act_dim = 50, 3, 2
    data = [torch.randn(n, obs_dim, generator=g), torch.rand(n, act_dim, generator=g) * 2 - 1,
            torch.randn(n, generator=g), torch.randn(n, obs_dim, generator=g), torch.zeros(n)]  # fmt: skip
    buffer = ReplayBuffer.from_arrays(*(x.numpy() for x in data))
    torch.manual_seed(0)
    args = prdc.Args(hidden=(8,), beta=2.0, alpha=2.5, nn_backend="brute")
    agent = prdc.PRDC(args, buffer, -1.0, 1.0, "cpu")
    idx = torch.arange(0, n, 5)
    batch = buffer.gather(idx)
    actor_before = copy.deepcopy(agent.actor)
    metrics = agent.update(one_seed(batch), update_actor=True)
    with torch.no_grad():
        pi = actor_before(batch.observations[None])[0]
        points = torch.cat([2.0 * data[0], data[1]], 1)
        query = torch.cat([2.0 * batch.observations, pi], 1)
        nearest = torch.cdist(query, points).argmin(dim=1)
        q_pi = agent.critic(batch.observations[None], pi[None])[0, 0]  # Q1 after the critic step
        lmbda = 2.5 / q_pi.abs().mean()
        expected = -lmbda * q_pi.mean() + ((pi - data[1][nearest]) ** 2).mean()
    torch.testing.assert_close(metrics["dc_mse"][0], ((pi - data[1][nearest]) ** 2).mean())
    torch.testing.assert_close(metrics["actor_loss"][0], expected, rtol=1e-5, atol=1e-6)
    stats = agent.search_diagnostics(one_seed(batch), idx[None])
    torch.testing.assert_close(stats["prdc/nn_self_fraction"][0], (nearest == idx).float().mean())


def test_prdc_critic_step_equals_td3s_formula():
    # prdc.py writes TD3's critic step out again: smoothed target action, clipped double Q, (1 - d)
    # bootstrap, the sum of the two MSEs; checked against the plain formula, loss and gradient.
    g = torch.Generator().manual_seed(4)
    n = 40
    data = [torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 4 - 2,
            torch.randn(n, generator=g), torch.randn(n, 3, generator=g),
            (torch.rand(n, generator=g) < 0.3).float()]  # fmt: skip
    buffer = ReplayBuffer.from_arrays(*(x.numpy() for x in data))
    low, high = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
    torch.manual_seed(0)
    args = prdc.Args(hidden=(16, 16), discount=0.9, policy_noise=0.3, noise_clip=0.4,
                     nn_backend="brute")  # fmt: skip
    agent = prdc.PRDC(args, buffer, low, high, "cpu")
    batch = buffer.gather(torch.arange(0, n, 3))
    assert 0 < batch.terminals.sum() < len(batch.terminals)  # both branches of the bootstrap
    expected, grads = td3_critic_step(agent, batch, low, high, 5, 0.9, 0.3, 0.4, stream=True)
    agent.streams.generators[0].manual_seed(5)  # the seed's noise comes from its own stream
    metrics = agent.update(one_seed(batch), update_actor=True)
    torch.testing.assert_close(metrics["critic_loss"][0], expected, rtol=1e-5, atol=1e-6)
    assert_critic_gradient(agent.critic, grads)  # the step followed that loss


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prdc_learns_on_shipped_hopper_medium(tmp_path, precision):
    # Measured (2-core CPU, OMP_NUM_THREADS=1, 4,000 updates, 10 evaluation episodes): seeds 0 / 1 / 2
    # scored 27.1 / 25.4 / 29.8 (D4RL-normalised); the untrained actor scores 0.9 / 1.0, and the
    # dataset's behaviour policy about 33. The threshold leaves a margin of about 10 below the worst seed.
    metrics = prdc.main(
        prdc.Args(
            dataset="ocrl/hopper/medium-v0", total_steps=4000, eval_every=4000, eval_episodes=10,
            seed=0, log_every=1000, run_dir=str(tmp_path), progress=False, precision=precision,
        )
    )  # fmt: skip
    assert metrics["normalized_score"] > 15.0, metrics
    frac = scalars(str(tmp_path), "prdc/nn_self_fraction")
    # Early in training many neighbours are foreign transitions: PRDC's target differs from TD3+BC's.
    assert 0.0 < frac[0] < 1.0
