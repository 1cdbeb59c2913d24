"""Built-in observables: functions of layer statistics and of trained distributions.

Each is a :class:`pdlt.Observable`: one formula on arrays, evaluated by the base class on the
theory (``pdlt.flow`` statistics, ``pdlt.solve`` results) and on ensembles of real networks
(``pdlt.ensemble.sample``, ``pdlt.training.train_ensemble``) with propagated standard errors.
The statistics observables use the one-neuron combinations (V_one_neuron, A_one_neuron) so that
they are measurable on a layer of any width, including a single output.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from pdlt.errors import ParameterError
from pdlt.hookspecs import hookimpl
from pdlt.observable import Observable

__all__ = [
    "KernelDiagonal",
    "KernelCorrelation",
    "NonGaussianity",
    "NTKVarianceRatio",
    "TrainedMean",
    "TrainedVariance",
    "TestMSE",
    "TestBiasSquared",
    "TestVariance",
]


def _diag4(T: np.ndarray) -> np.ndarray:
    return np.einsum("aaaa->a", T)


@attrs.frozen(kw_only=True)
class KernelDiagonal(Observable):
    """E[z_{i;α}²] = K_αα + G1_αα/n per input α, shape (N,) (book §4.3, §4.5)."""

    name: ClassVar[str] = "kernel_diagonal"
    source: ClassVar[str] = "statistics"
    requires: ClassVar[tuple[str, ...]] = ("K",)
    description: ClassVar[str] = "E[z_α²] = K_αα (+ G1_αα/n): the preactivation variance per input"

    def compute(self, values):
        return np.diagonal(values["K"]).copy()


@attrs.frozen(kw_only=True)
class KernelCorrelation(Observable):
    """ρ_αβ = K_αβ/√(K_αα K_ββ), shape (N, N): the cosine of the angle between two inputs'
    representations, whose flow over depth the perpendicular susceptibility χ_⊥ governs (book §5.1)."""

    name: ClassVar[str] = "kernel_correlation"
    source: ClassVar[str] = "statistics"
    requires: ClassVar[tuple[str, ...]] = ("K",)
    description: ClassVar[str] = "ρ_αβ = K_αβ/√(K_αα K_ββ): correlation of two inputs' preactivations"

    def compute(self, values):
        K = values["K"]
        d = np.sqrt(np.diagonal(K))
        return K / np.outer(d, d)


@attrs.frozen(kw_only=True)
class NonGaussianity(Observable):
    """V_(αα)(αα)/(n K_αα²) per input α, shape (N,): the normalised four-point vertex (book §4.3, §5.4).

    Notes
    -----
    Measured through the one-neuron connected fourth moment,
    n (E[z⁴] − 3 E[z²]²) = V_(αα)(αα) + V_(αα)(αα) + V_(αα)(αα), so it is defined at any layer
    width: it is one third of the excess kurtosis of z_{i;α}.  At criticality it grows like ℓ/n
    (the depth-to-width ratio controls the 1/n expansion).  K is the finite-width K + G1/n in the
    corrected theory and on real networks.
    """

    name: ClassVar[str] = "non_gaussianity"
    source: ClassVar[str] = "statistics"
    requires: ClassVar[tuple[str, ...]] = ("K", "V_one_neuron", "n")
    description: ClassVar[str] = "V_(αα)(αα)/(n K_αα²): normalised four-point vertex (excess kurtosis / 3)"

    def compute(self, values):
        k = np.diagonal(values["K"])
        return _diag4(values["V_one_neuron"]) / (3.0 * values["n"] * k * k)


@attrs.frozen(kw_only=True)
class NTKVarianceRatio(Observable):
    """Var[Ĥ_{ii;αα}]/E[Ĥ_{ii;αα}]² = (A_(αα)(αα) + 2 B_αααα)/(n Θ_αα²) per input, shape (N,) (book §8.3).

    The relative fluctuation of the NTK across initializations: zero at infinite width (the NTK
    is frozen and deterministic), O(ℓ/n) at criticality.
    """

    name: ClassVar[str] = "ntk_variance_ratio"
    source: ClassVar[str] = "statistics"
    requires: ClassVar[tuple[str, ...]] = ("Theta", "A_one_neuron", "n")
    description: ClassVar[str] = "Var[Ĥ_αα]/Θ_αα² = (A + 2B)_αααα/(n Θ_αα²): relative NTK fluctuation"

    def compute(self, values):
        t = np.diagonal(values["Theta"])
        return _diag4(values["A_one_neuron"]) / (values["n"] * t * t)


@attrs.frozen(kw_only=True)
class TrainedMean(Observable):
    """E[z_{i;β̇}] of the trained network at the test points, shape (N_test, n_L) (book §10.2, §∞.2)."""

    name: ClassVar[str] = "trained_mean"
    source: ClassVar[str] = "trained"
    requires: ClassVar[tuple[str, ...]] = ("mean",)
    description: ClassVar[str] = "E[z] of trained networks at the test points"

    def compute(self, values):
        return np.array(values["mean"], dtype=float)


@attrs.frozen(kw_only=True)
class TrainedVariance(Observable):
    """Var[z_{i;β̇}] of the trained network at the test points, shape (N_test, n_L)."""

    name: ClassVar[str] = "trained_variance"
    source: ClassVar[str] = "trained"
    requires: ClassVar[tuple[str, ...]] = ("covariance",)
    description: ClassVar[str] = "Var[z] of trained networks at the test points"

    def compute(self, values):
        return np.einsum("aiai->ai", values["covariance"]).copy()


def _labels(value):
    if value is None:
        return None
    y = np.array(value, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or not np.all(np.isfinite(y)):
        raise ParameterError(
            f"The 'y_test' parameter must be a finite array of shape (N_test, n_L) or (N_test,). Got {value!r} instead."
        )
    y.setflags(write=False)
    return y


@attrs.frozen(kw_only=True)
class _TestError(Observable):
    y_test: np.ndarray = attrs.field(converter=_labels, eq=attrs.cmp_using(eq=np.array_equal))
    source: ClassVar[str] = "trained"

    def _parts(self, values):
        mean = values["mean"]
        if mean.shape != self.y_test.shape:
            raise ParameterError(
                f"The 'y_test' parameter of the observable {self.name!r} must have the shape of the trained mean "
                f"{mean.shape}. Got {self.y_test.shape} instead."
            )
        bias2 = 0.5 * ((mean - self.y_test) ** 2).sum(axis=1).mean()
        var = 0.5 * np.einsum("aiai->ai", values["covariance"]).sum(axis=1).mean()
        return bias2, var


@attrs.frozen(kw_only=True)
class TestMSE(_TestError):
    """Expected test loss ½ Σ_i E[(z_{i;β̇} − y_{i;β̇})²], averaged over the test points (book §10.3).

    Parameters
    ----------
    y_test : array_like, shape (N_test, n_L)
        The true test labels.  ``test_mse = test_bias_squared + test_variance``.
    """

    name: ClassVar[str] = "test_mse"
    requires: ClassVar[tuple[str, ...]] = ("mean", "covariance")
    description: ClassVar[str] = "½ Σ_i E[(z − y)²] per test point: generalization error (needs y_test)"

    def compute(self, values):
        b, v = self._parts(values)
        return np.asarray(b + v)


@attrs.frozen(kw_only=True)
class TestBiasSquared(_TestError):
    """½ Σ_i (E[z_{i;β̇}] − y_{i;β̇})² averaged over the test points: the bias part of the test loss (§10.3)."""

    name: ClassVar[str] = "test_bias_squared"
    requires: ClassVar[tuple[str, ...]] = ("mean", "covariance")
    description: ClassVar[str] = "½ Σ_i (E[z] − y)² per test point: bias part of the test loss (needs y_test)"

    def compute(self, values):
        return np.asarray(self._parts(values)[0])


@attrs.frozen(kw_only=True)
class TestVariance(_TestError):
    """½ Σ_i Var[z_{i;β̇}] averaged over the test points: the variance part of the test loss (§10.3).

    ``y_test`` only fixes the shape (the variance does not depend on the labels)."""

    name: ClassVar[str] = "test_variance"
    requires: ClassVar[tuple[str, ...]] = ("mean", "covariance")
    description: ClassVar[str] = "½ Σ_i Var[z] per test point: variance part of the test loss (needs y_test)"

    def compute(self, values):
        return np.asarray(self._parts(values)[1])


@hookimpl
def pdlt_register_observables():
    return [KernelDiagonal, KernelCorrelation, NonGaussianity, NTKVarianceRatio, TrainedMean, TrainedVariance,
            TestMSE, TestBiasSquared, TestVariance]
