"""Observables: one formula, evaluated on the theory and on ensembles of real networks.

An :class:`Observable` is a named function of the statistics of a layer (K, V, Θ, A, …) or of the
distribution of trained outputs (mean, covariance).  Its formula, :meth:`Observable.compute`, acts
on plain arrays; the base class feeds it either the theory (:class:`pdlt.flow.Statistics`,
:class:`pdlt.learning.TrainedDistribution`) or the Monte Carlo estimates of real networks
(:class:`pdlt.ensemble.LayerStatistics`, :class:`pdlt.training.TrainedEnsemble`), and in the second
case propagates the standard errors through the formula (first-order delta method).  Theory and
experiment are therefore compared by the same code (:meth:`Observable.compare`), which is the point
of the interface (design §4).  Concrete observables are plugins (``pdlt_plugins.observables``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import attrs
import numpy as np

from .errors import ParameterError

__all__ = ["Observable", "Comparison", "STATISTICS_FIELDS", "TRAINED_FIELDS", "DERIVED_FIELDS"]

#: Fields an observable of ``source = "statistics"`` may require.  ``n`` is the fan-in n_{ℓ−1}
#: that normalises every O(1/n) tensor (exact, no error).
STATISTICS_FIELDS = ("K", "Theta", "V", "V_one_neuron", "A", "A_one_neuron", "B", "D", "D_one_neuron", "F", "G1", "H1", "n")
#: One-neuron combinations the theory supplies from its tensors (what an ensemble with one output
#: neuron can measure): V_1234 + V_1324 + V_1423, A_1234 + B_1324 + B_1423, D_1234 + F_1324 + F_1423.
DERIVED_FIELDS = {"V_one_neuron": ("V", "V"), "A_one_neuron": ("A", "B"), "D_one_neuron": ("D", "F")}
#: Fields an observable of ``source = "trained"`` may require (``n`` is n_{L−1}).
TRAINED_FIELDS = ("mean", "covariance", "n")

# Above this many uncertain input components the delta method uses random directions instead of
# one finite difference per component (module docstring of Observable.empirical).
_EXACT_PROPAGATION_MAX = 4096
_RANDOM_DIRECTIONS = 512


def _one_neuron(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return first + np.einsum("acbd->abcd", second) + np.einsum("adbc->abcd", second)


@attrs.frozen(kw_only=True)
class Comparison:
    """Theory against an ensemble for one observable.

    Attributes
    ----------
    name : str
        The observable's registered name.
    theory : ndarray
        To order 1/n (the corrected statistics or trained distribution).
    infinite : ndarray or None
        At infinite width (None when the observable has no separate leading value).
    estimate : Estimate
        Ensemble mean ± standard error.
    """

    name: str
    theory: np.ndarray
    infinite: np.ndarray | None
    estimate: Any

    @property
    def z(self) -> np.ndarray:
        """(ensemble − theory)/SE, elementwise."""
        return self.estimate.z_score(self.theory)

    @property
    def z_infinite(self) -> np.ndarray | None:
        """(ensemble − infinite-width value)/SE, or None."""
        return None if self.infinite is None else self.estimate.z_score(self.infinite)

    @property
    def max_abs_z(self) -> float:
        z = np.abs(self.z)
        z = z[np.isfinite(z)]
        return float(z.max()) if z.size else math.nan


@attrs.frozen(kw_only=True)
class Observable:
    """Base class of observables (book §4.3, §8.3, §10.3; design §4).

    A subclass sets the class attributes ``name`` (its registry key, lowercase), ``source``
    (``"statistics"`` or ``"trained"``), ``requires`` (the fields its formula reads, from
    :data:`STATISTICS_FIELDS` or :data:`TRAINED_FIELDS`) and ``description`` (one line), and
    implements :meth:`compute`.  Parameters (e.g. test labels) are attrs fields.

    Calling an observable evaluates it: on theory objects it returns an array, on ensemble
    objects an :class:`~pdlt.ensemble.Estimate`:

    * ``Statistics`` or ``Flow`` (theory): K is K + G1/n and Θ is Θ + H1/n (``corrected=True``),
      the 1/n tensors V, A, B, D, F as computed; returns an ndarray.
    * ``LayerStatistics`` or ``EnsembleStatistics`` (real networks): the estimates, each O(1/n)
      tensor multiplied by n; returns an Estimate.
    * ``TrainedDistribution`` (theory): mean and covariance with their 1/n parts; an ndarray.
    * ``TrainedEnsemble`` (real networks trained by gradient descent): an Estimate.

    A Flow or EnsembleStatistics is evaluated at its output layer.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = "statistics"
    requires: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    # ------------------------------------------------------------------ the formula
    def compute(self, values: Mapping[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - interface
        """The observable as a function of the arrays named in ``requires``.

        Parameters
        ----------
        values : mapping of str to ndarray
            ``values[name]`` for every name in ``requires`` (``values["n"]`` is a 0-d float).

        Returns
        -------
        ndarray
            Same shape whatever the values; NaN where undefined (never a warning).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation
    def __call__(self, obj, *, corrected: bool = True):
        if _is_ensemble(obj):
            return self.empirical(obj)
        return self.theory(obj, corrected=corrected)

    def theory(self, obj, *, corrected: bool = True) -> np.ndarray:
        """Evaluate on theory: a :class:`~pdlt.flow.Statistics` (or Flow: its output layer) or a
        :class:`~pdlt.learning.TrainedDistribution`.

        ``corrected=False`` drops the 1/n parts (K instead of K + G1/n, Θ instead of Θ + H1/n, the
        infinite-width trained mean and covariance); the 1/n tensors themselves are unchanged.
        """
        values = self._theory_values(obj, corrected)
        return np.asarray(self._compute(values), dtype=float)

    def empirical(self, obj):
        """Evaluate on an ensemble of real networks, with propagated standard errors.

        Parameters
        ----------
        obj : LayerStatistics, EnsembleStatistics (its output layer) or TrainedEnsemble

        Returns
        -------
        Estimate
            ``mean``: the formula applied to the ensemble means.  ``stderr``: first-order error
            propagation, SE² = Σ_c (∂f/∂x_c)² SE_c², with the derivatives by central differences
            (step 1e-4 (|x_c| + SE_c)); with more than 4096 uncertain components, an unbiased
            random-direction estimate of the same sum (512 Rademacher directions, fixed seed;
            relative accuracy ≈ 5%).

        Notes
        -----
        The ensemble estimates carry no covariances between components, so correlations (e.g.
        between the K and V estimated from the same networks) are neglected.  For ratios such as
        V/(nK²) the relative error of K is much smaller than that of V and this is immaterial.
        """
        from .ensemble import Estimate

        means, errors = self._empirical_values(obj)
        out = np.asarray(self._compute(means), dtype=float)
        return Estimate(mean=out, stderr=self._propagate(means, errors, out))

    def compare(self, theory_obj, ensemble_obj) -> Comparison:
        """Theory (to order 1/n and at infinite width) against an ensemble estimate."""
        th = self.theory(theory_obj, corrected=True)
        inf = self.theory(theory_obj, corrected=False)
        est = self.empirical(ensemble_obj)
        if est.shape != th.shape:
            raise ParameterError(
                f"The observable {self.name!r} has shape {th.shape} on the theory but {est.shape} on the ensemble: "
                "evaluate both on the same inputs and output width."
            )
        same = inf.shape == th.shape and np.array_equal(inf, th, equal_nan=True)
        return Comparison(name=self.name, theory=th, infinite=None if same else inf, estimate=est)

    # ------------------------------------------------------------------ helpers
    def _compute(self, values):
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.compute(values)

    def _check_source(self, kind: str, obj) -> None:
        if self.source != kind:
            raise ParameterError(
                f"The observable {self.name!r} is a function of {self.source!r} objects. Got a "
                f"{type(obj).__name__} (a {kind!r} object) instead."
            )

    def _theory_values(self, obj, corrected: bool) -> dict[str, np.ndarray]:
        from .flow import Flow, Statistics
        from .learning import TrainedDistribution

        if isinstance(obj, Flow):
            obj = obj[-1]
        if isinstance(obj, Statistics):
            self._check_source("statistics", obj)
            values = {}
            for name in self.requires:
                if name == "n":
                    values[name] = np.asarray(float(obj.fan_in))
                elif name == "K":
                    values[name] = np.asarray(obj.metric() if corrected else obj.K)
                elif name == "Theta":
                    values[name] = np.asarray(obj.ntk_mean() if corrected else obj.Theta)
                elif name in DERIVED_FIELDS:
                    first, second = (self._tensor(obj, f) for f in DERIVED_FIELDS[name])
                    values[name] = _one_neuron(first, second)
                else:
                    values[name] = self._tensor(obj, name)
            return values
        if isinstance(obj, TrainedDistribution):
            self._check_source("trained", obj)
            values = {}
            for name in self.requires:
                if name == "n":
                    values[name] = np.asarray(float(obj.width) if obj.width else math.inf)
                elif name == "mean":
                    values[name] = np.asarray(obj.mean if corrected else obj.mean_infinite)
                elif name == "covariance":
                    values[name] = np.asarray(obj.covariance if corrected else obj.covariance_infinite)
                else:
                    raise ParameterError(self._unknown_field(name, TRAINED_FIELDS))
            return values
        raise ParameterError(
            f"The observable {self.name!r} evaluates Statistics, Flow, TrainedDistribution (theory) or "
            f"LayerStatistics, EnsembleStatistics, TrainedEnsemble (real networks). Got {type(obj).__name__} instead."
        )

    def _tensor(self, stats, name: str) -> np.ndarray:
        if name not in STATISTICS_FIELDS:
            raise ParameterError(self._unknown_field(name, STATISTICS_FIELDS))
        value = getattr(stats, name)
        if value is None:
            raise ParameterError(
                f"The observable {self.name!r} needs the statistic {name!r}, which these Statistics do not hold. "
                "Compute them with pdlt.flow(net, X, order='full')."
            )
        return np.asarray(value)

    def _unknown_field(self, name: str, allowed) -> str:
        return (
            f"The observable {self.name!r} requires the field {name!r}, which is not one of "
            f"{', '.join(allowed)} (source {self.source!r})."
        )

    def _empirical_values(self, obj) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        from .ensemble import EnsembleStatistics, LayerStatistics
        from .training import TrainedEnsemble

        if isinstance(obj, EnsembleStatistics):
            obj = obj[-1]
        if isinstance(obj, LayerStatistics):
            self._check_source("statistics", obj)
            n, allowed = float(obj.fan_in), STATISTICS_FIELDS
        elif isinstance(obj, TrainedEnsemble):
            self._check_source("trained", obj)
            n, allowed = float(obj.widths[-2]), TRAINED_FIELDS
        else:
            raise ParameterError(
                f"The observable {self.name!r} evaluates LayerStatistics, EnsembleStatistics or TrainedEnsemble "
                f"on real networks. Got {type(obj).__name__} instead."
            )
        means, errors = {}, {}
        for name in self.requires:
            if name == "n":
                means[name], errors[name] = np.asarray(n), np.asarray(0.0)
                continue
            if name not in allowed or name in ("G1", "H1"):
                raise ParameterError(
                    f"The observable {self.name!r} requires {name!r}, which an ensemble of real networks does not "
                    f"estimate separately (it measures K + G1/n and Θ + H1/n as 'K' and 'Theta')."
                    if name in ("G1", "H1") else self._unknown_field(name, allowed)
                )
            est = getattr(obj, name)
            if est is None:
                raise ParameterError(
                    f"The observable {self.name!r} needs {name!r}, which this ensemble does not hold "
                    "(sample it with ntk=True for the NTK statistics)."
                )
            means[name] = np.asarray(est.mean, dtype=float)
            errors[name] = np.asarray(est.stderr, dtype=float)
        return means, errors

    def _propagate(self, means, errors, out) -> np.ndarray:
        names = [k for k in means if np.any(np.nan_to_num(errors[k]) > 0)]
        if not names:
            return np.zeros_like(out)
        flat_x = np.concatenate([means[k].ravel() for k in names])
        flat_se = np.concatenate([np.nan_to_num(errors[k], nan=0.0).ravel() for k in names])
        sizes = [means[k].size for k in names]
        active = np.flatnonzero(flat_se > 0)
        step = 1e-4 * (np.abs(np.nan_to_num(flat_x)) + flat_se)

        def evaluate(vec):
            vals = dict(means)
            for k, part in zip(names, np.split(vec, np.cumsum(sizes)[:-1])):
                vals[k] = part.reshape(means[k].shape)
            return np.asarray(self._compute(vals), dtype=float)

        var = np.zeros(out.shape)
        if active.size <= _EXACT_PROPAGATION_MAX:
            for c in active:
                e = np.zeros_like(flat_x)
                e[c] = step[c]
                deriv = (evaluate(flat_x + e) - evaluate(flat_x - e)) / (2 * step[c])
                var = var + (deriv * flat_se[c]) ** 2
        else:
            rng = np.random.default_rng(0)
            for _ in range(_RANDOM_DIRECTIONS):
                xi = np.zeros_like(flat_x)
                xi[active] = rng.choice((-1.0, 1.0), size=active.size)
                h = 1e-4
                d = (evaluate(flat_x + h * xi * flat_se) - evaluate(flat_x - h * xi * flat_se)) / (2 * h)
                var = var + d**2
            var = var / _RANDOM_DIRECTIONS
        return np.sqrt(var)


def _is_ensemble(obj) -> bool:
    from .ensemble import EnsembleStatistics, LayerStatistics
    from .training import TrainedEnsemble

    return isinstance(obj, (EnsembleStatistics, LayerStatistics, TrainedEnsemble))
