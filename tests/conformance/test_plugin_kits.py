"""Every registered architecture, learning algorithm and observable passes its conformance battery
(pdlt.testing.check_architecture / check_learning_algorithm / check_observable)."""

from __future__ import annotations

import numpy as np
import pytest

import pdlt
from pdlt.plugins import available, lookup
from pdlt.testing import check_architecture, check_learning_algorithm, check_observable

TANH = pdlt.activation("tanh")

_ARCHITECTURES = {
    "mlp": lambda cls: cls(input_dim=2, hidden_widths=(8, 8), output_dim=2, activation=TANH),
}
_ALGORITHMS = {
    "gradient_descent": dict(learning_rate=0.2),
    "bayesian": dict(noise_variance=0.05),
    "newton_step": {},
}


@pytest.mark.parametrize("name", sorted(_ARCHITECTURES))
def test_architecture(name):
    check_architecture(_ARCHITECTURES[name](lookup("architecture", name)))


@pytest.mark.parametrize("name", sorted(_ALGORITHMS))
def test_learning_algorithm(name):
    check_learning_algorithm(lookup("learning_algorithm", name)(**_ALGORITHMS[name]))


def test_learning_algorithm_to_order_one_over_n():
    check_learning_algorithm(pdlt.Bayesian(noise_variance=0.05), order=None)


@pytest.mark.parametrize("name", available("observable"))
def test_observable(name):
    cls = lookup("observable", name)
    params = {"y_test": np.array([[0.2], [-0.1]])} if "y_test" in {a.name for a in cls.__attrs_attrs__} else {}
    check_observable(cls(**params))


import attrs  # noqa: E402  (the deliberately broken plugins below live at module level so they pickle)


@attrs.frozen(kw_only=True)
class _Biased(lookup("learning_algorithm", "bayesian")):
    """Adds a constant to the mean: breaks the z → −z symmetry."""

    name = "biased"

    def trained_distribution(self, stats, train, y_train, test, *, corrections=True):
        d = super().trained_distribution(stats, train, y_train, test, corrections=corrections)
        return attrs.evolve(d, mean_infinite=d.mean_infinite + 1.0)


@attrs.frozen(kw_only=True)
class _Kinked(pdlt.Observable):
    name = "kinked"
    requires = ("K",)
    description = "infinite where the kernel is small"

    def compute(self, values):
        return 1.0 / (np.diagonal(values["K"]) - np.diagonal(values["K"]))


@attrs.frozen(kw_only=True)
class _WrongKernel(lookup("architecture", "mlp")):
    name = "wrong_kernel"

    def next_layer(self, stats, ell, *, order="full", rule=None):
        s = super().next_layer(stats, ell, order=order, rule=rule)
        return attrs.evolve(s, K=1.5 * s.K)


def test_kits_detect_broken_plugins():
    with pytest.raises(AssertionError, match="negated mean"):
        check_learning_algorithm(_Biased(noise_variance=0.1))
    with pytest.raises(AssertionError, match="not finite"):
        check_observable(_Kinked())
    with pytest.raises(AssertionError, match="disagrees with the theory"):
        check_architecture(_WrongKernel(input_dim=2, hidden_widths=(8,), output_dim=2, activation=TANH), orders=("leading",))
