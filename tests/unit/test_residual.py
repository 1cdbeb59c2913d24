"""Residual MLP (book Appendix B): parameters, layer maps, real networks, plugin registration.

Deterministic checks only; the comparison with ensembles of real residual networks is in
tests/validation/test_residual_vs_ensemble.py.  Derivations: docs/residual.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import pdlt
from pdlt.errors import NoCriticalityError, ParameterError
from pdlt.gaussian import expect
from pdlt.networks import NetworkParameters, mlp_forward, sample_parameters
from pdlt.plugins import get_plugin_manager, lookup
from pdlt.residual_networks import residual_apply, residual_forward
from pdlt_plugins import residual as residual_module
from pdlt_plugins.architectures import MLP
from pdlt_plugins.residual import ResidualMLP, ResidualStatistics, odd_tensors_vanish

FIELDS = ("K", "Theta", "V", "G1", "H1", "A", "B", "D", "F")
X2 = np.array([[0.9, -0.4], [0.2, 1.1]])
X3 = np.array([[0.9, -0.4], [0.2, 1.1], [-0.7, -0.5]])


def _act(name):
    return pdlt.activation(name)


def _mlp_kw(act, **extra):
    kw = dict(
        input_dim=2, hidden_widths=[5, 7, 7, 6], output_dim=3, activation=_act(act),
        c_b=(0.1, 0.0, 0.2, 0.1, 0.0), c_w=(1.5, 2.0, 1.8, 2.1, 1.0), lambda_b=(0.5, 1.0, 2.0, 1.0, 0.7), lambda_w=1.5,
    )
    kw.update(extra)
    return kw


def _res(act, n=6, L=4, gamma=0.5, xi=0.8, **kw):
    return ResidualMLP(
        input_dim=2, hidden_widths=[n] * (L - 1), output_dim=n, activation=_act(act), gamma=gamma, xi=xi,
        lambda_b=kw.pop("lambda_b", 1.0), lambda_w=kw.pop("lambda_w", 1.0), **kw,
    ).at_criticality()


# ------------------------------------------------------------------------------ parameters


def test_resolved_strengths_scalar_and_sequence():
    net = ResidualMLP(input_dim=3, hidden_widths=[8, 8, 4, 4], output_dim=1, activation=_act("tanh"), gamma=0.5, xi=0.7)
    assert net.residual_layers == (False, True, False, True, False)
    assert net.gammas.tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]
    assert net.xis.tolist() == [1.0, 0.7, 1.0, 0.7, 1.0]
    seq = net.evolve(gamma=(0.0, 0.3, 0.0, -0.2, 0.0), xi=(1.0, 2.0, 0.5, 1.0, 1.0))
    assert seq.gammas.tolist() == [0.0, 0.3, 0.0, -0.2, 0.0]
    assert seq.hyperparameters(2)["gamma"] == 0.3 and seq.hyperparameters(3)["xi"] == 0.5
    assert seq.effective_hyperparameters(2)["c_w"] == pytest.approx(4.0)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(gamma=(0.2, 0.5, 0.5, 0.0)), "gamma\\^\\(1\\) = 0"),
        (dict(gamma=(0.0, 0.5, 0.5, 0.3)), "equal widths"),
        (dict(gamma=(0.0, 0.5)), "sequence of L = 4"),
        (dict(xi=0.0), "'xi' parameter of ResidualMLP must be > 0"),
        (dict(xi=(1.0, -1.0, 1.0, 1.0)), "must be > 0"),
        (dict(gamma=float("nan")), "finite"),
        (dict(tower="fast"), "'tower' parameter of ResidualMLP must be one of"),
    ],
)
def test_parameter_validation(changes, match):
    base = dict(input_dim=2, hidden_widths=[6, 6, 6], output_dim=1, activation=_act("tanh"))
    with pytest.raises(ParameterError, match=match):
        ResidualMLP(**base, **changes)


def test_at_criticality_formula_and_errors():
    relu = ResidualMLP(input_dim=2, hidden_widths=[6] * 3, output_dim=6, activation=_act("relu"), gamma=0.6, xi=0.5)
    crit = relu.at_criticality()
    # γ² + ξ² C_W A_2 = 1 on residual layers, plain critical C_W = 2 elsewhere
    assert np.allclose(crit.gammas**2 + crit.xis**2 * crit.C_W / 2, [1, 1, 1, 1])
    assert crit.C_W[0] == pytest.approx(2.0) and np.all(crit.C_b == 0)
    tanh = relu.evolve(activation=_act("tanh")).at_criticality()
    assert np.allclose(tanh.gammas**2 + tanh.xis**2 * tanh.C_W, 1.0)
    with pytest.raises(NoCriticalityError, match="gamma"):
        relu.evolve(gamma=1.0).at_criticality()
    with pytest.raises(NoCriticalityError):
        relu.evolve(activation=_act("sigmoid")).at_criticality()


# ------------------------------------------------------------------------------ layer maps


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_without_shortcut_equals_mlp(act):
    """γ = 0, ξ = 1: every statistic equals the MLP's (same code path for the branch)."""
    kw = _mlp_kw(act)
    f_mlp, f_res = pdlt.flow(MLP(**kw), X2), pdlt.flow(ResidualMLP(**kw), X2)
    for s1, s2 in zip(f_mlp, f_res):
        for name in FIELDS:
            a, b = getattr(s1, name), getattr(s2, name)
            assert np.allclose(a, b, rtol=1e-12, atol=1e-13), (s1.layer, name)
        assert not np.any(s2.Omega) and not np.any(s2.Pi) and not np.any(s2.Phi)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_branch_strength_enters_as_xi_squared_times_hyperparameters(act):
    kw = _mlp_kw(act)
    xi = 0.7
    scaled = {k: tuple(np.asarray(kw[k] if np.ndim(kw[k]) else [kw[k]] * 5) / xi**2) for k in ("c_b", "c_w", "lambda_b", "lambda_w")}
    net = ResidualMLP(**{**kw, **scaled}, xi=(xi,) * 5)
    for s1, s2 in zip(pdlt.flow(MLP(**kw), X2), pdlt.flow(net, X2)):
        for name in FIELDS:
            assert np.allclose(getattr(s1, name), getattr(s2, name), rtol=1e-11, atol=1e-12), (s1.layer, name)


