"""Criticality analysis: universality classes, critical points and the equivalence principle.

Reference values are exact (book §5.2–§5.3, theory/init.md §4) or 25–30-digit mpmath roots of
χ_∥(K) = χ_⊥(K) (SWISH, GELU).  Large-depth statements are confirmed by iterating the
single-input recursions with the Gaussian engine, including for a non-odd K* = 0 activation.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import attrs
import numpy as np
import pytest

import pdlt
from pdlt.activation import Activation
from pdlt.criticality import CriticalityReport, criticality, learning_rate_schedule, susceptibilities
from pdlt.errors import NoCriticalityError, NumericalError, ParameterError


# --------------------------------------------------------------------------------- helpers
@attrs.frozen(kw_only=True)
class TanhPoly(Activation):
    """σ = tanh z + β tanh² z: smooth, σ(0) = 0, σ_2 = 2β ≠ 0, so p_⊥ ≠ 1 (not odd)."""

    name = "tanh_poly_test"
    beta: float = 0.3

    def __call__(self, z):
        t = np.tanh(z)  # complex z allowed: the default Taylor coefficients use Cauchy's formula
        return t + self.beta * t * t

    def _derivative(self, z, order):
        P = np.polynomial.Polynomial([0.0, 1.0, self.beta])
        for _ in range(order):
            P = P.deriv() * np.polynomial.Polynomial([1.0, 0.0, -1.0])  # d/dz P(t) = P'(t)(1 − t²)
        return P(np.tanh(z))


@attrs.frozen(kw_only=True)
class HiddenReLU(Activation):
    """2·max(z, 0) without ``scale_invariant_slopes`` metadata: homogeneity must be detected."""

    name = "hidden_relu_test"
    max_derivative = 1

    @property
    def kinks(self):
        return (0.0,)

    def __call__(self, z):
        return 2.0 * np.maximum(np.asarray(z, dtype=float), 0.0)

    def _derivative(self, z, order):
        return 2.0 * np.heaviside(z, 0.5)


def act(name, **kw):
    return pdlt.activation(name, **kw)


def blocks(K):
    K = np.atleast_1d(np.asarray(K, dtype=float))
    return K[:, None, None] * np.ones((1, 2, 2))


def engine_chis(a, K, c_w):
    """χ_∥ = C_W g'(K) and χ_⊥ = C_W⟨σ'σ'⟩ straight from the engine.

    g' in Hermite form ½⟨σσ H_2⟩ (independent of the module's derivative form), except at
    K < 1e-3 for smooth σ: there the engine's panel breaks all fall outside |u| ≤ 8.5 and the
    (u² − 1)/K insertion loses ~1e-8, so the derivative form ⟨σ'² + σσ''⟩ is used.
    """
    B = blocks(K)
    if np.max(K) < 1e-3 and a.max_derivative >= 2:
        g1 = pdlt.expect(a, (1, 1), B)[0] + pdlt.expect(a, (0, 2), B)[0]
    else:
        g1 = 0.5 * pdlt.expect(a, (0, 0), B, insert=(2, 0))[0]
    return c_w * g1, c_w * pdlt.expect(a, (1, 1), B)[0]


def ex(a, orders, K, insert=None):
    return float(pdlt.expect(a, orders, blocks(K), insert=insert)[0][0])


@lru_cache(maxsize=None)
def single_input_flow(a, depth, k1=1.0, fluctuations=False):
    """Iterate K' = C_W⟨σ²⟩, V' = C_W²(⟨σ⁴⟩ − ⟨σ²⟩²) + χ_∥²V, G1' = χ_∥G1 + ½C_W g''V (equal widths).

    theory/init.md §3–§4 (single input, r = 1); V^(1) = G1^(1) = 0.  Returns arrays over ℓ = 1..depth.
    """
    r = criticality(a)
    cw, cb = r.c_w, r.c_b
    K, V, G = np.empty(depth), np.zeros(depth), np.zeros(depth)
    K[0] = k1
    for i in range(depth - 1):
        g = ex(a, (0, 0), K[i])
        K[i + 1] = cb + cw * g
        if fluctuations:
            chi = 0.5 * cw * ex(a, (0, 0), K[i], insert=(2, 0))
            g2 = 0.25 * ex(a, (0, 0), K[i], insert=(4, 0))
            g4 = float(pdlt.expect(a, (0, 0, 0, 0), np.full((1, 4, 4), K[i]))[0][0])
            V[i + 1] = cw**2 * (g4 - g * g) + chi**2 * V[i]
            G[i + 1] = chi * G[i] + 0.5 * cw * g2 * V[i]
    return K, V, G


def ntk_layer_contributions(a, lambda_b, lambda_w, x2, report):
    """Contribution of each layer ℓ to Θ^(L) (Θ is linear in the λ's), book §8.3.1.

    Θ^(1) = λ_b^(1) + λ_W^(1) x·x/n_0 and Θ' = λ_b + λ_W⟨σ²⟩_K + C_W⟨σ'²⟩_K Θ, so layer ℓ
    contributes [λ_b^(ℓ) + λ_W^(ℓ) g(K^(ℓ−1))] Π_{ℓ'=ℓ}^{L−1} χ_⊥(K^(ℓ')).
    """
    L = len(lambda_b)
    cb, cw = report.c_b, report.c_w
    K = [cb + cw * x2]
    for _ in range(L - 1):
        K.append(cb + cw * ex(a, (0, 0), K[-1]))
    Kin = np.array(K[:-1])
    # quadrature, not the arc-cosine closed forms: at coinciding inputs those evaluate arccos(1 − ε)
    # and are only good to ~1e-8 (ReLU ⟨σ'σ'⟩ at K = 2.6: 1/2 − 3e-9)
    g = pdlt.expect(a, (0, 0), blocks(Kin), method="quadrature")[0]
    chi_perp = cw * pdlt.expect(a, (1, 1), blocks(Kin), method="quadrature")[0]
    source = np.asarray(lambda_b) + np.asarray(lambda_w) * np.concatenate([[x2], g])
    downstream = np.concatenate([np.cumprod(chi_perp[::-1])[::-1], [1.0]])
    return source * downstream


NO_CRITICALITY = [
    act("sigmoid"),
    act("softplus"),
    act("monomial", power=2),
    act("monomial", power=3),
    act("exponential"),
    act("perceptron"),
]
CRITICAL = [act("relu"), act("leaky_relu", slope=0.2), act("linear"), act("tanh"), act("sin"), act("erf"), act("gelu"), act("swish")]


# --------------------------------------------------------------------------------- scale-invariant
def test_relu():
    r = criticality(act("relu"))
    assert r.universality_class == "scale-invariant"
    assert (r.c_b, r.c_w, r.nu, r.A_2, r.A_4) == (0.0, 2.0, 5.0, 0.5, 0.5)
    assert r.K_star is None
    assert r.slopes == (1.0, 0.0)


@pytest.mark.parametrize("a", [0.0, 0.01, 0.3, 1.0])
def test_leaky_relu_nu(a):
    r = criticality(act("leaky_relu", slope=a))
    assert r.universality_class == "scale-invariant"
    assert r.c_w == pytest.approx(2 / (1 + a**2), rel=1e-14)
    assert r.nu == pytest.approx(6 * (1 + a**4) / (1 + a**2) ** 2 - 1, rel=1e-14)


def test_linear():
    r = criticality(act("linear"))
    assert (r.universality_class, r.c_b, r.c_w, r.nu) == ("scale-invariant", 0.0, 1.0, 2.0)
    assert criticality(act("monomial", power=1)).c_w == 1.0


def test_homogeneity_detected_without_metadata():
    r = criticality(HiddenReLU())
    assert r.universality_class == "scale-invariant"
    assert r.slopes == (2.0, 0.0)
    assert r.c_w == pytest.approx(0.5) and r.nu == pytest.approx(5.0)


# --------------------------------------------------------------------------------- K* = 0
@pytest.mark.parametrize(
    "name, c_w, a_1, b_1, a_2",
    [
        ("tanh", 1.0, -2.0, -2.0, 17 / 3),
        ("sin", 1.0, -1.0, -1.0, 2 / 3),
        ("erf", math.pi / 4, -2.0, -2.0, 14 / 3),
    ],
)
def test_k_star_zero_coefficients(name, c_w, a_1, b_1, a_2):
    r = criticality(act(name))
    assert r.universality_class == "K*=0"
    assert (r.c_b, r.K_star) == (0.0, 0.0)
    assert r.c_w == pytest.approx(c_w, rel=1e-14)
    assert r.a_1 == pytest.approx(a_1, rel=1e-13)
    assert r.b_1 == pytest.approx(b_1, rel=1e-13)
    assert r.a_2 == pytest.approx(a_2, rel=1e-12)
    assert r.p_perp == pytest.approx(1.0, rel=1e-13)
    assert r.k_leading == pytest.approx(1 / -a_1)
    assert r.k_log == pytest.approx((a_2 - a_1**2) / (-a_1) ** 3)
    assert r.v_slope == pytest.approx(2 / 3) and r.g1_slope == pytest.approx(-1 / 3)
    assert r.notes == ()


def test_tanh_log_coefficient_matches_init_md():
    assert criticality(act("tanh")).k_log == pytest.approx(5 / 24, rel=1e-12)


def test_non_odd_k_star_zero():
    beta = 0.3
    r = criticality(TanhPoly(beta=beta))
    assert r.universality_class == "K*=0"
    assert r.sigma_2 == pytest.approx(2 * beta, rel=1e-12)
    assert r.a_1 == pytest.approx(-2 + 3 * beta**2, rel=1e-12)
    assert r.b_1 == pytest.approx(-2 + 4 * beta**2, rel=1e-12)
    assert r.p_perp == pytest.approx((-2 + 4 * beta**2) / (-2 + 3 * beta**2), rel=1e-12)
    assert any("p_⊥" in n for n in r.notes)
    with pytest.raises(NotImplementedError, match="p_⊥"):
        r.ntk_ratios(lambda_b=1.0, lambda_w=1.0)


@pytest.mark.parametrize("a", [act("tanh"), act("sin"), act("erf"), TanhPoly()], ids=lambda a: a.name)
def test_small_k_susceptibilities_match_engine(a):
    """The Taylor-derived slopes 2a_1, b_1 of χ_∥, χ_⊥ against engine values at small K."""
    r = criticality(a)
    K = 1e-4
    chi_par, chi_perp = engine_chis(a, K, r.c_w)
    assert (chi_par[0] - 1) / K == pytest.approx(2 * r.a_1 + 3 * r.a_2 * K, rel=1e-5)
    assert (chi_perp[0] - 1) / K == pytest.approx(r.b_1, rel=1e-3)


@pytest.mark.parametrize("a", [act("tanh"), act("sin"), act("erf"), TanhPoly()], ids=lambda a: a.name)
def test_k_star_zero_kernel_asymptotics(a):
    """K^(ℓ)(−a_1)ℓ → 1, and the log ℓ/ℓ² term accounts for most of the remainder (ℓ = 1000)."""
    r = criticality(a)
    K, _, _ = single_input_flow(a, 1000)
    ell = 1000
    assert abs(K[-1] * (-r.a_1) * ell - 1) < 5e-3
    assert abs(K[-1] / r.kernel_asymptotic(ell) - 1) < 1e-3


@pytest.mark.parametrize("a", [act("tanh"), TanhPoly()], ids=lambda a: a.name)
def test_k_star_zero_fluctuation_asymptotics(a):
    """V/(nK²) → (2/3)ℓ/n and G1/K → −ℓ/3 hold for odd and non-odd K* = 0 activations alike."""
    r = criticality(a)
    K, V, G = single_input_flow(a, 1000, fluctuations=True)
    ell = 1000
    assert V[-1] / (K[-1] ** 2 * ell) == pytest.approx(r.v_slope, rel=1.5e-2)
    assert G[-1] / (K[-1] * ell) == pytest.approx(r.g1_slope, rel=1.5e-2)


# --------------------------------------------------------------------------------- half-stable
# 25–30-digit mpmath roots of ⟨σ'² + σσ''⟩_K = ⟨σ'²⟩_K (GELU: K* = (3 + √17)/2 to all digits).
HALF_STABLE = {
    "gelu": dict(K=3.56155281280883027, C_W=1.98305825743754713, C_b=0.172922390756, table=(3.56155, 1.98306, 0.172922), side="above", dchi=-2.9e-4),
    "swish": dict(K=14.3201736180257988, C_W=1.98800467826949201, C_b=0.555143170721530, table=(14.3202, 1.98801, 0.555143), side="below", dchi=5.7e-6),
}


@pytest.mark.parametrize("name", sorted(HALF_STABLE))
def test_half_stable(name):
    ref = HALF_STABLE[name]
    r = criticality(act(name))
    assert r.universality_class == "half-stable"
    assert r.K_star == pytest.approx(ref["K"], rel=1e-11, abs=0)
    assert r.c_w == pytest.approx(ref["C_W"], rel=1e-11)
    assert r.c_b == pytest.approx(ref["C_b"], rel=1e-10)
    # theory/init.md §4 table, 5 significant digits (its SWISH C_W 1.98801 is 1.9880047 rounded up)
    for got, tab in zip((r.K_star, r.c_w, r.c_b), ref["table"]):
        assert got == pytest.approx(tab, rel=1e-5)
    assert r.approached_from == ref["side"]
    assert r.dchi_parallel_dK == pytest.approx(ref["dchi"], rel=0.02)
    assert r.a_1 > 0  # the reason K* = 0 is unstable


def test_gelu_fixed_point_is_algebraic():
    assert criticality(act("gelu")).K_star == pytest.approx((3 + math.sqrt(17)) / 2, rel=1e-12)


# --------------------------------------------------------------------------------- recomputed criticality
@pytest.mark.parametrize("a", CRITICAL, ids=lambda a: a.describe())
def test_critical_point_recomputed_with_engine(a):
    r = criticality(a)
    Ks = [1.0, 3.7] if r.K_star is None else [max(r.K_star, 1e-10)]
    chi_par, chi_perp = engine_chis(a, Ks, r.c_w)
    np.testing.assert_allclose(chi_par, 1.0, rtol=0, atol=1e-8)
    np.testing.assert_allclose(chi_perp, 1.0, rtol=0, atol=1e-8)
    assert abs(r.chi_parallel - 1) < 1e-8 and abs(r.chi_perp - 1) < 1e-8
    if r.K_star:  # fixed point of the kernel map
        assert r.c_b + r.c_w * ex(a, (0, 0), r.K_star) == pytest.approx(r.K_star, rel=1e-10)


def test_susceptibilities_api():
    chi_par, chi_perp = susceptibilities(act("relu"), [0.5, 2.0, 7.0], 2.0)
    np.testing.assert_allclose(chi_par, 1.0, atol=1e-12)
    np.testing.assert_allclose(chi_perp, 1.0, atol=1e-12)
    chi_par, chi_perp = susceptibilities(act("tanh"), 0.3, 1.0)
    assert isinstance(chi_par, float)
    assert chi_par == pytest.approx(ex(act("tanh"), (1, 1), 0.3) + ex(act("tanh"), (0, 2), 0.3), rel=1e-10)
    with pytest.raises(ParameterError, match="'K'"):
        susceptibilities(act("tanh"), 0.0, 1.0)
    with pytest.raises(ParameterError, match="'c_w'"):
        susceptibilities(act("tanh"), 1.0, -1.0)
    with pytest.raises(NumericalError):
        susceptibilities(act("perceptron"), 1.0, 1.0)


@pytest.mark.parametrize("p", [2, 3, 4])
def test_monomial_ratio(p):
    chi_par, chi_perp = susceptibilities(act("monomial", power=p), np.array([0.01, 1.0, 50.0]), 1.0)
    np.testing.assert_allclose(chi_par / chi_perp, (2 * p - 1) / p, rtol=1e-10)


# --------------------------------------------------------------------------------- no criticality
@pytest.mark.parametrize("a", NO_CRITICALITY, ids=lambda a: a.describe())
def test_no_criticality(a):
    r = criticality(a)
    assert r.universality_class == "none" and not r.is_critical
    assert r.c_b is None and r.c_w is None and r.reason
    net = pdlt.MLP(input_dim=2, hidden_widths=[8, 8], activation=a)
    with pytest.raises(NoCriticalityError, match=a.name):
        net.at_criticality()
    with pytest.raises(NoCriticalityError):
        learning_rate_schedule(a, 5)


def test_no_criticality_reasons():
    assert "σ(0) = 0.5 ≠ 0" in criticality(act("sigmoid")).reason
    assert "< 1 for all K" in criticality(act("sigmoid")).reason
    assert "> 1 for all K" in criticality(act("softplus")).reason
    assert "[1.5, 1.5]" in criticality(act("monomial", power=2)).reason
    assert "not finite" in criticality(act("perceptron")).reason


@pytest.mark.parametrize("a", CRITICAL, ids=lambda a: a.describe())
def test_at_criticality_tunes_network(a):
    net = pdlt.MLP(input_dim=2, hidden_widths=[8, 8], activation=a, c_b=0.3, c_w=0.7, lambda_b=0.2)
    tuned = net.at_criticality()
    r = criticality(a)
    assert (tuned.c_b, tuned.c_w) == (r.c_b, r.c_w)
    assert tuned.evolve(c_b=0.3, c_w=0.7) == net


# --------------------------------------------------------------------------------- equivalence principle
def test_schedule_formulas():
    lb, lw = learning_rate_schedule(act("relu"), 4, lambda_b=2.0, lambda_w=1.0)
    np.testing.assert_array_equal(lb, [0.5] * 4)
    np.testing.assert_array_equal(lw, [0.25] * 4)
    assert not lb.flags.writeable
    r = criticality(TanhPoly())
    p, L = r.p_perp, 7
    lb, lw = learning_rate_schedule(r, L, lambda_b=1.5, lambda_w=0.5)
    ell = np.arange(1, L + 1)
    np.testing.assert_allclose(lb, 1.5 * ell**-p * L ** (p - 1), rtol=1e-14)
    np.testing.assert_allclose(lw, 0.5 * (L / ell) ** (p - 1), rtol=1e-14)
    lb, _ = learning_rate_schedule(act("tanh"), L)
    np.testing.assert_allclose(lb, 1 / ell, rtol=1e-14)
    for bad in (0, 2.5, True):
        with pytest.raises(ParameterError, match="'depth'"):
            learning_rate_schedule(act("relu"), bad)
    with pytest.raises(ParameterError, match="'lambda_w'"):
        learning_rate_schedule(act("relu"), 3, lambda_w=-1.0)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "gelu"])
def test_schedule_equal_contributions_exact(name):
    """Scale-invariant (and half-stable started at K*): every layer contributes Θ^(L)/L."""
    a = act(name)
    r = criticality(a)
    L = 12
    # for the half-stable class the first layer must sit at the fixed point: C_b + C_W x·x/n_0 = K*
    x2 = 1.3 if r.K_star is None else (r.K_star - r.c_b) / r.c_w
    lb, lw = learning_rate_schedule(r, L, lambda_b=0.7, lambda_w=1.9)
    c = ntk_layer_contributions(a, lb, lw, x2, r)
    np.testing.assert_allclose(c * L / c.sum(), 1.0, rtol=1e-9)
    if r.universality_class == "scale-invariant":  # Θ^(L) = λ̃_b + λ̃_W A_2 K
        assert c.sum() == pytest.approx(0.7 + 1.9 * r.A_2 * r.c_w * x2, rel=1e-12)


@pytest.mark.parametrize("a, L, tol", [(act("tanh"), 1000, 0.01), (act("sin"), 1000, 0.01), (TanhPoly(), 300, 0.02)], ids=["tanh", "sin", "tanh_poly"])
def test_schedule_equal_contributions_k_star_zero(a, L, tol):
    """K* = 0: contributions of layers ℓ ≥ L/4 approach Θ^(L)/L (corrections ~ log ℓ/ℓ)."""
    r = criticality(a)
    lb, lw = learning_rate_schedule(r, L)
    c = ntk_layer_contributions(a, lb, lw, 1.0, r)
    q = c * L / c.sum()
    np.testing.assert_allclose(q[L // 4 :], 1.0, atol=tol)
    # without the schedule the bias contributions fall off like (ℓ/L)^{p_⊥}
    c0 = ntk_layer_contributions(a, np.ones(L), np.zeros(L), 1.0, r)
    assert c0[L // 4] / c0[-1] < 0.3


def test_ntk_ratios():
    r = criticality(act("relu"))
    for f in (0.0, 0.3, 1.0):
        got = r.ntk_ratios(f)
        assert got == pytest.approx({"V": 5.0, "F": 1.0, "B": 2 / 3, "D": (1 + 5 * f) / 2, "A": (1 + f + 5 * f**2) / 3})
    with pytest.raises(ParameterError):
        r.ntk_ratios(1.5)
    got = criticality(act("tanh")).ntk_ratios(lambda_b=1.0, lambda_w=1.0)
    # theory/init.md §5: tanh, λ̃_b = λ̃_W = 1: D → −0.1481, A → 0.0658
    assert got == pytest.approx({"V": 2 / 3, "F": 0.25, "B": 1 / 3, "D": -4 / 27, "A": 16 / 243})
    with pytest.raises(NotImplementedError):
        criticality(act("gelu")).ntk_ratios(0.5)


# --------------------------------------------------------------------------------- report object
@pytest.mark.parametrize("a", CRITICAL + NO_CRITICALITY + [TanhPoly()], ids=lambda a: a.describe())
def test_report_serialisation(a):
    r = criticality(a)
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["activation"] == a.describe() and d["universality_class"] == r.universality_class
    text = r.summary()
    assert a.describe() in text and r.universality_class in text
    assert isinstance(r, CriticalityReport)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        r.c_w = 1.0


def test_bad_input():
    with pytest.raises(ParameterError, match="'activation'"):
        criticality("tanh")
