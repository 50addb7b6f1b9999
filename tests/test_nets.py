"""Shapes, gradients and maths of the shared networks."""

import math

import pytest
import torch
from torch import nn

from ocrl.nets import (
    MLP,
    CriticEnsemble,
    DeterministicActor,
    EnsembleLinear,
    TanhGaussianActor,
    gradient_step,
    polyak_update,
    xavier_init,
)


def test_mlp_shapes_and_layernorm():
    net = MLP(5, 3, (16, 8), layer_norm=True)
    assert net(torch.randn(7, 5)).shape == (7, 3)
    assert sum(isinstance(m, nn.LayerNorm) for m in net) == 2
    assert sum(isinstance(m, nn.LayerNorm) for m in MLP(5, 3, (16, 8))) == 0


def test_ensemble_linear_equals_separate_linears():
    torch.manual_seed(0)
    layer = EnsembleLinear(4, 6, num_members=3)
    x = torch.randn(10, 4)
    out = layer(x)
    assert out.shape == (3, 10, 6)
    for e in range(3):
        expected = x @ layer.weight[e] + layer.bias[e]
        torch.testing.assert_close(out[e], expected)
        torch.testing.assert_close(layer.forward_member(x, e), expected)
    # members are initialised independently, with nn.Linear's bound 1/sqrt(in)
    assert not torch.allclose(layer.weight[0], layer.weight[1])
    assert layer.weight.abs().max() <= 1 / math.sqrt(4)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_ensemble_members_are_independent_networks(layer_norm):
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, (8, 8), num_critics=2, layer_norm=layer_norm)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    q = critic(obs, act)
    assert q.shape == (2, 5)
    for e in range(2):
        torch.testing.assert_close(critic.member(obs, act, e), q[e])
    # the gradient of member 0's output touches member 0's parameters only
    critic.zero_grad()
    q[0].sum().backward()
    first = critic.net[0]
    assert first.weight.grad[0].abs().sum() > 0
    assert first.weight.grad[1].abs().sum() == 0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_ensemble_subset_of_members(layer_norm):
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, (8, 8), num_critics=5, layer_norm=layer_norm)
    if layer_norm:  # non-trivial affine transforms, so a wrong member's would show
        for p in critic.parameters():
            p.data.normal_()
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    idx = torch.tensor([3, 0, 3])
    q = critic.members(obs, act, idx)
    assert q.shape == (3, 6)
    torch.testing.assert_close(q, critic(obs, act)[idx])
    # only the chosen members' parameters get a gradient
    critic.zero_grad()
    q.sum().backward()
    grads = critic.net[0].weight.grad.flatten(1).abs().sum(1)
    assert (grads[[0, 3]] > 0).all() and (grads[[1, 2, 4]] == 0).all()


@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_ensemble_subset_is_the_selected_members(layer_norm):
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, (8, 8), num_critics=5, layer_norm=layer_norm, layer_norm_eps=1e-6)
    if layer_norm:  # non-trivial affine transforms, Flax's eps
        assert [m.eps for m in critic.net[1::3]] == [1e-6, 1e-6]
        for layer in critic.net[1::3]:
            nn.init.normal_(layer.weight), nn.init.normal_(layer.bias)
    obs, act = torch.randn(7, 3), torch.randn(7, 2)
    index = torch.tensor([4, 1, 2])
    got = critic.members(obs, act, index)
    assert got.shape == (3, 7)
    for row, e in enumerate(index.tolist()):
        torch.testing.assert_close(got[row], critic.member(obs, act, e))


def test_critic_ensemble_with_several_outputs_per_member():
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, (8,), num_critics=4, out_dim=2)
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    out = critic(obs, act)
    assert out.shape == (4, 5, 2)
    torch.testing.assert_close(out[2], critic.member(obs, act, 2))


def test_critic_ensemble_accepts_per_member_inputs():
    critic = CriticEnsemble(3, 2, (8,), num_critics=4)
    obs, act = torch.randn(4, 5, 3), torch.randn(4, 5, 2)
    assert critic(obs, act).shape == (4, 5)


