"""Unit tests of the dNTK/ddNTK machinery: exact network differentials and the P…U recursions.

* :func:`pdlt.dntk_ensemble.output_differentials` (jets and forward-over-reverse) against an
  independent single-network reference: exact first derivatives by complex step, higher ones by
  central differences of those (the only place finite differences are used);
* the per-network estimators against brute-force loops over output-neuron pairs;
* the recursions: exact symmetries, the L = 2 first terms against direct 2-D Gauss–Hermite
  quadrature, the single-input reductions of theory/dntk.md §2, and the kink (ReLU) decision.
"""

from __future__ import annotations

import itertools
import math

import attrs
import numpy as np
import pytest
from scipy import special

from pdlt.activation import Activation
from pdlt.contractions import LayerExpectations
from pdlt.dntk_ensemble import (
    DNTK_FIELDS,
    output_differentials,
    per_network_estimates,
    sample_dntk,
)
from pdlt.errors import NumericalError, ParameterError
from pdlt.networks import mlp_apply, sample_parameters
from pdlt_plugins.activations import GELU, ReLU, Tanh
from pdlt_plugins.architectures import MLP
from pdlt_plugins.dntk_recursions import (
    _reduce_variable,
    defined_components,
    dntk_flow,
    dntk_step,
    first_layer_dntk,
)

X2 = np.array([[-1.60383681, 0.06409991], [0.7408913, 0.15261919]])  # dntk.md §4.1 inputs
HYPER = dict(c_w=1.2, c_b=0.1, lambda_b=0.8, lambda_w=1.1)


@attrs.frozen(kw_only=True)
class SmoothReLU(Activation):
    """ReLU convolved with a Gaussian of width ε: σ_ε = zΦ(z/ε) + εφ(z/ε) → ReLU as ε → 0."""

    name = "test_smooth_relu"
    eps: float = 0.1

    @property
    def feature_width(self) -> float:  # the quadrature resolves the kink region
        return self.eps

    def __call__(self, z):
        z = np.asarray(z, dtype=float)
        u = z / self.eps
        return z * special.ndtr(u) + self.eps * np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)

    def _derivative(self, z, order):
        u = np.asarray(z, dtype=float) / self.eps
        phi = np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
        return {1: special.ndtr(u), 2: phi / self.eps, 3: -u * phi / self.eps**2, 4: (u * u - 1) * phi / self.eps**3}[order]


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda L: f"L{L}")
def tiny(request, fd_reference):
    L = request.param
    widths = {2: (4,), 3: (3, 4), 4: (3, 2, 4)}[L]
    net = MLP(
        input_dim=2,
        hidden_widths=widths,
        output_dim=2,
        activation=Tanh(),
        c_w=[1.3, 0.9, 1.5, 1.1][:L],
        c_b=0.2,
        lambda_b=[0.7, 1.3, 0.4, 0.9][:L],
        lambda_w=[1.4, 0.6, 1.2, 0.8][:L],
    )
    X = np.array([[0.5, -1.0], [1.2, 0.3], [-0.4, 0.8]])
    params = sample_parameters(net, 2, np.random.default_rng(L))
    K = 2 * 3
    triples = np.array(list(itertools.product(range(K), repeat=3)))
    od = output_differentials(net, params, X, triples=triples, check_reverse=True)
    ref, J, V = fd_reference.jets(net, params, 1, X)  # V: rows are the tangent vectors v_J
    return net, params, X, od, ref, J, V


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_ntk_matches_forward_equation_and_complex_step(tiny):
    net, params, X, od, ref, J, V = tiny
    H_ref = J @ V.T
    assert _rel(od.H[1], H_ref) < 1e-13
    H_fe = mlp_apply(net, params, X)[-1].H  # (size, nL, nL, N, N)
    H_fe = H_fe.transpose(0, 1, 3, 2, 4).reshape(2, 6, 6)
    assert np.allclose(od.H, H_fe, rtol=1e-12, atol=1e-12)


def test_dntk_matches_finite_differences(tiny, fd_reference):
    net, params, X, od, ref, J, V = tiny
    assert _rel(od.dH[1], fd_reference.dntk(ref, V, 1e-4)) < 1e-6
    # forward-over-reverse gives the same tensor to round-off
    assert np.allclose(od.dH_reverse, od.dH, rtol=0, atol=1e-12 * np.abs(od.dH).max())
    assert np.allclose(od.dH, np.swapaxes(od.dH, 2, 3), atol=1e-13 * np.abs(od.dH).max())