def _gauss1(act, orders, K, insert=None):
    blk = np.full((1, len(orders), len(orders)), K)
    return float(expect(act, orders, blk, insert=insert, method="quadrature")[0][0])


def test_single_input_tanh_recursion_closed_form():
    """training.md §7: K' = γ²K + ξ²C⟨σ²⟩, V' = χ_∥²V + ξ⁴C²Var(σ²) + 2γ²ξ²C Cov(z², σ²) (odd σ)."""
    act = _act("tanh")
    net = ResidualMLP(input_dim=1, hidden_widths=[10] * 5, output_dim=10, activation=act, gamma=0.6, xi=0.8, c_w=1.3, c_b=0.1,
                      tower="closure")
    f = pdlt.flow(net, np.array([[1.2]]))
    g, C, cb = 0.6, 0.64 * 1.3, 0.64 * 0.1
    for ell in range(2, 6):
        s, t = f.layer(ell), f.layer(ell + 1)
        K, V, Th = s.K[0, 0], s.V[0, 0, 0, 0], s.Theta[0, 0]
        s2, s4 = _gauss1(act, (0, 0), K), _gauss1(act, (0, 0, 0, 0), K)
        chi = g**2 + C * 0.5 * _gauss1(act, (0, 0), K, insert=(2, 0))
        cov_z2 = K**2 * _gauss1(act, (0, 0), K, insert=(2, 0))
        assert t.K[0, 0] == pytest.approx(g**2 * K + cb + C * s2, rel=1e-12)
        assert t.V[0, 0, 0, 0] == pytest.approx(chi**2 * V + C**2 * (s4 - s2**2) + 2 * g**2 * C * cov_z2, rel=1e-9)
        chi_perp = g**2 + C * _gauss1(act, (1, 1), K)
        assert t.Theta[0, 0] == pytest.approx(0.64 * (1 + s2) + chi_perp * Th, rel=1e-12)
        assert not np.any(t.Omega)


