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
  difference from the same rule with fewer nodes per panel.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from .activation import Activation
from .errors import AccuracyWarning, NumericalError, ParameterError, warn

__all__ = ["expect", "quadrature", "QuadratureRule", "validate_blocks"]

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
        """About 10× cheaper in 3–4 dimensions (relative accuracy ~1e-4 instead of ~1e-7)."""
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

    Returns
    -------
    values, errors : ndarray, shape (B,)  (scalars if K was a single block)
        The expectations and an estimate of their absolute error (0 for exact closed forms).

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

    result = None
    if method in ("auto", "closed") and not any(ins):
        from .plugins import gaussian_hook

        result = gaussian_hook()(activation=activation, orders=orders, K=Kb)
    if result is None:
        if method == "closed":
            return None
        result = quadrature(activation, orders, Kb, insert=ins, rule=rule)
    values, errors = (np.asarray(r, dtype=float) for r in result)
    if rtol is not None:
        bad = errors > rtol * np.maximum(np.abs(values), 1e-300)
        if np.any(bad):
            warn(
                f"Gaussian expectation of {activation.name} with orders {orders} reached relative error "
                f"{float(np.max(errors / np.maximum(np.abs(values), 1e-300))):.2g} > rtol = {rtol:g} on "
                f"{int(bad.sum())} of {bad.size} blocks; pass a finer QuadratureRule.",
                AccuracyWarning,
            )
    if not np.all(np.isfinite(values)):
        raise NumericalError(
            f"Gaussian expectation of {activation.name} with orders {orders} is not finite for some blocks "
            "(a distributional product such as δ(z)² at coinciding inputs?)."
        )
    if single:
        return values[0], errors[0]
    return values, errors


# --------------------------------------------------------------------------------- quadrature
def quadrature(activation: Activation, orders, K, *, insert=None, rule: QuadratureRule | None = None):
    """Numerical ⟨Π_s σ^(d_s)(z_s) H_insert⟩ with an error estimate (see module notes).

    Returns (values, errors), arrays of shape (B,).
    """
    rule = DEFAULT_RULE if rule is None else rule
    orders = tuple(orders)
    k = len(orders)
    Kb = np.asarray(K, dtype=float)
    ins = (0,) * k if insert is None else tuple(insert)
    B = Kb.shape[0]
    values = np.empty(B)
    errors = np.empty(B)
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, labels in enumerate(_coincidence_labels(Kb)):
        groups.setdefault(labels, []).append(b)
    for labels, idx in groups.items():
        idx = np.asarray(idx)
        v, e = _quadrature_group(activation, orders, ins, Kb[idx], labels, rule)
        values[idx] = v
        errors[idx] = e
    return values, errors


def _coincidence_labels(K: np.ndarray) -> list[tuple[int, ...]]:
    """For each block, label slots so that coinciding variables (z_s = z_t a.s.) share a label."""
    B, k, _ = K.shape
    d = np.diagonal(K, axis1=1, axis2=2)
    scale = np.maximum(d.max(axis=1), 1e-300)
    out = []
    # z_s = z_t a.s. iff K_ss + K_tt − 2K_st = 0
    dist = d[:, :, None] + d[:, None, :] - 2 * K
    same = np.abs(dist) <= 1e-13 * scale[:, None, None]
    for b in range(B):
        labels = list(range(k))
        for s in range(k):
            for t in range(s):
                if same[b, s, t]:
                    labels[s] = labels[t]
                    break
        # relabel to 0..m-1 in order of first appearance
        remap: dict[int, int] = {}
        out.append(tuple(remap.setdefault(x, len(remap)) for x in labels))
    return out


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


