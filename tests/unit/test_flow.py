"""Exact checks of :func:`pdlt.flow` against closed forms and independent computations.

* Deep linear networks (init.md §2): V^(ℓ) = 2(ℓ−1)K² for one input, and the multi-input
  all-orders law :func:`pdlt.exact.deep_linear_four_point` in its n → ∞ limit; G1 = H1 = 0.
* Scale-invariant σ at criticality (init.md §5 "Scale-invariant, critical"): Θ = ℓθ and the
  polynomial-in-ℓ forms of F, B, D, A, V for ReLU and leaky ReLU, to 1e-9.
* Single-input reductions of init.md §3, §5 and ntk-nlo.md §1 for tanh, with the right-hand
  sides computed here by 1-D quadrature in Hermite form (d⟨F⟩/dK = ⟨F He_2(u)⟩/2K,
  d²⟨F⟩/dK² = ⟨F He_4(u)⟩/4K², u = z/√K), cross-checked against mpmath.
* Symmetry facts (ntk-nlo.md §1, init.md §6 pitfall 8): H1 = G1 = 0 for one ReLU input; with
  two ReLU inputs the diagonal of G1 and H1 vanishes but the off-diagonal does not.
* Serialisation and input validation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import pdlt
from pdlt import exact
from pdlt.errors import ParameterError

FIELDS = ("K", "Theta", "V", "G1", "H1", "A", "B", "D", "F")


def _mlp(act, widths, **hyper):
    """MLP from the full width tuple (n_0, …, n_L)."""
    return pdlt.MLP(input_dim=widths[0], hidden_widths=list(widths[1:-1]), output_dim=widths[-1], activation=act, **hyper)


# ---------------------------------------------------------------------------------------------
# deep linear networks


@pytest.mark.parametrize("c_w", [1.0, 1.3, (0.7, 1.0, 1.4, 0.9, 1.2)])
def test_deep_linear_single_input_vertex(c_w):
    """Equal widths, C_b = 0: V^(ℓ) = 2(ℓ−1)(K^(ℓ))² (book (3.28)), G1 = H1 = 0."""
    net = _mlp(pdlt.activation("linear"), (3, 7, 7, 7, 7, 7), c_w=c_w, lambda_b=0.4, lambda_w=1.1)
    f = pdlt.flow(net, np.array([[0.3, -1.2, 0.8]]))
    for ell in range(1, 6):
        s = f.layer(ell)
        assert s.V[0, 0, 0, 0] == pytest.approx(2 * (ell - 1) * s.K[0, 0] ** 2, rel=1e-12, abs=1e-15)
        # σ'' = 0: no 1/n mean corrections (up to the engine's quadrature round-off)
        assert abs(s.G1[0, 0]) < 1e-10 * s.K[0, 0] and abs(s.H1[0, 0]) < 1e-10 * s.Theta[0, 0]


def _richardson_vertex(X, widths, c_b, c_w, m):
    """n → ∞ limit of n_{ℓ−1}(G4 − G⊗G) from the exact law at widths m·n and 2m·n (error O(1/m²))."""

    def vertex(scale):
        w = (widths[0],) + tuple(scale * v for v in widths[1:])
        G2, G4 = exact.deep_linear_four_point(X, w, c_b=c_b, c_w=c_w)
        return [w[ell - 1] * (G4[ell - 1] - np.einsum("ab,cd->abcd", G2[ell - 1], G2[ell - 1])) for ell in range(1, len(w))], G2

    V1, G2 = vertex(m)
    V2, _ = vertex(2 * m)
    return [2 * b - a for a, b in zip(V1, V2)], G2


def test_deep_linear_multi_input_matches_exact_law():
    """Three inputs, biases, unequal widths: the leading-order V is the n → ∞ limit of the exact
    all-orders law (init.md §2, last bullet), K is its (exact) two-point function, G1 = H1 = 0."""
    X = np.array([[0.9, -0.4, 0.3], [-0.2, 0.7, 1.1], [0.5, 0.5, -0.6]])
    widths = (3, 4, 8, 4, 6, 2)
    c_b, c_w = (0.3, 0.1, 0.0, 0.2, 0.5), (1.1, 0.9, 1.3, 1.0, 0.8)
    net = _mlp(pdlt.activation("linear"), widths, c_b=c_b, c_w=c_w, lambda_b=0.5, lambda_w=(1.0, 2.0, 0.5, 1.0, 1.5))
    f = pdlt.flow(net, X)
    V_inf, G2 = _richardson_vertex(X, widths, c_b, c_w, m=10**4)
    for ell in range(1, len(widths)):
        s = f.layer(ell)
        np.testing.assert_allclose(s.K, G2[ell - 1], rtol=1e-12)
        scale = np.max(np.abs(V_inf[ell - 1])) if ell > 1 else 1.0
        np.testing.assert_allclose(s.V, V_inf[ell - 1], rtol=0, atol=1e-8 * scale, err_msg=f"layer {ell}")
        np.testing.assert_allclose(s.G1, 0.0, atol=1e-10 * np.max(np.abs(s.K)))
        np.testing.assert_allclose(s.H1, 0.0, atol=1e-10 * np.max(np.abs(s.Theta)))


# ---------------------------------------------------------------------------------------------
# scale-invariant activations at criticality: closed forms (init.md §5)


def _closed_forms(ell, K, lambda_b, lambda_w, a_minus):
    A2, A4 = (1 + a_minus**2) / 2, (1 + a_minus**4) / 2
    c = A4 / A2**2
    nu = 3 * c - 1
    theta = lambda_b + lambda_w * A2 * K
    w = lambda_w * A2 * K
    return dict(
        K=K,
        Theta=ell * theta,
        V=nu * (ell - 1) * K**2,
        F=c * K * theta * ell * (ell - 1) / 2,
        B=c * theta**2 * (ell - 1) * ell * (2 * ell - 1) / 6,
        D=K * (w * nu + (c - 1) * theta) * ell * (ell - 1) / 2,
        A=(w**2 * nu + 2 * (c - 1) * w * theta) * ell * (ell - 1) / 2
        + (c - 1) * theta**2 * (ell - 1) * ell * (2 * ell - 1) / 6
        + w * (w * nu + (c - 1) * theta) * (ell - 2) * (ell - 1) * ell / 3,
        G1=0.0,
        H1=0.0,
    )


@pytest.mark.parametrize(
    "act, a_minus",
    [(pdlt.activation("relu"), 0.0), (pdlt.activation("leaky_relu", slope=0.3), 0.3), (pdlt.activation("leaky_relu", slope=0.01), 0.01)],
)
@pytest.mark.parametrize("lambdas", [(0.5, 1.5), (1.0, 0.0), (0.0, 2.0)])
def test_scale_invariant_critical_closed_forms(act, a_minus, lambdas):
    lambda_b, lambda_w = lambdas
    c_w = 2.0 / (1.0 + a_minus**2)
    x = np.array([[0.8, -1.1]])
    net = _mlp(act, (2, 9, 9, 9, 9, 9, 3), c_b=0.0, c_w=c_w, lambda_b=lambda_b, lambda_w=lambda_w)
    f = pdlt.flow(net, x)
    K = c_w * float(np.mean(x**2))
    for ell in range(1, 7):
        s = f.layer(ell)
        want = _closed_forms(ell, K, lambda_b, lambda_w, a_minus)
        for name, value in want.items():
            got = float(getattr(s, name).reshape(-1)[0])
            scale = max(abs(value), K ** (2 if name in "VABDF" else 1), 1e-300)
            assert abs(got - value) <= 1e-9 * scale, f"layer {ell} {name}: {got!r} vs closed form {value!r}"


# ---------------------------------------------------------------------------------------------
# single input, tanh: the one-dimensional recursions


def _gauss_nodes(panels=96, per_panel=32, cut=14.0):
    """Nodes u and weights for E[f(u)], u ~ N(0, 1): composite Gauss–Legendre on [−cut, cut].

    (Gauss–Hermite converges slowly for tanh, whose poles at z = ±iπ/2 come close to the real
    u-axis when K is large; small Legendre panels do not care.)
    """
    x, w = np.polynomial.legendre.leggauss(per_panel)
    edges = np.linspace(-cut, cut, panels + 1)
    half = np.diff(edges)[:, None] / 2
    u = (edges[:-1, None] + half * (x[None, :] + 1)).ravel()
    wt = (half * w[None, :]).ravel() * np.exp(-u * u / 2) / math.sqrt(2 * math.pi)
    return u, wt


_U, _W = _gauss_nodes()
_HE2, _HE4 = _U**2 - 1, _U**4 - 6 * _U**2 + 3


def _tanh_moments(K):
    """Gaussian moments at variance K and their K-derivatives (heat-equation Hermite forms)."""
    z = math.sqrt(K) * _U
    s, d = np.tanh(z), 1.0 / np.cosh(z) ** 2
    E = lambda f: float(_W @ f)  # noqa: E731
    m = dict(s2=E(s**2), s4=E(s**4), d2=E(d**2), d4=E(d**4), d2s2=E(d**2 * s**2))
    m["s2_1"] = E(s**2 * _HE2) / (2 * K)  # g'
    m["s2_2"] = E(s**2 * _HE4) / (4 * K**2)  # g''
    m["d2_1"] = E(d**2 * _HE2) / (2 * K)  # d⟨σ'²⟩/dK
    m["d2_2"] = E(d**2 * _HE4) / (4 * K**2)  # d²⟨σ'²⟩/dK²
    return m


def _single_input_reference(x, widths, c_b, c_w, lambda_b, lambda_w):
    """init.md §3, §5 and ntk-nlo.md §1 single-input recursions, iterated independently."""
    L = len(widths) - 1
    K = c_b[0] + c_w[0] * float(np.mean(np.square(x)))
    T = lambda_b[0] + lambda_w[0] * float(np.mean(np.square(x)))
    V = G1 = H1 = A = B = D = F = 0.0
    out = [dict(K=K, Theta=T, V=V, G1=G1, H1=H1, A=A, B=B, D=D, F=F)]
    for ell in range(1, L):
        C, cb, lb, lw = c_w[ell], c_b[ell], lambda_b[ell], lambda_w[ell]
        r = widths[ell] / widths[ell - 1]
        m = _tanh_moments(K)
        chi_par, chi_perp = C * m["s2_1"], C * m["d2"]
        omega = lw * m["s2_1"] + C * T * m["d2_1"]
        q2 = lw * m["s2_2"] + C * T * m["d2_2"]
        var_q = lw**2 * (m["s4"] - m["s2"] ** 2) + 2 * lw * C * T * (m["d2s2"] - m["d2"] * m["s2"]) + C**2 * T**2 * (m["d4"] - m["d2"] ** 2)
        new = dict(
            K=cb + C * m["s2"],
            Theta=lb + lw * m["s2"] + chi_perp * T,
            V=C**2 * (m["s4"] - m["s2"] ** 2) + r * chi_par**2 * V,
            G1=r * (chi_par * G1 + 0.5 * C * m["s2_2"] * V),
            H1=r * (chi_perp * H1 + omega * G1 + 0.5 * q2 * V + C * m["d2_1"] * (D + 2 * F)),
            F=C**2 * T * m["d2s2"] + r * chi_par**2 * F,
            B=C**2 * T**2 * m["d4"] + r * chi_perp**2 * B,
            D=C * lw * (m["s4"] - m["s2"] ** 2) + C**2 * T * (m["d2s2"] - m["d2"] * m["s2"]) + r * (chi_par * chi_perp * D + omega * chi_par * V),
            A=var_q + r * (chi_perp**2 * A + 2 * omega * chi_perp * D + omega**2 * V),
        )
        K, T, V, G1, H1, A, B, D, F = (new[k] for k in FIELDS)
        out.append(new)
    return out


@pytest.mark.parametrize("k", ["0.2", "1.7"])
def test_reference_quadrature_matches_mpmath(k):
    """The test's own quadrature, against mpmath (g, g', g'' of tanh)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    K = mpmath.mpf(k)

    def g(k):
        return mpmath.quad(lambda z: mpmath.tanh(z) ** 2 * mpmath.exp(-z * z / (2 * k)) / mpmath.sqrt(2 * mpmath.pi * k), [-mpmath.inf, 0, mpmath.inf])

    def d4(k):  # ⟨σ'⁴⟩
        return mpmath.quad(lambda z: mpmath.sech(z) ** 8 * mpmath.exp(-z * z / (2 * k)) / mpmath.sqrt(2 * mpmath.pi * k), [-mpmath.inf, 0, mpmath.inf])

    m = _tanh_moments(float(K))
    assert m["s2"] == pytest.approx(float(g(K)), rel=1e-13)
    assert m["d4"] == pytest.approx(float(d4(K)), rel=1e-13)
    assert m["s2_1"] == pytest.approx(float(mpmath.diff(g, K, 1)), rel=1e-12)
    assert m["s2_2"] == pytest.approx(float(mpmath.diff(g, K, 2)), rel=1e-11)