def test_single_input_relu_three_point_and_growth_rate():
    """ReLU: Ω' = γχ_∥Ω + γc⟨zσ²⟩ with c = ξ²C_W; V/K² grows per layer by the closed-recursion ν."""
    g = 0.5
    net = ResidualMLP(input_dim=1, hidden_widths=[8] * 40, output_dim=8, activation=_act("relu"), gamma=g, xi=0.9,
                      tower="closure").at_criticality()
    f = pdlt.flow(net, np.array([[1.0]]))
    K = f.layer(1).K[0, 0]
    c = 2 * (1 - g**2)  # ξ²C_W at criticality (A_2 = ½)
    zs2 = K**1.5 * math.sqrt(2 / math.pi)  # ⟨z σ²⟩ = K^{3/2} E[x³; x > 0]
    assert f.layer(1).Omega[0, 0, 0] == 0.0
    for ell in range(1, 6):
        Om, Om_next = f.layer(ell).Omega[0, 0, 0], f.layer(ell + 1).Omega[0, 0, 0]
        assert Om_next == pytest.approx(g * Om + g * c * zs2, rel=1e-9)
    assert np.allclose([s.K[0, 0] for s in f], K, rtol=1e-12)  # criticality: K fixed
    dV = np.diff([s.V[0, 0, 0, 0] for s in f])[-5:] / K**2
    nu_closed = (1 - g**2) * (5 - g**2 + 16 / math.pi * g * (1 + g))
    assert np.allclose(dV, nu_closed, rtol=1e-8)


@pytest.mark.parametrize("act, g", [("relu", 0.5), ("relu", -0.4), ("gelu", 0.7), ("tanh", 0.6)])
def test_single_input_tower(act, g):
    """closure=True reproduces the flow exactly (any widths, plain layers in between); the full tower's
    growth rate is pdlt.information.growth_rate (an independent code path)."""
    net = ResidualMLP(
        input_dim=1, hidden_widths=[8, 8, 6, 6, 6], output_dim=6, activation=_act(act),
        gamma=(0, g, 0, 0, 0.7, -0.6), xi=0.9, c_b=0.05, tower="closure",
    ).at_criticality()
    f = pdlt.flow(net, np.array([[1.1]]))
    closed = residual_module.single_input_tower(net, [1.1], 12, closure=True)
    for s, t in zip(f, closed):
        assert t.K == pytest.approx(s.K[0, 0], rel=1e-12)
        for name in ("V", "G1", "Omega"):
            th = getattr(s, name).ravel()[0]
            assert getattr(t, name) == pytest.approx(th, rel=1e-8, abs=1e-12), (s.layer, name)
        assert t.three_point == pytest.approx(s.one_neuron_three_point()[0, 0, 0], rel=1e-8, abs=1e-12)
    full = residual_module.single_input_tower(net, [1.1], 40)
    assert all(t.Omega == pytest.approx(c.Omega, rel=1e-10, abs=1e-14) for t, c in zip(full, closed))  # Ω is exact
    if act != "tanh":
        assert full[-1].V > closed[-1].V  # the higher couplings add to V for these σ
        deep = ResidualMLP(input_dim=1, hidden_widths=[8] * 60, output_dim=8, activation=_act(act), gamma=g, xi=0.9).at_criticality()
        rep = pdlt.criticality(_act(act))
        x = 1.0 if rep.K_star is None else math.sqrt((rep.K_star - deep.C_b[0]) / deep.C_W[0])  # start at K*
        tw = residual_module.single_input_tower(deep, [x], 80)
        K = tw[-1].K
        assert (tw[-1].V - tw[-2].V) / K**2 == pytest.approx(pdlt.information.growth_rate(_act(act), g), rel=1e-6)


def test_odd_activation_has_no_three_point_tensors():
    assert odd_tensors_vanish(_act("tanh")) and odd_tensors_vanish(_act("sin"))
    assert not odd_tensors_vanish(_act("relu")) and not odd_tensors_vanish(_act("gelu"))
    f = pdlt.flow(_res("tanh"), X2)
    assert all(not np.any(s.Omega) and not np.any(s.Pi) and not np.any(s.Phi) for s in f)
    f = pdlt.flow(_res("relu"), X2)
    assert all(np.any(s.Omega) and np.any(s.Pi) and np.any(s.Phi) for s in f[1:])


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_marginalisation_and_symmetries(act):
    """Restricting a 3-input flow to 2 inputs equals the 2-input flow (book §4.4); tensor symmetries hold."""
    net = _res(act, gamma=0.6, xi=0.9, tower="closure")  # the exact tower: test_ntk_tower_*
    f3, f2 = pdlt.flow(net, X3), pdlt.flow(net, X3[[2, 0]])
    for s3, s2 in zip(f3, f2):
        r = s3.restrict([2, 0])
        assert isinstance(r, ResidualStatistics)
        for name in FIELDS + ("Omega", "Pi", "Phi"):
            assert np.allclose(getattr(r, name), getattr(s2, name), rtol=1e-7, atol=1e-9), (s3.layer, name)
    s = f3[-1]
    V = s.V
    assert np.allclose(V, V.transpose(1, 0, 2, 3)) and np.allclose(V, V.transpose(2, 3, 0, 1), atol=1e-12)
    assert np.allclose(s.A, s.A.transpose(2, 3, 0, 1), atol=1e-10)
    assert np.allclose(s.B, s.B.transpose(1, 0, 3, 2), atol=1e-10)  # B_pqrs = B_qpsr
    assert np.allclose(s.F, s.F.transpose(2, 3, 0, 1), atol=1e-10)
    assert np.allclose(s.Omega, s.Omega.transpose(1, 0, 2), atol=1e-12)
    assert np.allclose(s.Pi, s.Pi.transpose(1, 0, 2), atol=1e-12)
    three = s.one_neuron_three_point()
    assert np.allclose(three, three.transpose(1, 2, 0)) and np.allclose(three, three.transpose(1, 0, 2))


