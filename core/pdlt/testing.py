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

__all__ = ["check_activation", "activations", "covariance_blocks", "input_batches"]

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