def _quadrature_group(activation, orders, ins, K, labels, rule):
    m = max(labels) + 1
    rep = [labels.index(v) for v in range(m)]
    Kv = K[:, rep][:, :, rep]
    terms = _expand_distributional(activation, orders, ins, labels)
    need_inverse = any(any(e) for _, _, e in terms)
    Kinv = None
    if need_inverse:
        if m > 1:
            cond = np.linalg.cond(Kv)
            if np.any(~np.isfinite(cond)) or np.any(cond > 1e12):
                raise NumericalError(
                    f"⟨…⟩ of {activation.name} with derivative orders {tuple(orders)} needs integration by parts "
                    f"(its derivatives are distributions), but the covariance block of the distinct inputs is "
                    f"singular or ill-conditioned (condition number {float(np.nanmax(cond)):.3g}). "
                    "Such inputs are (nearly) linearly dependent; perturb them or use a smooth activation."
                )
        if np.any(np.diagonal(Kv, axis1=1, axis2=2) <= 0):
            raise NumericalError(f"⟨…⟩ of {activation.name} with orders {tuple(orders)} needs a positive variance for integration by parts.")
        Kinv = np.linalg.inv(Kv)
    L = _cholesky_psd(Kv)
    B = K.shape[0]
    vals = np.zeros(B)
    vals_coarse = np.zeros(B)
    nodes_fine = rule.nodes[m]
    nodes_coarse = rule.coarse().nodes[m]
    for coef, ords, e in terms:
        factors = [[] for _ in range(m)]
        for s, d in enumerate(ords):
            factors[labels[s]].append(d)
        feats = _feature_points(activation, rule.offsets[m])
        centers = _feature_centers(activation) if m <= 2 else None
        vals += coef * _nested(activation, factors, e, L, Kinv, nodes_fine, feats, centers, rule.max_block_nodes)
        vals_coarse += coef * _nested(activation, factors, e, L, Kinv, nodes_coarse, feats, centers, rule.max_block_nodes)
    err = np.abs(vals - vals_coarse) + 1e-15 * np.abs(vals)
    return vals, err


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