def test_leading_order_flow_and_no_dntk():
    net = _res("relu")
    full, lead = pdlt.flow(net, X2), pdlt.flow(net, X2, order="leading")
    for a, b in zip(full, lead):
        assert np.array_equal(a.K, b.K) and np.array_equal(a.Theta, b.Theta) and b.V is None and b.Omega is None
    # the dNTK map of a residual layer needs the layer's P..U, which an order="full" flow lacks: read as zero
    s = residual_module.next_layer(net, full[2], 3, "dntk")
    assert s.P is not None and s.P.shape == (2,) * 4


# ------------------------------------------------------------------------------ real networks


def test_forward_ntk_is_exact_jacobian_ntk():
    """The residual forward equation equals Σ_μ λ_μ ∂z ∂z by central finite differences."""
    net = ResidualMLP(
        input_dim=3, hidden_widths=[4, 4, 4], output_dim=4, activation=_act("tanh"), c_b=0.3, c_w=1.7,
        lambda_b=(0.5, 1.0, 2.0, 0.7), lambda_w=(1.3, 0.4, 1.0, 2.0), gamma=(0, 0.6, -0.5, 0.8), xi=(0.9, 0.8, 1.1, 0.7),
    )
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, 3))
    p = sample_parameters(net, 1, rng)
    H = residual_apply(net, p, X, gamma=net.gammas, xi=net.xis)[-1].H[0]
    ws, bs = [w.copy() for w in p.weights], [b.copy() for b in p.biases]

    def z(ws, bs):
        pp = NetworkParameters(weights=ws, biases=bs)
        return residual_apply(net, pp, X, gamma=net.gammas, xi=net.xis, ntk=False)[-1].z[0]

    Hfd, h = np.zeros_like(H), 1e-5
    for ell in range(net.depth):
        for arr, lam in ((ws[ell], net.lambda_W[ell] / net.widths[ell]), (bs[ell], net.lambda_B[ell])):
            for idx in np.ndindex(arr.shape):
                old = arr[idx]
                arr[idx] = old + h
                zp = z(ws, bs)
                arr[idx] = old - h
                zm = z(ws, bs)
                arr[idx] = old
                J = (zp - zm) / (2 * h)
                Hfd += lam * np.einsum("ia,jb->ijab", J, J)
    assert np.max(np.abs(H - Hfd)) < 1e-8 * np.max(np.abs(H))


def test_plain_residual_reproduces_mlp_draw_for_draw():
    kw = _mlp_kw("relu")
    X = np.random.default_rng(3).normal(size=(3, 2))
    a = mlp_forward(MLP(**kw), X, 4, np.random.default_rng(7))
    b = residual_forward(ResidualMLP(**kw), X, 4, np.random.default_rng(7))
    for la, lb in zip(a, b):
        assert np.allclose(la.z, lb.z, rtol=1e-13) and np.allclose(la.H, lb.H, rtol=1e-12)


def test_residual_apply_validates_shortcuts():
    net = ResidualMLP(input_dim=2, hidden_widths=[4, 4], output_dim=2, activation=_act("tanh"))
    p = sample_parameters(net, 2, np.random.default_rng(0))
    with pytest.raises(ParameterError, match="gamma\\^\\(1\\) = 0"):
        residual_apply(net, p, X2, gamma=[0.5, 0, 0], xi=[1, 1, 1])
    with pytest.raises(ParameterError, match="widths differ"):
        residual_apply(net, p, X2, gamma=[0, 0.5, 0.5], xi=[1, 1, 1])
    with pytest.raises(ParameterError, match="3 finite values"):
        residual_apply(net, p, X2, gamma=[0, 0.5], xi=[1, 1, 1])


