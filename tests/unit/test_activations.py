"""Exact values, identities and metadata of the built-in activations."""

from __future__ import annotations

import math
import pickle

import mpmath
import numpy as np
import pytest
from scipy import special

import pdlt
from pdlt_plugins.activations import (
    GELU,
    Erf,
    Exponential,
    LeakyReLU,
    Linear,
    Monomial,
    Perceptron,
    ReLU,
    ScaleInvariant,
    Sigmoid,
    Sin,
    Softplus,
    Swish,
    Tanh,
)

# mpmath references for the smooth activations, evaluated at 40 digits.
MP_REFERENCE = [
    (Tanh(), mpmath.tanh),
    (Sin(), mpmath.sin),
    (Erf(), mpmath.erf),
    (Sigmoid(), lambda z: 1 / (1 + mpmath.exp(-z))),
    (Softplus(), lambda z: mpmath.log(1 + mpmath.exp(z))),
    (Swish(), lambda z: z / (1 + mpmath.exp(-z))),
    (GELU(), lambda z: z * mpmath.ncdf(z)),
    (Exponential(), mpmath.exp),
    (Linear(), lambda z: z),
    (Monomial(power=3), lambda z: z**3),
    (Monomial(power=5), lambda z: z**5),
]


@pytest.mark.parametrize(("act", "f"), MP_REFERENCE, ids=lambda x: getattr(x, "name", ""))
def test_derivatives_match_mpmath(act, f):
    with mpmath.workdps(40):
        for z in (-2.3, -0.7, 0.0, 0.4, 1.9):
            for k in range(5):
                ref = float(mpmath.diff(f, z, k))
                assert act.derivative(z, k) == pytest.approx(ref, rel=1e-12, abs=1e-14), (z, k)


@pytest.mark.parametrize(("act", "f"), MP_REFERENCE, ids=lambda x: getattr(x, "name", ""))
def test_taylor_coefficients_match_mpmath(act, f):
    count = 12
    with mpmath.workdps(40):
        ref = [float(c * mpmath.factorial(p)) for p, c in enumerate(mpmath.taylor(f, 0, count - 1))]
    got = act.taylor_coefficients(count)
    assert got.shape == (count,) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_tanh_spot_values():
    assert Tanh().derivative(0.0, 3) == -2.0
    np.testing.assert_array_equal(Tanh().taylor_coefficients(8), [0, 1, 0, -2, 0, 16, 0, -272])
    assert Tanh().taylor_coefficients(12)[11] == -353792.0


def test_known_taylor_series():
    np.testing.assert_array_equal(Sin().taylor_coefficients(6), [0, 1, 0, -1, 0, 1])
    np.testing.assert_array_equal(Exponential().taylor_coefficients(5), np.ones(5))
    np.testing.assert_array_equal(Monomial(power=3).taylor_coefficients(5), [0, 0, 0, 6, 0])
    np.testing.assert_array_equal(Monomial(power=7).taylor_coefficients(5), np.zeros(5))
    np.testing.assert_array_equal(Linear().taylor_coefficients(4), [0, 1, 0, 0])
    c = 2 / math.sqrt(math.pi)
    np.testing.assert_allclose(Erf().taylor_coefficients(6), [0, c, 0, -2 * c, 0, 12 * c], rtol=1e-15)
    np.testing.assert_allclose(Sigmoid().taylor_coefficients(8), [0.5, 0.25, 0, -1 / 8, 0, 1 / 4, 0, -17 / 16])
    assert Softplus().taylor_coefficients(2)[0] == pytest.approx(math.log(2))
    assert GELU().taylor_coefficients(3)[2] == pytest.approx(2 / math.sqrt(2 * math.pi))
    assert Tanh().taylor_coefficients(0).shape == (0,)
    with pytest.raises(pdlt.ParameterError, match="'count'"):
        Tanh().taylor_coefficients(-1)


@pytest.mark.parametrize("act", [ReLU(), LeakyReLU(), ScaleInvariant(a_plus=1, a_minus=2), Perceptron()])
def test_kinked_activations_have_no_taylor_series(act):
    assert act.kinks == (0.0,)
    assert act.taylor_coefficients(4) is None