def _nested(activation, factors, e, L, Kinv, nodes, feats, centers, max_nodes):
    """Nested composite Gauss–Legendre integral in Cholesky coordinates; returns shape (B,).

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
    chunk = max(1, int(max_nodes // per_dim**m))
    out = np.empty(B)
    for start in range(0, B, chunk):
        sl = slice(start, min(B, start + chunk))
        Lc = L[sl]
        b = Lc.shape[0]
        # grid of u's and log-weights, built level by level: shape (b, n1, ..., ni)
        us: list[np.ndarray] = []
        weight = np.ones((b,))
        zs: list[np.ndarray] = []
        for i in range(m):
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
            # breakpoints that fall outside the range (or are undefined for a degenerate level)
            # are recycled onto a fixed grid that resolves the Gaussian weight itself
            n_c = c.shape[-1]
            fallback = np.linspace(-5.5, 5.5, n_c) if n_c > 1 else np.zeros(1)
            with np.errstate(invalid="ignore"):
                inside = np.isfinite(c) & (np.abs(c) < _T)
            c = np.where(inside, c, fallback)
            edges = np.concatenate([np.full(mu.shape + (1,), -_T), np.sort(c, axis=-1), np.full(mu.shape + (1,), _T)], axis=-1)
            lo, hi = edges[..., :-1], edges[..., 1:]
            half = 0.5 * (hi - lo)
            u = (lo + half)[..., None] + half[..., None] * x  # (..., panels, nodes)
            wu = half[..., None] * w * np.exp(-0.5 * u * u) * _INV_SQRT_2PI
            u = u.reshape(shape_outer + (per_dim,))
            wu = wu.reshape(shape_outer + (per_dim,))
            # broadcast previous levels to the new axis
            us = [uj[..., None] for uj in us] + [u]
            weight = weight[..., None] * wu
            zs = [zj[..., None] for zj in zs] + [mu[..., None] + s[..., None] * u]
        f = weight
        for v in range(m):
            for d in factors[v]:
                f = f * _derivative(activation, zs[v], d)
        if any(e):
            P = Kinv[sl]
            shp = (b,) + (1,) * m
            y = [sum(P[:, v, w_].reshape(shp) * zs[w_] for w_ in range(m)) for v in range(m)]
            Pb = P.reshape((b,) + (1,) * m + (m, m))
            f = f * _hermite(e, y, Pb)
        out[sl] = f.reshape(b, -1).sum(axis=1)
    return out


def slot_blocks(K: np.ndarray, index_tuples: np.ndarray) -> np.ndarray:
    """Covariance blocks K[idx][:, idx] for an array of sample-index tuples, shape (M, k, k)."""
    idx = np.asarray(index_tuples)
    return K[idx[:, :, None], idx[:, None, :]]


def all_index_tuples(N: int, k: int) -> np.ndarray:
    """All k-tuples of sample indices 0..N−1, shape (N**k, k)."""
    return np.array(list(itertools.product(range(N), repeat=k)), dtype=int).reshape(-1, k)


# --------------------------------------------------------------------------------- all pairs
def pair_matrix(activation: Activation, d1: int, d2: int, K, *, kmax: int = 160, tol: float = 1e-11, rule=None):
    """⟨σ^(d1)(z_a) σ^(d2)(z_b)⟩ for every pair (a, b) of an N×N kernel, with error bounds.

    Uses Mehler's expansion in normalised Hermite functions: with z_a = s_a u_a, s_a = √K_aa,
    ρ_ab = K_ab/(s_a s_b),

        ⟨f(z_a) g(z_b)⟩ = Σ_k f̃_k(s_a) g̃_k(s_b) ρ_ab^k,   f̃_k(s) = E[f(s u) He_k(u)]/√k!,

    so the whole N×N matrix costs O(N² kmax) after N one-dimensional coefficient integrals.  The
    truncation error is bounded rigorously by √(tail_f · tail_g) |ρ|^{kmax+1}, where
    tail_f = E[f²] − Σ_{k≤kmax} f̃_k² (Cauchy–Schwarz).  Pairs whose bound exceeds ``tol`` (relative
    to the O(1) scale of the integrand) fall back to :func:`expect` (closed form or quadrature).

    Returns (values, errors), each (N, N).
    """
    K = validate_blocks(K, name="K", owner="pair_matrix")[0]
    N = K.shape[0]
    maxd = activation.max_derivative if activation.kinks else 10**9
    if max(d1, d2) > maxd:
        raise ParameterError(f"pair_matrix needs ordinary derivatives; {activation.name} has σ^({max(d1, d2)}) as a distribution.")
    s = np.sqrt(np.maximum(np.diag(K), 0.0))
    uniq, inv = np.unique(s, return_inverse=True)
    # coefficient tables on the unique scales
    rule = DEFAULT_RULE if rule is None else rule
    x, w = _leggauss(rule.nodes[1])
    centers = _feature_points(activation, rule.offsets[1])
    tables = {}
    for d in {d1, d2}:
        coef = np.empty((len(uniq), kmax + 1))
        energy = np.empty(len(uniq))
        for i, si in enumerate(uniq):
            if si > 0:
                c = np.clip(centers / si, -_T, _T)
            else:
                c = np.linspace(-5.5, 5.5, len(centers))
            edges = np.concatenate([[-_T], np.sort(c), [_T]])
            lo, hi = edges[:-1], edges[1:]
            half = 0.5 * (hi - lo)
            u = ((lo + half)[:, None] + half[:, None] * x).ravel()
            wu = (half[:, None] * w).ravel() * np.exp(-0.5 * u * u) * _INV_SQRT_2PI
            f = _derivative(activation, si * u, d)
            energy[i] = np.sum(wu * f * f)
            h_prev = np.zeros_like(u)
            h = np.ones_like(u)
            for k in range(kmax + 1):
                coef[i, k] = np.sum(wu * f * h)
                h, h_prev = (u * h - math.sqrt(k) * h_prev) / math.sqrt(k + 1), h
        tables[d] = (coef, np.maximum(energy - np.cumsum(coef**2, axis=1)[:, -1], 0.0), energy)
    cf, tail_f, en_f = tables[d1]
    cg, tail_g, en_g = tables[d2]
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(np.outer(s, s) > 0, K / np.outer(s, s), 0.0)
    rho = np.clip(rho, -1.0, 1.0)
    A = cf[inv]  # (N, kmax+1)
    Bm = cg[inv]
    vals = np.zeros((N, N))
    power = np.ones((N, N))
    for k in range(kmax + 1):
        vals += np.outer(A[:, k], Bm[:, k]) * power
        power = power * rho
    bound = np.sqrt(np.outer(tail_f[inv], tail_g[inv])) * np.abs(power)
    scale = np.sqrt(np.outer(en_f[inv], en_g[inv]))
    # rounding and the coefficient integrals: ~1e-12 of the integrand's scale
    errs = bound + 1e-12 * np.maximum(scale, np.abs(vals))
    bad = bound > tol * np.maximum(scale, 1e-300)
    if bad.any():
        ii, jj = np.nonzero(np.triu(bad) | np.triu(bad.T))
        idx = np.stack([ii, jj], 1)
        blocks = K[idx[:, :, None], idx[:, None, :]]
        v, e = expect(activation, (d1, d2), blocks, rule=rule)
        vals[ii, jj], errs[ii, jj] = v, e
        # the transposed pair (b, a) is the same expectation with the orders swapped
        if d1 == d2:
            vals[jj, ii], errs[jj, ii] = v, e
        else:
            v2, e2 = expect(activation, (d1, d2), K[idx[:, ::-1][:, :, None], idx[:, ::-1][:, None, :]], rule=rule)
            vals[jj, ii], errs[jj, ii] = v2, e2
    return vals, errs