@pytest.mark.parametrize(
    "widths, hyper",
    [
        ((2, 10, 20, 10, 15, 3), dict(c_b=(0.0, 0.1, 0.0, 0.2, 0.05), c_w=(1.0, 1.1, 0.9, 1.0, 1.3),
                                      lambda_b=(1.0, 0.5, 2.0, 1.0, 0.3), lambda_w=(1.0, 2.0, 0.5, 1.0, 1.2))),
        ((3, 8, 8, 8, 8, 8, 8), dict(c_b=0.0, c_w=1.0, lambda_b=0.2, lambda_w=1.0)),
    ],
)  # fmt: skip
def test_tanh_single_input_reductions(widths, hyper):
    x = np.linspace(-1.0, 1.2, widths[0])[None, :]
    net = _mlp(pdlt.activation("tanh"), widths, **hyper)
    f = pdlt.flow(net, x)
    L = len(widths) - 1
    per_layer = {k: (v if isinstance(v, tuple) else (v,) * L) for k, v in hyper.items()}
    ref = _single_input_reference(x, widths, **per_layer)
    for ell in range(1, L + 1):
        s = f.layer(ell)
        for name in FIELDS:
            got, want = float(getattr(s, name).reshape(-1)[0]), ref[ell - 1][name]
            scale = max(abs(want), 1e-3 * max(abs(ref[ell - 1]["K"]), abs(ref[ell - 1]["Theta"])) ** (2 if name in "VABDF" else 1))
            assert abs(got - want) <= 1e-10 * scale, f"layer {ell} {name}: flow {got!r} vs reference {want!r}"


