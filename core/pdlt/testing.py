"""Conformance kit and hypothesis strategies for plugin authors (scikit-learn's ``check_estimator``).

:func:`check_activation` runs one generic battery against any :class:`~pdlt.Activation`:
derivatives against finite differences, Taylor coefficients against derivatives, value-object
behaviour (hash, pickle, ``attrs.evolve``), parameter validation, finiteness and dtype, and —
once the Gaussian engine :mod:`pdlt.gaussian` is present — closed-form expectations against
quadrature.  pdlt runs it over every registered activation; third-party plugins should too.

The hypothesis strategies (:func:`activations`, :func:`covariance_blocks`, :func:`input_batches`)
import hypothesis lazily, so this module works without the test extras installed.
"""

from __future__ import annotations

import importlib
import math
import pickle
from typing import Any, Iterable, Mapping, Sequence

import attrs
import numpy as np

from .activation import MAX_DERIVATIVE_ORDER, Activation
from .errors import ParameterError

__all__ = [
    "check_activation",
    "check_architecture",
    "check_learning_algorithm",
    "check_observable",
    "reference_problem",
    "activations",
    "covariance_blocks",
    "input_batches",
]

# Eighth-order central stencil for f'(x): Σ_j c_j [f(x + j h) − f(x − j h)] / h, j = 1..4.
_FD_COEFFS = np.array([4 / 5, -1 / 5, 4 / 105, -1 / 280])
_FD_OFFSETS = np.arange(1, 5)
# With h = 1e-3 the truncation error (~h⁸ f⁽⁹⁾) is negligible and the rounding error is
# ~1e-12 |f|, far inside the 1e-6 tolerance; the stencil spans 4h = 4e-3 < the 1e-2 kink margin.
_FD_STEP = 1e-3
_FD_RTOL = 1e-6
_KINK_MARGIN = 1e-2
_TAYLOR_RTOL = 1e-9
_PARAMETERLESS_BUILTINS = (
    "linear", "relu", "tanh", "sin", "erf", "sigmoid", "softplus", "swish", "gelu", "perceptron", "exponential",
)


def _fail(activation: Activation, what: str) -> None:
    raise AssertionError(f"check_activation({activation!r}): {what}")


def _central_difference(f, z: np.ndarray, h: float = _FD_STEP) -> np.ndarray:
    """Eighth-order central difference of a vectorised f at the points z."""
    z = np.asarray(z, dtype=float)
    plus = f(z[..., None] + h * _FD_OFFSETS)
    minus = f(z[..., None] - h * _FD_OFFSETS)
    return ((plus - minus) @ _FD_COEFFS) / h


def _test_points(kinks: Sequence[float]) -> np.ndarray:
    """Points in [−3.3, 3.3], plus both sides of each kink, at least the kink margin from every kink."""
    # The offset keeps the grid off 0 and off symmetric pairs, where errors could cancel.
    pts = list(np.linspace(-3.3, 3.3, 23) + 0.0137)
    for x in kinks:
        pts += [x - 2 * _KINK_MARGIN, x + 2 * _KINK_MARGIN]
    pts = np.array(sorted(pts), dtype=float)
    if kinks:
        dist = np.min(np.abs(pts[:, None] - np.asarray(kinks, dtype=float)[None, :]), axis=1)
        pts = pts[dist >= _KINK_MARGIN + 4 * _FD_STEP]
    return pts


# --------------------------------------------------------------------------- individual checks
def _check_metadata(act: Activation) -> None:
    name = type(act).name
    if not isinstance(name, str) or not name or name != name.lower():
        _fail(act, f"the class attribute 'name' must be a non-empty lowercase string, got {name!r}")
    md = type(act).max_derivative
    if not isinstance(md, int) or not 0 <= md <= MAX_DERIVATIVE_ORDER:
        _fail(act, f"max_derivative must be an int in [0, {MAX_DERIVATIVE_ORDER}], got {md!r}")
    kinks = act.kinks
    if not isinstance(kinks, tuple) or not all(isinstance(k, float) and math.isfinite(k) for k in kinks):
        _fail(act, f"kinks must be a tuple of finite floats, got {kinks!r}")
    if list(kinks) != sorted(set(kinks)):
        _fail(act, f"kinks must be sorted and distinct, got {kinks!r}")
    slopes = act.scale_invariant_slopes
    if slopes is not None:
        if not (isinstance(slopes, tuple) and len(slopes) == 2 and all(isinstance(a, float) for a in slopes)):
            _fail(act, f"scale_invariant_slopes must be None or a tuple of two floats, got {slopes!r}")
        z = np.linspace(-3.0, 3.0, 13)
        expected = slopes[0] * z * (z > 0) + slopes[1] * z * (z < 0)
        if not np.allclose(act(z), expected, rtol=1e-12, atol=1e-12):
            _fail(act, f"scale_invariant_slopes={slopes} but σ(z) ≠ a₊ z Θ(z) + a₋ z Θ(−z) on {z}")
    try:
        act.derivative(0.5, md + 1)
    except ParameterError:
        pass
    else:
        _fail(act, f"derivative(z, {md + 1}) above max_derivative={md} must raise ParameterError")


