"""Hypothesis properties of the built-in activations and of the pdlt.testing strategies."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import pdlt
from pdlt.testing import activations, covariance_blocks, input_batches

finite_z = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False)
orders = st.integers(0, 4)


def _parity(act) -> int | None:
    """+1 / −1 when σ is even / odd, else None."""
    if act.name in ("tanh", "sin", "erf", "linear"):
        return -1
    if act.name == "monomial":
        return 1 if act.power % 2 == 0 else -1
    return None


@given(act=activations(["tanh", "sin", "erf", "linear", "monomial"]), z=finite_z, k=orders)
@example(act=pdlt.activation("tanh"), z=0.0, k=2)
def test_parity_of_derivatives(act, z, k):
    # σ(−z) = ±σ(z) implies σ^(k)(−z) = ±(−1)^k σ^(k)(z).
    sign = _parity(act) * (-1) ** k
    lhs = act.derivative(-z, k)
    rhs = sign * act.derivative(z, k)
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-300)


@given(act=activations(["relu", "leaky_relu", "scale_invariant", "linear"]), z=finite_z, c=st.floats(1e-3, 1e3))
@example(act=pdlt.activation("relu"), z=0.0, c=2.0)
def test_scale_invariant_homogeneity(act, z, c):
    assume(z == 0.0 or c * z != 0.0)  # c z must not underflow onto the kink
    # σ(cz) = c σ(z) and σ'(cz) = σ'(z) for c > 0.
    assert act(c * z) == pytest.approx(c * act(z), rel=1e-12, abs=1e-300)
    assert act.derivative(c * z, 1) == act.derivative(z, 1)
    a_plus, a_minus = act.scale_invariant_slopes
    assert act(z) == pytest.approx(a_plus * z if z > 0 else a_minus * z, rel=1e-15, abs=0.0)


@given(act=activations(["swish", "gelu", "softplus"]), z=st.floats(-50.0, 50.0))
def test_reflection_identities(act, z):
    # z·F(z) with F(−z) = 1 − F(z) (swish, GELU), and softplus' = sigmoid: σ(z) − σ(−z) = z.
    assert act(z) - act(-z) == pytest.approx(z, rel=1e-12, abs=1e-12)


@given(z=st.floats(-700.0, 700.0), k=st.integers(0, 3))
@example(z=1e-9, k=2)
def test_sigmoid_symmetry(z, k):
    s = pdlt.activation("sigmoid")
    # σ(−z) = 1 − σ(z) ⇒ σ^(k)(−z) = (−1)^(k+1) σ^(k)(z) for k ≥ 1.
    if k == 0:
        assert s(-z) + s(z) == pytest.approx(1.0, rel=1e-15)
    else:
        assert s.derivative(-z, k) == pytest.approx((-1) ** (k + 1) * s.derivative(z, k), rel=1e-10, abs=1e-300)


@given(act=activations(), z=st.lists(st.floats(-30.0, 30.0), min_size=1, max_size=8))
def test_drawn_activations_are_finite_value_objects(act, z):
    z = np.asarray(z)
    for k in range(act.max_derivative + 1):
        out = act.derivative(z, k)
        assert out.dtype == np.float64 and out.shape == z.shape and np.all(np.isfinite(out))
    clone = attrs.evolve(act)
    assert clone == act and hash(clone) == hash(act)


@given(data=st.data(), k=st.integers(1, 4))
def test_covariance_blocks_are_psd(data, k):
    K = data.draw(covariance_blocks(k, min_eig=0.05, max_scale=3.0))
    assert K.shape == (k, k) and K.dtype == np.float64
    np.testing.assert_array_equal(K, K.T)
    eig = np.linalg.eigvalsh(K)
    assert eig.min() >= 0.05 * (1 - 1e-9) and eig.max() <= 3.0 * (1 + 1e-9)


@given(data=st.data(), k=st.integers(2, 4))
@settings(max_examples=60)
def test_singular_covariance_blocks(data, k):
    K = data.draw(covariance_blocks(k, allow_singular=True))
    np.testing.assert_array_equal(K, K.T)
    eig = np.linalg.eigvalsh(K)
    assert eig.min() >= -1e-12 * eig.max()
    distinct = np.unique(K, axis=0).shape[0]
    if distinct < k:
        # Coinciding slots: exactly duplicated rows and columns, so K is singular.
        assert eig.min() <= 1e-12 * eig.max()


@given(X=input_batches(5, 3))
def test_input_batches(X):
    assert X.shape == (5, 3) and X.dtype == np.float64
    assert np.all(np.abs(X) <= 3.0)
    assert np.unique(X + 0.0, axis=0).shape[0] == 5


def test_strategy_arguments_are_validated():
    with pytest.raises(pdlt.ParameterError, match="tnah"):
        activations(["tnah"])
    with pytest.raises(pdlt.ParameterError, match="min_eig"):
        covariance_blocks(2, min_eig=1.0, max_scale=0.5)
    with pytest.raises(pdlt.ParameterError, match="'dim'"):
        input_batches(3, 0)
