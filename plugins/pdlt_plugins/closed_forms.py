"""Closed-form Gaussian expectations (the ``pdlt_gaussian_expectation`` hook).

* Scale-invariant family σ = a₊ z Θ(z) + a₋ z Θ(−z) (ReLU, leaky ReLU, …), identified by the
  activation's ``scale_invariant_slopes`` metadata: every product of σ and σ' over one variable,
  and the arc-cosine kernels ⟨σσ⟩, ⟨σ'σ'⟩, ⟨σσ'⟩ over two (book §5.5; Cho & Saul 2009).
* Linear σ = a z (a₊ = a₋): Wick's theorem for up to four slots.
* erf: ⟨σσ⟩ and ⟨σ'σ'⟩ over one or two variables (Williams 1997).
* GELU σ = z Φ(z): ⟨σσ⟩ and ⟨σ'σ'⟩ over two variables (Tsuchida, Pearce, van der Heide,
  Roosta & Gallagher 2021, "Avoiding kernel fixed points"; ⟨σ'σ'⟩ = ∂⟨σσ⟩/∂K_12 by Price's theorem).

Anything else returns ``None`` so that the engine's quadrature takes over.

The same formulas answer ``pdlt_gaussian_pair_matrices`` (every pair of an N×N kernel at once,
the hot path of the leading-order flow): evaluated straight from K without building 2×2 blocks,
with the angle (arc-cosine, GELU) shared by ⟨σσ⟩ and ⟨σ'σ'⟩, in place, on the tiles on and
above the diagonal (they stay in cache), the others mirrored.
"""

from __future__ import annotations

import math

import numpy as np

from pdlt.hookspecs import hookimpl

_SQRT_2PI = math.sqrt(2.0 * math.pi)


_INV_2PI = 1.0 / (2.0 * math.pi)


def _family(activation):
    """("linear", a), ("scale_invariant", (a₊, a₋)), ("erf",), ("gelu",) or None."""
    slopes = activation.scale_invariant_slopes
    if slopes is not None:
        ap, am = (float(s) for s in slopes)
        return ("linear", ap) if ap == am else ("scale_invariant", (ap, am))
    if type(activation).__module__ == __name__.rsplit(".", 1)[0] + ".activations" and activation.name in ("erf", "gelu"):
        return (activation.name,)
    return None


def _rho(K):
    s1 = np.sqrt(np.maximum(K[:, 0, 0], 0.0))
    s2 = np.sqrt(np.maximum(K[:, 1, 1], 0.0))
    denom = s1 * s2
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(denom > 0, K[:, 0, 1] / np.where(denom > 0, denom, 1.0), 0.0)
    return s1, s2, np.clip(rho, -1.0, 1.0)


def _half_moment(q: int, K):
    """E[z^q ; z > 0] for z ~ N(0, K)."""
    return K ** (q / 2) * 2 ** (q / 2) * math.gamma((q + 1) / 2) / (2 * math.sqrt(math.pi))


def _scale_invariant(slopes, orders, K):
    ap, am = slopes
    k = len(orders)
    if any(d > 1 for d in orders):
        return None  # δ-function derivatives: the engine integrates by parts
    if k == 1:
        # all slots on one variable: z^q times a₊^k Θ(z) + a₋^k Θ(−z)
        q = sum(1 for d in orders if d == 0)
        var = K[:, 0, 0]
        return (ap**k + (-1) ** q * am**k) * _half_moment(q, var)
    if k != 2:
        return None
    s1, s2, rho = _rho(K)
    # ψ from atan2 (not arccos): accurate for nearly coinciding inputs; exactly 0 when they coincide
    det = np.maximum(K[:, 0, 0] * K[:, 1, 1] - K[:, 0, 1] ** 2, 0.0)
    coincide = np.abs(K[:, 0, 0] + K[:, 1, 1] - 2 * K[:, 0, 1]) <= 1e-13 * np.maximum(np.maximum(K[:, 0, 0], K[:, 1, 1]), 1e-300)
    det = np.where(coincide, 0.0, det)
    psi = np.where(s1 * s2 > 0, np.arctan2(np.sqrt(det), K[:, 0, 1]), np.pi / 2)
    sin_psi = np.where(s1 * s2 > 0, np.sqrt(det) / np.where(s1 * s2 > 0, s1 * s2, 1.0), 1.0)
    if orders == (0, 0):
        # J(ρ) = √(K11K22)/2π (sin ψ + (π−ψ) cos ψ); J(−ρ) has ψ → π − ψ
        J_plus = s1 * s2 / (2 * np.pi) * (sin_psi + (np.pi - psi) * rho)
        J_minus = s1 * s2 / (2 * np.pi) * (sin_psi - psi * rho)
        return (ap**2 + am**2) * J_plus - 2 * ap * am * J_minus
    if orders == (1, 1):
        return (ap**2 + am**2) * (np.pi - psi) / (2 * np.pi) + 2 * ap * am * psi / (2 * np.pi)
    if orders in ((0, 1), (1, 0)):
        s = s1 if orders == (0, 1) else s2
        return (ap**2 - am**2) * s * (1 + rho) / (2 * _SQRT_2PI)
    return None