def _check_finite(act: Activation) -> None:
    z = np.concatenate([np.linspace(-30.0, 30.0, 121), np.asarray(act.kinks, dtype=float)])
    z = z[np.abs(z) <= 30.0]
    for order in range(type(act).max_derivative + 1):
        out = act.derivative(z, order)
        if order == 0 and np.asarray(act(z)).dtype != np.float64:
            _fail(act, f"σ returned dtype {np.asarray(act(z)).dtype} for float64 input, expected float64")
        if out.shape != z.shape:
            _fail(act, f"order-{order} derivative changed the shape {z.shape} to {out.shape}")
        bad = ~np.isfinite(out)
        if bad.any():
            _fail(act, f"order-{order} derivative is not finite at z = {z[bad][:5]} (finite inputs in [−30, 30])")
    grid = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    if np.shape(act(grid)) != (2, 3) or np.shape(act.derivative(1.5, 0)) != ():
        _fail(act, "σ must preserve the shape of its input (scalars give 0-d results)")


def _check_derivatives(act: Activation) -> None:
    z = _test_points(act.kinks)
    for order in range(1, type(act).max_derivative + 1):
        exact = act.derivative(z, order)
        lower = act.derivative(z, order - 1)
        fd = _central_difference(lambda x: act.derivative(x, order - 1), z)
        scale = max(float(np.max(np.abs(exact))), float(np.max(np.abs(lower))))
        tol = _FD_RTOL * (np.abs(exact) + 1e-3 * scale) + 1e-300
        bad = np.abs(fd - exact) > tol
        if bad.any():
            i = int(np.argmax(bad))
            _fail(
                act,
                f"derivative(z, {order}) disagrees with the finite difference of derivative(z, {order - 1}): "
                f"at z = {z[i]!r}, exact {exact[i]!r}, finite difference {fd[i]!r} "
                f"({int(bad.sum())} of {z.size} points off by more than rtol {_FD_RTOL:g})",
            )


def _check_taylor(act: Activation) -> None:
    md = type(act).max_derivative
    count = md + 2
    coeffs = act.taylor_coefficients(count)
    if coeffs is None:
        return
    if 0.0 in act.kinks:
        _fail(act, "taylor_coefficients must be None when σ has a kink at 0")
    coeffs = np.asarray(coeffs)
    if coeffs.shape != (count,) or coeffs.dtype != np.float64 or not np.all(np.isfinite(coeffs)):
        _fail(act, f"taylor_coefficients({count}) must be {count} finite float64 values, got {coeffs!r}")
    zero = np.array(0.0)
    scale = max(1.0, float(np.max(np.abs(coeffs))))
    for p in range(md + 1):
        d = float(act.derivative(zero, p))
        if abs(coeffs[p] - d) > _TAYLOR_RTOL * abs(d) + 1e-12 * scale:
            _fail(act, f"taylor_coefficients()[{p}] = {coeffs[p]!r} but derivative(0, {p}) = {d!r}")
    # The first coefficient beyond max_derivative is checked against a finite difference.
    if all(abs(k) >= _KINK_MARGIN + 4 * _FD_STEP for k in act.kinks):
        fd = float(_central_difference(lambda x: act.derivative(x, md), zero))
        d_md = float(act.derivative(zero, md))
        if abs(coeffs[md + 1] - fd) > _FD_RTOL * (abs(fd) + 1e-3 * max(abs(d_md), 1.0)):
            _fail(act, f"taylor_coefficients()[{md + 1}] = {coeffs[md + 1]!r} but the finite difference at 0 is {fd!r}")


def _check_value_object(act: Activation) -> None:
    if not attrs.has(type(act)):
        _fail(act, "activations must be attrs classes (use @attrs.frozen(kw_only=True))")
    try:
        h = hash(act)
    except TypeError as exc:
        _fail(act, f"not hashable: {exc}")
    try:
        clone = pickle.loads(pickle.dumps(act))
    except Exception as exc:
        _fail(act, f"pickle round-trip failed: {type(exc).__name__}: {exc}")
    if clone != act or hash(clone) != h:
        _fail(act, f"pickle round-trip gave {clone!r}, which is not equal (or hashes differently)")
    evolved = attrs.evolve(act)
    if evolved != act or hash(evolved) != h:
        _fail(act, f"attrs.evolve without changes gave {evolved!r}, which is not equal")
    fields = attrs.fields(type(act))
    if fields:
        try:
            setattr(act, fields[0].name, getattr(act, fields[0].name))
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            _fail(act, "instances must be frozen")