def test_ddntk1_matches_finite_differences(tiny, fd_reference):
    net, params, X, od, ref, J, V = tiny
    assert _rel(od.ddH1[1], fd_reference.ddntk1(ref, V, od.triples, 1e-4)) < 1e-6
    # symmetric in the three directions
    K = V.shape[0]
    full = od.ddH1.reshape(2, K, K, K, K)
    for perm in itertools.permutations((1, 2, 3)):
        assert np.allclose(full, full.transpose((0, 1) + tuple(p + 1 for p in perm)), atol=1e-12 * np.abs(full).max())


def test_ddntk2_matches_finite_differences(tiny, fd_reference):
    net, params, X, od, ref, J, V = tiny
    assert _rel(od.ddH2[1], fd_reference.ddntk2(ref, V, 1e-4)) < 1e-6
    assert np.allclose(od.ddH2, od.ddH2.transpose(0, 2, 1, 4, 3), atol=1e-12 * np.abs(od.ddH2).max())


def test_per_network_estimators_against_loops():
    net = MLP(input_dim=2, hidden_widths=(5, 4), output_dim=3, activation=Tanh(), **HYPER)
    params = sample_parameters(net, 3, np.random.default_rng(5))
    od = output_differentials(net, params, X2)
    est = per_network_estimates(od, fan_in=4)
    N, nL = 2, 3
    ref = {k: np.zeros((3,) + (N,) * 4) for k in DNTK_FIELDS}
    I = lambda i, d: i * N + d  # noqa: E731
    pairs = list(itertools.permutations(range(nL), 2))
    trip = {tuple(t): k for k, t in enumerate(od.triples)}
    for s, (a, b), al in itertools.product(range(3), pairs, itertools.product(range(N), repeat=4)):
        w, x, y, v = al
        ref["P"][(s,) + al] += od.dH[s, I(a, w), I(b, x), I(b, y)] * od.z[s, a, v]
        ref["Q"][(s,) + al] += od.dH[s, I(a, w), I(a, x), I(b, y)] * od.z[s, b, v]
        ref["R"][(s,) + al] += od.ddH1[s, I(a, w), trip[(I(a, x), I(b, y), I(b, v))]]
        ref["S"][(s,) + al] += od.ddH2[s, I(a, w), I(a, x), I(b, y), I(b, v)]
        ref["T"][s, w, y, v, x] += od.ddH2[s, I(a, w), I(b, x), I(a, y), I(b, v)]  # T[α1, α3, α4, α2]
        ref["U"][s, w, v, x, y] += od.ddH2[s, I(a, w), I(b, x), I(b, y), I(a, v)]  # U[α1, α4, α2, α3]
    for k in DNTK_FIELDS:
        assert np.allclose(est[k], 4 * ref[k] / len(pairs), rtol=1e-12, atol=1e-14), k


def test_sample_dntk_reproducible_and_shaped():
    net = MLP(input_dim=2, hidden_widths=(6, 6), output_dim=2, activation=Tanh(), **HYPER)
    a = sample_dntk(net, X2, 120, seed=3)
    b = sample_dntk(net, X2, 120, seed=3)
    for k in DNTK_FIELDS:
        assert a[k].shape == (2,) * 4
        assert np.array_equal(a[k].mean, b[k].mean)
        assert np.all(a[k].stderr > 0)
    assert a.fan_in == 6 and a.n_batches == 50
    with pytest.raises(ParameterError):
        a["V"]


def test_sample_dntk_refuses_kinked_activation():
    net = MLP(input_dim=2, hidden_widths=(6, 6), output_dim=2, activation=ReLU(), c_w=2.0)
    with pytest.raises(NumericalError, match="almost-everywhere"):
        sample_dntk(net, X2, 10)


# ---------------------------------------------------------------------------------------------
# recursions


@pytest.fixture(scope="module")
def tanh_flow():
    net = MLP(input_dim=2, hidden_widths=(24, 12), output_dim=2, activation=Tanh(), **HYPER)
    return net, dntk_flow(net, X2)


def test_first_layer_is_zero():
    z = first_layer_dntk(3)
    assert set(z) == set(DNTK_FIELDS) and all(np.all(v == 0) for v in z.values())