def _linear(a, orders, K):
    if any(d > 1 for d in orders):
        return np.zeros(K.shape[0])
    slots = [s for s, d in enumerate(orders) if d == 0]
    scale = a ** len(orders)
    if len(slots) % 2:
        return np.zeros(K.shape[0])
    if not slots:
        return np.full(K.shape[0], scale)
    if len(slots) == 2:
        a_, b_ = slots
        return scale * K[:, a_, b_]
    a_, b_, c_, d_ = slots
    return scale * (K[:, a_, b_] * K[:, c_, d_] + K[:, a_, c_] * K[:, b_, d_] + K[:, a_, d_] * K[:, b_, c_])


def _erf(orders, K):
    k = len(orders)
    if k == 1:
        if orders == (0,):
            return np.zeros(K.shape[0])
        if orders == (1,):
            return 2.0 / np.sqrt(np.pi * (1 + 2 * K[:, 0, 0]))
        return None
    if k != 2:
        return None
    k11, k22, k12 = K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]
    if orders == (0, 0):
        return (2 / np.pi) * np.arcsin(np.clip(2 * k12 / np.sqrt((1 + 2 * k11) * (1 + 2 * k22)), -1.0, 1.0))
    if orders == (1, 1):
        return (4 / np.pi) / np.sqrt((1 + 2 * k11) * (1 + 2 * k22) - 4 * k12**2)
    return None


def _gelu_pair(orders, k11, k22, k12):
    """GELU ⟨σσ⟩ or ⟨σ'σ'⟩ from the entries of 2×2 blocks (arrays broadcasting together).

    With P = (1 + K11)(1 + K22), Δ² = P − K12² ≥ 1 + K11 + K22 (Cauchy–Schwarz, so never
    singular, coinciding inputs included) and θ = atan2(K12, Δ) = arcsin(K12/√P):
    ⟨σσ⟩ = K12/4 + [K12 θ + (K12² + K11K22 Δ²)/(P Δ)]/2π and
    ⟨σ'σ'⟩ = ∂⟨σσ⟩/∂K12 = 1/4 + θ/2π + K12 [1/Δ² + (2 + K11 + K22)/P]/(2π Δ).
    """
    P = (1.0 + k11) * (1.0 + k22)
    delta2 = P - k12 * k12
    delta = np.sqrt(delta2)
    theta = np.arctan2(k12, delta)
    if orders == (0, 0):
        return 0.25 * k12 + _INV_2PI * (k12 * theta + (k12 * k12 + k11 * k22 * delta2) / (P * delta))
    return 0.25 + _INV_2PI * (theta + k12 / delta * (1.0 / delta2 + (2.0 + (k11 + k22)) / P))


def _gelu(orders, K):
    if orders not in ((0, 0), (1, 1)):
        return None
    return _gelu_pair(orders, K[:, 0, 0], K[:, 1, 1], K[:, 0, 1])


@hookimpl(trylast=True)
def pdlt_gaussian_expectation(activation, orders, K):
    K = np.asarray(K, dtype=float)
    family = _family(activation)
    value = None
    if family is None:
        return None
    if family[0] == "linear":
        value = _linear(family[1], tuple(orders), K)
    elif family[0] == "scale_invariant":
        value = _scale_invariant(family[1], tuple(orders), K)
    elif family[0] == "erf":
        value = _erf(tuple(orders), K)
    else:
        value = _gelu(tuple(orders), K)
    if value is None:
        return None
    value = np.asarray(value, dtype=float)
    return value, np.zeros_like(value)