# ---------------------------------------------------------------------------------------------
# ReLU: what symmetry forces to vanish, and what it does not


RELU_R2 = dict(c_b=(0.0, 0.1, 0.0, 0.2), c_w=(2.0, 1.8, 2.2, 2.0), lambda_b=(1.0, 0.5, 2.0, 1.0), lambda_w=(1.0, 2.0, 0.5, 1.0))


def test_relu_single_input_has_no_nlo_corrections():
    """Sign-flip symmetry (ntk-nlo.md §1): G1 = H1 = 0 for one input, any biases and widths."""
    net = _mlp(pdlt.activation("relu"), (4, 16, 32, 16, 16), **RELU_R2)
    f = pdlt.flow(net, np.array([[0.3, -0.7, 1.1, 0.2]]))
    for s in f:
        assert abs(s.G1[0, 0]) <= 1e-10 * s.K[0, 0]
        assert abs(s.H1[0, 0]) <= 1e-10 * s.Theta[0, 0]


def test_relu_two_inputs_off_diagonal_nlo_corrections():
    """Two ReLU inputs: G1_αα = H1_αα = 0 but G1_12, H1_12 ≠ 0 from layer 3 on (init.md §6 pitfall 8)."""
    X = np.array([[0.3, -0.7, 1.1, 0.2], [-0.5, 0.4, 0.6, 0.9]])
    net = _mlp(pdlt.activation("relu"), (4, 16, 32, 16, 16), **RELU_R2)
    f = pdlt.flow(net, X)
    for s in f:
        tol = 1e-6 * max(1.0, np.max(np.abs(s.K)), np.max(np.abs(s.Theta)))
        np.testing.assert_allclose(np.diag(s.G1), 0.0, atol=tol)
        np.testing.assert_allclose(np.diag(s.H1), 0.0, atol=tol)
    for ell in (1, 2):  # layer 1 exact Gaussian, layer 2 exact: no 1/n mean corrections
        np.testing.assert_allclose(f.layer(ell).G1, 0.0, atol=1e-12)
        np.testing.assert_allclose(f.layer(ell).H1, 0.0, atol=1e-12)
    for ell in (3, 4):
        s = f.layer(ell)
        assert abs(s.G1[0, 1]) > 1e-2 * abs(s.K[0, 1]), s.G1
        assert abs(s.H1[0, 1]) > 1e-2 * abs(s.Theta[0, 1]), s.H1
        assert s.G1[0, 1] == pytest.approx(s.G1[1, 0], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# bookkeeping, serialisation, validation


def test_layer_numbering_and_widths():
    net = _mlp(pdlt.activation("tanh"), (3, 5, 10, 4), c_w=1.0)
    f = pdlt.flow(net, np.ones((2, 3)))
    assert len(f) == 3 and f.output is f[-1] is f.layer(3)
    assert [(s.layer, s.width, s.fan_in) for s in f] == [(1, 5, 3), (2, 10, 5), (3, 4, 10)]
    assert f.series("K").shape == (3, 2, 2)
    for bad in (0, 4):
        with pytest.raises(ParameterError):
            f.layer(bad)
    lead = pdlt.flow(net, np.ones((2, 3)), order="leading")
    assert all(s.V is None and s.G1 is None and not s.has_corrections for s in lead)
    np.testing.assert_array_equal(lead[-1].metric(), lead[-1].K)


def test_npz_round_trip(tmp_path):
    X = np.array([[0.9, -0.4], [-0.2, 0.7]])
    net = _mlp(pdlt.activation("gelu"), (2, 6, 12, 6, 3), c_b=0.1, c_w=(1.5, 1.9, 2.1, 1.8), lambda_w=(1.0, 0.5, 2.0, 1.0))
    for order in ("full", "leading"):
        f = pdlt.flow(net, X, order=order)
        path = tmp_path / f"flow_{order}.npz"
        f.to_npz(path)
        g = pdlt.Flow.from_npz(path)
        assert g == f  # every layer's Statistics, arrays compared exactly
        np.testing.assert_array_equal(g.X, X)
        for a, b in zip(f, g):
            assert (a.layer, a.width, a.fan_in, a.quadrature_error) == (b.layer, b.width, b.fan_in, b.quadrature_error)
            for name in FIELDS:
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None) == (y is None)
                if x is not None:
                    np.testing.assert_array_equal(x, y)
                    assert not y.flags.writeable


