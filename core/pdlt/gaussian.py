"""Gaussian expectations of products of an activation and its derivatives.

Every recursion of the effective theory needs single-neuron Gaussian expectations

    ⟨Π_s σ^(d_s)(z_s) · H_e(z)⟩_K ,   z ~ N(0, K),  k ≤ 4 slots,

where H_e is an optional Hermite insertion (the integration-by-parts form of a derivative
acting on the whole product, theory/init.md §0).  :func:`expect` evaluates whole batches of
k×k covariance blocks at once.  It first asks the ``pdlt_gaussian_expectation`` hook (closed
forms registered by plugins, e.g. arc-cosine kernels for ReLU), then falls back to quadrature.

Quadrature strategy (why it looks like this):

* Slots whose variables coincide (identical inputs, or the same input used twice) make K
  singular; they are merged into one variable carrying the product of their factors, so
  degenerate blocks are exact rather than ill-conditioned.
* Derivatives beyond the activation's ordinary ones (δ, δ' for ReLU-type σ) are moved onto the
  Gaussian by integration by parts, producing Hermite polynomials in y = K⁻¹z.
* The remaining integral is nested in Cholesky coordinates z = L u; at each level the
  integrand is smooth except where that level's own factor has a kink or a sharp transition,
  so the 1-D rule is a composite Gauss–Legendre rule with panel breaks at those points
  (mapped into u), truncated at |u| ≤ 8.5 (Gaussian tail < 1e-16).  The error estimate is the
  difference from the same rule with fewer nodes per panel; callers that do not need it skip
  that pass (``estimate_error=False``).
* The grid does not depend on the derivative orders and the integrand is a product over levels,
  so :func:`quadrature_many` integrates several order patterns on one grid, summing the
  innermost level first (the four-point tensors of the 1/n flow need 8 patterns per block).
* All pairs of an N×N kernel (smooth σ) go through Mehler's expansion (:func:`pair_matrix`),
  each pair summed only as far as its rigorous truncation bound requires.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from .activation import Activation
from .errors import AccuracyWarning, NumericalError, ParameterError, warn

__all__ = ["expect", "quadrature", "quadrature_many", "QuadratureRule", "validate_blocks"]

_T = 8.5
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Breakpoints around each feature point of σ (in units of the activation's feature width):
# graded panels resolve sharp-but-smooth transitions such as tanh(s·u) at large variance s².
_OFFSETS = np.array([-4.0, -1.5, -0.5, 0.0, 0.5, 1.5, 4.0])
# 1-2-D rules also break panels on a coarse grid so that oscillating σ (sin) stay resolved
_OFFSETS_WIDE = np.array([-24.0, -16.0, -12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, -0.4, 0.0, 0.4, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0])
# breaks at the transitions of inner variables, in units of their smoothing width
_INNER_OFFSETS = np.array([-1.5, -0.5, 0.0, 0.5, 1.5])


class QuadratureRule:
    """Nodes per panel for each number of distinct variables (1–4) and the panel layout.

    Parameters
    ----------
    nodes : dict int -> int
        Gauss–Legendre nodes per panel when the integral has that many distinct variables.
    """

    def __init__(
        self,
        nodes: dict[int, int] | None = None,
        offsets: dict[int, Sequence[float]] | None = None,
        max_block_nodes: int = 4_000_000,
    ):
        self.nodes = {1: 16, 2: 10, 3: 24, 4: 20} if nodes is None else dict(nodes)
        default_offsets = {1: _OFFSETS_WIDE, 2: _OFFSETS_WIDE, 3: (-1.5, 0.0, 1.5), 4: (0.0,)}
        self.offsets = {k: np.asarray(v, dtype=float) for k, v in (default_offsets if offsets is None else offsets).items()}
        self.max_block_nodes = max_block_nodes

    @classmethod
    def fast(cls) -> "QuadratureRule":
        """About 10× cheaper in 3–4 dimensions, at ~1e-2 relative accuracy there (measured on the 1/n tensors of a 4-input tanh flow) instead of ~1e-7."""
        return cls({1: 16, 2: 10, 3: 12, 4: 8}, {1: _OFFSETS_WIDE, 2: _OFFSETS_WIDE, 3: (0.0,), 4: (0.0,)})

    def coarse(self) -> "QuadratureRule":
        return QuadratureRule({k: max(2, (2 * v) // 3) for k, v in self.nodes.items()}, self.offsets, self.max_block_nodes)


DEFAULT_RULE = QuadratureRule()


@lru_cache(maxsize=64)
def _leggauss(m: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(m)
    return x, w


# --------------------------------------------------------------------------------- validation
def validate_blocks(K, k: int | None = None, name: str = "K", owner: str = "expect") -> np.ndarray:
    """Return K as a float64 array of shape (B, k, k) after checking symmetry and PSD-ness."""
    K = np.asarray(K, dtype=float)
    if K.ndim == 2:
        K = K[None]
    if K.ndim != 3 or K.shape[1] != K.shape[2] or K.shape[1] < 1:
        raise ParameterError(f"The {name!r} parameter of {owner} must have shape (B, k, k) or (k, k). Got shape {K.shape} instead.")
    if k is not None and K.shape[1] != k:
        raise ParameterError(f"The {name!r} parameter of {owner} must have k = {k} rows per block (one per slot). Got {K.shape[1]} instead.")
    if not np.all(np.isfinite(K)):
        raise ParameterError(f"The {name!r} parameter of {owner} must be finite. Got non-finite entries instead.")
    scale = np.maximum(np.abs(np.diagonal(K, axis1=1, axis2=2)).max(axis=1), 1e-300)
    asym = np.abs(K - np.swapaxes(K, 1, 2)).max(axis=(1, 2))
    if np.any(asym > 1e-10 * scale):
        raise ParameterError(f"The {name!r} parameter of {owner} must be symmetric. Got asymmetry {asym.max():.3g} instead.")
    K = 0.5 * (K + np.swapaxes(K, 1, 2))
    if K.shape[1] > 1:
        ev = np.linalg.eigvalsh(K)
        if np.any(ev[:, 0] < -1e-9 * scale):
            raise ParameterError(
                f"The {name!r} parameter of {owner} must be positive semi-definite. Got smallest eigenvalue {ev[:, 0].min():.3g} instead."
            )
    elif np.any(K[:, 0, 0] < 0):
        raise ParameterError(f"The {name!r} parameter of {owner} must have non-negative variances. Got {K[:, 0, 0].min():.3g} instead.")
    return K


# --------------------------------------------------------------------------------- public entry
def expect(
    activation: Activation,
    orders: Sequence[int],
    K,
    *,
    insert: Sequence[int] | None = None,
    method: str = "auto",
    rule: QuadratureRule | None = None,
    rtol: float | None = None,
    estimate_error: bool = True,
):
    """Gaussian expectation ⟨Π_s σ^(d_s)(z_s) · H_insert⟩ over a batch of covariance blocks.

    Parameters
    ----------
    activation : Activation
        σ, the same in every slot.
    orders : sequence of int, length k (1 ≤ k ≤ 4)
        Derivative order d_s of σ in slot s (0 = σ itself).  Orders above
        ``activation.max_derivative`` are distributions and handled by integration by parts.
    K : array_like, shape (B, k, k) or (k, k)
        Covariances of the slot variables.  Singular blocks (coinciding inputs) are allowed.
    insert : sequence of int, length k, optional
        Number of derivatives ∂/∂z_s acting on the *whole* product (Hermite insertions):
        the result is ⟨∂^insert Π_s σ^(d_s)(z_s)⟩ = ⟨Π_s σ^(d_s) · H_insert(K⁻¹z)⟩.  When two slots
        share a variable, their counts add.
    method : {"auto", "closed", "quadrature"}
        "closed" returns ``None`` unless a plugin supplies a closed form; "quadrature" skips
        closed forms.
    rule : QuadratureRule, optional
        Node counts; the default reaches the accuracy targets of docs/gaussian-engine.md.
    rtol : float, optional
        When given, an :class:`AccuracyWarning` is emitted for blocks whose estimated relative
        error exceeds it.
    estimate_error : bool
        Estimate the quadrature error by a second, coarser pass (default).  False skips that
        pass (20–70 % of the quadrature time) and reports NaN errors for quadrature results.

    Returns
    -------
    values, errors : ndarray, shape (B,)  (scalars if K was a single block)
        The expectations and an estimate of their absolute error (0 for exact closed forms,
        NaN for quadrature when ``estimate_error`` is False).

    Notes
    -----
    Book §1.3 (Gaussian integrals) and the integration-by-parts identities of theory/init.md
    §0: ⟨∂_β F⟩_K = ⟨F (K⁻¹z)_β⟩_K, and their higher-order Hermite forms.

    Examples
    --------
    >>> import pdlt, numpy as np
    >>> v, err = expect(pdlt.activation("relu"), (0, 0), np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> round(float(v), 12)  # (1/2π)(sin ψ + (π−ψ) cos ψ) at ψ = π/2
    0.159154943092
    """
    orders = tuple(int(d) for d in orders)
    k = len(orders)
    if not 1 <= k <= 4:
        raise ParameterError(f"The 'orders' parameter of expect must have 1 to 4 entries (slots). Got {k} instead.")
    if any(d < 0 for d in orders):
        raise ParameterError(f"The 'orders' parameter of expect must be non-negative. Got {orders!r} instead.")
    if not isinstance(activation, Activation):
        raise ParameterError(f"The 'activation' parameter of expect must be an Activation. Got {activation!r} instead.")
    if method not in ("auto", "closed", "quadrature"):
        raise ParameterError(f"The 'method' parameter of expect must be 'auto', 'closed' or 'quadrature'. Got {method!r} instead.")
    single = np.asarray(K).ndim == 2
    Kb = validate_blocks(K, k)
    ins = (0,) * k if insert is None else tuple(int(e) for e in insert)
    if len(ins) != k or any(e < 0 for e in ins):
        raise ParameterError(f"The 'insert' parameter of expect must have {k} non-negative entries. Got {insert!r} instead.")
    if rtol is not None and not estimate_error:
        raise ParameterError("The 'rtol' parameter of expect needs error estimates. Got estimate_error=False instead; drop one of them.")

    result = _evaluate(activation, orders, Kb, ins, method=method, rule=rule, estimate_error=estimate_error)
    if result is None:
        return None
    values, errors = result
    if rtol is not None:
        bad = errors > rtol * np.maximum(np.abs(values), 1e-300)
        if np.any(bad):
            warn(
                f"Gaussian expectation of {activation.name} with orders {orders} reached relative error "
                f"{float(np.max(errors / np.maximum(np.abs(values), 1e-300))):.2g} > rtol = {rtol:g} on "
                f"{int(bad.sum())} of {bad.size} blocks; pass a finer QuadratureRule.",
                AccuracyWarning,
            )
    if single:
        return values[0], errors[0]
    return values, errors


def _closed_form(activation: Activation, orders: tuple[int, ...], K: np.ndarray):
    """The plugins' closed form (values, errors) on validated blocks K (B, k, k), or None."""
    from .plugins import gaussian_hook

    return gaussian_hook()(activation=activation, orders=tuple(orders), K=K)


def _closed_pair_matrices(activation: Activation, orders, K: np.ndarray):
    """The plugins' closed forms of ⟨σ^(d1)_a σ^(d2)_b⟩ over every pair of a validated N×N
    kernel, one (N, N) matrix per (d1, d2) in ``orders`` (exact: no error estimate), or None."""
    from .plugins import default_manager

    return default_manager().hook.pdlt_gaussian_pair_matrices(activation=activation, orders=tuple(orders), K=K)


def _evaluate(activation, orders, K, insert, *, method="auto", rule=None, estimate_error=True):
    """:func:`expect` on blocks that are already validated (e.g. taken from a kernel known to be
    PSD): closed form if a plugin has one, else quadrature.  Returns (values, errors) or None."""
    result = None
    if method in ("auto", "closed") and not any(insert):
        result = _closed_form(activation, orders, K)
    if result is None:
        if method == "closed":
            return None
        result = quadrature(activation, orders, K, insert=insert, rule=rule, estimate_error=estimate_error)
    values, errors = (np.asarray(r, dtype=float) for r in result)
    if not np.all(np.isfinite(values)):
        var = float(np.max(np.diagonal(K, axis1=-2, axis2=-1)))
        raise NumericalError(
            f"Gaussian expectation of {activation.name} with orders {tuple(orders)} is not finite for some blocks: "
            f"either σ grows too fast for the largest variance K = {var:.3g} (overflow; the kernel of a fast-growing "
            "σ such as the exponential explodes over depth: use a smaller C_W, smaller inputs or fewer layers) or "
            "the product is a distribution such as δ(z)² at coinciding inputs."
        )
    return values, errors


# --------------------------------------------------------------------------------- quadrature
def quadrature(
    activation: Activation,
    orders,
    K,
    *,
    insert=None,
    rule: QuadratureRule | None = None,
    estimate_error: bool = True,
):
    """Numerical ⟨Π_s σ^(d_s)(z_s) H_insert⟩ with an error estimate (see module notes).

    Returns (values, errors), arrays of shape (B,); the errors are NaN when ``estimate_error``
    is False (the coarse pass that estimates them is skipped, saving 20–70 % of the time).
    """
    orders = tuple(orders)
    ins = (0,) * len(orders) if insert is None else tuple(insert)
    values, errors = _quadrature_patterns(activation, [(orders, ins)], K, rule, estimate_error)
    return values[0], errors[0]


def quadrature_many(
    activation: Activation,
    orders_list: Sequence[Sequence[int]],
    K,
    *,
    rule: QuadratureRule | None = None,
    estimate_error: bool = True,
):
    """:func:`quadrature` for several derivative patterns on the same blocks at once.

    Parameters
    ----------
    activation : Activation
    orders_list : sequence of P sequences of int, each of length k
        Derivative orders per slot, one pattern per output row.
    K : array_like, shape (B, k, k)
        Covariance blocks (validated by the caller, e.g. with :func:`validate_blocks`).
    rule : QuadratureRule, optional
    estimate_error : bool
        Run the coarse pass that estimates the error (else the errors are NaN).

    Returns
    -------
    values, errors : ndarray, shape (P, B)

    Notes
    -----
    The node grid of a block (Cholesky coordinates, panel breaks) does not depend on the
    derivative orders, and the integrand factorises level by level, so all patterns share one
    grid and one evaluation of each σ^(d) per level; the nested sums then cost about as much as
    one pattern.  This is what makes the four-point tensors of the 1/n flow affordable.
    """
    patterns = [(tuple(int(d) for d in o), (0,) * len(o)) for o in orders_list]
    return _quadrature_patterns(activation, patterns, K, rule, estimate_error)


def _quadrature_patterns(activation, patterns, K, rule, estimate_error):
    rule = DEFAULT_RULE if rule is None else rule
    Kb = np.asarray(K, dtype=float)
    B = Kb.shape[0]
    values = np.empty((len(patterns), B))
    errors = np.full((len(patterns), B), np.nan)
    if B == 0:
        return values, errors
    labels, group = np.unique(_coincidence_labels(Kb), axis=0, return_inverse=True)
    for g, lab in enumerate(labels):
        idx = np.flatnonzero(group.ravel() == g)
        v, e = _quadrature_group(activation, patterns, Kb[idx], tuple(int(x) for x in lab), rule, estimate_error)
        values[:, idx] = v
        errors[:, idx] = e
    return values, errors


def _coincidence_labels(K: np.ndarray) -> np.ndarray:
    """For each block, label slots so that coinciding variables (z_s = z_t a.s.) share a label.

    Labels run 0..m−1 in order of first appearance; shape (B, k).
    """
    B, k, _ = K.shape
    d = np.diagonal(K, axis1=1, axis2=2)
    scale = np.maximum(d.max(axis=1), 1e-300)
    # z_s = z_t a.s. iff K_ss + K_tt − 2K_st = 0; the relation is an equivalence, so each slot
    # is labelled by the first slot of its class
    dist = d[:, :, None] + d[:, None, :] - 2 * K
    same = (np.abs(dist) <= 1e-13 * scale[:, None, None]) | np.eye(k, dtype=bool)
    first = np.argmax(same & np.tri(k, dtype=bool), axis=2)  # smallest t <= s in the class of s
    leader = first == np.arange(k)
    rank = np.cumsum(leader, axis=1) - 1
    return np.take_along_axis(rank, first, axis=1)



def _expand_distributional(activation: Activation, orders, ins, labels):
    """Rewrite ⟨Π σ^(d_s) H_ins⟩ as Σ c · ⟨Π σ^(d'_s) H_e⟩ with every d'_s ≤ max_derivative.

    Uses ⟨(∂_v f_s) R P⟩ = ⟨f_s R (P y_v − ∂_v P)⟩ − ⟨f_s (∂_v R) P⟩ for the factor f_s on
    variable v, R the other factors on v (product rule), P = H_e the current insertion; the
    bracket is the next Hermite polynomial H_{e+1_v}.
    Returns a list of (coef, orders, e) with e indexed by variable.
    """
    # smooth σ: derivatives beyond the analytic ones are taken by finite differences
    # (_derivative), which also works on singular blocks where integration by parts cannot
    maxd = 10**9 if not activation.kinks else activation.max_derivative
    m = max(labels) + 1
    e0 = [0] * m
    for s, c in enumerate(ins):
        e0[labels[s]] += c
    todo = [(1, tuple(orders), tuple(e0))]
    done: dict[tuple, int] = {}
    while todo:
        coef, ords, e = todo.pop()
        over = [s for s, d in enumerate(ords) if d > maxd]
        if not over:
            key = (ords, e)
            done[key] = done.get(key, 0) + coef
            continue
        s = over[0]
        v = labels[s]
        lowered = list(ords)
        lowered[s] -= 1
        e_up = list(e)
        e_up[v] += 1
        todo.append((coef, tuple(lowered), tuple(e_up)))
        for t in range(len(ords)):
            if t != s and labels[t] == v:
                if ords[t] >= maxd:
                    # moving the derivative would make another factor on the same variable a
                    # distribution too: the product (e.g. δ(z)·Θ(z)) is not defined
                    raise NumericalError(
                        f"⟨Π σ^(d)⟩ of {activation.name} with derivative orders {tuple(orders)} multiplies "
                        "distributions at coinciding inputs (e.g. δ(z)·Θ(z)); it is not defined. Ask for the "
                        "derivative of the whole product (insert=...) instead."
                    )
                other = list(lowered)
                other[t] += 1
                todo.append((-coef, tuple(other), e))
    return [(c, o, e) for (o, e), c in done.items() if c != 0]


def _quadrature_group(activation, patterns, K, labels, rule, estimate_error):
    """Values and errors, shape (P, B), of every pattern (orders, insert) on blocks sharing ``labels``."""
    m = max(labels) + 1
    rep = [labels.index(v) for v in range(m)]
    Kv = K[:, rep][:, :, rep]
    if not activation.kinks and any(any(ins) for _, ins in patterns):
        singular = _singular_blocks(Kv)
        if singular.any():
            return _split_singular(activation, patterns, K, labels, rule, estimate_error, singular)
    expansions = [_expand_distributional(activation, orders, ins, labels) for orders, ins in patterns]
    Kinv = None
    for (orders, _), terms in zip(patterns, expansions):
        if any(any(e) for _, _, e in terms):
            Kinv = _checked_inverse(activation, orders, Kv, m)
            break
    # distinct integrands Π_v Π_{d ∈ factors[v]} σ^(d)(z_v) · H_e, each integrated once
    def by_variable(ords):
        return tuple(tuple(sorted(d for s, d in enumerate(ords) if labels[s] == v)) for v in range(m))

    integrands: dict[tuple, int] = {}
    for terms in expansions:
        for _, ords, e in terms:
            integrands.setdefault((by_variable(ords), e), len(integrands))
    keys = list(integrands)
    L = _cholesky_psd(Kv)
    feats = _feature_points(activation, rule.offsets[m])
    centers = _feature_centers(activation) if m <= 2 else None

    def combine(nodes):
        table = _nested(activation, keys, L, Kinv, nodes, feats, centers, rule.max_block_nodes)
        out = np.zeros((len(patterns), K.shape[0]))
        for p, terms in enumerate(expansions):
            for coef, ords, e in terms:
                out[p] += coef * table[integrands[(by_variable(ords), e)]]
        return out

    vals = combine(rule.nodes[m])
    if not estimate_error:
        return vals, np.full(vals.shape, np.nan)
    vals_coarse = combine(rule.coarse().nodes[m])
    return vals, np.abs(vals - vals_coarse) + 1e-15 * np.abs(vals)


def _singular_blocks(Kv: np.ndarray) -> np.ndarray:
    """Mask of the blocks whose covariance of distinct variables has no usable inverse."""
    if Kv.shape[1] == 1:
        return Kv[:, 0, 0] <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.linalg.cond(Kv)
    return ~np.isfinite(cond) | (cond > 1e12) | np.any(np.diagonal(Kv, axis1=1, axis2=2) <= 0, axis=1)


def _inserts_as_derivatives(orders, ins, labels):
    """⟨∂^e Π_s σ^(d_s)(z_v(s))⟩ written out by the product rule: [(coef, orders')], no insertion.

    Stein's lemma ⟨F H_e⟩ = ⟨∂^e F⟩ read backwards; it needs no K⁻¹, so it also holds on singular
    blocks (a zero variance, linearly dependent inputs), where σ is smooth.
    """
    terms = {tuple(orders): 1}
    for v in range(max(labels) + 1):
        slots = [s for s in range(len(orders)) if labels[s] == v]
        for _ in range(sum(c for s, c in enumerate(ins) if labels[s] == v)):
            grown: dict[tuple, int] = {}
            for ords, c in terms.items():
                for s in slots:
                    o = list(ords)
                    o[s] += 1
                    grown[tuple(o)] = grown.get(tuple(o), 0) + c
            terms = grown
    return list(terms.items())


def _split_singular(activation, patterns, K, labels, rule, estimate_error, singular):
    """Smooth σ: regular blocks by integration by parts, singular ones by derivatives of the product."""
    P, B = len(patterns), K.shape[0]
    values, errors = np.empty((P, B)), np.empty((P, B))
    if (~singular).any():
        values[:, ~singular], errors[:, ~singular] = _quadrature_group(
            activation, patterns, K[~singular], labels, rule, estimate_error
        )
    expansions = [_inserts_as_derivatives(orders, ins, labels) for orders, ins in patterns]
    plain = sorted({o for terms in expansions for o, _ in terms})
    zero = (0,) * len(labels)
    v, e = _quadrature_group(activation, [(o, zero) for o in plain], K[singular], labels, rule, estimate_error)
    row = {o: i for i, o in enumerate(plain)}
    for p, terms in enumerate(expansions):
        values[p, singular] = sum(c * v[row[o]] for o, c in terms)
        errors[p, singular] = sum(abs(c) * e[row[o]] for o, c in terms)
    return values, errors


def _checked_inverse(activation, orders, Kv, m):
    """K⁻¹ of the distinct variables, needed by integration by parts; raises when it is singular."""
    if np.any(np.diagonal(Kv, axis1=1, axis2=2) <= 0):
        raise NumericalError(
            f"⟨…⟩ of {activation.name} with derivative orders {tuple(orders)} needs integration by parts (its "
            "derivatives are distributions), but an input has zero variance (K_αα = 0, e.g. x = 0 with C_b = 0): "
            "the preactivation sits exactly on a kink. Use C_b > 0, drop or move that input, or use a smooth activation."
        )
    if m > 1:
        cond = np.linalg.cond(Kv)
        if np.any(~np.isfinite(cond)) or np.any(cond > 1e12):
            d = np.diagonal(Kv, axis1=1, axis2=2)
            corr = Kv / np.sqrt(d[:, :, None] * d[:, None, :])
            if np.any(np.abs(corr[:, ~np.eye(m, dtype=bool)]) > 1 - 1e-12):
                raise NumericalError(
                    f"⟨…⟩ of {activation.name} with derivative orders {tuple(orders)} needs integration by parts "
                    "(its derivatives are distributions), but two distinct inputs have exactly proportional "
                    "preactivations (z_b = c z_a, correlation ±1). This happens for one-dimensional inputs, or "
                    "inputs x_b = c x_a, with C_b = 0 (ReLU-like networks keep them proportional in every layer); "
                    "the δ(z_a)·f(c z_a) products the 1/n recursions then need are not implemented. Use C_b > 0 "
                    "(e.g. 0.01), inputs that are not proportional, or a smooth activation (GELU, swish, tanh)."
                )
            raise NumericalError(
                f"⟨…⟩ of {activation.name} with derivative orders {tuple(orders)} needs integration by parts "
                f"(its derivatives are distributions), but the covariance block of the distinct inputs is "
                f"singular or ill-conditioned (condition number {float(np.nanmax(cond)):.3g}). "
                "Such inputs are (nearly) linearly dependent; perturb them or use a smooth activation."
            )
    return np.linalg.inv(Kv)



def _cholesky_psd(K: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L Lᵀ = K for PSD K (columns of degenerate directions set to 0)."""
    B, m, _ = K.shape
    L = np.zeros_like(K)
    scale = np.maximum(np.diagonal(K, axis1=1, axis2=2).max(axis=1), 1e-300)
    for j in range(m):
        d = K[:, j, j] - np.sum(L[:, j, :j] ** 2, axis=1)
        ok = d > 1e-14 * scale
        ljj = np.sqrt(np.where(ok, d, 1.0))
        L[:, j, j] = np.where(ok, ljj, 0.0)
        for i in range(j + 1, m):
            num = K[:, i, j] - np.sum(L[:, i, :j] * L[:, j, :j], axis=1)
            L[:, i, j] = np.where(ok, num / ljj, 0.0)
    return L


def _feature_points(activation: Activation, offsets: np.ndarray) -> np.ndarray:
    pts = set(activation.kinks)
    soft = getattr(activation, "feature_points", None)
    pts.update((0.0,) if soft is None else soft)
    width = float(getattr(activation, "feature_width", 1.0))
    hard = set(activation.kinks)
    out = {p + width * o for p in pts for o in offsets} | hard
    return np.asarray(sorted(out))


# 8th-order central differences of the highest analytic derivative
_FD_H = 2e-2
_FD_COEF = np.array([1 / 280, -4 / 105, 1 / 5, -4 / 5, 0.0, 4 / 5, -1 / 5, 4 / 105, -1 / 280])


def _derivative(activation: Activation, z: np.ndarray, d: int) -> np.ndarray:
    """σ^(d)(z); above ``max_derivative`` (smooth σ only) by repeated 8th-order central differences."""
    top = activation.max_derivative
    if d <= top:
        return activation.derivative(z, d)
    if d - top > 2:
        raise NumericalError(f"{activation.name}: derivative of order {d} requested, only {top} available.")

    def diff(f, x):
        return sum(c * f(x + (k - 4) * _FD_H) for k, c in enumerate(_FD_COEF) if c) / _FD_H

    f = lambda x: activation.derivative(x, top)  # noqa: E731
    for _ in range(d - top):
        f = (lambda g: (lambda x: diff(g, x)))(f)
    return f(z)


def _feature_centers(activation: Activation) -> tuple[np.ndarray, np.ndarray]:
    """Feature points of σ with their widths: kinks are sharp (width 0), soft points have the
    activation's ``feature_width`` (1 by default)."""
    width = float(getattr(activation, "feature_width", 1.0))
    soft = getattr(activation, "feature_points", None)
    soft = (0.0,) if soft is None else tuple(soft)
    kinks = tuple(activation.kinks)
    pts = np.array(kinks + soft, dtype=float)
    widths = np.array([0.0] * len(kinks) + [width] * len(soft))
    return pts, widths


def _hermite(e: Sequence[int], y: list[np.ndarray], P: np.ndarray) -> np.ndarray:
    """Multivariate Hermite polynomial H_e = (−∂)^e p / p in y = K⁻¹z (total degree ≤ 6).

    Built from the recursion H_{e+1_v} = y_v H_e − ∂_v H_e with ∂_v y_w = P_{wv} (P = K⁻¹),
    carried as a polynomial dictionary over monomials in y.
    """
    m = len(e)
    poly: dict[tuple[int, ...], np.ndarray | float] = {(0,) * m: 1.0}
    for v in range(m):
        for _ in range(e[v]):
            new: dict[tuple[int, ...], np.ndarray | float] = {}
            for mono, c in poly.items():
                up = list(mono)
                up[v] += 1
                new[tuple(up)] = new.get(tuple(up), 0.0) + c
                for w in range(m):
                    if mono[w]:
                        down = list(mono)
                        down[w] -= 1
                        new[tuple(down)] = new.get(tuple(down), 0.0) - c * mono[w] * P[..., w, v]
            poly = new
    total = 0.0
    for mono, c in poly.items():
        term = c
        for w in range(m):
            if mono[w]:
                term = term * y[w] ** mono[w]
        total = total + term
    return total


def _nested(activation, integrands, L, Kinv, nodes, feats, centers, max_nodes):
    """Nested composite Gauss–Legendre integrals in Cholesky coordinates; returns shape (P, B).

    ``integrands`` is a list of (factors, e): ``factors[v]`` the derivative orders of σ acting
    on variable v, ``e`` the Hermite insertion.  All share one grid per block.

    Level i is split where its own factor has features (``feats``, in z) and, when ``centers``
    is given, where an inner variable j > i has a feature: the integral over the inner
    variables is smooth in u_i but has a transition of width ~ sqrt(Σ_{l>i} L_jl² + w²)/|L_ji|
    there, sharp when inputs are strongly correlated.
    """
    B, m, _ = L.shape
    x, w = _leggauss(nodes)
    n_inner = 0 if centers is None else len(centers[0]) * len(_INNER_OFFSETS) * (m - 1)
    n_panels = len(feats) + 1 + n_inner
    per_dim = n_panels * nodes
    # The innermost level integrates σ^(d)(μ + s u) over u for every outer node: in closed form
    # for scale-invariant σ; for other σ in 3–4 dimensions from a table of that 1-D integral
    # over μ (same rule), interpolated; either way the grid loses a dimension.
    separable_only = not any(any(e) for _, e in integrands)
    exact = m >= 2 and separable_only and activation.scale_invariant_slopes is not None
    tabulate = m >= _TABULATE_MIN_DIM and separable_only and not exact
    levels = m - 1 if (exact or tabulate) else m
    chunk = max(1, int(max_nodes // (per_dim**levels * (8 if levels < m else 1))))
    out = np.empty((len(integrands), B))
    for start in range(0, B, chunk):
        sl = slice(start, min(B, start + chunk))
        Lc = L[sl]
        b = Lc.shape[0]
        # level i holds arrays of shape (b, n_1, ..., n_i): nodes u, weights wu, variables z;
        # us are kept broadcastable to later levels
        us: list[np.ndarray] = []
        wus: list[np.ndarray] = []
        zs: list[np.ndarray] = []
        for i in range(levels):
            shape_outer = (b,) + (per_dim,) * i
            mu = np.zeros(shape_outer)
            for j in range(i):
                mu = mu + Lc[:, i, j].reshape((b,) + (1,) * i) * us[j]
            s = Lc[:, i, i].reshape((b,) + (1,) * i)
            with np.errstate(divide="ignore", invalid="ignore"):
                c = (feats.reshape((1,) * (i + 1) + (-1,)) - mu[..., None]) / s[..., None]
            if n_inner:
                extra = []
                for j in range(i + 1, m):
                    mu_j = np.zeros(shape_outer)
                    for l in range(i):
                        mu_j = mu_j + Lc[:, j, l].reshape((b,) + (1,) * i) * us[l]
                    Lji = Lc[:, j, i].reshape((b,) + (1,) * i + (1, 1))
                    pts, widths = centers
                    inner_var = np.sum(Lc[:, j, i + 1 :] ** 2, axis=1).reshape((b,) + (1,) * i + (1, 1))
                    wj = np.sqrt(inner_var + widths.reshape(-1, 1) ** 2)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        cj = (pts.reshape(-1, 1) - mu_j[..., None, None] + _INNER_OFFSETS * wj) / Lji
                    extra.append(cj.reshape(shape_outer + (-1,)))
                for j in range(m - 1 - i, m - 1):  # pad to a fixed panel count
                    extra.append(np.full(shape_outer + (len(centers[0]) * len(_INNER_OFFSETS),), _T))
                c = np.concatenate([c] + extra, axis=-1)
            u, wu = _composite_rule(c, x, w)
            u = u.reshape(shape_outer + (per_dim,))
            us = [uj[..., None] for uj in us] + [u]
            wus.append(wu.reshape(shape_outer + (per_dim,)))
            zs.append(mu[..., None] + s[..., None] * u)
        inner = None
        if levels < m:
            mu = sum(Lc[:, m - 1, j].reshape((b,) + (1,) * levels) * us[j] for j in range(levels))
            s_in = Lc[:, m - 1, m - 1].reshape((b,) + (1,) * levels)
            factor_sets = sorted({f[m - 1] for f, _ in integrands})
            if exact:
                inner = _scale_invariant_level(activation, factor_sets, mu, s_in)
            else:
                inner = _tabulated_level(activation, factor_sets, mu, Lc[:, m - 1, m - 1], feats, x, w)
        separable = [p for p, (_, e) in enumerate(integrands) if not any(e)]
        if separable:
            sums = _separable_sums(activation, [integrands[p][0] for p in separable], wus, zs, inner)
            out[separable, sl] = sums
        for p, (factors, e) in enumerate(integrands):
            if any(e):
                out[p, sl] = _full_grid_sum(activation, factors, e, wus, zs, Kinv[sl])
    return out


#: Smallest number of distinct variables whose innermost level is tabulated (below, the table
#: would cost as much as the level itself).
_TABULATE_MIN_DIM = 3
#: Tabulated innermost level: Lagrange interpolation order and table spacing (in units of the
#: activation's feature width); the interpolation error, ~(spacing/width)^order, is < 1e-9.
_TABLE_ORDER = 8
_TABLE_STEP = 0.04


def _level_rule(mu, s, feats, x, w):
    """Nodes u and weights of one level's composite Gauss–Legendre rule for z = μ + s u, with the
    panels broken where z crosses σ's feature points; shapes mu.shape + (panels · nodes,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = (feats - mu[..., None]) / s[..., None]
    return _composite_rule(c, x, w)


def _composite_rule(c, x, w):
    """Composite Gauss–Legendre nodes u and weights × N(0,1) density on [−T, T], panels broken at the
    breakpoints c (shape (..., n_c)); returns arrays of shape c.shape[:-1] + (panels · nodes,).

    Breakpoints that fall outside the range (or are undefined for a degenerate level) are recycled
    onto a fixed grid that resolves the Gaussian weight itself.
    """
    outer = c.shape[:-1]
    n_c = c.shape[-1]
    fallback = np.linspace(-5.5, 5.5, n_c) if n_c > 1 else np.zeros(1)
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(c) & (np.abs(c) < _T)
    c = np.where(inside, c, fallback)
    edges = np.concatenate([np.full(outer + (1,), -_T), np.sort(c, axis=-1), np.full(outer + (1,), _T)], axis=-1)
    lo, hi = edges[..., :-1], edges[..., 1:]
    half = 0.5 * (hi - lo)
    u = (lo + half)[..., None] + half[..., None] * x  # (..., panels, nodes)
    wu = half[..., None] * w * np.exp(-0.5 * u * u) * _INV_SQRT_2PI
    return u.reshape(outer + (-1,)), wu.reshape(outer + (-1,))


def _tabulated_level(activation, factor_sets, mu, s, feats, x, w) -> dict[tuple[int, ...], np.ndarray]:
    """h_f(μ) = E[Π_{d ∈ f} σ^(d)(μ + s u)] at every μ of ``mu`` (b, …), s (b,) per block.

    The innermost level of a nested integral depends on the outer nodes only through the scalar
    μ = Σ_j L_mj u_j, so h_f is computed once per block on a uniform table of μ over the range
    the outer nodes reach (with the same Gauss–Legendre rule the level would use, panels broken
    at σ's features) and interpolated by Lagrange polynomials of order ``_TABLE_ORDER`` on the
    nearest table points: (n^{m−1} + table) evaluations of σ per block instead of n^m.
    """
    b = mu.shape[0]
    flat = mu.reshape(b, -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    width = float(getattr(activation, "feature_width", 1.0))
    span = np.maximum(hi - lo, 1e-12 * np.maximum(np.abs(lo), 1.0))
    p = _TABLE_ORDER
    G = int(min(max(np.ceil(span.max() / (_TABLE_STEP * width)) + 1, 4 * p), 8192))
    step = span / (G - 1)
    grid = lo[:, None] + step[:, None] * np.arange(G)  # (b, G)
    u, wu = _level_rule(grid, np.broadcast_to(s[:, None], grid.shape), feats, x, w)
    z = grid[..., None] + s[:, None, None] * u
    cache: dict[int, np.ndarray] = {}
    tables = {}
    for f in factor_sets:
        g = wu
        for d in f:
            if d not in cache:
                cache[d] = _derivative(activation, z, d)
            g = g * cache[d]
        tables[f] = g.sum(axis=-1)  # (b, G)
    # Lagrange weights on the p table points i0 … i0+p−1 around each μ: with x the position
    # among them, w_j = Π_{k<j}(x − k) Π_{k>j}(x − k) / Π_{k≠j}(j − k) (prefix and suffix
    # products, no division by x − j)
    t = (flat - lo[:, None]) / step[:, None]
    i0 = np.clip(np.floor(t).astype(np.int64) - (p // 2 - 1), 0, G - p)
    diff = [t - i0 - j for j in range(p)]  # x − j, each (b, M)
    left = [np.ones_like(t)]
    for j in range(1, p):
        left.append(left[-1] * diff[j - 1])
    right = np.ones_like(t)
    weights = [None] * p
    for j in range(p - 1, -1, -1):
        weights[j] = left[j] * right * _lagrange_denominators(p)[j]
        right = right * diff[j]
    base = i0 + (np.arange(b) * G)[:, None]  # into the flattened tables
    out = {}
    for f, T in tables.items():
        flat_T = T.ravel()
        acc = np.zeros_like(t)
        for j in range(p):
            acc += weights[j] * np.take(flat_T, base + j)
        out[f] = acc.reshape(mu.shape)
    return out


@lru_cache(maxsize=8)
def _lagrange_denominators(p: int) -> np.ndarray:
    """1 / Π_{k≠j}(j − k) for the Lagrange basis on the points 0 … p−1."""
    return np.array([1.0 / math.prod(j - k for k in range(p) if k != j) for j in range(p)])


def _separable_sums(activation, factor_sets, wus, zs, inner=None) -> np.ndarray:
    """Σ over the grid of Π_v wu_v Π_{d ∈ factors[v]} σ^(d)(z_v) for several factor sets, (P, b).

    The weight and integrand are products over levels, each level depending only on its own and
    the outer nodes, so the grid sum is done innermost level first; inner partial sums shared by
    several factor sets (the same factors on the inner variables) are computed once.  ``inner``,
    when given, holds the innermost level's integrals in closed form, keyed by that level's
    factors (the grid then has one level less).
    """
    m = len(zs)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def sigma(v, d):
        if (v, d) not in cache:
            cache[v, d] = _derivative(activation, zs[v], d)
        return cache[v, d]

    partial: dict[tuple, np.ndarray | float] = {(): 1.0}
    if inner is not None:
        partial = {(f,): v for f, v in inner.items()}
    for v in reversed(range(m)):
        level: dict[tuple, np.ndarray] = {}
        for factors in factor_sets:
            key = tuple(factors[v:])
            if key in level:
                continue
            g = wus[v] * partial[key[1:]]
            for d in key[0]:
                g = g * sigma(v, d)
            level[key] = g.sum(axis=-1)
        partial = level
    return np.stack([partial[tuple(f)] for f in factor_sets])


def _scale_invariant_level(activation, factor_sets, mu, s) -> dict[tuple[int, ...], np.ndarray]:
    """E[Π_{d ∈ factors} σ^(d)(μ + s u)], u ~ N(0, 1), for σ = a₊ z Θ(z) + a₋ z Θ(−z) (orders ≤ 1),
    for each factor tuple of ``factor_sets``; {factors: array of the broadcast shape of μ, s}.

    The product is z^q [a₊^k Θ(z) + a₋^k Θ(−z)] (q factors σ, k in all), so the integral is a
    sum of truncated Gaussian moments M_j(c) = E[u^j; u > c] = c^{j−1} φ(c) + (j − 1) M_{j−2}(c):
    E[z^q; z > 0] = Σ_j C(q, j) μ^{q−j} s^j M_j(−μ/s) and E[z^q; z < 0] likewise with s → −s,
    c → μ/s.  A degenerate level (s = 0, z = μ) is the product of σ^(d)(μ) itself.
    Replaces the innermost quadrature level of :func:`_nested` exactly (a Gauss–Legendre rule
    split at the kink is exact there too, up to the |u| ≤ 8.5 truncation, at n× the cost).
    """
    from scipy import special

    ap, am = (float(a) for a in activation.scale_invariant_slopes)
    mu, s = np.broadcast_arrays(mu, s)
    degenerate = s <= 0
    s_safe = np.where(degenerate, 1.0, s)
    t = mu / s_safe
    phi = np.exp(-0.5 * t * t) * _INV_SQRT_2PI
    qmax = max(sum(1 for d in f if d == 0) for f in factor_sets)
    # E[z^q; ±z > 0] for q = 0..qmax, shared by every factor set
    halves = []
    for sign in (1.0, -1.0):
        c = -sign * t
        moments = [special.ndtr(-c), phi]
        for j in range(2, qmax + 1):
            moments.append(c ** (j - 1) * phi + (j - 1) * moments[j - 2])
        ss = sign * s_safe
        halves.append([sum(math.comb(q, j) * mu ** (q - j) * ss**j * moments[j] for j in range(q + 1)) for q in range(qmax + 1)])
    out = {}
    for f in factor_sets:
        k, q = len(f), sum(1 for d in f if d == 0)
        total = np.zeros(mu.shape)
        for a, half in zip((ap, am), halves):
            if a != 0.0:
                total = total + a**k * half[q]
        if degenerate.any():
            direct = np.ones(mu.shape)
            for d in f:
                direct = direct * _derivative(activation, mu, d)
            total = np.where(degenerate, direct, total)
        out[tuple(f)] = total
    return out


def _full_grid_sum(activation, factors, e, wus, zs, Kinv) -> np.ndarray:
    """Σ over the grid of the integrand with a Hermite insertion H_e(K⁻¹z), which mixes levels."""
    m = len(zs)
    b = zs[0].shape[0]
    full = [x.reshape(x.shape + (1,) * (m - 1 - i)) for i, x in enumerate(zs)]
    f = 1.0
    for i, wu in enumerate(wus):
        f = f * wu.reshape(wu.shape + (1,) * (m - 1 - i))
    for v in range(m):
        for d in factors[v]:
            f = f * _derivative(activation, full[v], d)
    shp = (b,) + (1,) * m
    y = [sum(Kinv[:, v, w_].reshape(shp) * full[w_] for w_ in range(m)) for v in range(m)]
    f = f * _hermite(e, y, Kinv.reshape((b,) + (1,) * m + (m, m)))
    return f.reshape(b, -1).sum(axis=1)



def slot_blocks(K: np.ndarray, index_tuples: np.ndarray) -> np.ndarray:
    """Covariance blocks K[idx][:, idx] for an array of sample-index tuples, shape (M, k, k)."""
    idx = np.asarray(index_tuples)
    return K[idx[:, :, None], idx[:, None, :]]


def all_index_tuples(N: int, k: int) -> np.ndarray:
    """All k-tuples of sample indices 0..N−1, shape (N**k, k)."""
    return np.array(list(itertools.product(range(N), repeat=k)), dtype=int).reshape(-1, k)


# --------------------------------------------------------------------------------- all pairs
#: Most terms of Mehler's expansion summed for any pair (more-correlated pairs fall back to quadrature).
MEHLER_KMAX = 160

def pair_matrix(activation: Activation, d1: int, d2: int, K, *, kmax: int = MEHLER_KMAX, tol: float = 1e-11, rule=None):
    """⟨σ^(d1)(z_a) σ^(d2)(z_b)⟩ for every pair (a, b) of an N×N kernel, with error bounds.

    Uses Mehler's expansion in normalised Hermite functions: with z_a = s_a u_a, s_a = √K_aa,
    ρ_ab = K_ab/(s_a s_b),

        ⟨f(z_a) g(z_b)⟩ = Σ_k f̃_k(s_a) g̃_k(s_b) ρ_ab^k,   f̃_k(s) = E[f(s u) He_k(u)]/√k!,

    so the whole N×N matrix costs O(N² k) after N one-dimensional coefficient integrals.  The
    truncation error after k terms is bounded rigorously by √(tail_f · tail_g) |ρ|^{k+1}, where
    tail_f = E[f²] − Σ_{j≤k} f̃_j² (Cauchy–Schwarz).  Each pair is summed only as far as its
    bound needs (at most ``kmax`` terms); pairs whose bound still exceeds ``tol`` (relative to
    the O(1) scale of the integrand) fall back to :func:`expect` (closed form or quadrature).

    Returns (values, errors), each (N, N).
    """
    K = validate_blocks(K, name="K", owner="pair_matrix")[0]
    return _pair_matrix(activation, d1, d2, K, kmax=kmax, tol=tol, rule=rule)


def _pair_matrix(activation, d1, d2, K, *, kmax=MEHLER_KMAX, tol=1e-11, rule=None, estimate_error=True, tables=None):
    """:func:`pair_matrix` on a validated, symmetric kernel K (N, N).

    ``tables`` may hold precomputed :func:`_hermite_coefficients` of the unique scales of K for
    each derivative order (shared between calls on the same kernel)."""
    N = K.shape[0]
    maxd = activation.max_derivative if activation.kinks else 10**9
    if max(d1, d2) > maxd:
        raise ParameterError(f"pair_matrix needs ordinary derivatives; {activation.name} has σ^({max(d1, d2)}) as a distribution.")
    rule = DEFAULT_RULE if rule is None else rule
    s, uniq, inv = _scales(K)
    if tables is None or not {d1, d2} <= tables.keys():
        tables = _hermite_coefficients(activation, sorted({d1, d2}), uniq, kmax, rule)
    cf, en_f = tables[d1]
    cg, en_g = tables[d2]
    kmax = min(kmax, cf.shape[1] - 1, cg.shape[1] - 1)  # tables stop where every tail is ≤ tol
    cf, cg = cf[:, : kmax + 1], cg[:, : kmax + 1]
    # normalised tails √(tail/E[f²]) after k terms, k = 0..kmax
    tf = np.sqrt(np.maximum(en_f[:, None] - np.cumsum(cf**2, axis=1), 0.0) / np.maximum(en_f, 1e-300)[:, None])
    tg = np.sqrt(np.maximum(en_g[:, None] - np.cumsum(cg**2, axis=1), 0.0) / np.maximum(en_g, 1e-300)[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(np.outer(s, s) > 0, K / np.outer(s, s), 0.0)
    rho = np.clip(rho, -1.0, 1.0)
    rabs = np.abs(rho)
    # Terms each pair needs: the smallest k with max_a tf · max_b tg · |ρ|^{k+1} ≤ tol, i.e. the
    # first k whose radius r_k = (tol / max tf max tg)^{1/(k+1)} reaches |ρ|.  Most pairs need
    # far fewer than kmax terms; the rest (typically strongly correlated pairs) are summed
    # further as a gathered subset.
    bound_k = tf.max(axis=0) * tg.max(axis=0)
    with np.errstate(divide="ignore"):
        radius = np.exp((math.log(tol) - np.log(np.maximum(bound_k, 1e-300))) / np.arange(1, kmax + 2))
    radius = np.maximum.accumulate(np.minimum(radius, 1.0))
    # k1 only sets how the work is split (every pair ends within its bound): a strided sample of
    # the off-diagonal pairs estimates the 95 % quantile of the terms needed
    sample = rabs.ravel()[:: max(1, N * N // 20_000)]
    sample = sample[sample < 1.0]
    k1 = int(np.quantile(np.minimum(np.searchsorted(radius, sample), kmax), 0.95)) if sample.size else 0
    A = cf[inv]  # (N, kmax+1)
    Bm = cg[inv]
    vals = _mehler_sum(A[:, : k1 + 1], Bm[:, : k1 + 1], rho)
    # Coinciding inputs (ρ = 1, e.g. the diagonal) sum every high-order coefficient undamped,
    # and those carry the aliasing error of the coefficient quadrature (~1e-8 for small
    # variances) that the tail bound cannot see: they go to the (exact, 1-D) fallback instead.
    d = np.diag(K)
    coincident = np.abs(d[:, None] + d[None, :] - 2 * K) <= 1e-13 * max(float(d.max()), 1e-300)
    rest = np.flatnonzero(((rabs > radius[k1]) & ~coincident).ravel())
    if rest.size:
        ii, jj = np.unravel_index(rest, (N, N))
        r = rho.ravel()[rest]
        # Σ_{k1<k≤kmax} f̃_k g̃_k ρ^k = ρ^{k1+1} Σ_j f̃_{k1+1+j} g̃_{k1+1+j} ρ^j, by Horner's scheme
        tail = np.zeros(rest.size)
        for k in range(kmax, k1, -1):
            tail = tail * r + A[ii, k] * Bm[jj, k]
        vals.ravel()[rest] += tail * r ** (k1 + 1)
    bound = np.outer(tf[inv, k1], tg[inv, k1]) * rabs ** (k1 + 1)
    if rest.size:
        bound.ravel()[rest] = tf[inv[ii], kmax] * tg[inv[jj], kmax] * np.abs(r) ** (kmax + 1)
    scale = np.sqrt(np.outer(en_f[inv], en_g[inv]))
    bound = bound * scale
    # rounding and the coefficient integrals: ~1e-12 of the integrand's scale
    errs = bound + 1e-12 * np.maximum(scale, np.abs(vals))
    bad = (bound > tol * np.maximum(scale, 1e-300)) | coincident
    if bad.any():
        ii, jj = np.nonzero(np.triu(bad) | np.triu(bad.T))
        idx = np.stack([ii, jj], 1)
        blocks = K[idx[:, :, None], idx[:, None, :]]
        v, e = _evaluate(activation, (d1, d2), blocks, (0, 0), rule=rule, estimate_error=estimate_error)
        vals[ii, jj], errs[ii, jj] = v, e
        # the transposed pair (b, a) is the same expectation with the orders swapped
        if d1 == d2:
            vals[jj, ii], errs[jj, ii] = v, e
        else:
            flipped = K[idx[:, ::-1][:, :, None], idx[:, ::-1][:, None, :]]
            v2, e2 = _evaluate(activation, (d1, d2), flipped, (0, 0), rule=rule, estimate_error=estimate_error)
            vals[jj, ii], errs[jj, ii] = v2, e2
    return vals, errs


def _scales(K: np.ndarray):
    """s_a = √K_aa, its unique values and the map a → unique index."""
    s = np.sqrt(np.maximum(np.diag(K), 0.0))
    uniq, inv = np.unique(s, return_inverse=True)
    return s, uniq, inv.ravel()


def _mehler_sum(A: np.ndarray, B: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Σ_k A_ak B_bk ρ_ab^k by Horner's scheme, in place (three passes over N² per term)."""
    vals = np.multiply.outer(A[:, -1], B[:, -1])
    term = np.empty_like(vals)
    for k in range(A.shape[1] - 2, -1, -1):
        vals *= rho
        np.multiply.outer(A[:, k], B[:, k], out=term)
        vals += term
    return vals


def _hermite_coefficients(activation, orders, scales, kmax, rule, tol=1e-11):
    """f̃_k(s) = E[σ^(d)(s u) He_k(u)]/√k! for k = 0..K, and E[σ^(d)(s u)²], for each scale.

    Composite Gauss–Legendre on |u| ≤ 8.5 with panels broken at σ's feature points (mapped to
    u = z/s); all scales at once, and every derivative order d in ``orders`` on the same nodes
    (the Hermite recurrence, the costly part, is shared).  K = kmax, or the first k at which
    every relative tail 1 − Σ_{j≤k} f̃_j²/E[f²] is ≤ ``tol``: from there the Mehler bound is
    ≤ tol for every pair, even at ρ = 1 (small variances stop after a few dozen terms).
    Returns {d: (coef (S, K+1), energy (S,))}.
    """
    x, w = _leggauss(rule.nodes[1])
    centers = _feature_points(activation, rule.offsets[1])
    S = len(scales)
    positive = scales > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(positive[:, None], np.clip(centers / np.where(positive, scales, 1.0)[:, None], -_T, _T), np.linspace(-5.5, 5.5, len(centers)))
    edges = np.concatenate([np.full((S, 1), -_T), np.sort(c, axis=1), np.full((S, 1), _T)], axis=1)
    lo, hi = edges[:, :-1], edges[:, 1:]
    half = 0.5 * (hi - lo)
    u = ((lo + half)[..., None] + half[..., None] * x).reshape(S, -1)
    wu = (half[..., None] * w).reshape(S, -1) * np.exp(-0.5 * u * u) * _INV_SQRT_2PI
    weighted, out = {}, {}
    for d in orders:
        f = _derivative(activation, scales[:, None] * u, d)
        weighted[d] = wu * f
        out[d] = (np.empty((S, kmax + 1)), np.sum(weighted[d] * f, axis=1))
    h_prev = np.zeros_like(u)
    h = np.ones_like(u)
    step = np.empty_like(u)
    captured = {d: np.zeros(S) for d in orders}
    for k in range(kmax + 1):
        for d in orders:
            out[d][0][:, k] = np.einsum("ij,ij->i", weighted[d], h)
            captured[d] += out[d][0][:, k] ** 2
        if all(np.all(out[d][1] - captured[d] <= tol * out[d][1]) for d in orders):
            return {d: (coef[:, : k + 1], energy) for d, (coef, energy) in out.items()}
        # normalised recurrence h_{k+1} = (u h_k − √k h_{k−1})/√(k+1), in place
        np.multiply(u, h, out=step)
        h_prev *= -math.sqrt(k)
        h_prev += step
        h_prev *= 1.0 / math.sqrt(k + 1)
        h, h_prev = h_prev, h
    return out