# ------------------------------------------------------------------------------ plugin


def test_registered_through_its_own_hook():
    pm = get_plugin_manager(load_entrypoints=False)
    if pm.get_plugin("pdlt_plugins.residual") is None:  # until it is listed in DEFAULT_PLUGINS
        pm.register(residual_module, name="pdlt_plugins.residual")
    assert lookup("architecture", "residual_mlp", pm) is ResidualMLP
    pm.check_pending()


def test_flow_npz_round_trip_keeps_three_point_tensors(tmp_path):
    """Flow.to_npz / from_npz keep Ω, Π, Φ and the ResidualStatistics class."""
    from pdlt.flow import Flow

    net = ResidualMLP(input_dim=2, hidden_widths=[8] * 3, output_dim=8, activation=_act("relu"), gamma=0.5).at_criticality()
    fl = pdlt.flow(net, X2)
    assert np.any(fl[-1].Omega) and np.any(fl[-1].Pi) and np.any(fl[-1].Phi)
    path = tmp_path / "res.npz"
    fl.to_npz(path)
    back = Flow.from_npz(path)
    assert len(back) == len(fl)
    for a, b in zip(fl, back):
        assert type(b) is ResidualStatistics
        assert a == b  # every field, Ω, Π, Φ included
    np.testing.assert_array_equal(back.X, X2)


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_multi_input_tower(act):
    """input_tower: N = 1 equals single_input_tower; for two inputs closure=True reproduces the flow's
    V, G1, Ω (independent code paths; ReLU limited by the grid quadrature of the slanted kink)."""
    net = ResidualMLP(
        input_dim=2, hidden_widths=[6, 6, 5, 5], output_dim=5, activation=_act(act),
        gamma=(0, 0.6, 0, 0.7, -0.5), xi=0.9, c_b=0.05, tower="closure",
    ).at_criticality()
    one = residual_module.input_tower(net, X2[:1], 16)
    ref = residual_module.single_input_tower(net, X2[0], 16)
    for t, s in zip(one, ref):
        for name in ("V", "G1", "Omega"):
            assert getattr(t, name).ravel()[0] == pytest.approx(getattr(s, name), rel=1e-10, abs=1e-13)
    f = pdlt.flow(net, X2)
    closed = residual_module.input_tower(net, X2, 10, closure=True)
    tol = 1e-6 if act == "relu" else 1e-10
    for s, t in zip(f, closed):
        np.testing.assert_allclose(t.K, s.K, rtol=1e-12)
        for name in ("V", "G1", "Omega"):
            th = getattr(s, name)
            np.testing.assert_allclose(getattr(t, name), th, rtol=tol, atol=tol * max(1.0, np.abs(th).max()), err_msg=name)
    full = residual_module.input_tower(net, X2, 10)
    assert np.allclose(full[-1].Omega, closed[-1].Omega, rtol=1e-8, atol=1e-12)  # Ω is exact in the closure
    rel = (full[-1].V - closed[-1].V) / np.abs(closed[-1].V).max()
    assert np.all(np.abs(rel) < 0.05) and np.any(np.abs(rel) > 1e-4)  # a small, non-zero correction
    with pytest.raises(ParameterError, match="non-singular kernel"):
        residual_module.input_tower(net, np.vstack([X2[0], X2[0]]), 6)


# ------------------------------------------------------------------------------ the NTK tower


def _tower_vs_flow(net, X, degree, layers, names, tol, closure=False):
    f = pdlt.flow(net.evolve(tower="closure"), X)
    tw = residual_module.input_tower(net, X, degree, ntk=True, closure=closure)
    for ell in layers:
        s, t = f.layer(ell), tw[ell - 1]
        np.testing.assert_allclose(t.Theta, s.Theta, rtol=1e-12)
        for name in names:
            th = getattr(s, name)
            np.testing.assert_allclose(getattr(t, name), th, rtol=tol, atol=tol * max(1.0, np.abs(th).max()), err_msg=f"{ell} {name}")
    return f, tw


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_ntk_tower_reduces_to_the_mlp_recursions(act):
    """γ = 0 (plain MLP, where the closed recursions are exact): the NTK tower reproduces every tensor
    (an independent code path for the λ, C_W, φ and b terms; ReLU limited by the grid at the kinks)."""
    net = ResidualMLP(input_dim=2, hidden_widths=[6, 6, 6], output_dim=6, activation=_act(act), c_b=0.05,
                      lambda_b=(1.0, 0.5, 2.0, 1.0), lambda_w=(1.0, 2.0, 0.5, 1.0)).at_criticality()
    _tower_vs_flow(net, X2, 8, (2, 3, 4), FIELDS + ("Pi", "Phi"), 5e-3 if act == "relu" else 1e-9)