@pytest.mark.parametrize(
    "X",
    [
        np.ones((2, 3)),  # wrong input dimension
        np.ones((2, 2, 1)),  # not a matrix
        np.ones((0, 2)),  # no inputs
        np.array([[1.0, np.nan]]),
        np.array([[np.inf, 0.0]]),
    ],
)
def test_bad_inputs_raise(X):
    net = _mlp(pdlt.activation("tanh"), (2, 4, 1), c_w=1.0)
    with pytest.raises(ParameterError):
        pdlt.flow(net, X)


def test_bad_arguments_raise():
    net = _mlp(pdlt.activation("tanh"), (2, 4, 1), c_w=1.0)
    with pytest.raises(ParameterError):
        pdlt.flow(net, np.ones((1, 2)), order="nlo")
    with pytest.raises(ParameterError):
        pdlt.flow("not a network", np.ones((1, 2)))


def test_flow_refuses_an_activation_without_an_ordinary_first_derivative():
    """The perceptron's σ' = δ makes ⟨σ'σ'⟩ (in every NTK) diverge at coinciding inputs: a clear error, not NaN."""
    net = pdlt.MLP(input_dim=1, hidden_widths=[8], output_dim=1, activation=pdlt.activation("perceptron"), c_b=0.1, c_w=1.0)
    with pytest.raises(pdlt.errors.ParameterError, match="max_derivative >= 1.*perceptron"):
        pdlt.flow(net, np.array([[0.5], [1.0]]), order="leading")
    one = pdlt.MLP(input_dim=1, hidden_widths=[], output_dim=1, activation=pdlt.activation("perceptron"))
    assert np.all(np.isfinite(pdlt.flow(one, np.array([[0.5], [1.0]]))[-1].Theta))  # depth 1: no σ'