def _check_bad_params(act: Activation, bad_params: Iterable[Mapping[str, Any]]) -> None:
    cls = type(act)
    for kwargs in bad_params:
        kwargs = dict(kwargs)
        try:
            obj = cls(**kwargs)
        except ParameterError as exc:
            if not any(name in str(exc) for name in kwargs):
                _fail(act, f"{cls.__name__}(**{kwargs!r}) raised ParameterError without naming the parameter: {exc}")
        except Exception as exc:
            _fail(act, f"{cls.__name__}(**{kwargs!r}) raised {type(exc).__name__} ({exc}); expected ParameterError")
        else:
            _fail(act, f"{cls.__name__}(**{kwargs!r}) was accepted ({obj!r}); expected ParameterError")


_BLOCKS_1D = np.array([[[0.3]], [[1.0]], [[2.5]]])
_BLOCKS_2D = np.array([[[1.0, 0.4], [0.4, 0.7]], [[1.5, -0.9], [-0.9, 1.2]], [[0.5, 0.1], [0.1, 2.0]]])


def _check_expectations(act: Activation) -> None:
    try:
        expect = importlib.import_module("pdlt.gaussian").expect
    except (ImportError, AttributeError):
        return  # the Gaussian engine is not part of this installation yet
    md = min(type(act).max_derivative, 2)
    requests = [((d,), _BLOCKS_1D) for d in range(md + 1)]
    requests += [(o, _BLOCKS_2D) for o in [(0, 0), (0, 1), (1, 1)] if max(o) <= md]
    for orders, K in requests:
        try:
            closed = expect(act, orders, K, method="closed")
        except NotImplementedError:
            continue
        if closed is None:
            continue
        vc, ec = (np.asarray(a, dtype=float) for a in closed)
        vq, eq = (np.asarray(a, dtype=float) for a in expect(act, orders, K, method="quadrature"))
        err = np.where(np.isfinite(ec), np.abs(ec), 0.0) + np.where(np.isfinite(eq), np.abs(eq), 0.0)
        tol = 1e-7 * np.abs(vq) + 1e-9 + 4 * err
        bad = ~(np.abs(vc - vq) <= tol)
        if bad.any():
            i = int(np.argmax(bad))
            _fail(
                act,
                f"closed-form ⟨σ^{orders}⟩_K = {vc[i]!r} ± {ec[i]!r} disagrees with quadrature {vq[i]!r} ± {eq[i]!r} "
                f"for K = {K[i].tolist()}",
            )


def check_activation(
    activation: Activation,
    *,
    bad_params: Iterable[Mapping[str, Any]] | None = None,
    check_expectations: bool = True,
) -> None:
    """Run the activation conformance battery; raise ``AssertionError`` on the first failure.

    Parameters
    ----------
    activation : Activation
        An instance of the activation class under test.
    bad_params : iterable of dict, optional
        Keyword arguments that must make ``type(activation)(**kwargs)`` raise
        :class:`~pdlt.errors.ParameterError` whose message names one of the keywords.
    check_expectations : bool, default True
        Compare ``pdlt.gaussian.expect(..., method="closed")`` with ``method="quadrature"`` on a
        few 1-D and 2-D covariance blocks (skipped when the engine is absent or has no closed form).

    Raises
    ------
    AssertionError
        Naming the failed property, the point and the values involved.

    Notes
    -----
    Checked, in order: metadata (``name``, ``max_derivative``, ``kinks``, ``scale_invariant_slopes``
    consistent with σ); σ and its derivatives float64, finite and shape-preserving on [−30, 30];
    ``derivative(z, k)`` against an eighth-order central difference (h = 1e-3) of
    ``derivative(z, k − 1)``, relative tolerance 1e-6, at points at least 1e-2 from every kink;
    ``taylor_coefficients`` against the derivatives at 0 (relative 1e-9) and, one order further,
    against a finite difference; hash, pickle round-trip, ``attrs.evolve`` and frozenness;
    ``bad_params``; Gaussian expectations.

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.testing import check_activation
    >>> check_activation(pdlt.activation("leaky_relu", slope=0.1), bad_params=[{"slope": -1.0}])
    """
    if not isinstance(activation, Activation):
        raise AssertionError(f"check_activation: {activation!r} is not an instance of pdlt.Activation")
    _check_metadata(activation)
    _check_finite(activation)
    _check_derivatives(activation)
    _check_taylor(activation)
    _check_value_object(activation)
    if bad_params is not None:
        _check_bad_params(activation, bad_params)
    if check_expectations:
        _check_expectations(activation)


