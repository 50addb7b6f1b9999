"""Update formulas written plainly for the tests: networks as (weight, bias) lists, TD3's critic step
(shared by td3_bc, prdc and a2pr, whose files each write it), and a one-seed batch and its draws for the
seed-stacked updates."""

from __future__ import annotations

import torch

from ocrl.data import Batch

Linears = list[tuple[torch.Tensor, torch.Tensor]]


def one_seed(batch: Batch) -> Batch:
    """A (B, ...) batch as the (N = 1, B, ...) minibatch of a seed-stacked update."""
    return Batch(*(t[None] for t in batch))


def stream_draws(agent, count: int, shape: tuple[int, ...], seed: int = 123) -> list[torch.Tensor]:
    """Seed the agent's one stream and return the `count` standard normal draws of `shape` the update takes from it."""
    agent.streams.generators[0].manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(count)]


def mlp_forward(linears: Linears, x: torch.Tensor) -> torch.Tensor:
    """A plain ReLU MLP from (weight (in, out), bias) pairs."""
    for i, (w, b) in enumerate(linears):
        x = x @ w + b
        if i < len(linears) - 1:
            x = torch.relu(x)
    return x


def critic_member(critic, index: int) -> Linears:
    """Member `index` of a CriticEnsemble as plain (weight, bias) pairs: one ordinary Q-network."""
    return [
        (layer.weight[index].detach().clone(), layer.bias[index, 0].detach().clone())
        for layer in critic.net
        if hasattr(layer, "weight")
    ]


def actor_layers(actor, seed: int = 0) -> Linears:
    """A DeterministicActor's MLP as plain (weight (in, out), bias) pairs (of one seed when seed-stacked)."""
    layers = [layer for layer in actor.net if hasattr(layer, "weight")]
    return [
        (w.detach().t().clone(), b.detach().clone())
        for w, b in (
            (layer.weight, layer.bias)
            if layer.weight.dim() == 2
            else (layer.weight[seed], layer.bias[seed])
            for layer in layers
        )
    ]


def td3_target(
    agent, batch, low, high, seed: int, discount: float, policy_noise: float, noise_clip: float,
    stream: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """TD3's smoothed target action a' and target y from the agent's target networks as they are now, with
    the noise drawn after torch.manual_seed(seed) (the update's first random draw), or with `stream` from a
    torch.Generator seeded with `seed` (a seed-stacked agent's stream, `SeedStreams`):

    a' = clip(pi_targ(s') + clip(N(0, policy_noise^2), +-noise_clip) * scale, low, high),
    y = r + discount (1 - d) min(Q1_targ, Q2_targ)(s', a')."""
    _, a, r, s2, d = batch
    low, high = torch.as_tensor(low), torch.as_tensor(high)
    scale, bias = (high - low) / 2, (high + low) / 2
    q1_t, q2_t = critic_member(agent.critic_target, 0), critic_member(agent.critic_target, 1)
    pi_t = actor_layers(agent.actor_target)
    generator = torch.Generator().manual_seed(seed) if stream else torch.manual_seed(seed)
    eps = (torch.randn(a.shape, generator=generator) * policy_noise).clamp(
        -noise_clip, noise_clip
    ) * scale
    a2 = (torch.tanh(mlp_forward(pi_t, s2)) * scale + bias + eps).clamp(low, high)
    sa2 = torch.cat([s2, a2], 1)
    q_next = torch.min(mlp_forward(q1_t, sa2), mlp_forward(q2_t, sa2)).squeeze(-1)
    return a2, r + discount * (1 - d) * q_next


def td3_critic_step(
    agent, batch, low, high, seed: int, discount: float, policy_noise: float, noise_clip: float,
    stream: bool = False,
) -> tuple[torch.Tensor, list[Linears]]:  # fmt: skip
    """TD3's critic loss, the sum of the two critics' MSEs to td3_target's y, from the agent's networks as
    they are now (before its update), and its gradient for each critic's (weight, bias) pairs."""
    s, a, *_ = batch
    _, y = td3_target(agent, batch, low, high, seed, discount, policy_noise, noise_clip, stream)
    members = [critic_member(agent.critic, i) for i in (0, 1)]
    params = [t.requires_grad_() for member in members for pair in member for t in pair]
    sa = torch.cat([s, a], 1)
    loss = sum(((mlp_forward(q, sa).squeeze(-1) - y) ** 2).mean() for q in members)
    grads = iter(torch.autograd.grad(loss, params))
    return loss.detach(), [[(next(grads), next(grads)) for _ in member] for member in members]


def assert_critic_gradient(critic, expected: list[Linears]) -> None:
    """The gradient left in each CriticEnsemble member by its step equals the formula's, layer by layer."""
    layers = [layer for layer in critic.net if hasattr(layer, "weight")]
    for index, member in enumerate(expected):
        for layer, (w, b) in zip(layers, member, strict=True):
            torch.testing.assert_close(layer.weight.grad[index], w, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(layer.bias.grad[index, 0], b, rtol=1e-4, atol=1e-6)
