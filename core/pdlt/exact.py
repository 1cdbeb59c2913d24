"""Exact, all-orders-in-1/n laws for the few networks that admit them.

Deep linear networks (init.md §2, book ch. 3) and scale-invariant activations with one input
and no biases (init.md §4) have finite-width statistics in closed form, with no truncation of
the 1/n expansion.  They are the sharpest available checks of the Monte Carlo engine
(:mod:`pdlt.ensemble`) and of the perturbative recursions, which must agree with them to the
order they are valid.  All functions take the widths (n_0, …, n_L) and per-layer
hyperparameters (a scalar or one value per layer ℓ = 1..L).
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from .errors import ParameterError

__all__ = [
    "deep_linear_even_moment",
    "deep_linear_four_point",
    "scale_invariant_nu",
    "scale_invariant_product_law",
]


def _check_widths(widths, owner: str) -> tuple[int, ...]:
    try:
        w = tuple(int(v) for v in widths)
    except TypeError:
        raise ParameterError(f"The 'widths' parameter of {owner} must be a sequence (n_0, …, n_L). Got {widths!r} instead.") from None
    if len(w) < 2 or any(v < 1 for v in w) or any(int(v) != v for v in widths):
        raise ParameterError(
            f"The 'widths' parameter of {owner} must be at least two positive integers (n_0, …, n_L). Got {widths!r} instead."
        )
    return w


def _per_layer(value, L: int, name: str, owner: str, *, positive: bool = False) -> np.ndarray:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        arr = np.full(L, float(value))
    else:
        arr = np.asarray(value, dtype=float).reshape(-1)
        if arr.shape != (L,):
            raise ParameterError(
                f"The {name!r} parameter of {owner} must be a scalar or a sequence of L = {L} values. "
                f"Got {value!r} instead."
            )
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else (arr < 0))
    if bad.any():
        raise ParameterError(f"The {name!r} parameter of {owner} must be finite and {'> 0' if positive else '>= 0'}. Got {value!r} instead.")
    return arr


def _single_input(x, n0: int, owner: str) -> float:
    x = np.asarray(x, dtype=float).reshape(-1)
    if x.shape != (n0,) or not np.all(np.isfinite(x)):
        raise ParameterError(f"The 'x' parameter of {owner} must be one finite input of length n_0 = {n0}. Got shape {x.shape} instead.")
    return float(np.mean(x**2))


def deep_linear_even_moment(m: int, x, widths: Sequence[int], c_w=1.0) -> np.ndarray:
    """G_{2m}^(ℓ), ℓ = 1..L, of a deep linear network without biases, single input, exact.

    Parameters
    ----------
    m : int
        Half the order (m = 1: two-point G_2, m = 2: G_4, …).
    x : array_like, shape (n_0,)
        The input.
    widths : sequence of int
        (n_0, n_1, …, n_L).
    c_w : float or sequence of L floats
        C_W^(ℓ).

    Returns
    -------
    ndarray, shape (L,)
        G_{2m}^(ℓ), defined by E[z_{i1}⋯z_{i2m}] = (Σ_pairings δ⋯δ) G_{2m}: one neuron
        E[z^{2m}] = (2m−1)!! G_{2m}; m distinct neurons E[z_{i1}²⋯z_{im}²] = G_{2m}.

    Notes
    -----
    Book (3.44)–(3.47), init.md §2, exact to all orders in 1/n (σ(z) = z, C_b = 0):

        G_{2m}^(ℓ+1) = c_{2m}(n_ℓ) (C_W^(ℓ+1))^m G_{2m}^(ℓ),   c_{2m}(n) = Π_{k=1}^{m−1} (1 + 2k/n),
        G_{2m}^(ℓ) = [Π_{ℓ'<ℓ} c_{2m}(n_ℓ')] (G_2^(ℓ))^m,        G_2^(1) = C_W^(1) (1/n_0) Σ_j x_j².

    Examples
    --------
    >>> deep_linear_even_moment(2, [1.0], (1, 4, 4), c_w=1.0)   # G_4 = (1 + 2/4) G_2² at ℓ = 2
    array([1. , 1.5])
    """
    owner = "deep_linear_even_moment"
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ParameterError(f"The 'm' parameter of {owner} must be a positive integer. Got {m!r} instead.")
    widths = _check_widths(widths, owner)
    L = len(widths) - 1
    c_w = _per_layer(c_w, L, "c_w", owner, positive=True)
    G2 = _single_input(x, widths[0], owner) * np.cumprod(c_w)
    n_hidden = np.asarray(widths[1:L], dtype=float)  # n_1..n_{L-1}
    k = np.arange(1, m)
    c2m = np.prod(1.0 + 2.0 * k[None, :] / n_hidden[:, None], axis=1) if m > 1 else np.ones(L - 1)
    factor = np.concatenate([[1.0], np.cumprod(c2m)])
    return factor * G2**m


def deep_linear_four_point(X, widths: Sequence[int], c_b=0.0, c_w=1.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Exact two- and four-point functions of a deep linear network with biases, many inputs.

    Parameters
    ----------
    X : array_like, shape (N, n_0)
        Inputs (rows are samples α).
    widths : sequence of int
        (n_0, n_1, …, n_L).
    c_b, c_w : float or sequence of L floats
        C_b^(ℓ), C_W^(ℓ).

    Returns
    -------
    G2 : list of ndarray, shape (N, N)
        ``G2[ℓ-1]`` = E[z^(ℓ)_{i;α1} z^(ℓ)_{i;α2}] (exact; no 1/n correction for σ(z) = z).
    G4 : list of ndarray, shape (N, N, N, N)
        ``G4[ℓ-1][a, b, c, d]`` = G4^(ℓ)_{(ab)(cd)}, defined by
        E[z_{i1α1}z_{i2α2}z_{i3α3}z_{i4α4}] = δ12δ34 G4_{(12)(34)} + δ13δ24 G4_{(13)(24)} + δ14δ23 G4_{(14)(23)};
        for two different neurons i ≠ k, E[z_{iα1}z_{iα2}z_{kα3}z_{kα4}] = G4_{(12)(34)}.

    Notes
    -----
    init.md §2 (last bullet), exact to all orders in 1/n:

        G^(ℓ+1) = C_b + C_W G^(ℓ),   G^(1) = C_b^(1) + C_W^(1) x·x/n_0,
        G4^(ℓ+1)_{(12)(34)} = C_b² + C_b C_W (G_12 + G_34)
                              + C_W² [G4_{(12)(34)} + (G4_{(13)(24)} + G4_{(14)(23)})/n_ℓ],   G4^(1) = G^(1) ⊗ G^(1).

    In the normalisation of init.md §3, V^(ℓ)_{(12)(34)} = n_{ℓ−1} (G4_{(12)(34)} − G_12 G_34).
    """
    owner = "deep_linear_four_point"
    widths = _check_widths(widths, owner)
    L = len(widths) - 1
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != widths[0] or not np.all(np.isfinite(X)):
        raise ParameterError(f"The 'X' parameter of {owner} must be finite with shape (N, n_0 = {widths[0]}). Got shape {X.shape} instead.")
    c_b = _per_layer(c_b, L, "c_b", owner)
    c_w = _per_layer(c_w, L, "c_w", owner, positive=True)

    G = c_b[0] + c_w[0] * (X @ X.T) / widths[0]
    G4 = np.einsum("ab,cd->abcd", G, G)
    G2s, G4s = [G], [G4]
    for ell in range(1, L):
        cb, cw, n = c_b[ell], c_w[ell], widths[ell]
        G4 = (
            cb**2
            + cb * cw * (G[:, :, None, None] + G[None, None, :, :])
            + cw**2 * (G4 + (G4.transpose(0, 2, 1, 3) + G4.transpose(0, 3, 2, 1)) / n)
        )
        G = cb + cw * G
        G2s.append(G)
        G4s.append(G4)
    return G2s, G4s


