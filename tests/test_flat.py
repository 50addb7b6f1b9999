"""FlatAdam and packed parameters: the same update as torch's Adam, digits independent of where a parameter sits,
torch Adam's state_dict, and a Polyak update over the packed buffer."""

import copy

import pytest
import torch
from torch import nn

from ocrl.nets import FlatAdam, pack_parameters, polyak_update
from ocrl.nets.flat import packed


def _net(seed: int, widths=(7, 33, 5)) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(widths[0], widths[1]), nn.Tanh(), nn.Linear(widths[1], widths[2])
    )


def _grads(net: nn.Module, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in net.parameters()]


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        for p, g in zip(net.parameters(), _grads(net, step), strict=True):
            p.grad = g.clone()
        opt.step()


def test_pack_parameters_keeps_values_and_makes_views():
    net = _net(0)
    before = [p.detach().clone() for p in net.parameters()]
    buffer = pack_parameters(net.parameters(), align=64)
    assert buffer.numel() % 64 == 0 and buffer.numel() >= sum(b.numel() for b in before)
    for p, b in zip(net.parameters(), before, strict=True):
        assert (
            torch.equal(p, b)
            and p.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
        )
    assert torch.equal(packed(list(net.parameters())), torch.cat([b.reshape(-1) for b in before]))
    assert packed([torch.zeros(3), torch.zeros(3)]) is None  # two storages
    with pytest.raises(ValueError, match="one dtype and device"):
        pack_parameters([torch.zeros(3), torch.zeros(3, dtype=torch.float64)])


def test_flat_adam_is_torch_adam():
    """Widths whose tensors are whole 16-float vectors: torch's fused Adam has no scalar remainder there, so the
    two are bitwise equal; other widths agree to float rounding."""
    for widths, exact in (((16, 32, 16), True), ((7, 33, 5), False)):
        ours, theirs = _net(1, widths), _net(1, widths)
        _train(ours, FlatAdam(ours.parameters(), lr=1e-2), range(20))
        _train(theirs, torch.optim.Adam(theirs.parameters(), lr=1e-2, fused=True), range(20))
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b) if exact else torch.allclose(a, b, atol=1e-6, rtol=0)
        plain = _net(1, widths)
        _train(plain, torch.optim.Adam(plain.parameters(), lr=1e-2, foreach=False), range(20))
        for a, b in zip(ours.parameters(), plain.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_flat_adam_digits_do_not_depend_on_position():
    """A parameter's update is the same alone or packed behind others of odd lengths (a stacked seed's case)."""
    alone, behind = _net(2), _net(2)
    extra = nn.Parameter(torch.randn(37))
    _train(alone, FlatAdam(alone.parameters(), lr=1e-2), range(30))
    opt = FlatAdam([extra, *behind.parameters()], lr=1e-2)
    for step in range(30):
        extra.grad = torch.randn(37)
        for p, g in zip(behind.parameters(), _grads(behind, step), strict=True):
            p.grad = g.clone()
        opt.step()
    for a, b in zip(alone.parameters(), behind.parameters(), strict=True):
        assert torch.equal(a, b)


def test_flat_adam_state_dict_resumes_and_is_torch_format():
    net = _net(3)
    opt = FlatAdam(net.parameters(), lr=1e-2)
    _train(net, opt, range(5))
    state = copy.deepcopy(opt.state_dict())
    assert set(state["state"]) == set(range(4))
    for i, p in enumerate(net.parameters()):
        entry = state["state"][i]
        assert entry["exp_avg"].shape == p.shape and float(entry["step"]) == 5.0
    resumed_net = copy.deepcopy(net)
    resumed = FlatAdam(resumed_net.parameters(), lr=1e-2)
    resumed.load_state_dict(state)
    _train(net, opt, range(5, 12))
    _train(resumed_net, resumed, range(5, 12))
    for a, b in zip(net.parameters(), resumed_net.parameters(), strict=True):
        assert torch.equal(a, b)
    torch_net = copy.deepcopy(resumed_net)
    torch.optim.Adam(torch_net.parameters(), lr=1e-2).load_state_dict(resumed.state_dict())


def test_flat_adam_wants_every_gradient():
    net = _net(4)
    opt = FlatAdam(net.parameters())
    next(net.parameters()).grad = torch.zeros(33, 7)
    with pytest.raises(ValueError, match=r"parameters \[1, 2, 3\] have no gradient"):
        opt.step()


def test_polyak_update_over_packed_buffers():
    online, target = _net(5), _net(6)
    expected = [
        (1 - 0.05) * t.detach() + 0.05 * o.detach()
        for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    FlatAdam(online.parameters())  # packs the online parameters
    polyak_update(target.parameters(), online.parameters(), 0.05)
    assert packed(list(target.parameters())) is not None
    for t, e in zip(target.parameters(), expected, strict=True):
        assert torch.allclose(t, e, atol=1e-7, rtol=0)


def test_flat_adam_and_polyak_run_inside_torch_compile():
    """--compile wraps an update holding FlatAdam.step (run eagerly) and polyak_update (traced per tensor)."""
    nets = {}
    for mode in ("eager", "compiled"):
        online, target = _net(7), _net(8)
        opt = FlatAdam(online.parameters(), lr=1e-2)

        def update(x, online=online, target=target, opt=opt):
            opt.zero_grad(set_to_none=True)
            online(x).square().mean().backward()
            opt.step()
            polyak_update(target.parameters(), online.parameters(), 0.1)

        step = torch.compile(update) if mode == "compiled" else update
        for i in range(3):
            step(torch.randn(16, 7, generator=torch.Generator().manual_seed(i)))
        nets[mode] = (online, target)
    for a, b in zip(
        *(list(o.parameters()) + list(t.parameters()) for o, t in nets.values()), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
