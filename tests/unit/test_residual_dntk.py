"""Residual networks: exact per-network dNTK/ddNTK (pdlt.dntk_ensemble) and the residual dNTK layer map.

The exact jets of :func:`pdlt.dntk_ensemble.output_differentials` for a
:class:`~pdlt_plugins.residual.ResidualMLP` are checked on tiny networks against a complex-step /
central-difference reference of the residual forward pass, and against finite differences of the
exact residual NTK of :func:`pdlt.residual_networks.residual_apply`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pdlt.dntk_ensemble import output_differentials
from pdlt.networks import sample_parameters
from pdlt.residual_networks import residual_apply
from pdlt_plugins.activations import Tanh
from pdlt_plugins.architectures import MLP
from pdlt_plugins.residual import ResidualMLP

HYPER = dict(c_w=[1.3, 0.9, 1.5, 1.1], c_b=0.2, lambda_b=[0.7, 1.3, 0.4, 0.9], lambda_w=[1.4, 0.6, 1.2, 0.8])


@pytest.fixture(scope="module")
def tiny_res(fd_reference):
    net = ResidualMLP(input_dim=2, hidden_widths=(3, 3, 3), output_dim=3, activation=Tanh(), gamma=[0.0, 0.7, -0.5, 0.6],
                      xi=[1.1, 0.8, 1.2, 0.9], **HYPER)
    X = np.array([[0.5, -1.0], [1.2, 0.3]])
    params = sample_parameters(net, 2, np.random.default_rng(3))
    K = 3 * 2
    triples = np.array(list(itertools.product(range(K), repeat=3)))
    od = output_differentials(net, params, X, triples=triples, check_reverse=True)
    ref, J, V = fd_reference.jets(net, params, 1, X)
    return net, params, X, od, ref, J, V


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_residual_ntk_matches_forward_equation_and_complex_step(tiny_res):
    net, params, X, od, ref, J, V = tiny_res
    assert _rel(od.H[1], J @ V.T) < 1e-13
    layers = residual_apply(net, params, X, gamma=net.gammas, xi=net.xis)
    H_fe = layers[-1].H.transpose(0, 1, 3, 2, 4).reshape(2, 6, 6)
    assert np.allclose(od.H, H_fe, rtol=1e-12, atol=1e-12)
    assert np.allclose(od.z, layers[-1].z, rtol=1e-13, atol=1e-13)


def test_residual_dntk_matches_finite_differences_of_exact_ntk(tiny_res, fd_reference):
    """D Ĥ_{I0I1}[v_{I2}] = dĤ_{I0I1I2} + dĤ_{I1I0I2}, with Ĥ from the exact residual forward equation."""
    net, params, X, od, ref, J, V = tiny_res
    t, M = 1e-4, V.shape[0]
    nW = [w.shape[1] * w.shape[2] for w in params.weights]

    def ntk_at(th):
        ws, bs, o = [], [], 0
        for l, w in enumerate(params.weights):
            n, m = w.shape[1:]
            ws.append(th[o : o + n * m].reshape(1, n, m))
            o += n * m
            bs.append(th[o : o + n].reshape(1, n))
            o += n
        p = type(params)(weights=ws, biases=bs)
        return residual_apply(net, p, X, gamma=net.gammas, xi=net.xis)[-1].H[0].transpose(0, 2, 1, 3).reshape(M, M)

    assert len(ref.theta) == sum(nW) + sum(w.shape[1] for w in params.weights)
    dH_fd = np.stack([(ntk_at(ref.theta + t * V[c]) - ntk_at(ref.theta - t * V[c])) / (2 * t) for c in range(M)], axis=-1)
    dH = od.dH[1]
    assert _rel(dH + dH.transpose(1, 0, 2), dH_fd) < 1e-6
    # second route: D²z along (v_a, v_b) by central differences of the complex-step derivative
    assert _rel(dH, fd_reference.dntk(ref, V, t)) < 1e-6
    assert np.allclose(od.dH_reverse, od.dH, rtol=0, atol=1e-12 * np.abs(od.dH).max())


def test_residual_ddntk1_matches_finite_differences(tiny_res, fd_reference):
    net, params, X, od, ref, J, V = tiny_res
    t = 2e-5  # error of the stencil ∝ t² (5e-6 at t = 1e-4, 5e-7 at 3e-5: FD-limited)
    assert _rel(od.ddH1[1], fd_reference.ddntk1(ref, V, od.triples, t)) < 1e-6


def test_residual_ddntk2_matches_finite_differences(tiny_res, fd_reference):
    net, params, X, od, ref, J, V = tiny_res
    assert _rel(od.ddH2[1], fd_reference.ddntk2(ref, V, 1e-4)) < 1e-6


def test_residual_with_trivial_shortcut_is_the_mlp_bit_for_bit():
    kw = dict(input_dim=2, hidden_widths=(4, 4), output_dim=2, activation=Tanh(), c_w=1.2, c_b=0.1, lambda_b=0.8, lambda_w=1.1)
    mlp, res = MLP(**kw), ResidualMLP(gamma=0.0, **kw)
    X = np.array([[0.5, -1.0], [1.2, 0.3]])
    params = sample_parameters(mlp, 3, np.random.default_rng(0))
    a, b = output_differentials(mlp, params, X), output_differentials(res, params, X)
    for name in ("z", "H", "dH", "ddH1", "ddH2"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_output_selection_gives_the_same_differentials(tiny_res):
    net, params, X, od, ref, J, V = tiny_res
    sel = [2, 0]
    part = output_differentials(net, params, X, outputs=sel)
    N = X.shape[0]
    idx = np.array([i * N + d for i in sel for d in range(N)])
    assert np.allclose(part.z, od.z[:, sel], rtol=1e-13, atol=1e-14)
    assert np.allclose(part.H, od.H[:, idx][:, :, idx], rtol=1e-12, atol=1e-13)
    assert np.allclose(part.dH, od.dH[:, idx][:, :, idx][:, :, :, idx], rtol=1e-12, atol=1e-13)
    full2 = output_differentials(net, params, X)
    ix = np.ix_(np.arange(2), idx, idx, idx, idx)
    assert np.allclose(part.ddH2, full2.ddH2[ix], rtol=1e-12, atol=1e-12)
    assert part.ddH1.shape == (2, 4, 2 * 1 * N**3)


@pytest.mark.parametrize("bad", [[0, 0], [3], [-1, 1], [0.5, 1]])
def test_output_selection_is_validated(tiny_res, bad):
    from pdlt.errors import ParameterError

    net, params, X, *_ = tiny_res
    with pytest.raises(ParameterError, match="outputs"):
        output_differentials(net, params, X, outputs=bad)


# ------------------------------------------------------------------------------ the residual dNTK layer map

X2 = np.array([[-1.6038, 0.0641], [0.7409, 0.1526]])
KW = dict(input_dim=2, activation=Tanh(), c_w=1.2, c_b=0.1, lambda_b=0.8, lambda_w=1.1)


@pytest.fixture(scope="module")
def res_flow():
    import pdlt

    net = ResidualMLP(hidden_widths=(8, 8), output_dim=8, gamma=0.6, xi=0.9, tower="closure", **KW)
    return net, pdlt.flow(net, X2, order="dntk")


def test_residual_dntk_flow_with_zero_shortcut_is_the_mlp_flow():
    import pdlt

    kw = dict(hidden_widths=(8, 8), output_dim=2, **KW)
    a, b = pdlt.flow(ResidualMLP(gamma=0.0, **kw), X2, order="dntk"), pdlt.flow(MLP(**kw), X2, order="dntk")
    for sa, sb in zip(a, b):
        for k in ("P", "Q", "R", "S", "T", "U"):
            assert np.array_equal(getattr(sa, k), getattr(sb, k)), k


def test_residual_dntk_symmetries(res_flow):
    net, f = res_flow
    for s in f:
        P, R, S, T, U = s.P, s.R, s.S, s.T, s.U
        scale = max(np.abs(x).max() for x in (P, R, S, T, U)) + 1.0
        assert np.allclose(P, P.transpose(0, 2, 1, 3), atol=1e-13 * scale)  # P_0123 = P_0213
        assert np.allclose(R, R.transpose(0, 1, 3, 2), atol=1e-13 * scale)  # R_0123 = R_0132
        assert np.allclose(S, S.transpose(1, 0, 3, 2), atol=1e-13 * scale)  # S_1234 = S_2143
        # T_1342 = T_2431: T[α1, α3, α4, α2] = T[α2, α4, α3, α1]
        assert np.allclose(T, np.einsum("acdb->bdca", T), atol=1e-13 * scale)
        # U_1423 = U_2314: U[α1, α4, α2, α3] = U[α2, α3, α1, α4]
        assert np.allclose(U, np.einsum("adbc->bcad", U), atol=1e-13 * scale)


def test_residual_dntk_single_layer_shortcut_terms_by_hand(res_flow):
    """Layer 2 (first residual layer, layer-1 tensors zero): the shortcut adds only the first terms."""
    from pdlt.contractions import LayerExpectations
    from pdlt_plugins.dntk_recursions import dntk_step

    net, f = res_flow
    s1, s2 = f[0], f[1]
    h = net.effective_hyperparameters(2)
    C, lw, g = h["c_w"], h["lambda_w"], h["gamma"]
    mlp = dntk_step(LayerExpectations(net.activation, s1.K), s1, C, lw, undefined="nan")
    # single-input component 0000 from one-dimensional Gauss–Hermite quadrature
    K, Th = float(s1.K[0, 0]), float(s1.Theta[0, 0])
    x, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / w.sum()
    z = np.sqrt(K) * x
    t = np.tanh(z)
    d1 = 1 - t**2
    d2 = -2 * t * d1
    d3 = -2 * d1**2 + 4 * t**2 * d1
    E = lambda f: float(np.sum(w * f))  # noqa: E731
    dtau = lw * E(d2 * t) + C * Th * E(d3 * d1)
    tz = E((lw * d1 * t + C * Th * d2 * d1) * z)  # ⟨τ z⟩
    expect = {
        "P": C * Th**2 * E(d2 * t),
        "Q": Th * tz,
        "R": Th**2 * dtau,
        "S": Th**2 * (lw * E(d1 * d1) + C * Th * E(d2 * d2)),
        "T": 0.0,
        "U": 0.0,
    }
    for k, v in expect.items():
        got = getattr(s2, k)[0, 0, 0, 0] - mlp[k][0, 0, 0, 0]
        assert abs(got - g * g * v) <= 1e-6 * (1 + abs(v)), k  # Gaussian-engine quadrature ~1e-8


def test_residual_dntk_for_non_odd_activations():
    """Non-odd σ: P..U for isolated shortcuts, two adjacent ones, a run of three, and a plain layer above a run."""
    import pdlt

    gelu = pdlt.activation("gelu")
    for gamma in ((0.0, 0.5, 0.0, 0.4), (0.0, 0.5, 0.4, 0.0), (0.0, 0.5, 0.4, 0.3)):
        net = ResidualMLP(input_dim=2, hidden_widths=(8, 8, 8), output_dim=8, activation=gelu, gamma=gamma)
        fl = pdlt.flow(net, X2, order="dntk")
        for name in ("P", "Q", "R", "S", "T", "U"):
            assert np.all(np.isfinite(getattr(fl[-1], name))), (gamma, name)
        for ell, g in enumerate(gamma):  # the odd dNTK mean Ξ on residual layers only
            assert (fl[ell].Xi is not None) == (g != 0.0)
    tanh = pdlt.flow(ResidualMLP(input_dim=2, hidden_widths=(8, 8), output_dim=8, activation=pdlt.activation("tanh"), gamma=0.5), X2, order="dntk")
    assert all(s.Xi is None for s in tanh)  # odd σ: Ξ = 0, not stored


def test_self_term_corrections_vanish_with_the_shortcut():
    """_self_term_corrections: zero at γ = 0 and continuous there.  Their small-γ order: γ² for odd σ
    (the closure keeps the zeroth and first Hermite parts, which is all there is at O(γ)); γ for a
    non-odd σ (the zeroth-order Q/F-type parts γ⟨τ⟩⟨g⟩, e.g. E[dĤ_jjk] = γΘ⟨τ⟩/n, that the closure lacks)."""
    import pdlt
    from pdlt.contractions import LayerExpectations
    from pdlt_plugins.residual import _self_term_corrections

    for name in ("tanh", "gelu"):
        act = pdlt.activation(name)
        net = ResidualMLP(input_dim=2, hidden_widths=(8, 8), output_dim=2, activation=act, gamma=(0.0, 0.5, 0.0))
        s2 = pdlt.flow(net, X2, order="full")[1]
        E = LayerExpectations(act, s2.K)
        zero = _self_term_corrections(act, E, s2, 1.1, 0.7, 0.0, 1.2, 0.9)
        for k, v in zero.items():
            np.testing.assert_allclose(v, 0.0, atol=1e-12, err_msg=k)
        small = _self_term_corrections(act, E, s2, 1.1, 0.7, 1e-3, 1.2, 0.9)
        big = _self_term_corrections(act, E, s2, 1.1, 0.7, 0.5, 1.2, 0.9)
        power = 2 if name == "tanh" else 1
        for k in small:
            assert np.abs(small[k]).max() <= 10 * (1e-3 / 0.5) ** power * np.abs(big[k]).max() + 1e-12, (name, k)
        if name == "gelu":  # the linear term is there
            assert np.abs(small["Q"]).max() > 0.1 * (1e-3 / 0.5) * np.abs(big["Q"]).max()


def test_solve_gradient_descent_residual_tanh_to_order_one_over_n():
    import pdlt

    net = ResidualMLP(input_dim=2, hidden_widths=[16] * 3, output_dim=1, activation=Tanh(), gamma=0.5).at_criticality()
    X = np.array([[0.5, -1.0], [1.2, 0.3], [-0.4, 0.8], [0.9, 0.9]])
    d = pdlt.solve(net, pdlt.GradientDescent(learning_rate=0.1), X[:2], np.array([[0.3], [-0.2]]), X[2:])
    assert d.mean_correction is not None and np.all(np.isfinite(d.mean_correction))


def test_joint_quads_match_the_expectation_engine_on_the_joint_covariance():
    """_joint_quads (mixed blocks only, symmetric fill) equals LayerExpectations on the 2N×2N joint covariance."""
    import pdlt
    from pdlt.contractions import LayerExpectations
    from pdlt_plugins.residual import _JOINT_ORDERS, _joint_quads

    act = pdlt.activation("gelu")
    Kx = np.array([[1.3, 0.4, -0.2], [0.4, 0.9, 0.3], [-0.2, 0.3, 1.1]])
    Kr = 0.36 * Kx + np.array([[0.8, 0.3, 0.1], [0.3, 0.7, 0.2], [0.1, 0.2, 0.9]])
    E = LayerExpectations(act, Kr)
    J = _joint_quads(act, Kx, Kr, 0.6, _JOINT_ORDERS, E)
    ref = LayerExpectations(act, np.block([[Kx, 0.6 * Kx], [0.6 * Kx, Kr]]))
    for o in _JOINT_ORDERS:
        np.testing.assert_allclose(J[o], ref.quad(o)[:3, :3, 3:, 3:], rtol=1e-7, atol=1e-9, err_msg=str(o))
    assert 0.0 < E.max_error < 1e-3  # the probes' error estimates were recorded (coarse vs fine, conservative)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_self_term_f_type_reproduces_the_exact_tower(name):
    """Independent exact check of the self-term machinery: F of a plain layer above a shortcut from the
    Hermite tower (exact at O(1/n)) equals the MLP formula applied to the residual layer's F plus the
    F-type self-term correction (which _self_term_corrections folds into Q as (λ_W/C_W)ΔF')."""
    import pdlt
    from pdlt.contractions import LayerExpectations
    from pdlt_plugins.dntk_recursions import _Expectations, _f_next
    from pdlt_plugins.residual import _self_term_corrections

    act = pdlt.activation(name)
    net = ResidualMLP(input_dim=2, hidden_widths=(32, 32), output_dim=2, activation=act, c_w=1.2, c_b=0.1,
                      lambda_b=0.8, lambda_w=1.1, xi=0.9, gamma=(0.0, 0.6, 0.0), tower="exact")
    fl = pdlt.flow(net, X2, order="full")
    s2, h2, h3 = fl[1], net.effective_hyperparameters(2), net.effective_hyperparameters(3)
    E = LayerExpectations(act, s2.K)
    F_mlp = _f_next(_Expectations(E), s2, np.asarray(s2.F), h3["c_w"])
    with_lw = _self_term_corrections(act, E, s2, h3["c_w"], 1.0, 0.6, h2["c_w"], h2["lambda_w"])
    without = _self_term_corrections(act, E, s2, h3["c_w"], 0.0, 0.6, h2["c_w"], h2["lambda_w"])
    dF = (with_lw["Q"] - without["Q"]) * h3["c_w"]  # ΔQ = (λ_W/C_W) ΔF' with λ_W = 1
    F_tower = np.asarray(fl[2].F)
    assert np.abs(F_tower - F_mlp).max() > 0.01 * np.abs(F_tower).max()  # the self terms matter (tanh 1.4 %, GELU 11 %)
    np.testing.assert_allclose(F_mlp + dF, F_tower, atol=1e-5 * np.abs(F_tower).max())