# --------------------------------------------------------------------------- shared helpers
def _check_plugin_class(obj, kind: str, base: type, who: str) -> None:
    if not isinstance(obj, base):
        raise AssertionError(f"{who}: {obj!r} is not an instance of pdlt.{base.__name__}")
    name = type(obj).name
    if not isinstance(name, str) or not name or name != name.lower():
        raise AssertionError(f"{who}: the class attribute 'name' must be a non-empty lowercase string, got {name!r}")
    if not attrs.has(type(obj)):
        raise AssertionError(f"{who}: {kind} classes must be attrs classes (use @attrs.frozen(kw_only=True))")
    try:
        clone = pickle.loads(pickle.dumps(obj))
    except Exception as exc:
        raise AssertionError(f"{who}: pickle round-trip failed: {type(exc).__name__}: {exc}") from exc
    if clone != obj:
        raise AssertionError(f"{who}: pickle round-trip gave {clone!r}, which is not equal")
    if attrs.evolve(obj) != obj:
        raise AssertionError(f"{who}: attrs.evolve without changes gave an unequal object")
    fields = attrs.fields(type(obj))
    if fields:
        try:
            setattr(obj, fields[0].name, getattr(obj, fields[0].name))
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            raise AssertionError(f"{who}: instances must be frozen")


def _symmetric_psd(M: np.ndarray, what: str, who: str) -> None:
    M = np.asarray(M, dtype=float)
    scale = max(float(np.abs(M).max(initial=0.0)), 1e-300)
    if not np.allclose(M, M.T, rtol=1e-10, atol=1e-12 * scale):
        raise AssertionError(f"{who}: {what} is not symmetric: {M.tolist()}")
    low = float(np.linalg.eigvalsh(0.5 * (M + M.T))[0])
    if low < -1e-9 * scale:
        raise AssertionError(f"{who}: {what} is not positive semi-definite (smallest eigenvalue {low:.3g})")


def reference_problem(kind: str = "statistics"):
    """The small fixed problem the conformance checks evaluate plugins on.

    Parameters
    ----------
    kind : {"statistics", "trained"}

    Returns
    -------
    (net, data)
        ``"statistics"``: a tanh MLP of widths 2-8-8-2 and ``data = X``, the 3 built-in
        :func:`pdlt.data.default_inputs`.  ``"trained"``: a tanh MLP of widths 1-16-1 and
        ``data = (X_train, y_train, X_test)`` with X_train = (−0.5, 0.5), y_train = (−1, 1) and
        X_test = (−1, 0.25): a trained distribution has mean shape (2, 1), so ``y_test`` of an
        observable checked on it has shape (2, 1).
    """
    from .data import default_inputs
    from .plugins import lookup

    act = lookup("activation", "tanh")()
    mlp = lookup("architecture", "mlp")
    if kind == "statistics":
        return mlp(input_dim=2, hidden_widths=(8, 8), output_dim=2, activation=act), default_inputs()
    if kind == "trained":
        net = mlp(input_dim=1, hidden_widths=(16,), output_dim=1, activation=act, c_b=0.1, c_w=1.0)
        return net, (np.array([[-0.5], [0.5]]), np.array([[-1.0], [1.0]]), np.array([[-1.0], [0.25]]))
    raise ParameterError(f"The 'kind' parameter of reference_problem must be 'statistics' or 'trained'. Got {kind!r} instead.")