def scale_invariant_nu(a_plus: float = 1.0, a_minus: float = 0.0) -> float:
    """ν = 3A_4/A_2² − 1 of σ(z) = a₊ z Θ(z) + a₋ z Θ(−z) (init.md §4).

    A_2 = (a₊² + a₋²)/2, A_4 = (a₊⁴ + a₋⁴)/2.  ReLU: ν = 5; linear: ν = 2.

    Examples
    --------
    >>> scale_invariant_nu(1.0, 0.0), scale_invariant_nu(1.0, 1.0)
    (5.0, 2.0)
    """
    a_plus, a_minus = float(a_plus), float(a_minus)
    A2 = (a_plus**2 + a_minus**2) / 2
    if not np.isfinite(A2) or A2 <= 0:
        raise ParameterError(f"The slopes (a_plus, a_minus) of scale_invariant_nu must be finite and not both 0. Got {(a_plus, a_minus)!r} instead.")
    A4 = (a_plus**4 + a_minus**4) / 2
    return 3 * A4 / A2**2 - 1


def scale_invariant_product_law(
    x, widths: Sequence[int], c_w=1.0, slopes: tuple[float, float] = (1.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Exact kernel and four-point vertex of a scale-invariant MLP, single input, C_b = 0.

    Parameters
    ----------
    x : array_like, shape (n_0,)
        The input.
    widths : sequence of int
        (n_0, n_1, …, n_L).
    c_w : float or sequence of L floats
        C_W^(ℓ) (any values; criticality is C_W = 1/A_2).
    slopes : (float, float)
        (a₊, a₋) of σ(z) = a₊ z Θ(z) + a₋ z Θ(−z); ReLU (1, 0), linear (1, 1).

    Returns
    -------
    K : ndarray, shape (L,)
        K^(ℓ) = E[z_i²] (exact): K^(1) = C_W^(1) x·x/n_0, K^(ℓ+1) = C_W^(ℓ+1) A_2 K^(ℓ).
    V_over_n : ndarray, shape (L,)
        V^(ℓ)/n_{ℓ−1} = Cov(z_i², z_k²) (i ≠ k) = K^(ℓ)² [Π_{ℓ'=1}^{ℓ−1} (1 + ν/n_ℓ') − 1];
        the one-neuron connected E[z⁴]_c is three times this.

    Notes
    -----
    init.md §4 (exact, all orders): the stochastic metric obeys Ĝ^(ℓ+1) = Ĝ^(ℓ) X_ℓ with
    independent X_ℓ = (C_W/n_ℓ) Σ_j u_j² a(u_j)², u_j ~ N(0, 1), whose relative variance is
    ν/n_ℓ.  For the linear activation (ν = 2) this is book (3.25).
    """
    owner = "scale_invariant_product_law"
    widths = _check_widths(widths, owner)
    L = len(widths) - 1
    c_w = _per_layer(c_w, L, "c_w", owner, positive=True)
    try:
        a_plus, a_minus = slopes
    except (TypeError, ValueError):
        raise ParameterError(f"The 'slopes' parameter of {owner} must be a pair (a_plus, a_minus). Got {slopes!r} instead.") from None
    nu = scale_invariant_nu(a_plus, a_minus)
    A2 = (float(a_plus) ** 2 + float(a_minus) ** 2) / 2
    g0 = _single_input(x, widths[0], owner)
    gains = np.concatenate([[c_w[0]], c_w[1:] * A2])
    K = g0 * np.cumprod(gains)
    n_hidden = np.asarray(widths[1:L], dtype=float)
    growth = np.concatenate([[1.0], np.cumprod(1.0 + nu / n_hidden)])
    return K, K**2 * (growth - 1.0)