@pytest.mark.parametrize("activation", [Tanh(), GELU()], ids=["tanh", "gelu"])
def test_recursion_symmetries(activation):
    net = MLP(input_dim=2, hidden_widths=(16, 32, 16), output_dim=2, activation=activation, **HYPER)
    X = np.array([[-1.6, 0.06], [0.74, 0.15]])
    for st in dntk_flow(net, X)[1:]:
        tol = 1e-13 * max(np.abs(getattr(st, k)).max() for k in DNTK_FIELDS)
        assert np.allclose(st.P, st.P.transpose(0, 2, 1, 3), atol=tol)  # P_0123 = P_0213
        assert np.allclose(st.R, st.R.transpose(0, 1, 3, 2), atol=tol)  # R_0123 = R_0132
        assert np.allclose(st.S, st.S.transpose(1, 0, 3, 2), atol=tol)  # S_1234 = S_2143
        assert np.allclose(st.T, st.T.transpose(3, 2, 1, 0), atol=tol)  # T_1342 = T_2431
        assert np.allclose(st.U, st.U.transpose(2, 3, 0, 1), atol=tol)  # U_1423 = U_2314


def test_step_reproduces_published_depth3_predictions():
    """theory/dntk.md §4.2 and §4.4 'predicted' columns (L = 3; r = 1 and r = ½)."""
    net = MLP(input_dim=2, hidden_widths=(32, 32), output_dim=2, activation=Tanh(), **HYPER)
    o = dntk_flow(net, X2)[-1]
    assert o.T[1, 0, 0, 1] == pytest.approx(1.2949, abs=2e-4)  # T_1342, (α1, α2, α3, α4) = (1, 1, 0, 0)
    assert o.S[0, 1, 0, 1] == pytest.approx(2.5844, abs=2e-4)
    assert o.U[0, 1, 0, 0] == pytest.approx(0.8385, abs=2e-4)  # U_1423 at α = (0, 0, 0, 1)
    assert o.P[1, 1, 1, 0] == pytest.approx(0.3520, abs=2e-4)
    assert o.Q[1, 0, 1, 0] == pytest.approx(0.8180, abs=2e-4)
    assert o.R[1, 1, 0, 1] == pytest.approx(-2.0182, abs=2e-4)
    wide = dntk_flow(net.evolve(hidden_widths=(64, 32)), X2)[-1]
    assert wide.T[1, 0, 0, 1] == pytest.approx(0.9986, abs=2e-4)  # dntk.md §4.4, r = ½
    assert wide.Q[1, 0, 1, 0] == pytest.approx(0.6764, abs=2e-4)


def _gauss_hermite_2d(K, m=300):
    """Nodes z (2, m²) and weights of N(0, K) by a tensor Gauss–Hermite rule."""
    x, w = np.polynomial.hermite.hermgauss(m)
    u = np.sqrt(2) * np.stack(np.meshgrid(x, x, indexing="ij")).reshape(2, -1)
    W = np.outer(w, w).ravel() / np.pi
    return np.linalg.cholesky(K) @ u, W