# --------------------------------------------------------------------------- architectures
def check_architecture(
    architecture,
    X=None,
    *,
    orders: Sequence[str] = ("leading", "full"),
    monte_carlo_size: int | None = 2000,
    k: float = 5.0,
    seed: int = 0,
) -> None:
    """Run the architecture conformance battery; raise ``AssertionError`` on the first failure.

    Parameters
    ----------
    architecture : Architecture
        An instance of the architecture under test (keep it small: the checks run its flow and,
        unless ``monte_carlo_size`` is None, an ensemble of its real networks).
    X : array_like, shape (N, input_dim), optional
        Inputs (default: the first ``min(3, …)`` built-in :func:`pdlt.data.default_inputs`, or
        points on a line when input_dim = 1).
    orders : sequence of {"leading", "full", "dntk"}
        The :func:`pdlt.flow` orders the architecture supports.
    monte_carlo_size : int or None
        Networks in the comparison of the output-layer K and Θ with ``sample_forward`` (None: skip).
    k : float
        Tolerance of that comparison in standard errors.

    Notes
    -----
    Checked: ``name``, attrs value object (pickle, ``attrs.evolve``, frozen); ``depth`` and
    ``widths``; for every order, one :class:`~pdlt.flow.Statistics` per layer numbered 1..L with
    ``width`` = n_ℓ and ``fan_in`` = n_{ℓ−1}, finite float64 tensors of the right shapes, K and Θ
    symmetric positive semi-definite, V symmetric within and between its pairs; the flow is
    deterministic; the output-layer two-point function and NTK mean of real networks
    (:func:`pdlt.ensemble.sample`) agree with the theory (K + G1/n and Θ + H1/n when "full" is
    supported, else K and Θ) within ``k`` standard errors.
    """
    from .architecture import Architecture
    from .flow import flow

    who = f"check_architecture({architecture!r})"
    _check_plugin_class(architecture, "architecture", Architecture, who)
    widths = architecture.widths
    if len(widths) != architecture.depth + 1:
        raise AssertionError(f"{who}: widths {widths} must have depth + 1 = {architecture.depth + 1} entries")
    if X is None:
        n0 = architecture.input_dim
        if n0 >= 2:
            from .data import default_inputs

            X = default_inputs(3, n0)
        else:
            X = np.array([[-1.0], [0.5], [1.5]])
    X = np.asarray(X, dtype=float)
    N = X.shape[0]
    last = None
    for order in orders:
        fl = flow(architecture, X, order=order)
        again = flow(architecture, X, order=order)
        if len(fl) != architecture.depth:
            raise AssertionError(f"{who}: flow(order={order!r}) has {len(fl)} layers, expected L = {architecture.depth}")
        for ell, s in enumerate(fl, start=1):
            where = f"{who}, order={order!r}, layer {ell}"
            if (s.layer, s.width, s.fan_in) != (ell, widths[ell], widths[ell - 1]):
                raise AssertionError(
                    f"{where}: (layer, width, fan_in) = {(s.layer, s.width, s.fan_in)}, expected {(ell, widths[ell], widths[ell - 1])}"
                )
            for name, shape in (("K", (N, N)), ("Theta", (N, N))) + (
                tuple((f, (N,) * 4) for f in ("V", "A", "B", "D", "F")) + (("G1", (N, N)), ("H1", (N, N)))
                if order != "leading" else ()
            ):
                value = getattr(s, name)
                if value is None or value.shape != shape or value.dtype != np.float64:
                    raise AssertionError(f"{where}: {name} must be a float64 array of shape {shape}, got {value!r}")
                if not np.all(np.isfinite(value)):
                    raise AssertionError(f"{where}: {name} has non-finite entries")
                if not np.array_equal(value, getattr(again[ell - 1], name)):
                    raise AssertionError(f"{where}: {name} differs between two identical calls (not deterministic)")
            _symmetric_psd(s.K, "K", where)
            _symmetric_psd(s.Theta, "Θ", where)
            if order != "leading":
                V = s.V
                scale = max(float(np.abs(V).max(initial=0.0)), 1e-300)
                for perm in ((1, 0, 2, 3), (2, 3, 0, 1)):
                    if not np.allclose(V, V.transpose(perm), rtol=1e-8, atol=1e-10 * scale):
                        raise AssertionError(f"{where}: V is not symmetric under the index permutation {perm}")
        last = fl
    if monte_carlo_size is not None and last is not None:
        from .ensemble import sample

        th = last[-1]
        mc = sample(architecture, X, monte_carlo_size, seed, progress=False)[-1]
        for name, value in (("K", th.metric()), ("Theta", th.ntk_mean())):
            z = np.abs(getattr(mc, name).z_score(value))
            if not np.all(z <= k):
                i = np.unravel_index(int(np.nanargmax(z)), z.shape)
                raise AssertionError(
                    f"{who}: the output-layer {name} of {monte_carlo_size} real networks disagrees with the theory: "
                    f"component {i}: ensemble {getattr(mc, name).mean[i]!r} ± {getattr(mc, name).stderr[i]!r}, "
                    f"theory {value[i]!r} (|z| = {z[i]:.2f} > {k})"
                )


