"""Run the activation conformance kit over every registered activation, and check the kit itself."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import pdlt
from pdlt.plugins import registry
from pdlt.testing import check_activation

REGISTERED = registry(pdlt.get_plugin_manager(load_entrypoints=False), "activation")

#: Valid parameter sets to instantiate each parametrised class with (default: no arguments).
EXAMPLES: dict[str, list[dict]] = {
    "leaky_relu": [{}, {"slope": 0.0}, {"slope": 0.3}, {"slope": 2}],
    "scale_invariant": [{"a_plus": 1.3, "a_minus": -0.4}, {"a_plus": 0.0, "a_minus": 2.0}, {"a_plus": 1, "a_minus": 1}],
    "monomial": [{"power": p} for p in range(1, 7)],
}

#: Invalid parameter sets; every class with attrs fields must be listed here.
BAD_PARAMS: dict[str, list[dict]] = {
    "leaky_relu": [{"slope": -1}, {"slope": float("nan")}, {"slope": float("inf")}, {"slope": "0.1"}, {"slope": True}],
    "scale_invariant": [
        {"a_plus": 0.0, "a_minus": 0.0},
        {"a_plus": float("inf"), "a_minus": 0.0},
        {"a_plus": 1.0, "a_minus": float("nan")},
        {"a_plus": None, "a_minus": 1.0},
    ],
    "monomial": [{"power": 0}, {"power": -2}, {"power": 2.5}, {"power": 2.0}, {"power": True}],
}

CASES = [
    pytest.param(name, kwargs, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in kwargs.items()) or 'default'}")
    for name in sorted(REGISTERED)
    for kwargs in EXAMPLES.get(name, [{}])
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_registered_activation_conforms(name, kwargs):
    cls = REGISTERED[name]
    has_params = bool(attrs.fields(cls))
    assert not has_params or name in BAD_PARAMS, f"add invalid parameter sets for {name!r} to BAD_PARAMS"
    check_activation(cls(**kwargs), bad_params=BAD_PARAMS.get(name))


def test_every_builtin_is_registered():
    assert set(REGISTERED) >= {
        "linear", "relu", "leaky_relu", "scale_invariant", "tanh", "sin", "erf", "sigmoid",
        "softplus", "swish", "gelu", "perceptron", "exponential", "monomial",
    }
    for name, cls in REGISTERED.items():
        assert cls.name == name
        assert issubclass(cls, pdlt.Activation)


# --------------------------------------------------------------------------- the kit catches bugs
Tanh = REGISTERED["tanh"]
ReLU = REGISTERED["relu"]
LeakyReLU = REGISTERED["leaky_relu"]


@attrs.frozen(kw_only=True)
class _WrongThirdDerivative(Tanh):
    name = "wrong_third"

    def _derivative(self, z, order):
        out = super()._derivative(z, order)
        return -out if order == 3 else out


@attrs.frozen(kw_only=True)
class _WrongTaylor(Tanh):
    name = "wrong_taylor"

    def taylor_coefficients(self, count=6):
        out = super().taylor_coefficients(count)
        out[-1] += 1e-3
        return out


@attrs.frozen(kw_only=True)
class _FlippedStep(ReLU):
    name = "flipped_step"

    def _derivative(self, z, order):
        return np.heaviside(-z, 0.5)


@attrs.frozen(kw_only=True)
class _Overflowing(Tanh):
    name = "overflowing"

    def __call__(self, z):
        return np.cosh(np.asarray(z, dtype=float) * 30)


@attrs.frozen(kw_only=True)
class _Unvalidated(LeakyReLU):
    name = "unvalidated"

    def __attrs_post_init__(self):
        pass


@attrs.frozen(kw_only=True)
class _BadSlopes(Tanh):
    name = "bad_slopes"

    @property
    def scale_invariant_slopes(self):
        return (1.0, 0.0)


@pytest.mark.parametrize(
    ("act", "bad_params", "match"),
    [
        (_WrongThirdDerivative(), None, "derivative.z, 3. disagrees"),
        (_WrongTaylor(), None, r"taylor_coefficients\(\)\[5\]"),
        (_FlippedStep(), None, "derivative.z, 1. disagrees"),
        (_Overflowing(), None, "not finite"),
        (_Unvalidated(), [{"slope": -1.0}], "was accepted"),
        (_BadSlopes(), None, "scale_invariant_slopes"),
    ],
    ids=["wrong-derivative", "wrong-taylor", "flipped-step", "overflow", "unvalidated", "bad-slopes"],
)
def test_kit_rejects_broken_activations(act, bad_params, match):
    with np.errstate(over="ignore"), pytest.raises(AssertionError, match=match):
        check_activation(act, bad_params=bad_params, check_expectations=False)