def test_deterministic_actor_respects_asymmetric_bounds():
    actor = DeterministicActor(3, 2, (8,), action_low=[-1.0, 0.0], action_high=[3.0, 1.0])
    with torch.no_grad():
        actor.net[-1].bias.fill_(100.0)  # saturate tanh
    a = actor(torch.randn(6, 3))
    torch.testing.assert_close(a, torch.tensor([[3.0, 1.0]]).expand(6, 2))
    with pytest.raises(ValueError, match="high > low"):
        DeterministicActor(3, 2, action_low=1.0, action_high=-1.0)


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 2, (16, 16), action_low=-2.0, action_high=2.0)
    obs = torch.randn(256, 4)
    action, log_prob, mean_action = actor(obs)
    assert action.shape == (256, 2) and log_prob.shape == (256,) and mean_action.shape == (256, 2)
    assert action.abs().max() <= 2.0
    # Recompute log pi(a) from the action itself: Normal log-density of atanh(a/2) minus log|da/du|.
    h = actor.trunk(obs)
    mean = actor.mean(h)
    log_std = -5 + 0.5 * 7 * (torch.tanh(actor.log_std(h)) + 1)
    u = torch.atanh((action / 2).clamp(-1 + 1e-6, 1 - 1e-6))
    normal = torch.distributions.Normal(mean, log_std.exp())
    expected = (normal.log_prob(u) - torch.log(2 * (1 - torch.tanh(u) ** 2))).sum(-1)
    ok = (action / 2).abs().max(-1).values < 0.999  # atanh is ill-conditioned at the edges
    torch.testing.assert_close(log_prob[ok], expected[ok], atol=1e-3, rtol=1e-3)
    # gradients flow to every parameter through the reparameterised sample
    (log_prob.mean() + action.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())


def test_gradient_step_own_only_leaves_other_gradients_and_steps_the_schedule():
    torch.manual_seed(0)
    actor, critic = nn.Linear(3, 2), nn.Linear(5, 1)
    x = torch.randn(4, 3)

    def loss() -> torch.Tensor:
        return critic(torch.cat([x, actor(x)], 1)).mean()

    want = [g.clone() for g in torch.autograd.grad(loss(), list(actor.parameters()))]
    critic.weight.grad = torch.ones_like(critic.weight)  # must stay as it is
    opt = torch.optim.SGD(actor.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1 * (step + 1))
    before = [p.detach().clone() for p in actor.parameters()]
    gradient_step(opt, loss(), own_only=True, scheduler=sched)
    for p, b, g in zip(actor.parameters(), before, want, strict=True):
        torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(
            p.detach(), b - 0.05 * g
        )  # lr 0.5 x the schedule's 0.1 at step 0
    assert torch.equal(critic.weight.grad, torch.ones_like(critic.weight))
    assert critic.bias.grad is None
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # the schedule stepped: 0.5 x 0.2
    # Without own_only: zero_grad, backward through everything, step.
    opt = torch.optim.SGD(critic.parameters(), lr=1.0)
    gradient_step(opt, loss())
    assert not torch.equal(critic.weight.grad, torch.ones_like(critic.weight))


def test_polyak_update():
    target = [torch.zeros(3), torch.ones(2)]
    online = [torch.ones(3), torch.zeros(2)]
    polyak_update(target, online, 0.25)
    torch.testing.assert_close(target[0], torch.full((3,), 0.25))
    torch.testing.assert_close(target[1], torch.full((2,), 0.75))


def test_xavier_init_gives_each_ensemble_member_flaxs_xavier_uniform_and_zero_biases():
    torch.manual_seed(0)
    critic = CriticEnsemble(30, 10, (20,), num_critics=3, layer_norm=True)
    xavier_init(critic.net)
    first = critic.net[0]
    assert isinstance(first, EnsembleLinear)
    weight = first.weight.detach()
    # fan_in + fan_out of one member's (40, 20) kernel; torch's default bound would be 1 / sqrt(40).
    bound = math.sqrt(6.0 / (40 + 20))
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.99 * bound
    # Uniform on [-b, b] has variance b^2 / 3, per member.
    for j in range(3):
        assert float(weight[j].var()) == pytest.approx(bound**2 / 3, rel=0.15)
    linears = [m for m in critic.net if isinstance(m, EnsembleLinear)]
    assert all(not m.bias.detach().any() for m in linears)
    mlp = xavier_init(MLP(40, 20, ()))  # plain nn.Linear layers are torch's xavier_uniform_
    assert float(mlp[0].weight.detach().abs().max()) <= bound and not mlp[0].bias.detach().any()