# --------------------------------------------------------------------------- learning algorithms
def check_learning_algorithm(algorithm, net=None, data=None, *, order: str | None = "leading") -> None:
    """Run the learning-algorithm conformance battery; raise ``AssertionError`` on the first failure.

    Parameters
    ----------
    algorithm : LearningAlgorithm
        An instance of the algorithm under test.
    net, data : optional
        Architecture and ``(X_train, y_train, X_test)`` (default: :func:`reference_problem`
        ``("trained")``).
    order : {"leading", "full", "dntk", None}
        Passed to :func:`pdlt.solve`; None: the algorithm's own ``order`` (its O(1/n) result, slower).

    Notes
    -----
    Checked: ``name``, ``order`` and the attrs value object; :func:`pdlt.solve` returns a
    :class:`~pdlt.learning.TrainedDistribution` of the right shapes with finite parts, a symmetric
    positive semi-definite infinite-width covariance, ``mean = mean_infinite + mean_correction`` and
    a ``train_fit`` on the training inputs; it is deterministic; and, because the distribution of
    networks is invariant under z → −z (last layer's weights and biases negated), training on −y
    gives exactly the negated mean and the same covariance, at every order in 1/n.
    """
    from .learning import LearningAlgorithm, TrainedDistribution
    from .solver import solve

    who = f"check_learning_algorithm({algorithm!r})"
    _check_plugin_class(algorithm, "learning algorithm", LearningAlgorithm, who)
    if type(algorithm).order not in ("leading", "full", "dntk"):
        raise AssertionError(f"{who}: the class attribute 'order' must be 'leading', 'full' or 'dntk', got {type(algorithm).order!r}")
    if net is None or data is None:
        net, data = reference_problem("trained")
    X_train, y_train, X_test = (np.asarray(a, dtype=float) for a in data)
    y_train = y_train if y_train.ndim == 2 else y_train[:, None]
    d = solve(net, algorithm, X_train, y_train, X_test, order=order, warn_regime=False)
    if not isinstance(d, TrainedDistribution):
        raise AssertionError(f"{who}: solve returned {type(d).__name__}, expected TrainedDistribution")
    NB, nL = X_test.shape[0], net.output_dim
    if d.mean.shape != (NB, nL) or d.covariance.shape != (NB, nL, NB, nL):
        raise AssertionError(f"{who}: mean/covariance shapes {d.mean.shape}/{d.covariance.shape}, expected {(NB, nL)}/{(NB, nL, NB, nL)}")
    if d.train_fit is None or d.train_fit.mean.shape != (X_train.shape[0], nL):
        raise AssertionError(f"{who}: solve must attach train_fit on the {X_train.shape[0]} training inputs")
    for c in range(nL):
        _symmetric_psd(d.covariance_infinite[:, c, :, c], f"covariance_infinite of output {c}", who)
    if d.mean_correction is not None and not np.allclose(d.mean, d.mean_infinite + d.mean_correction, rtol=1e-12, atol=0):
        raise AssertionError(f"{who}: mean != mean_infinite + mean_correction")
    again = solve(net, algorithm, X_train, y_train, X_test, order=order, warn_regime=False)
    if not (np.array_equal(again.mean, d.mean) and np.array_equal(again.covariance, d.covariance)):
        raise AssertionError(f"{who}: two identical calls of solve gave different results (not deterministic)")
    flipped = solve(net, algorithm, X_train, -y_train, X_test, order=order, warn_regime=False)
    scale = max(float(np.abs(d.mean).max(initial=0.0)), float(np.abs(d.covariance).max(initial=0.0)), 1e-300)
    if not np.allclose(flipped.mean, -d.mean, rtol=1e-8, atol=1e-10 * scale):
        raise AssertionError(
            f"{who}: training on −y must give the negated mean (z → −z symmetry); got {flipped.mean.tolist()} "
            f"for {d.mean.tolist()}"
        )
    if not np.allclose(flipped.covariance, d.covariance, rtol=1e-8, atol=1e-10 * scale):
        raise AssertionError(f"{who}: training on −y must give the same covariance (z → −z symmetry)")


# --------------------------------------------------------------------------- observables
def _exact_ensemble(theory):
    """Theory values dressed as an ensemble with zero standard errors (same normalisation)."""
    from .ensemble import Estimate, LayerStatistics
    from .learning import TrainedDistribution
    from .observable import DERIVED_FIELDS, _one_neuron
    from .training import TrainedEnsemble

    def exact(x):
        return Estimate(mean=x, stderr=np.zeros_like(np.asarray(x, dtype=float)))

    if isinstance(theory, TrainedDistribution):
        return TrainedEnsemble(mean=exact(theory.mean), covariance=exact(theory.covariance), steps=0, max_residual=0.0,
                               size=2, seed=0, n_batches=2, learning_rate=1.0, widths=(1, theory.width, theory.n_outputs))
    fields = {name: exact(getattr(theory, name)) for name in ("V", "A", "B", "D", "F")}
    fields.update({name: exact(_one_neuron(getattr(theory, a), getattr(theory, b))) for name, (a, b) in DERIVED_FIELDS.items()})
    return LayerStatistics(ell=theory.layer, width=theory.width, fan_in=theory.fan_in, K=exact(theory.metric()),
                           Theta=exact(theory.ntk_mean()), **fields)