def test_layer2_first_terms_against_direct_quadrature():
    """L = 2: layer-1 tensors vanish, so the step must give training.md §3.3/§4.3 first terms."""
    act = Tanh()
    C1, Cb, lb, lw = 1.3, 0.2, 0.7, 1.4
    C, lw2 = 0.9, 0.6
    X = np.array([[0.5, -1.0], [1.2, 0.3]])
    G0 = X @ X.T / 2
    K, Th = Cb + C1 * G0, lb + lw * G0
    from pdlt.flow import Statistics

    s = Statistics(layer=1, width=7, fan_in=2, K=K, Theta=Th, B=np.zeros((2,) * 4), F=np.zeros((2,) * 4))
    out = dntk_step(LayerExpectations(act, K), s, C, lw2)
    z, Wt = _gauss_hermite_2d(K)
    d = [act.derivative(z, k) for k in range(4)]  # d[k][a] = σ^(k)(z_a) at the nodes

    def E(o, idx):
        return float(np.sum(Wt * d[o[0]][idx[0]] * d[o[1]][idx[1]] * d[o[2]][idx[2]] * d[o[3]][idx[3]]))

    for idx in itertools.product(range(2), repeat=4):
        a, b, c, e = idx
        P = C**2 * Th[a, b] * Th[a, c] * E((2, 1, 1, 0), idx)
        F = C**2 * Th[a, c] * E((1, 0, 1, 0), idx)
        R = lw2 * C * E((2, 0, 1, 1), idx) * Th[a, c] * Th[a, e] + C**2 * E((3, 1, 1, 1), idx) * Th[a, b] * Th[a, c] * Th[a, e]
        # S_1234, T_1342, U_1423 with (α1, α2, α3, α4) = idx
        S = lw2 * C * E((1, 1, 1, 1), idx) * Th[a, c] * Th[b, e] + C**2 * E((2, 2, 1, 1), idx) * Th[a, b] * Th[a, c] * Th[b, e]
        T = (
            lw2**2 * E((1, 1, 0, 0), idx) * Th[a, b]
            + lw2 * C * (E((1, 2, 0, 1), idx) * Th[a, b] * Th[b, e] + E((2, 1, 1, 0), idx) * Th[a, b] * Th[a, c])
            + C**2 * E((2, 2, 1, 1), idx) * Th[a, b] * Th[a, c] * Th[b, e]
        )
        U = C**2 * E((2, 2, 1, 1), idx) * Th[a, b] * Th[a, c] * Th[b, e]
        assert out["P"][idx] == pytest.approx(P, rel=1e-9, abs=1e-12)
        assert out["Q"][idx] == pytest.approx(P + (lw2 / C) * F, rel=1e-9, abs=1e-12)
        assert out["R"][idx] == pytest.approx(R, rel=1e-9, abs=1e-12)
        assert out["S"][idx] == pytest.approx(S, rel=1e-9, abs=1e-12)
        assert out["T"][a, c, e, b] == pytest.approx(T, rel=1e-9, abs=1e-12)
        assert out["U"][a, e, b, c] == pytest.approx(U, rel=1e-9, abs=1e-12)


def test_single_input_reductions(tanh_flow):
    """dntk.md §2 single-input forms (and the analogous Q) from the same layer-ℓ tensors."""
    net, _ = tanh_flow
    x = X2[:1]
    f = dntk_flow(net, x)
    s = f[1]  # layer 2, non-zero lower tensors
    h = net.hyperparameters(3)
    C, lw = h["c_w"], h["lambda_w"]
    out = dntk_step(LayerExpectations(net.activation, s.K), s, C, lw, F_next=f[2].F)
    K, Th, r = float(s.K[0, 0]), float(s.Theta[0, 0]), s.width / s.fan_in
    g, w = np.polynomial.hermite_e.hermegauss(300)
    z, w = math.sqrt(K) * g, w / math.sqrt(2 * math.pi)
    sg = [net.activation.derivative(z, k) for k in range(4)]
    E = lambda *fs: float(np.sum(w * np.prod(fs, axis=0)))  # noqa: E731
    s0, s1, s2, s3 = sg
    chi_p, chi_par = C * E(s1, s1), C * (E(s1, s1) + E(s0, s2))
    t1 = lw * E(s2, s0) + C * Th * E(s3, s1)
    t2 = lw * E(s1, s1) + C * Th * E(s2, s2)
    t = t1 + t2
    B, F, P, Q, R, S, T, U = (float(getattr(s, k)[0, 0, 0, 0]) for k in "BFPQRSTU")
    tau = lw * s1 * s0 + C * Th * s2 * s1
    expect = {
        "T": Th * E(tau, tau) + r * (F * t**2 + 2 * chi_p * Q * t + chi_p**2 * T),
        "S": C * Th**2 * E(s1, s1, lw * s1 * s1 + C * Th * s2 * s2) + r * (chi_p * t2 * B + chi_p**2 * S),
        "U": C**2 * Th**3 * E(s2, s2, s1, s1) + r * chi_p**2 * U,
        "R": C * Th**2 * E(s1, s1, lw * s2 * s0 + C * Th * s3 * s1) + r * (chi_p * (t1 * B + t * P) + chi_p**2 * R),
        "P": C**2 * Th**2 * E(s2, s1, s1, s0) + r * (chi_p * C * E(s2, s0) * B + chi_p * chi_par * P),
        "Q": (lw / C) * float(f[2].F[0, 0, 0, 0])
        + C**2 * Th**2 * E(s2, s1, s1, s0)
        + r * (chi_p * chi_par * Q + C * Th * (E(s3, s1) + E(s2, s2)) * chi_par * F),
    }
    for k, v in expect.items():
        assert float(out[k][0, 0, 0, 0]) == pytest.approx(v, rel=1e-10), k


# ---------------------------------------------------------------------------------------------
# kinked activations