# ------------------------------------------------------------------------------- pair matrices
#: Side of the square tiles of the pair-matrix evaluation: a tile's temporaries stay in the CPU
#: cache (and are recycled by the allocator rather than page-faulted afresh), and a transposed
#: tile is written back within the cache too.
_TILE = 128


def _symmetric_tiles(K: np.ndarray, kernel, n_out: int, symmetric: bool) -> list[np.ndarray]:
    """Evaluate ``kernel(Kc, d_rows, d_cols, outs, diagonal)`` tile by tile over K; (N, N) outputs.

    ``Kc`` is a tile of K, ``d_rows`` (r, 1) and ``d_cols`` (1, c) the matching variances,
    ``outs`` the arrays of the tile's shape to fill, and ``diagonal`` whether the tile is a
    diagonal block (rows and columns the same inputs, so its diagonal pairs coincide).  Tiles
    are copied into contiguous buffers (ufuncs on strided views run at half speed).  When every
    output is symmetric in (a, b), only the tiles on and above the diagonal are evaluated and
    the rest are their transposes, so the outputs are exactly symmetric and the transcendental
    work is halved.
    """
    N = K.shape[0]
    d = np.ascontiguousarray(np.diagonal(K))
    outs = [np.empty((N, N)) for _ in range(n_out)]
    if N <= _TILE * 3 // 2:
        if symmetric and not np.array_equal(K, K.T):
            K = np.triu(K) + np.triu(K, 1).T  # the upper triangle wins, as in the tiled path
        kernel(np.ascontiguousarray(K), d[:, None], d[None, :], outs, True)
        return outs
    k_buf = np.empty(_TILE * _TILE)
    o_bufs = [np.empty(_TILE * _TILE) for _ in range(n_out)]
    for i0 in range(0, N, _TILE):
        i1 = min(N, i0 + _TILE)
        for j0 in range(i0 if symmetric else 0, N, _TILE):
            j1 = min(N, j0 + _TILE)
            shape = (i1 - i0, j1 - j0)
            Kc = k_buf[: shape[0] * shape[1]].reshape(shape)
            np.copyto(Kc, K[i0:i1, j0:j1])
            tiles = [b[: Kc.size].reshape(shape) for b in o_bufs]
            kernel(Kc, d[i0:i1, None], d[None, j0:j1], tiles, i0 == j0)
            for o, t in zip(outs, tiles):
                o[i0:i1, j0:j1] = t
                if symmetric and j0 > i0:
                    o[j0:j1, i0:i1] = t.T
    return outs


def _scale_invariant_kernel(slopes, orders, any_zero_variance):
    """Tile kernel of the arc-cosine pair matrices (book §5.5; Cho & Saul 2009).

    ψ = atan2(√(K11K22 − K12²), K12) (accurate for nearly coinciding inputs; exactly 0 when
    they coincide, |K11 + K22 − 2K12| ≤ 1e-13 max(K11, K22), as in the block formulas) serves
    every pattern; with √det = s1 s2 sin ψ the arc-cosine kernel is (√det + (π − ψ) K12)/2π,
    no division needed.  Coinciding inputs have det ≤ 1e-13 max(K11, K22)² ≈ 1e-13 K11 K22, so
    the exact test runs only on the (few) entries with det ≤ 1e-12 K11 K22, which also catch
    the rounding-negative ones; the diagonal (a = b, det = 0 exactly) is left out of that search.
    """
    ap, am = slopes
    A, Bc = ap * ap + am * am, 2.0 * ap * am
    need_angle = any(o in ((0, 0), (1, 1)) for o in orders)

    def kernel(Kc, di, dj, outs, diagonal):
        if need_angle:
            dd = di * dj
            root = np.multiply(Kc, Kc)
            np.subtract(dd, root, out=root)
            dd *= 1e-12
            if diagonal:
                dd.flat[:: dd.shape[1] + 1] = -1.0
            small = root <= dd
            if small.any():
                ii, jj = np.nonzero(small)
                a, b, k, r = di[ii, 0], dj[0, jj], Kc[ii, jj], root[ii, jj]
                coincide = np.abs(a + b - 2.0 * k) <= 1e-13 * np.maximum(a, b)
                root[ii, jj] = np.where(coincide | (r < 0.0), 0.0, r)
            np.sqrt(root, out=root)
            psi = np.arctan2(root, Kc)
            if any_zero_variance:
                # a zero variance (z ≡ 0): σ'(0) = 1/2 convention of the block formulas, ψ = π/2
                np.putmask(psi, (np.sqrt(di) * np.sqrt(dj)) == 0.0, 0.5 * np.pi)
        for o, out in zip(orders, outs):
            if o == (0, 0):
                np.subtract(np.pi, psi, out=out)
                out *= Kc
                out += root
                if Bc:
                    minus = psi * Kc
                    np.subtract(root, minus, out=minus)
                    minus *= Bc / A
                    out -= minus
                out *= A * _INV_2PI
            elif o == (1, 1):
                np.subtract(np.pi, psi, out=out)
                out *= A * _INV_2PI
                if Bc:
                    out += (Bc * _INV_2PI) * psi
            else:
                # ⟨σ_a σ'_b⟩ = (a₊² − a₋²) s_a (1 + ρ)/(2√2π) = (a₊² − a₋²)(s_a + K_ab/s_b)/(2√2π)
                sa, sb = (np.sqrt(di), np.sqrt(dj)) if o == (0, 1) else (np.sqrt(dj), np.sqrt(di))
                with np.errstate(divide="ignore", invalid="ignore"):
                    np.divide(Kc, sb, out=out)
                np.putmask(out, np.broadcast_to(sb == 0.0, out.shape), 0.0)
                out += sa
                out *= (ap * ap - am * am) / (2.0 * _SQRT_2PI)

    return kernel