def check_observable(observable, theory=None) -> None:
    """Run the observable conformance battery; raise ``AssertionError`` on the first failure.

    Parameters
    ----------
    observable : Observable
        An instance of the observable under test.
    theory : Statistics, Flow or TrainedDistribution, optional
        What to evaluate it on (default: the output layer, or the trained distribution, of
        :func:`reference_problem` for the observable's ``source``; an observable with labels must
        then take ``y_test`` of shape (2, 1)).

    Notes
    -----
    Checked: ``name``, ``source``, ``requires`` (known fields), ``description`` and the attrs value
    object; :meth:`~pdlt.Observable.compute` returns a finite float array of the same shape on
    repeated calls and on the infinite-width theory (``corrected=False``), without modifying its
    inputs; evaluated on an ensemble whose estimates equal the theory with zero errors it returns
    the theory value with zero standard error (theory and experiment share one formula); with
    errors on the inputs, the propagated standard error is finite, non-negative and scales linearly
    with them.
    """
    from .ensemble import Estimate
    from .flow import Flow
    from .observable import STATISTICS_FIELDS, TRAINED_FIELDS, Observable

    who = f"check_observable({observable!r})"
    _check_plugin_class(observable, "observable", Observable, who)
    cls = type(observable)
    if cls.source not in ("statistics", "trained"):
        raise AssertionError(f"{who}: the class attribute 'source' must be 'statistics' or 'trained', got {cls.source!r}")
    allowed = STATISTICS_FIELDS if cls.source == "statistics" else TRAINED_FIELDS
    if not isinstance(cls.requires, tuple) or not cls.requires or not set(cls.requires) <= set(allowed):
        raise AssertionError(f"{who}: 'requires' must be a non-empty tuple of fields from {allowed}, got {cls.requires!r}")
    if not isinstance(cls.description, str) or not cls.description.strip():
        raise AssertionError(f"{who}: the class attribute 'description' must be a non-empty one-line string")
    if theory is None:
        if cls.source == "statistics":
            from .flow import flow

            net, X = reference_problem("statistics")
            theory = flow(net, X)[-1]
        else:
            from .solver import solve
            from .plugins import lookup

            net, (Xa, ya, Xb) = reference_problem("trained")
            theory = solve(net, lookup("learning_algorithm", "bayesian")(noise_variance=0.01), Xa, ya, Xb,
                           order="full", warn_regime=False)
    if isinstance(theory, Flow):
        theory = theory[-1]
    value = observable.theory(theory)
    if not isinstance(value, np.ndarray) or value.dtype != np.float64:
        raise AssertionError(f"{who}: the value must be a float64 ndarray, got {value!r}")
    if not np.all(np.isfinite(value)):
        raise AssertionError(f"{who}: the value on the reference theory is not finite: {value!r}")
    if not np.array_equal(observable.theory(theory), value):
        raise AssertionError(f"{who}: two evaluations gave different values (not deterministic)")
    leading = observable.theory(theory, corrected=False)
    if leading.shape != value.shape:
        raise AssertionError(f"{who}: shape {leading.shape} at infinite width but {value.shape} at order 1/n")
    values = observable._theory_values(theory, True)
    frozen = {k: np.array(v, copy=True) for k, v in values.items()}
    observable.compute(values)
    if any(not np.array_equal(values[k], frozen[k]) for k in values):
        raise AssertionError(f"{who}: compute() modified its input arrays")
    ens = _exact_ensemble(theory)
    est = observable.empirical(ens)
    if not isinstance(est, Estimate) or est.shape != value.shape:
        raise AssertionError(f"{who}: the ensemble evaluation must be an Estimate of shape {value.shape}, got {est!r}")
    if not np.allclose(est.mean, value, rtol=1e-12, atol=1e-14) or np.any(est.stderr != 0):
        raise AssertionError(
            f"{who}: on an ensemble equal to the theory (zero errors) it gave {est.mean!r} ± {est.stderr!r}, "
            f"expected {value!r} ± 0: theory and ensemble must go through the same formula"
        )
    means, _ = observable._empirical_values(ens)
    errs = {k: 1e-3 * (np.abs(v) + 1e-3) if k != "n" else np.asarray(0.0) for k, v in means.items()}
    se1 = observable._propagate(means, errs, value)
    se2 = observable._propagate(means, {k: 2 * v for k, v in errs.items()}, value)
    if not (np.all(np.isfinite(se1)) and np.all(se1 >= 0)):
        raise AssertionError(f"{who}: propagated standard errors must be finite and >= 0, got {se1!r}")
    if not np.allclose(se2, 2 * se1, rtol=1e-4, atol=1e-8 * float(se1.max(initial=0.0)) + 1e-300):
        raise AssertionError(f"{who}: propagated standard errors must scale linearly with the input errors")


# --------------------------------------------------------------------------- hypothesis strategies
def activations(names: Iterable[str] | None = None):
    """Strategy drawing built-in activations with valid random parameters.

    Parameters
    ----------
    names : iterable of str, optional
        Restrict to these registered names (default: all built-ins).

    Returns
    -------
    hypothesis.strategies.SearchStrategy[Activation]

    Notes
    -----
    Parameter ranges: leaky slope in [0, 1]; scale-invariant slopes in [−3, 3], not both zero;
    monomial power 1..6 (so that σ stays finite on [−30, 30]).
    """
    from hypothesis import strategies as st

    from .plugins import get_plugin_manager, registry

    # Built-ins only (no entry points), looked up by name: the core never imports pdlt_plugins.
    reg = registry(get_plugin_manager(load_entrypoints=False), "activation")
    slope = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
    by_name = {name: st.just(reg[name]()) for name in _PARAMETERLESS_BUILTINS}
    by_name["leaky_relu"] = st.floats(0.0, 1.0, allow_nan=False).map(lambda s: reg["leaky_relu"](slope=s))
    by_name["scale_invariant"] = (
        st.tuples(slope, slope)
        .filter(lambda ab: ab != (0.0, 0.0))
        .map(lambda ab: reg["scale_invariant"](a_plus=ab[0], a_minus=ab[1]))
    )
    by_name["monomial"] = st.integers(1, 6).map(lambda p: reg["monomial"](power=p))
    if names is not None:
        names = list(names)
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise ParameterError(
                f"The 'names' parameter of activations must name built-in activations. Got {unknown!r} instead. "
                f"Available: {', '.join(sorted(by_name))}."
            )
        by_name = {n: by_name[n] for n in names}
    return st.one_of(*by_name.values())