@pytest.mark.parametrize("act", ["gelu", "tanh"])
def test_ntk_tower_first_residual_layer_and_odd_tensors(act):
    """With shortcuts: the first residual layer is exact in the closure (every tensor agrees), Ω, Π, Φ
    agree at every layer, and beyond it the tower moves A, B, D, F, H1 by a small non-zero amount."""
    net = ResidualMLP(input_dim=2, hidden_widths=[6] * 3, output_dim=6, activation=_act(act), gamma=0.5, xi=0.9, c_b=0.05,
                      lambda_b=(1.0, 0.5, 2.0, 1.0), lambda_w=(1.0, 2.0, 0.5, 1.0)).at_criticality()
    f, tw = _tower_vs_flow(net, X2, 8, (2,), FIELDS + ("Omega", "Pi", "Phi"), 1e-9)
    for ell in (3, 4):
        for name in ("Omega", "Pi", "Phi"):
            np.testing.assert_allclose(getattr(tw[ell - 1], name), getattr(f.layer(ell), name), atol=1e-10)
        for name in ("A", "B", "D", "F"):
            th = getattr(f.layer(ell), name)
            rel = np.abs(getattr(tw[ell - 1], name) - th).max() / np.abs(th).max()
            assert 1e-4 < rel < 0.1, (ell, name, rel)


def test_ntk_tower_inputs_and_degree():
    """The two-input tower restricted to one input equals the one-input tower; the truncation
    converges; the kernel block of the NTK tower equals the kernel tower (checked inside)."""
    net = _res("gelu", gamma=0.6, xi=0.9, c_b=0.05)
    two = residual_module.input_tower(net, X2, 8, ntk=True)
    for j in (0, 1):
        one = residual_module.input_tower(net, X2[j : j + 1], 8, ntk=True)
        for name in ("H1", "A", "B", "D", "F", "Pi", "Phi", "V", "G1"):
            a, b = getattr(two[-1], name), getattr(one[-1], name)
            assert a[(j,) * a.ndim] == pytest.approx(b.ravel()[0], rel=1e-9, abs=1e-12), (j, name)
    hi = residual_module.input_tower(net, X2[:1], 40, ntk=True)
    lo = residual_module.input_tower(net, X2[:1], 20, ntk=True)
    for name in ("H1", "A", "B", "D", "F"):
        assert getattr(lo[-1], name) == pytest.approx(getattr(hi[-1], name), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_ntk_tower_truncated_to_the_closure_is_the_flow(act):
    """closure=True with ntk=True keeps what the closed recursions track and then reproduces every
    tensor of the flow's closed recursions — plain layers, width changes (r ≠ 1) and γ < 0 included
    (independent code paths; ReLU limited by the grid quadrature of the steps σ' at a slanted kink)."""
    net = ResidualMLP(
        input_dim=2, hidden_widths=[6, 6, 5, 5], output_dim=5, activation=_act(act), gamma=(0, 0.6, 0, 0.7, -0.5), xi=0.9,
        c_b=0.05, lambda_b=(1.0, 0.5, 2.0, 1.0, 1.0), lambda_w=(1.0, 2.0, 0.5, 1.0, 1.0),
    ).at_criticality()
    _tower_vs_flow(net, X2, 8, (2, 3, 4, 5), FIELDS + ("Omega", "Pi", "Phi"), 3e-3 if act == "relu" else 1e-9, closure=True)


def test_flow_uses_the_exact_tower_when_it_is_cheap():
    """tower='auto': exact with shortcuts for N ≤ 6 inputs, also when K^(1) is rank-deficient (any square
    root of it), the closure beyond N = 6, for coinciding inputs or γ = 0; 'exact' insists (and rejects a
    singular deeper kernel); 'closure' never uses the tower."""
    net = _res("tanh", gamma=0.6, xi=0.9)
    tw = residual_module.input_tower(net, X2, ntk=True)
    auto = pdlt.flow(net, X2)
    closed = pdlt.flow(net.evolve(tower="closure"), X2)
    for name in ("V", "G1", "H1", "A", "B", "D", "F"):
        np.testing.assert_array_equal(getattr(auto[-1], name), getattr(tw[-1], name))
        assert not np.allclose(getattr(closed[-1], name), getattr(tw[-1], name), rtol=1e-6, atol=0)
    three = pdlt.flow(net, X3)  # C_b = 0 and three 2-D inputs: K^(1) has rank 2, the tower still applies
    tw3 = residual_module.input_tower(net, X3, ntk=True)
    # … and is the C_b → 0 limit of the Cholesky-based tower (differences ∝ C_b: 1e-5 at C_b = 1e-6)
    near = residual_module.input_tower(net.evolve(c_b=1e-6), X3, ntk=True)
    for name in ("V", "G1", "H1", "A", "B", "D", "F"):
        np.testing.assert_array_equal(getattr(three[-1], name), getattr(tw3[-1], name))
        a, b = getattr(tw3[-1], name), getattr(near[-1], name)
        assert 0 < np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), name
    # coinciding inputs: the tower of the distinct inputs, indices repeated
    same = np.vstack([X2[0], X2[1], X2[0]])
    dup = pdlt.flow(net, same)[-1]
    idx = [0, 1, 0]
    for name in ("V", "G1", "H1", "A", "B", "D", "F"):
        T = getattr(tw[-1], name)
        np.testing.assert_allclose(getattr(dup, name), T[np.ix_(*[idx] * T.ndim)], rtol=1e-12, atol=1e-14, err_msg=name)
    with pytest.raises(ParameterError, match="non-singular kernel"):
        residual_module.input_tower(net, same, ntk=True)
    plain = _res("tanh", gamma=0.0, xi=1.0)
    assert residual_module._wants_tower(plain, X2) is False and residual_module._wants_tower(net, X3) is True
    assert residual_module._wants_tower(_res("tanh", gamma=0.6).evolve(c_b=0.1), X3) is True
    assert residual_module._wants_tower(_res("relu", gamma=0.6).evolve(c_b=0.1), X3) is True
    wide = ResidualMLP(input_dim=5, hidden_widths=[6] * 3, output_dim=6, activation=_act("relu"), gamma=0.5, c_b=0.1)
    X7 = np.random.default_rng(0).normal(size=(7, 5))
    assert residual_module._wants_tower(wide, X7[:4]) is True and residual_module._wants_tower(wide, X7[:6]) is True
    assert residual_module._wants_tower(wide, X7) is False  # 35 four-input towers: the closure unless tower="exact"
    assert residual_module._wants_tower(wide.evolve(tower="exact"), X7) is True


