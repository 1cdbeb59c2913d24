"""Model complexity from the macroscopic perspective (book epilogue ε; docs/information.md)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pdlt
from pdlt.complexity import SYMMETRIES, count_independent, model_complexity, parameter_count
from pdlt.errors import ParameterError

X2 = np.array([[1.0, 0.2], [-0.3, 0.8]])


def _mlp(act: str, L: int, n: int, input_dim: int = 2, output_dim: int = 1, **kw):
    return pdlt.MLP(
        input_dim=input_dim, hidden_widths=[n] * (L - 1), output_dim=output_dim, activation=pdlt.activation(act), **kw
    ).at_criticality()


def test_counts_match_brute_force_orbits():
    for N in (1, 2, 3):
        assert count_independent("K", N) == N * (N + 1) // 2
        M = N * (N + 1) // 2
        assert count_independent("V", N) == M * (M + 1) // 2
        for name, G in SYMMETRIES.items():
            orbits = {min(tuple(idx[p] for p in g) for g in G) for idx in itertools.product(range(N), repeat=4)}
            assert count_independent(name, N) == len(orbits), name


def test_declared_symmetries_are_exactly_those_of_a_generic_flow():
    rng = np.random.default_rng(3)
    s = pdlt.flow(_mlp("tanh", 3, 16, input_dim=3), rng.normal(size=(3, 3)), order="dntk")[-1]
    for name, G in SYMMETRIES.items():
        t = getattr(s, name)
        tol = 1e-9 * np.abs(t).max()
        found = {p for p in itertools.permutations(range(4)) if np.allclose(t, t.transpose(p), rtol=0, atol=tol)}
        assert found == set(G), name


def test_parameter_count():
    net = _mlp("tanh", 3, 10, input_dim=4, output_dim=2)
    assert parameter_count(net) == 10 * 5 + 10 * 11 + 2 * 11


def test_measures_exactly_inverse_width_at_fixed_depth():
    a = model_complexity(_mlp("tanh", 5, 32), X2)
    b = model_complexity(_mlp("tanh", 5, 96), X2)
    assert b.aspect_ratio == pytest.approx(a.aspect_ratio / 3, rel=1e-14)
    for k in a.measures:
        assert b.measures[k] * 96 == pytest.approx(a.measures[k] * 32, rel=1e-10), k
        assert b.coefficients[k] == pytest.approx(a.coefficients[k], rel=1e-10), k
    assert b.n_parameters > 8 * a.n_parameters
    assert a.n_macroscopic == b.n_macroscopic


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_measures_independent_of_parameter_count(act):
    """Doubling the input dimension (duplicated coordinates x → (x, x) give the same K^(1)) or the
    number of outputs changes P but none of the measures."""
    base = model_complexity(_mlp(act, 4, 64), X2)
    wide_in = model_complexity(_mlp(act, 4, 64, input_dim=4), np.hstack([X2, X2]))
    many_out = model_complexity(_mlp(act, 4, 64, output_dim=5), X2)
    assert wide_in.n_parameters > base.n_parameters and many_out.n_parameters > base.n_parameters
    for other in (wide_in, many_out):
        assert other.n_macroscopic == base.n_macroscopic
        for k, m in base.measures.items():
            assert other.measures[k] == pytest.approx(m, rel=1e-10, abs=1e-14), (k, other)


def test_measures_invariant_under_learning_rate_rescaling():
    a = model_complexity(_mlp("tanh", 4, 64), X2, order="dntk")
    b = model_complexity(_mlp("tanh", 4, 64, lambda_b=3.0, lambda_w=3.0), X2, order="dntk")
    for k, m in a.measures.items():
        assert b.measures[k] == pytest.approx(m, rel=1e-8), k


def test_tanh_measures_grow_like_depth_over_width():
    """At criticality (K* = 0 class) every leading measure per unit r tends to a constant as L grows;
    V's tends to ν = 2/3 from below.  S and U (ddNTK, type II) are the exception: O(1/n), not O(L/n)."""
    X = X2[:1]
    coef = {L: model_complexity(_mlp("tanh", L, 128), X, order="dntk").coefficients for L in (16, 32, 64)}
    v = [coef[L]["V"] for L in (16, 32, 64)]
    assert v[0] < v[1] < v[2] < 2 / 3 and 2 / 3 - v[2] < 0.03
    for k in ("V", "A", "B", "D", "F", "P", "Q", "R", "T"):
        c32, c64 = coef[32][k], coef[64][k]
        assert abs(c64 / c32 - 1) < 0.1, (k, c32, c64)  # doubling L doubles the measure to within 10 %
        # and the drift halves with each doubling (log L / L corrections)
        assert abs(c64 - c32) < 0.75 * abs(c32 - coef[16][k]) + 1e-12, k
    for k in ("S", "U"):
        assert abs(coef[64][k]) < 0.6 * abs(coef[32][k]), k  # measure ∝ 1/n only: coefficient ∝ 1/L


def test_relu_measures_grow_like_depth_over_width():
    """Scale-invariant class: V/(nK²) = ν (L − 1)/n exactly with ν = 5; A, B, D, F per unit r converge;
    the ddNTK measures are undefined (None) for kinked σ."""
    X = X2[:1]
    res = {L: model_complexity(_mlp("relu", L, 64), X) for L in (4, 8, 16)}
    for L, c in res.items():
        assert c.measures["V"] == pytest.approx(5 * (L - 1) / 64, rel=1e-8)
        assert c.measures["F"] == pytest.approx((L - 1) / 64, rel=1e-8)
    for k in ("A", "B", "D"):
        c = [res[L].coefficients[k] for L in (4, 8, 16)]
        assert c[0] < c[1] < c[2] and (c[2] - c[1]) < 0.6 * (c[1] - c[0]), (k, c)
    d = model_complexity(_mlp("relu", 3, 64), X, order="dntk")
    assert all(d.measures[k] is None for k in ("R", "S", "T", "U"))
    assert d.measures["P"] is not None


def test_trained_corrections_exactly_inverse_width():
    y, Xt = np.array([0.5, -0.2]), np.array([[0.4, 0.5]])
    alg = pdlt.Bayesian(noise_variance=0.1)
    a = model_complexity(_mlp("tanh", 4, 32), X2, y, Xt, alg, warn_regime=False)
    b = model_complexity(_mlp("tanh", 4, 128), X2, y, Xt, alg, warn_regime=False)
    assert a.n_inputs == 3
    for k in ("mean_correction", "covariance_correction"):
        assert a.measures[k] > 0
        assert b.measures[k] * 128 == pytest.approx(a.measures[k] * 32, rel=1e-8), k
    assert f"P = {a.n_parameters}" in a.summary() and "per unit r" in a.summary()


def test_errors():
    with pytest.raises(ParameterError, match="depth"):
        model_complexity(pdlt.MLP(input_dim=2, hidden_widths=[], output_dim=1, activation=pdlt.activation("tanh")), X2)
    with pytest.raises(ParameterError, match="order"):
        model_complexity(_mlp("tanh", 3, 8), X2, order="leading")
    with pytest.raises(ParameterError, match="X_test"):
        model_complexity(_mlp("tanh", 3, 8), X2, [0.1, 0.2], algorithm=pdlt.Bayesian(noise_variance=0.1))
    with pytest.raises(ParameterError, match="n_inputs"):
        count_independent("V", 0)
    with pytest.raises(ParameterError, match="name"):
        count_independent("W", 2)
