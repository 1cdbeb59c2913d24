"""Tests of pdlt.generalization: γ-basis kernels and §10.3 bias/variance for nearby inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pdlt
from pdlt import generalization as G

TANH = pdlt.activation("tanh")
RELU = pdlt.activation("relu")
X0 = np.array([1.0, 0.5])
U = np.array([0.6, 0.8])  # generic direction: K_[1] ≠ 0


def _tanh(depth=4, c_w=1.0, c_b=0.0):
    return pdlt.MLP(input_dim=2, hidden_widths=[16] * (depth - 1), activation=TANH, c_w=c_w, c_b=c_b)


def _direct(net, x0, dx, t, labels):
    """m^∞ and Σ^∞ from the plain formulas Θ_tA Θ̃⁻¹ y and K_tt − 2wK_At + wK̃w."""
    X = np.stack([x0 + dx, x0 - dx, x0 + t * dx])
    s = pdlt.flow(net, X, order="leading")[-1]
    w = np.linalg.solve(s.Theta[:2, :2], s.Theta[:2, 2])
    return w @ labels, s.K[2, 2] - 2 * w @ s.K[:2, 2] + w @ s.K[:2, :2] @ w


# ------------------------------------------------------------------------------------ γ-basis
def test_gamma_components_reconstruct_and_examples():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 2, 2))
    M = A + np.swapaxes(A, -1, -2)
    g = G.gamma_components(M)
    assert g.shape == (5, 3)
    np.testing.assert_allclose(np.einsum("na,aij->nij", g, G.GAMMA), M, atol=1e-14)
    np.testing.assert_allclose(G.gamma_components(G.GAMMA), np.eye(3), atol=1e-15)


@pytest.mark.parametrize("bad", [np.ones((3, 3)), np.ones(2), np.array([[1.0, np.nan], [np.nan, 1.0]])])
def test_gamma_components_rejects(bad):
    with pytest.raises(pdlt.ParameterError, match="'M' parameter of gamma_components"):
        G.gamma_components(bad)


def test_first_layer_gamma_components_closed_form():
    net = _tanh(c_b=0.3, c_w=1.5)
    dx = 0.1 * U
    g = G.gamma_flow(net, X0, dx)
    n0 = 2
    expected = [0.3 + 1.5 * (X0 @ X0) / n0, 2 * 1.5 * (X0 @ dx) / n0, 1.5 * (dx @ dx) / n0]
    np.testing.assert_allclose(g.K[0], expected, rtol=1e-13)
    assert g.K.shape == g.Theta.shape == (4, 3) and g.depth == 4
    np.testing.assert_allclose(g.K_mid[0], 0.3 + 1.5 * (X0 @ X0) / n0, rtol=1e-13)


def test_delta_scaling_of_components_smooth():
    """K_[1], Θ_[1] ∝ δ and K_[2], Θ_[2] ∝ δ² (smooth σ): M(2δ)/M(δ) → 2, 4 with deviations O(δ²)."""
    net = _tanh(depth=5)
    g = [G.gamma_flow(net, X0, eps * U) for eps in (0.08, 0.04, 0.02)]
    for name in ("K", "Theta"):
        for comp, power in ((1, 2.0), (2, 4.0)):
            M = [getattr(x, name)[:, comp] for x in g]
            dev = [np.abs(M[0] / M[1] / power - 1), np.abs(M[1] / M[2] / power - 1)]
            assert np.all(dev[1] < 0.02)
            assert np.all((dev[1] < dev[0] / 3.0) | (dev[0] < 1e-12))  # layer 1 is exactly linear in x


def test_relu_ntk_is_not_smooth_at_coinciding_inputs():
    """Finding: for ReLU K_[2] ∝ δ² but Θ_[2] ∝ |δ| beyond layer 1 (the NTK has a cusp)."""
    net = pdlt.MLP(input_dim=2, hidden_widths=[8] * 3, activation=RELU, c_w=2.0)
    dx = np.array([0.0, 1.0])
    a, b = G.gamma_flow(net, [1.0, 0.0], 2e-3 * dx), G.gamma_flow(net, [1.0, 0.0], 1e-3 * dx)
    np.testing.assert_allclose(a.K[:, 2] / b.K[:, 2], 4.0, rtol=1e-2)
    np.testing.assert_allclose(a.Theta[0, 2] / b.Theta[0, 2], 4.0, rtol=1e-2)
    np.testing.assert_allclose(a.Theta[1:, 2] / b.Theta[1:, 2], 2.0, rtol=1e-2)


@pytest.mark.parametrize("direction", ["perpendicular", "generic"])
def test_chi_control_of_gamma_recursion(direction):
    """K_[1]' = χ_∥K_[1], K_[2]' = χ_⊥K_[2] + hK_[1]²: relative error O(δ²) (shrinks 4× per halving)."""
    net = _tanh(depth=4, c_w=1.2, c_b=0.1)
    x0, u = (np.array([1.0, 0.0]), np.array([0.0, 1.0])) if direction == "perpendicular" else (X0, U)
    errs = []
    for eps in (0.08, 0.04):
        g = G.gamma_flow(net, x0, eps * u)
        k1, k2 = G.gamma_recursion(TANH, 1.2, g.K_mid[:-1], g.K[:-1, 1], g.K[:-1, 2])
        e2 = np.max(np.abs(k2 / g.K[1:, 2] - 1))
        if direction == "perpendicular":
            np.testing.assert_allclose(g.K[:, 1], 0.0, atol=1e-15)  # |x₊| = |x₋|: no parallel component
            chi_perp = pdlt.susceptibilities(TANH, g.K_mid[:-1], 1.2)[1]
            np.testing.assert_allclose(k2, chi_perp * g.K[:-1, 2], rtol=1e-12)
            errs.append(e2)
        else:
            errs.append(max(e2, np.max(np.abs(k1 / g.K[1:, 1] - 1))))
    assert errs[0] < 2e-2
    assert 3.0 < errs[0] / errs[1] < 5.0


# -------------------------------------------------------------------------------- bias/variance
@pytest.mark.parametrize("t", [0.0, 0.5, -1.7, 2.0])
def test_exact_mean_and_variance_match_direct_formulas(t):
    net = _tanh()
    labels = np.array([0.3, -0.1])
    r = G.nearby_inputs(net, X0, 0.1 * U, t, labels=labels)
    m, v = _direct(net, X0, 0.1 * U, t, labels)
    assert r.mean == pytest.approx(m, rel=1e-9, abs=1e-12)
    # Σ^∞ = O(δ⁴) is a difference of O(1) kernel entries: the engine's ~1e-10 relative accuracy of K
    # (computed on different input batches here) bounds the agreement
    assert r.variance == pytest.approx(v, abs=1e-10 * r.K_gamma[0] * (1 + t * t))
    assert r.error == pytest.approx(r.bias**2 + r.variance)
    # the γ-form of the mean: m = ȳ(1 + η) + (Δ/2)(t + ρ)
    assert r.mean == pytest.approx(0.1 * (1 + r.constant_defect) + 0.2 * (t + r.linear_defect), rel=1e-12)
    assert np.ndim(r.mean) == 0 and r.layer == 4


def test_training_points_are_fitted_and_have_no_variance():
    net = _tanh()
    r = G.nearby_inputs(net, X0, 0.1 * U, [1.0, -1.0], labels=[0.3, -0.1])
    np.testing.assert_allclose(r.mean, [0.3, -0.1], atol=1e-12)
    np.testing.assert_allclose(r.variance, 0.0, atol=1e-14)
    np.testing.assert_allclose(r.variance_leading, 0.0, atol=1e-300)


def test_vector_t_matches_scalar_calls():
    net = _tanh()
    ts = np.array([-2.0, 0.0, 0.3, 1.0, 0.3])
    r = G.nearby_inputs(net, X0, 0.1 * U, ts, labels=[0.3, -0.1], test_label=0.05)
    for i, t in enumerate(ts):
        s = G.nearby_inputs(net, X0, 0.1 * U, t, labels=[0.3, -0.1], test_label=0.05)
        assert r.mean[i] == pytest.approx(s.mean, rel=1e-12)
        assert r.bias_leading[i] == pytest.approx(s.bias_leading, rel=1e-12)


def _orders(net, t, labels, quantity, test_label=None):
    errs = []
    for eps in (0.08, 0.04, 0.02):
        r = G.nearby_inputs(net, X0, eps * U, t, labels=labels, test_label=test_label(eps) if test_label else None)
        exact, lead = (r.bias, r.bias_leading) if quantity == "bias" else (r.variance, r.variance_leading)
        errs.append(abs(lead / exact - 1))
    return np.array(errs)


@pytest.mark.parametrize("t", [0.0, 0.5, 2.0])
def test_leading_variance_relative_error_shrinks_with_predicted_power(t):
    """Σ^∞ = O(δ⁴); the leading form has relative error O(δ) (O(δ²) at the midpoint, by parity)."""
    errs = _orders(_tanh(), t, [0.3, -0.1], "variance")
    power = 2 if t == 0 else 1
    assert errs[-1] < 0.1
    assert np.all(errs[1:] / errs[:-1] < 2.0**-power * 1.25)


@pytest.mark.parametrize("t", [0.0, 0.5, 2.0])
def test_leading_bias_smooth_target_shrinks_with_predicted_power(t):
    """Smooth target y(x₀ + aδx) = sin(1 + a ε): bias = O(δ²), leading form relative error O(δ)."""
    target = lambda eps, a: np.sin(1.0 + a * eps)  # noqa: E731
    errs = []
    for eps in (0.08, 0.04, 0.02):
        r = G.nearby_inputs(_tanh(), X0, eps * U, t, labels=[target(eps, 1), target(eps, -1)], test_label=target(eps, t))
        errs.append(abs(r.bias_leading / r.bias - 1))
        assert abs(r.bias) < 2 * eps**2
    errs = np.array(errs)
    power = 2 if t == 0 else 1
    assert errs[-1] < 0.1
    assert np.all(errs[1:] / errs[:-1] < 2.0**-power * 1.25)


def test_constant_and_linear_defects_leading_order():
    net = _tanh()
    prev = None
    for eps in (0.08, 0.04):
        r = G.nearby_inputs(net, X0, eps * U, 0.5, labels=[1.0, 0.0])
        e = (abs(r.constant_defect_leading / r.constant_defect - 1), abs(r.linear_defect_leading / r.linear_defect - 1))
        if prev is not None:
            assert e[0] < prev[0] / 1.6 and e[1] < prev[1] / 1.6
        prev = e
    assert prev[0] < 0.05 and prev[1] < 0.05


# ------------------------------------------------------------------------------------- properties
_coord = st.floats(-1.5, 1.5, allow_nan=False)


@settings(max_examples=15, deadline=None)
@given(t=st.floats(-3.0, 3.0), yp=_coord, ym=_coord, eps=st.floats(0.02, 0.3))
@example(t=0.0, yp=1.0, ym=-1.0, eps=0.05)
def test_relabelling_symmetry(t, yp, ym, eps):
    """(dx, t, y₊, y₋) and (−dx, −t, y₋, y₊) describe the same problem, for any kernel."""
    net = _tanh(depth=3)
    a = G.nearby_inputs(net, X0, eps * U, t, labels=[yp, ym])
    b = G.nearby_inputs(net, X0, -eps * U, -t, labels=[ym, yp])
    assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-11)
    assert a.variance == pytest.approx(b.variance, rel=1e-6, abs=1e-13)
    assert a.bias_leading == pytest.approx(b.bias_leading, rel=1e-8, abs=1e-11)


@settings(max_examples=15, deadline=None)
@given(t=st.floats(-3.0, 3.0), yp=_coord, ym=_coord, eps=st.floats(0.02, 0.3))
def test_reflection_symmetric_pair_t_to_minus_t(t, yp, ym, eps):
    """δx ⊥ x₀: the kernel is even under a → −a, so t → −t with swapped labels leaves m, Σ unchanged."""
    net = _tanh(depth=3, c_b=0.2)
    x0, dx = np.array([1.0, 0.0]), np.array([0.0, eps])
    a = G.nearby_inputs(net, x0, dx, t, labels=[yp, ym])
    b = G.nearby_inputs(net, x0, dx, -t, labels=[ym, yp])
    assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-11)
    assert a.variance == pytest.approx(b.variance, rel=1e-6, abs=1e-13)
    assert a.linear_defect_leading == pytest.approx(0.0, abs=1e-8)  # c10 = c21 = 0 ⇒ p₁ = 0


@settings(max_examples=10, deadline=None)
@given(t=st.floats(-3.0, 3.0), eps=st.floats(0.01, 0.05))
def test_variance_leading_scales_as_delta_fourth(t, eps):
    net = _tanh(depth=3)
    a = G.nearby_inputs(net, X0, eps * U, t, labels=[0.0, 0.0])
    b = G.nearby_inputs(net, X0, 2 * eps * U, t, labels=[0.0, 0.0])
    if abs(1 - t * t) > 1e-3:
        assert b.variance_leading / a.variance_leading == pytest.approx(16.0, rel=0.3)


# -------------------------------------------------------------------------------------- depth
def _doubling_exponent_ratio(series):
    """log(r₆₄/r₃₂)/log(r₃₂/r₁₆): ≈ 1 for a power law in ℓ, ≈ 2 for an exponential."""
    r16, r32, r64 = series[15], series[31], series[63]
    return np.log(r64 / r32) / np.log(r32 / r16)


@pytest.mark.parametrize("c_w, expected", [(1.0, 1.0), (0.9, 2.0)])
def test_depth_dependence_power_law_at_criticality_exponential_off(c_w, expected):
    """tanh, perpendicular pair: Θ_[2]/Θ_[0] and the midpoint bias for constant labels (= η) decay
    like a power of ℓ at criticality (C_W = 1) and exponentially in the ordered phase (C_W = 0.9)."""
    net = _tanh(depth=64, c_w=c_w)
    x0, dx = np.array([1.0, 0.0]), np.array([0.0, 0.05])
    g = G.gamma_flow(net, x0, dx)
    prof = G.depth_profile(net, x0, dx, 0.0, labels=[1.0, 1.0])
    bias = np.array([p.bias for p in prof])
    assert _doubling_exponent_ratio(g.ratio("Theta", 2)) == pytest.approx(expected, abs=0.3)
    assert _doubling_exponent_ratio(bias) == pytest.approx(expected, abs=0.3)


def test_relu_kernel_ratio_independent_of_c_w():
    """Scale invariance (C_b = 0): K_[2]/K_[0] is the same at and off criticality."""
    x0, dx = np.array([1.0, 0.0]), np.array([0.0, 0.05])
    r = [G.gamma_flow(pdlt.MLP(input_dim=2, hidden_widths=[8] * 9, activation=RELU, c_w=cw), x0, dx).ratio("K", 2)
         for cw in (1.8, 2.0, 2.2)]
    np.testing.assert_allclose(r[0], r[1], rtol=1e-10)
    np.testing.assert_allclose(r[2], r[1], rtol=1e-10)


# ------------------------------------------------------------------------------------- errors
def test_parameter_errors():
    net = _tanh()
    with pytest.raises(pdlt.ParameterError, match="'dx' parameter of nearby_inputs must be non-zero"):
        G.nearby_inputs(net, X0, [0.0, 0.0], 0.0, labels=[0.0, 1.0])
    with pytest.raises(pdlt.ParameterError, match="'x0' parameter of nearby_inputs"):
        G.nearby_inputs(net, [1.0, 2.0, 3.0], U, 0.0, labels=[0.0, 1.0])
    with pytest.raises(pdlt.ParameterError, match="'labels' parameter"):
        G.nearby_inputs(net, X0, U, 0.0, labels=[0.0, 1.0, 2.0])
    with pytest.raises(pdlt.ParameterError, match="'t' parameter"):
        G.nearby_inputs(net, X0, U, [[0.0]], labels=[0.0, 1.0])
    with pytest.raises(pdlt.ParameterError, match="'t' parameter"):
        G.nearby_inputs(net, X0, U, np.inf, labels=[0.0, 1.0])
    with pytest.raises(pdlt.ParameterError, match="'layer' parameter"):
        G.nearby_inputs(net, X0, U, 0.0, labels=[0.0, 1.0], layer=5)
    with pytest.raises(pdlt.ParameterError, match="'test_label' parameter"):
        G.nearby_inputs(net, X0, U, [0.0, 1.0], labels=[0.0, 1.0], test_label=[1.0, 2.0, 3.0])
    with pytest.raises(pdlt.ParameterError, match="'net' parameter of gamma_flow"):
        G.gamma_flow("mlp", X0, U)
    with pytest.raises(pdlt.ParameterError, match="'name' parameter"):
        G.gamma_flow(net, X0, U).ratio("V")


def test_singular_training_kernel_raises_numerical_error():
    net = pdlt.MLP(input_dim=2, hidden_widths=[8] * 59, activation=TANH, c_w=0.5)
    with pytest.raises(pdlt.NumericalError, match="numerically singular"):
        G.nearby_inputs(net, [1.0, 0.0], [0.0, 1e-3], 0.0, labels=[0.0, 1.0])


def test_layer_argument_matches_depth_profile():
    net = _tanh()
    prof = G.depth_profile(net, X0, 0.1 * U, [0.0, 2.0], labels=[0.3, -0.1])
    r = G.nearby_inputs(net, X0, 0.1 * U, [0.0, 2.0], labels=[0.3, -0.1], layer=2)
    np.testing.assert_allclose(prof[1].mean, r.mean, rtol=1e-13)
    assert len(prof) == 4 and prof[1].layer == 2