def test_ill_conditioned_tower_falls_back_to_the_closure_with_a_warning():
    """Six one-dimensional inputs with C_b = 0: K^(2) is a Gram matrix of smooth functions of one Gaussian and
    numerically singular, so the whitened tower fails its internal check; 'auto' then warns and uses the
    closure, 'exact' raises."""
    net = ResidualMLP(input_dim=1, hidden_widths=[8] * 2, output_dim=1, activation=_act("tanh"), gamma=0.5, xi=0.9).at_criticality()
    X = np.random.default_rng(0).normal(size=(6, 1))
    with pytest.warns(pdlt.errors.AccuracyWarning, match="tower='closure'"):
        auto = pdlt.flow(net, X)
    closed = pdlt.flow(net.evolve(tower="closure"), X)
    for name in ("V", "A", "B", "D", "F", "G1", "H1"):
        np.testing.assert_array_equal(getattr(auto[-1], name), getattr(closed[-1], name))
    with pytest.raises((ParameterError, pdlt.errors.NumericalError)):
        pdlt.flow(net.evolve(tower="exact"), X)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_subset_tower_is_the_full_tower(act):
    """Beyond four inputs the flow assembles every tensor (≤ 4 input indices) from the four-input towers:
    equal to the five-input tower to rounding (the total-degree truncation is invariant under the linear maps
    that restrict the inputs), the tensor symmetries hold, and the flow's tensors are the assembled ones."""
    net = ResidualMLP(input_dim=2, hidden_widths=[6] * 2, output_dim=6, activation=_act(act), gamma=0.5, xi=0.9, c_b=0.05, c_w=1.2)
    X5 = np.random.default_rng(3).normal(size=(5, 2))
    sub = residual_module.subset_tower(net, X5, degree=4)
    full = residual_module.input_tower(net, X5, ntk=True, degree=4)
    for s, f in zip(sub[1:], full[1:]):
        np.testing.assert_allclose(s.K, f.K, rtol=1e-13)
        for name in ("V", "G1", "H1", "A", "B", "D", "F", "Omega", "Pi", "Phi", "Theta"):
            a, b = getattr(s, name), getattr(f, name)
            assert np.abs(a - b).max() <= 1e-10 * max(np.abs(b).max(), 1e-12), (s.layer, name)
    last = sub[-1]
    for name, perms in (("V", ((1, 0, 2, 3), (2, 3, 0, 1))), ("A", ((1, 0, 2, 3), (2, 3, 0, 1))), ("D", ((1, 0, 2, 3), (0, 1, 3, 2))),
                        ("B", ((2, 3, 0, 1), (1, 0, 3, 2))), ("G1", ((1, 0),)), ("H1", ((1, 0),))):
        T = getattr(last, name)
        for p in perms:
            np.testing.assert_allclose(T, T.transpose(p), rtol=1e-12, atol=1e-12 * np.abs(T).max(), err_msg=name)
    with pytest.raises(ParameterError, match="'size'"):
        residual_module.subset_tower(net, X5, size=3)