def test_kink_reduction_rules():
    assert _reduce_variable([1, 1], 1, (1.0, 0.0)) == ("ordinary",)
    assert _reduce_variable([2], 1, (1.0, 0.0)) == ("dist", 1.0, 2)
    assert _reduce_variable([2, 0], 1, (1.0, 0.0)) == ("zero",)  # zδ(z) = 0
    assert _reduce_variable([2, 1, 1], 1, (1.0, 0.0)) == ("dist", pytest.approx(1 / 3), 2)  # δΘ² → δ/3
    assert _reduce_variable([3, 0], 1, (1.0, 0.0)) == ("dist", pytest.approx(-0.5), 2)  # δ'·z⁺ → −δ/2
    assert _reduce_variable([2, 2], 1, (1.0, 0.0)) == ("undefined",)  # δ²
    assert _reduce_variable([3, 1], 1, (1.0, 0.0)) == ("undefined",)  # δ'Θ ~ 1/ε
    assert _reduce_variable([2, 2, 0, 0], 1, (1.0, 0.0)) == ("zero",)
    # leaky slopes: σ''σ' → (a₊² − a₋²)/2 δ = (a₊² − a₋²)/(2(a₊ − a₋)) σ''
    assert _reduce_variable([2, 1], 1, (1.0, 0.2)) == ("dist", pytest.approx(0.6), 2)


@pytest.mark.parametrize("orders,coef", [((2, 1), 0.5), ((2, 1, 1), 1 / 3), ((3, 0), -0.5), ((2, 0), 0.0)])
def test_kink_limits_match_smoothed_integrals(orders, coef):
    """∫ Π σ_ε^(d)(z) g(z) dz → coef · g(0) (or coef · ∫δ' g) for a smooth test function g."""
    from scipy.integrate import quad

    g = lambda z: np.exp(-0.5 * (z - 0.3) ** 2) * (1 + 0.2 * z)  # noqa: E731
    vals = []
    for eps in (0.02, 0.01):
        act = SmoothReLU(eps=eps)
        f = lambda z: np.prod([act.derivative(z, d) for d in orders]) * g(z)  # noqa: E731
        vals.append(quad(f, -1, 1, points=[0.0], limit=400, epsabs=1e-13)[0])
    assert vals[1] == pytest.approx(coef * g(0.0), abs=0.02)
    assert abs(vals[1] - coef * g(0.0)) <= 0.6 * abs(vals[0] - coef * g(0.0)) + 1e-9  # converging


@pytest.fixture(scope="module")
def relu_nan_flow():
    net = MLP(input_dim=2, hidden_widths=(20, 20), output_dim=2, activation=ReLU(), c_w=2.0, c_b=0.1, lambda_b=0.8, lambda_w=1.1)
    X = np.array([[0.9, -0.4], [-0.2, 1.1]])
    return net, X, dntk_flow(net, X, undefined="nan")