def test_gelu_and_logistic_values():
    assert GELU()(1.0) == pytest.approx(special.ndtr(1.0), rel=1e-15)
    assert float(GELU()(1.0)) == pytest.approx(0.8413447460685429, rel=1e-15)
    z = np.linspace(-8, 8, 33)
    s = Sigmoid()(z)
    np.testing.assert_allclose(Sigmoid().derivative(z, 1), s * (1 - s), rtol=1e-12)
    np.testing.assert_allclose(Sigmoid().derivative(z, 2), s * (1 - s) * (1 - 2 * s), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(Softplus().derivative(z, 1), s, rtol=1e-15)
    np.testing.assert_allclose(Softplus().derivative(z, 3), Sigmoid().derivative(z, 2), rtol=1e-15)
    np.testing.assert_allclose(Swish().derivative(z, 1), s + z * s * (1 - s), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(Tanh().derivative(z, 1), 1 / np.cosh(z) ** 2, rtol=1e-13)


def test_scale_invariant_family():
    assert ReLU().scale_invariant_slopes == (1.0, 0.0)
    assert LeakyReLU(slope=0.2).scale_invariant_slopes == (1.0, 0.2)
    assert LeakyReLU().slope == 0.01
    assert ScaleInvariant(a_plus=2, a_minus=-1).scale_invariant_slopes == (2.0, -1.0)
    assert Linear().scale_invariant_slopes == (1.0, 1.0)
    assert Monomial(power=1).scale_invariant_slopes == (1.0, 1.0)
    for act in (Tanh(), Sigmoid(), GELU(), Perceptron(), Monomial(power=2), Exponential()):
        assert act.scale_invariant_slopes is None
    z = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(ReLU()(z), [0, 0, 0, 0.5, 2])
    np.testing.assert_array_equal(ReLU().derivative(z, 1), [0, 0, 0.5, 1, 1])
    si = ScaleInvariant(a_plus=2.0, a_minus=-1.0)
    np.testing.assert_array_equal(si(z), [2, 0.5, 0, 1, 4])
    np.testing.assert_array_equal(si.derivative(z, 1), [-1, -1, 0.5, 2, 2])
    np.testing.assert_array_equal(Perceptron()(z), [0, 0, 0.5, 1, 1])
    assert ReLU().max_derivative == 1 and Perceptron().max_derivative == 0 and Tanh().max_derivative == 4
    assert Linear().kinks == () and Monomial(power=2).kinks == () and Linear().is_smooth


def test_distributional_derivatives_are_refused():
    with pytest.raises(pdlt.ParameterError, match="distributions"):
        ReLU().derivative(1.0, 2)
    with pytest.raises(pdlt.ParameterError):
        Perceptron().derivative(1.0, 1)


def test_monomial_derivatives():
    z = np.array([-1.5, 0.0, 2.0])
    m = Monomial(power=3)
    np.testing.assert_array_equal(m(z), z**3)
    np.testing.assert_array_equal(m.derivative(z, 1), 3 * z**2)
    np.testing.assert_array_equal(m.derivative(z, 3), [6, 6, 6])
    np.testing.assert_array_equal(m.derivative(z, 4), [0, 0, 0])


@pytest.mark.parametrize("act", [Sigmoid(), Softplus(), Swish(), GELU(), Tanh(), Erf(), Sin(), ReLU(), LeakyReLU()])
def test_no_overflow_at_large_arguments(act):
    z = np.array([-1000.0, -700.0, 700.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for k in range(act.max_derivative + 1):
            assert np.all(np.isfinite(act.derivative(z, k)))


def test_limits_at_large_arguments():
    z = np.array([-1000.0, 1000.0])
    np.testing.assert_array_equal(Sigmoid()(z), [0.0, 1.0])
    np.testing.assert_array_equal(Softplus()(z), [0.0, 1000.0])
    np.testing.assert_array_equal(Swish()(z), [0.0, 1000.0])
    np.testing.assert_array_equal(GELU()(z), [0.0, 1000.0])
    np.testing.assert_array_equal(Softplus().derivative(z, 1), [0.0, 1.0])
    # Tail derivatives keep their relative accuracy instead of cancelling to 0.
    assert Tanh().derivative(30.0, 1) == pytest.approx(4 * math.exp(-60), rel=1e-12)
    assert Sigmoid().derivative(-40.0, 1) == pytest.approx(math.exp(-40), rel=1e-12)
    assert Sigmoid().derivative(40.0, 1) == pytest.approx(math.exp(-40), rel=1e-12)


def test_parameter_validation_messages():
    with pytest.raises(pdlt.ParameterError) as info:
        LeakyReLU(slope=-1)
    assert str(info.value) == "The 'slope' parameter of LeakyReLU must be >= 0. Got -1 instead."
    with pytest.raises(pdlt.ParameterError, match="'power' parameter of Monomial must be >= 1"):
        Monomial(power=0)
    with pytest.raises(pdlt.ParameterError, match="'power' parameter of Monomial must be an integer"):
        Monomial(power=2.5)
    with pytest.raises(pdlt.ParameterError, match="'a_plus'.*'a_minus'"):
        ScaleInvariant(a_plus=0, a_minus=0)
    with pytest.raises(pdlt.ParameterError, match="'a_minus'.*finite"):
        ScaleInvariant(a_plus=1, a_minus=float("inf"))
    with pytest.raises(ValueError):  # ParameterError is also a ValueError
        LeakyReLU(slope=float("nan"))


def test_value_objects():
    assert LeakyReLU(slope=0.2) == LeakyReLU(slope=0.2) != LeakyReLU(slope=0.3)
    assert ReLU() != Perceptron()
    assert len({Tanh(), Tanh(), Sin(), Monomial(power=2), Monomial(power=2)}) == 3
    assert pickle.loads(pickle.dumps(ScaleInvariant(a_plus=1.0, a_minus=0.5))) == ScaleInvariant(a_plus=1.0, a_minus=0.5)
    assert LeakyReLU(slope=0.2).describe() == "leaky_relu(slope=0.2)"


def test_outputs_are_float64_and_shape_preserving():
    for act in (Tanh(), ReLU(), Monomial(power=2), Linear(), Perceptron()):
        out = act(np.arange(6).reshape(2, 3))
        assert out.dtype == np.float64 and out.shape == (2, 3)
        assert np.asarray(act(0.5)).shape == ()


def test_lookup_by_name():
    assert pdlt.activation("tanh") == Tanh()
    assert pdlt.activation("leaky_relu", slope=0.1) == LeakyReLU(slope=0.1)
    assert pdlt.activation("monomial", power=3) == Monomial(power=3)
    with pytest.raises(pdlt.UnknownNameError, match="tanh"):
        pdlt.activation("tnah")