def test_flow_assembles_the_exact_tower_beyond_four_inputs():
    """tower='auto' with five inputs: the flow's tensors are those of :func:`subset_tower`."""
    net = ResidualMLP(input_dim=2, hidden_widths=[6] * 2, output_dim=6, activation=_act("gelu"), gamma=0.5, xi=0.9, c_b=0.05, c_w=1.2)
    X5 = np.random.default_rng(3).normal(size=(5, 2))
    flow = pdlt.flow(net, X5)
    exact = residual_module.subset_tower(net, X5)
    closed = pdlt.flow(net.evolve(tower="closure"), X5)
    for name in ("V", "G1", "H1", "A", "B", "D", "F"):
        np.testing.assert_array_equal(getattr(flow[-1], name), getattr(exact[-1], name))
        assert not np.allclose(getattr(closed[-1], name), getattr(exact[-1], name), rtol=1e-6, atol=0), name


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_gauss_hermite_tower_grid_equals_the_composite_grid(act):
    """Smooth σ: the tower's Gauss–Hermite tensor grid (chosen per layer) reproduces the composite rule."""
    net = _res(act, gamma=0.6, xi=0.9).evolve(c_b=0.1)
    assert len(residual_module._tower_grid(net.activation, 8, 1.0, lambda: None)[0]) <= 256
    assert residual_module._tower_grid(pdlt.activation("relu"), 8, 1.0, lambda: "composite") == "composite"
    gh = residual_module.input_tower(net, X2, ntk=True)[-1]
    comp = residual_module.input_tower(net, X2, ntk=True, grid_panel=0.25)[-1]
    for name in ("V", "G1", "H1", "A", "B", "D", "F", "Omega", "Pi", "Phi"):
        a, b = np.asarray(getattr(gh, name)), np.asarray(getattr(comp, name))
        assert np.max(np.abs(a - b)) <= 1e-9 * max(np.max(np.abs(b)), 1e-12), name


def test_planar_projections_are_exact_for_relu():
    """Kink-aligned 2-D projections (N = 3): ⟨Θ_aΘ_b h_A⟩ against closed forms for degree 0 (arc-cosine)
    and degree 1 (Stein: E[Θ_aΘ_b z_c] = ½ Σ_{x=a,b} K_cx/√(2πK_xx)); the old N-D composite grid was 2e-4 off."""
    K = np.array([[1.2, 0.3, -0.2], [0.3, 0.9, 0.1], [-0.2, 0.1, 1.1]])
    L = np.linalg.cholesky(K)
    Li = np.linalg.inv(L)
    basis = residual_module._Basis(3, 8)
    P = residual_module._project_products(_act("relu"), L, basis, residual_module._hermite_grid(8, 10.0, 0.25))[(1, 1)]
    d = np.sqrt(np.diag(K))
    theta = np.arccos(np.clip(K / np.outer(d, d), -1.0, 1.0))
    np.testing.assert_allclose(P[0], (np.pi - theta) / (2 * np.pi), atol=1e-13)
    for j in range(3):
        e = [0, 0, 0]
        e[j] = 1
        row = P[basis.pos[tuple(e)]]
        phi = K / np.sqrt(2 * np.pi * np.diag(K))[None, :]  # phi[c, x] = K_cx / √(2π K_xx)
        want = 0.5 * (Li[j] @ phi)[:, None] + 0.5 * (Li[j] @ phi)[None, :]
        np.fill_diagonal(want, Li[j] @ phi)  # Θ_aΘ_a = Θ_a
        np.testing.assert_allclose(row, want, atol=1e-13)