def _erf_kernel(orders):
    """Tile kernel of erf's ⟨σσ⟩ = (2/π) arcsin(2K12/√P) and ⟨σ'σ'⟩ = (4/π)/√(P − 4K12²),
    P = (1 + 2K11)(1 + 2K22); both from the one square root r = √(P − 4K12²) (≥ 1, as
    P − 4K12² ≥ 1 + 2K11 + 2K22), with arcsin(2K12/√P) = atan2(2K12, r)."""

    def kernel(Kc, di, dj, outs, diagonal):
        r = (1.0 + 2.0 * di) * (1.0 + 2.0 * dj)
        k2 = np.multiply(Kc, Kc)
        k2 *= 4.0
        r -= k2
        np.sqrt(r, out=r)
        for o, out in zip(orders, outs):
            if o == (0, 0):
                np.multiply(Kc, 2.0, out=out)
                np.arctan2(out, r, out=out)
                out *= 2 / np.pi
            else:
                np.divide(4 / np.pi, r, out=out)

    return kernel


def _gelu_kernel(orders):
    def kernel(Kc, di, dj, outs, diagonal):
        for o, out in zip(orders, outs):
            out[...] = _gelu_pair(o, di, dj, Kc)

    return kernel


def _linear_kernel(a, orders):
    def kernel(Kc, di, dj, outs, diagonal):
        for o, out in zip(orders, outs):
            if o == (0, 0):
                np.multiply(Kc, a * a, out=out)
            else:
                out.fill(a * a if o == (1, 1) else 0.0)

    return kernel


@hookimpl(trylast=True)
def pdlt_gaussian_pair_matrices(activation, orders, K):
    orders = tuple((int(o[0]), int(o[1])) for o in orders)
    family = _family(activation)
    if family is None or not orders:
        return None
    K = np.asarray(K, dtype=float)
    if family[0] == "linear":
        kernel = _linear_kernel(family[1], orders)
    elif family[0] == "scale_invariant":
        if not set(orders) <= {(0, 0), (1, 1), (0, 1), (1, 0)}:
            return None  # δ-function derivatives: the engine integrates by parts
        kernel = _scale_invariant_kernel(family[1], orders, bool(np.any(np.diagonal(K) == 0.0)))
    elif family[0] == "erf":
        if not set(orders) <= {(0, 0), (1, 1)}:
            return None
        kernel = _erf_kernel(orders)
    else:
        if not set(orders) <= {(0, 0), (1, 1)}:
            return None
        kernel = _gelu_kernel(orders)
    symmetric = all(o[0] == o[1] for o in orders)
    return _symmetric_tiles(K, kernel, len(orders), symmetric)