def _rotation(angles: Sequence[float], k: int) -> np.ndarray:
    """Orthogonal k×k matrix as a product of Givens rotations (always exactly orthogonal in form)."""
    q = np.eye(k)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    for (i, j), theta in zip(pairs, angles):
        g = np.eye(k)
        c, s = math.cos(theta), math.sin(theta)
        g[i, i] = g[j, j] = c
        g[i, j], g[j, i] = -s, s
        q = q @ g
    return q


def covariance_blocks(k: int, *, min_eig: float = 1e-2, max_scale: float = 4.0, allow_singular: bool = False):
    """Strategy for k×k symmetric positive semi-definite float64 covariance blocks.

    Parameters
    ----------
    k : int
        Block size (k >= 1; the engine uses k = 1..4).
    min_eig, max_scale : float
        Eigenvalues of non-singular blocks lie in [min_eig, max_scale] (up to rounding).
    allow_singular : bool, default False
        Also draw exactly singular blocks whose rows/columns are duplicated, as produced by
        coinciding inputs (e.g. K = [[a, a], [a, a]]).

    Returns
    -------
    hypothesis.strategies.SearchStrategy[numpy.ndarray]
        Arrays of shape (k, k), exactly symmetric.
    """
    from hypothesis import strategies as st

    if not (isinstance(k, int) and k >= 1):
        raise ParameterError(f"The 'k' parameter of covariance_blocks must be an integer >= 1. Got {k!r} instead.")
    if not (0 < min_eig < max_scale and math.isfinite(max_scale)):
        raise ParameterError(
            "The 'min_eig' and 'max_scale' parameters of covariance_blocks must satisfy 0 < min_eig < max_scale. "
            f"Got min_eig={min_eig!r}, max_scale={max_scale!r} instead."
        )

    def block(n: int):
        eigs = st.lists(st.floats(min_eig, max_scale), min_size=n, max_size=n)
        angles = st.lists(st.floats(0.0, 2 * math.pi), min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2)

        def build(args):
            lam, theta = args
            q = _rotation(theta, n)
            m = (q * np.asarray(lam)) @ q.T
            return (m + m.T) / 2

        return st.tuples(eigs, angles).map(build)

    regular = block(k)
    if not allow_singular or k == 1:
        return regular

    @st.composite
    def singular(draw):
        # Map the k slots onto r < k distinct inputs; slots sharing an input share rows and columns.
        r = draw(st.integers(1, k - 1))
        extra = draw(st.lists(st.integers(0, r - 1), min_size=k - r, max_size=k - r))
        slots = draw(st.permutations(list(range(r)) + extra))
        base = draw(block(r))
        idx = np.asarray(slots)
        return np.ascontiguousarray(base[np.ix_(idx, idx)])

    return st.one_of(regular, singular())


def input_batches(n_inputs: int, dim: int, *, max_abs: float = 3.0, allow_duplicates: bool = False):
    """Strategy for input batches X of shape (n_inputs, dim), float64, entries in [−max_abs, max_abs].

    Parameters
    ----------
    n_inputs, dim : int
        Number of inputs N and input dimension n_0 (both >= 1).
    max_abs : float
        Bound on the absolute value of every entry.
    allow_duplicates : bool, default False
        Allow repeated rows (coinciding inputs, which give singular kernels).

    Returns
    -------
    hypothesis.strategies.SearchStrategy[numpy.ndarray]
    """
    from hypothesis import strategies as st

    for name, value in (("n_inputs", n_inputs), ("dim", dim)):
        if not (isinstance(value, int) and value >= 1):
            raise ParameterError(f"The {name!r} parameter of input_batches must be an integer >= 1. Got {value!r} instead.")
    entry = st.floats(-max_abs, max_abs, allow_nan=False, allow_infinity=False)
    row = st.lists(entry, min_size=dim, max_size=dim).map(tuple)
    if allow_duplicates:
        rows = st.lists(row, min_size=n_inputs, max_size=n_inputs)
    else:
        # -0.0 and 0.0 are equal floats, so rows differing only in the sign of zero count as duplicates.
        rows = st.lists(row, min_size=n_inputs, max_size=n_inputs, unique_by=lambda r: tuple(x + 0.0 for x in r))
    return rows.map(lambda rs: np.array(rs, dtype=np.float64).reshape(n_inputs, dim))