def test_relu_undefined_components(relu_nan_flow):
    net, X, f = relu_nan_flow
    for st in f[1:]:
        for k in DNTK_FIELDS:
            mask = defined_components(net.activation, st.K, k)
            assert np.array_equal(np.isfinite(getattr(st, k)), mask), k
    out = f[-1]
    assert np.isfinite(out.P).all() and np.isfinite(out.Q).all()
    assert np.isnan(out.R[0, 0, 1, 1]) and np.isfinite(out.R[0, 1, 1, 1])
    assert np.isnan(out.S[0, 0, 1, 1]) and np.isfinite(out.S[0, 1, 1, 0])
    # P vanishes at fully coinciding samples (σ''σ = 0 for ReLU), as training.md §8 states
    assert out.P[0, 0, 0, 0] == pytest.approx(0.0, abs=1e-12) and out.P[1, 1, 1, 1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(NumericalError, match="undefined"):
        dntk_flow(net, X)


def test_relu_is_the_smooth_kink_limit(relu_nan_flow):
    """theory(σ_ε) → theory(ReLU) at O(ε) on the defined components; the rest diverges ∝ 1/ε."""
    from pdlt.gaussian import _OFFSETS, QuadratureRule

    net, X, f = relu_nan_flow
    relu = f[-1]
    rule = QuadratureRule(nodes={1: 24, 2: 24, 3: 12, 4: 10}, offsets={k: _OFFSETS for k in (1, 2, 3, 4)})
    err, undef = {}, {}
    for eps in (0.05, 0.025):
        sm = dntk_flow(net.evolve(activation=SmoothReLU(eps=eps)), X, rule=rule)[-1]
        for k in DNTK_FIELDS:
            m = defined_components(net.activation, relu.K, k)
            a, b = getattr(sm, k), getattr(relu, k)
            err[k, eps] = np.abs(a - b)[m].max() / np.abs(b[m]).max()
            undef[k, eps] = np.abs(a[~m]).max() if (~m).any() else 0.0
    for k in DNTK_FIELDS:
        assert err[k, 0.025] < 0.08, k
        assert 0.35 < err[k, 0.025] / err[k, 0.05] < 0.65, k  # first order in ε
        if k in "RSTU":
            assert 1.6 < undef[k, 0.025] / undef[k, 0.05] < 2.4, k  # ∝ 1/ε


@pytest.mark.parametrize("orders", [(2, 1, 1, 0), (3, 1, 1, 1), (2, 2, 1, 1), (3, 0, 1, 1)])
def test_relu_kink_conditioning_matches_integration_by_parts(orders):
    """The δ/δ' conditioning of the dNTK step (one dimension less per δ) equals the engine's
    integration by parts on well-conditioned blocks of distinct inputs, to its stated accuracy."""
    from pdlt.contractions import LayerExpectations
    from pdlt.gaussian import expect
    from pdlt_plugins.dntk_recursions import _Expectations

    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 4, 4))
    blocks = A @ np.swapaxes(A, 1, 2) / 4 + 0.3 * np.eye(4)
    Ex = _Expectations(LayerExpectations(ReLU(), blocks[0]))
    cond = Ex._conditioned(orders, blocks, [0, 1, 2, 3])
    ref, err = expect(ReLU(), orders, blocks)
    assert cond is not None
    np.testing.assert_allclose(cond, ref, rtol=0, atol=1e-6 * np.abs(ref).max() + 10 * err.max())


def test_prefetched_higher_order_quads_match_single_pattern_integration():
    """LayerExpectations.prefetch_quads (all slot arrangements of {2,1,1,0}, {3,1,1,1}, {2,2,1,1}
    on shared grids per input multiset) equals the one-pattern-per-tensor integration, and every
    arrangement is the matching transpose of the others."""
    act = Tanh()
    X = np.random.default_rng(1).normal(size=(4, 5))
    K = 0.1 + X @ X.T / 5
    E = LayerExpectations(act, K)
    E.prefetch_quads([(2, 1, 1, 0), (3, 1, 1, 1), (2, 2, 1, 1)])
    ref = LayerExpectations(act, K)
    for orders in [(2, 1, 1, 0), (3, 1, 1, 1), (2, 2, 1, 1)]:
        got, want = E.quad(orders), ref._compute(orders)
        assert np.abs(got - want).max() <= 1e-7 * np.abs(want).max(), orders  # measured ≤ 1.2e-9
    np.testing.assert_allclose(E.quad((1, 2, 0, 1)), np.transpose(E.quad((2, 1, 1, 0)), (1, 0, 3, 2)), rtol=0, atol=1e-15)
    assert E.max_error <= 1.5 * ref.max_error  # the engine's (conservative) coarse-pass estimate


@pytest.mark.parametrize("orders", [(3, 1, 1, 0), (3, 1, 1, 1), (3, 0, 1, 1), (2, 1, 1, 0)])
def test_relu_kink_conditioning_with_coinciding_slots(orders):
    """Slots 1 and 2 on the same input: the δ' derivative falls on their product, whose kink
    limit (σ''σ' → δ, σ''σ → 0) is taken as in _reduce_variable; equals integration by parts."""
    from pdlt.gaussian import expect
    from pdlt_plugins.dntk_recursions import _Expectations

    rng = np.random.default_rng(4)
    A = rng.normal(size=(5, 3, 3))
    K3 = A @ np.swapaxes(A, 1, 2) / 3 + 0.3 * np.eye(3)
    idx = [0, 1, 1, 2]
    blocks = K3[:, idx][:, :, idx]
    Ex = _Expectations(LayerExpectations(ReLU(), K3[0]))
    cond = Ex._conditioned(orders, blocks, [0, 1, 3])
    assert cond is not None
    # reference: the engine integrates δ' on input 0 by parts (a Hermite insertion there)
    ref, err = expect(ReLU(), orders, blocks)
    np.testing.assert_allclose(cond, ref, rtol=0, atol=1e-6 * np.abs(ref).max() + 10 * err.max())
