"""The Gaussian toolkit of the book's chapter 1: Wick contractions, cumulants, quartic actions.

Everything the 1/n expansion does rests on three facts from ch. 1 of Roberts & Yaida: moments of a
zero-mean Gaussian are sums over pairings of its covariance (Wick's theorem, from the generating
function (1.41)); a nearly-Gaussian distribution is summarised by its connected correlators
(cumulants), which vanish beyond second order for a Gaussian; and a small quartic coupling in the
action produces, to first order, a shifted two-point function and a negative connected four-point
function.  This module states those facts once, as small numerical functions on plain numpy
arrays, so that the engine and the tests can lean on them instead of re-deriving index gymnastics:
pairings and Wick moments (single entries or full tensors), moment ↔ cumulant conversions (on
full tensors for parity-even distributions, by the set-partition formula for anything else), the
first-order correlators of the quartic action and their inverse, and the couplings of the
layer-ℓ preactivation action (theory/init.md §1 and §3).
"""

from __future__ import annotations

import functools
import itertools
import math
import string
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import scipy.linalg

from .errors import ParameterError

__all__ = [
    "pairings",
    "gaussian_moment",
    "gaussian_moment_tensor",
    "symmetrize",
    "connected_four_point",
    "connected_six_point",
    "full_four_point",
    "full_six_point",
    "cumulants_from_moments",
    "moments_from_cumulants",
    "QuarticCorrelators",
    "quartic_action_correlators",
    "quartic_coupling_from_connected",
    "LayerCouplings",
    "layer_action_couplings",
]

#: Relative tolerance of the symmetry and positive-semi-definiteness checks.  Loose enough to
#: accept matrices assembled in floating point (A Aᵀ, kernels from a recursion), tight enough to
#: reject a genuinely indefinite or asymmetric input.
_RTOL = 1e-10

#: Largest tensor (number of entries) that :func:`gaussian_moment_tensor` will build (1 GiB).
_MAX_TENSOR_ENTRIES = 2**27

#: Highest order accepted by the set-partition formulas: Bell(8) = 4140 partitions is still
#: cheap in pure Python; Bell(10) = 115975 is not.
_MAX_PARTITION_ORDER = 8


# --------------------------------------------------------------------------------- validation
def _fail(name: str, owner: str, constraint: str, got: str, hint: str = "") -> ParameterError:
    msg = f"The {name!r} parameter of {owner} must be {constraint}. Got {got} instead."
    if hint:
        msg += " " + hint
    return ParameterError(msg)


def _as_float_array(value, name: str, owner: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _fail(name, owner, "an array of real numbers", repr(value)) from None
    if not np.all(np.isfinite(arr)):
        raise _fail(name, owner, "finite", "an array containing nan or inf")
    return arr


def _check_covariance(K, owner: str, name: str = "K") -> np.ndarray:
    """Return ``K`` as a symmetrised float matrix, or raise if it is not a valid covariance."""
    K = _as_float_array(K, name, owner)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise _fail(name, owner, "a non-empty square (N, N) matrix", f"shape {K.shape}")
    scale = float(np.abs(K).max())
    asym = float(np.abs(K - K.T).max())
    if asym > _RTOL * scale:
        raise _fail(
            name, owner, "symmetric positive semi-definite",
            f"a matrix with max |K - K.T| = {asym:.3g}", "Symmetrise it with (K + K.T) / 2.",
        )
    # Averaging removes rounding-level asymmetry so that every result is exactly symmetric.
    K = 0.5 * (K + K.T)
    lam_min = float(np.linalg.eigvalsh(K)[0])
    if lam_min < -_RTOL * scale:
        raise _fail(
            name, owner, "symmetric positive semi-definite",
            f"a matrix with smallest eigenvalue {lam_min:.6g}",
            "A covariance cannot have negative eigenvalues.",
        )
    return K


def _cholesky_inverse(K: np.ndarray, owner: str, name: str = "K") -> np.ndarray:
    """K⁻¹ (the book's raised-index K^{μν}) for a positive-definite K, via Cholesky."""
    try:
        factor = scipy.linalg.cho_factor(K, lower=True)
    except np.linalg.LinAlgError:
        lam_min = float(np.linalg.eigvalsh(K)[0])
        raise _fail(
            name, owner, "positive definite (invertible)",
            f"a matrix with smallest eigenvalue {lam_min:.6g}",
            "Raised indices K^{μν} need the inverse covariance.",
        ) from None
    inv = scipy.linalg.cho_solve(factor, np.eye(K.shape[0]))
    return 0.5 * (inv + inv.T)


def _check_tensor(T, N: int, order: int, name: str, owner: str) -> np.ndarray:
    T = _as_float_array(T, name, owner)
    if T.shape != (N,) * order:
        raise _fail(name, owner, f"an array of shape {(N,) * order}", f"shape {T.shape}")
    return T


def _check_symmetry(T: np.ndarray, perms: Sequence[tuple[int, ...]], name: str, owner: str,
                    constraint: str, hint: str = "") -> None:
    scale = float(np.abs(T).max()) if T.size else 0.0
    for perm in perms:
        dev = float(np.abs(T - T.transpose(perm)).max())
        if dev > _RTOL * scale:
            raise _fail(name, owner, constraint,
                        f"a tensor with max deviation {dev:.3g} under axes {perm}", hint)


# Transpositions of neighbours generate the full permutation group.
_S4_GENERATORS = [(1, 0, 2, 3), (0, 2, 1, 3), (0, 1, 3, 2)]
_S4 = list(itertools.permutations(range(4)))
# Symmetric within each pair (α1α2), (α3α4) and under exchange of the two pairs.
_PAIR_GENERATORS = [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)]
_PAIR_GROUP = [(0, 1, 2, 3), (1, 0, 2, 3), (0, 1, 3, 2), (1, 0, 3, 2),
               (2, 3, 0, 1), (3, 2, 0, 1), (2, 3, 1, 0), (3, 2, 1, 0)]


def _group_average(T: np.ndarray, group: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Average over a group of axis permutations.

    Contracting four indices with an ill-conditioned K⁻¹ breaks the symmetry of a tensor at the
    1e-11 level; averaging restores it to rounding, so results have the symmetry they are
    defined with.
    """
    return sum(T.transpose(p) for p in group) / len(group)


# ----------------------------------------------------------------------- pairings, partitions
def pairings(indices: Sequence) -> Iterator[tuple[tuple, ...]]:
    """Enumerate the perfect matchings (Wick pairings) of a sequence.

    Parameters
    ----------
    indices : sequence of length 2m
        The items to pair.  Items are paired by *position*: repeated values are distinct
        positions, so ``pairings((0, 0, 0, 0))`` still yields three matchings.  To pair
        positions themselves pass ``range(2m)``.

    Yields
    ------
    tuple of 2-tuples
        One matching, as m pairs ``(a, b)`` with ``a`` earlier than ``b`` in ``indices``.
        There are (2m − 1)!! of them; a sequence of odd length yields none and the empty
        sequence yields one empty matching (so that the zeroth moment is 1).

    Notes
    -----
    The pairings are the terms of Wick's theorem, book (1.45) (four points) and (1.50) (2m
    points): each pairing contributes a product of m covariances.  The first item is paired
    with each of the others in turn, and the rest is matched recursively, which gives the
    count (2m − 1)(2m − 3)… = (2m − 1)!!.

    Examples
    --------
    >>> list(pairings("abcd"))
    [(('a', 'b'), ('c', 'd')), (('a', 'c'), ('b', 'd')), (('a', 'd'), ('b', 'c'))]
    >>> sum(1 for _ in pairings(range(6)))
    15
    >>> list(pairings(range(3)))
    []
    """
    items = tuple(indices)
    if len(items) % 2:
        return
    yield from _pairings(items)


def _pairings(items: tuple) -> Iterator[tuple[tuple, ...]]:
    if not items:
        yield ()
        return
    first, rest = items[0], items[1:]
    for j, partner in enumerate(rest):
        remaining = rest[:j] + rest[j + 1:]
        for tail in _pairings(remaining):
            yield ((first, partner),) + tail


def _set_partitions(items: tuple) -> Iterator[list[tuple]]:
    """All partitions of ``items`` (by position) into non-empty blocks; Bell(k) of them."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        yield [(first,)] + partition
        for b, block in enumerate(partition):
            yield partition[:b] + [(first,) + block] + partition[b + 1:]


def _partition_product(blocks: Sequence[tuple[tuple[int, ...], np.ndarray]], order: int) -> np.ndarray:
    """Outer product of block tensors placed on the given axes.

    ``blocks`` holds (axes, tensor) with ``tensor.ndim == len(axes)``; the axes of all blocks
    partition range(order).  E.g. [((0, 2), A), ((1, 3), B)] gives A_{ac} B_{bd} as [a, b, c, d].
    """
    letters = string.ascii_letters
    inputs = ",".join("".join(letters[a] for a in axes) for axes, _ in blocks)
    return np.einsum(f"{inputs}->{letters[:order]}", *(t for _, t in blocks), optimize=True)


def _splits(order: int, sizes: tuple[int, ...]) -> list[list[tuple[int, ...]]]:
    """Set partitions of range(order) whose block sizes, sorted descending, equal ``sizes``."""
    return [
        sorted(p, key=lambda blk: (-len(blk), blk))
        for p in _set_partitions(tuple(range(order)))
        if tuple(sorted((len(blk) for blk in p), reverse=True)) == sizes
    ]


_SPLITS_4_22 = _splits(4, (2, 2))  # 3 pairings
_SPLITS_6_42 = _splits(6, (4, 2))  # 15 ways to split off a pair
_SPLITS_6_222 = _splits(6, (2, 2, 2))  # 15 pairings


# ------------------------------------------------------------------------------ Wick moments
def gaussian_moment(indices: Sequence[int], K) -> float:
    """E[z_{μ1} … z_{μk}] for a zero-mean Gaussian with covariance K (Wick's theorem).

    Parameters
    ----------
    indices : sequence of int, length k ≥ 0
        Component indices μ_j ∈ {0, …, N − 1}; repetitions allowed.
    K : array_like, shape (N, N)
        Covariance; symmetric positive semi-definite (checked up to a relative tolerance
        of 1e-10).

    Returns
    -------
    float
        The sum over the (k − 1)!! pairings of products of K entries; 0 for odd k, 1 for k = 0.

    Raises
    ------
    ParameterError
        K is not a symmetric PSD square matrix, or an index is not an integer in range.

    Notes
    -----
    Book (1.45) and (1.50): differentiating the generating function Z_{K,J} ∝ exp(½ JᵀKJ)
    of (1.41) k times at J = 0 gives Σ_{pairings} K_{μa μb} ⋯ K_{μc μd}.  The sum is evaluated
    by the recursion E[z_{μ1} rest] = Σ_j K_{μ1 μj} E[rest without μj], memoised on the sorted
    remaining indices (moments are symmetric), so repeated indices cost far less than the
    (k − 1)!! terms of the explicit sum.

    Examples
    --------
    >>> gaussian_moment((0, 0, 0, 0), [[2.0]])  # 3 K²
    12.0
    >>> gaussian_moment((0, 1, 0, 1), [[1.0, 0.5], [0.5, 2.0]])  # K00 K11 + 2 K01²
    2.5
    >>> gaussian_moment((0, 1, 1), [[1.0, 0.5], [0.5, 2.0]])
    0.0
    """
    owner = "gaussian_moment"
    K = _check_covariance(K, owner)
    N = K.shape[0]
    idx = tuple(indices)
    for mu in idx:
        if not isinstance(mu, (int, np.integer)) or isinstance(mu, bool) or not 0 <= mu < N:
            raise _fail("indices", owner, f"a sequence of integers in [0, {N})", repr(tuple(indices)))
    if len(idx) % 2:
        return 0.0
    return _wick(tuple(sorted(int(mu) for mu in idx)), K)


def _wick(idx: tuple[int, ...], K: np.ndarray) -> float:
    @functools.lru_cache(maxsize=None)
    def moment(rest: tuple[int, ...]) -> float:
        if not rest:
            return 1.0
        first, others = rest[0], rest[1:]
        total = 0.0
        seen: set[int] = set()
        for j, mu in enumerate(others):
            # Equal indices give equal terms: count them once with their multiplicity.
            if mu in seen:
                continue
            seen.add(mu)
            total += others.count(mu) * K[first, mu] * moment(others[:j] + others[j + 1:])
        return total

    return float(moment(idx))


def gaussian_moment_tensor(K, order: int) -> np.ndarray:
    """The full moment tensor E[z ⊗ z ⊗ … ⊗ z] of a zero-mean Gaussian with covariance K.

    Parameters
    ----------
    K : array_like, shape (N, N)
        Covariance; symmetric positive semi-definite.
    order : int ≥ 0
        Tensor order; 2, 4 and 6 are the cases the 1/n expansion uses, any order whose tensor
        has at most 2**27 entries is accepted.

    Returns
    -------
    ndarray, shape (N,) * order
        M[μ1, …, μ_order] = E[z_{μ1} ⋯ z_{μ_order}]; all zeros for odd order; ``array(1.0)``
        for order 0.

    Notes
    -----
    Wick's theorem (1.45)/(1.50) in tensor form, built without looping over index tuples by
    the recursion M_{2m} = Σ_{j=1}^{2m−1} (K ⊗ M_{2m−2}) with the second K axis moved to
    position j — one term per partner of the first index, (2m − 1)!! outer products in all.

    Examples
    --------
    >>> M4 = gaussian_moment_tensor([[1.0, 0.5], [0.5, 2.0]], 4)
    >>> M4.shape, float(M4[0, 1, 0, 1])
    ((2, 2, 2, 2), 2.5)
    """
    owner = "gaussian_moment_tensor"
    K = _check_covariance(K, owner)
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise _fail("order", owner, "a non-negative integer", repr(order))
    order = int(order)
    N = K.shape[0]
    if N**order > _MAX_TENSOR_ENTRIES:
        raise _fail("order", owner, f"small enough that N**order <= {_MAX_TENSOR_ENTRIES}",
                    f"{order} with N = {N}", "Use gaussian_moment for individual entries.")
    if order % 2:
        return np.zeros((N,) * order)
    M = np.array(1.0)
    for m in range(1, order // 2 + 1):
        outer = np.multiply.outer(K, M)  # axes: (first, partner, rest…)
        M = sum(np.moveaxis(outer, 1, j) for j in range(1, 2 * m))
    return np.asarray(M, dtype=float)


def symmetrize(tensor) -> np.ndarray:
    """Average an array over all permutations of its axes.

    Parameters
    ----------
    tensor : array_like, shape (N,) * k
        Any array with equal axis lengths (k ≤ 8: k! permutations are summed).

    Returns
    -------
    ndarray, shape (N,) * k
        The fully symmetric part, e.g. for a quartic coupling V^{μνρλ} of book (1.71), whose
        antisymmetric parts drop out of the action.
    """
    T = _as_float_array(tensor, "tensor", "symmetrize")
    if T.ndim > 8 or len(set(T.shape)) > 1:
        raise _fail("tensor", "symmetrize", "an array of shape (N,) * k with k <= 8", f"shape {T.shape}")
    perms = list(itertools.permutations(range(T.ndim)))
    return sum(T.transpose(p) for p in perms) / len(perms)


# ------------------------------------------------------------ moments ↔ cumulants (tensors)
def _check_even_inputs(owner: str, names: Sequence[str], tensors: Sequence) -> list[np.ndarray]:
    first = _as_float_array(tensors[0], names[0], owner)
    if first.ndim != 2 or first.shape[0] != first.shape[1] or first.shape[0] == 0:
        raise _fail(names[0], owner, "a non-empty square (N, N) matrix", f"shape {first.shape}")
    N = first.shape[0]
    out = [first]
    for name, tensor, order in zip(names[1:], tensors[1:], (4, 6)):
        out.append(_check_tensor(tensor, N, order, name, owner))
    return out


def connected_four_point(M2, M4) -> np.ndarray:
    """Connected four-point correlator (fourth cumulant) of a zero-mean, parity-even distribution.

    Parameters
    ----------
    M2 : array_like, shape (N, N)
        Second moments E[z_μ z_ν].
    M4 : array_like, shape (N, N, N, N)
        Fourth moments E[z_μ1 z_μ2 z_μ3 z_μ4].

    Returns
    -------
    ndarray, shape (N, N, N, N)
        E[z_μ1 z_μ2 z_μ3 z_μ4]|_c = M4 − M2_{12} M2_{34} − M2_{13} M2_{24} − M2_{14} M2_{23}.

    Notes
    -----
    Book (1.54).  It vanishes for a Gaussian (1.55); odd moments are assumed to vanish.  Use
    :func:`cumulants_from_moments` for distributions with odd moments or a mean.
    """
    M2, M4 = _check_even_inputs("connected_four_point", ("M2", "M4"), (M2, M4))
    return M4 - sum(_partition_product([(a, M2), (b, M2)], 4) for a, b in _SPLITS_4_22)


def connected_six_point(M2, M4, M6) -> np.ndarray:
    """Connected six-point correlator (sixth cumulant) of a zero-mean, parity-even distribution.

    Parameters
    ----------
    M2, M4, M6 : array_like, shapes (N, N), (N,) * 4, (N,) * 6
        Second, fourth and sixth moment tensors.

    Returns
    -------
    ndarray, shape (N,) * 6
        M6 − Σ_{15 (4,2) splits} M4 M2 + 2 Σ_{15 (2,2,2) pairings} M2 M2 M2.

    Notes
    -----
    Book (1.61); the coefficients are the Möbius weights (−1)^{b−1}(b − 1)! of set partitions
    into b blocks, restricted to even block sizes.  Odd moments are assumed to vanish.
    """
    M2, M4, M6 = _check_even_inputs("connected_six_point", ("M2", "M4", "M6"), (M2, M4, M6))
    four_two = sum(_partition_product([(a, M4), (b, M2)], 6) for a, b in _SPLITS_6_42)
    two_two_two = sum(_partition_product([(a, M2), (b, M2), (c, M2)], 6) for a, b, c in _SPLITS_6_222)
    return M6 - four_two + 2.0 * two_two_two


def full_four_point(K2, C4) -> np.ndarray:
    """Fourth moments from the covariance and the connected four-point correlator.

    Parameters
    ----------
    K2 : array_like, shape (N, N)
        Second moments (= covariance for zero mean).
    C4 : array_like, shape (N, N, N, N)
        Connected four-point correlator.

    Returns
    -------
    ndarray, shape (N, N, N, N)
        C4 + K2_{12} K2_{34} + K2_{13} K2_{24} + K2_{14} K2_{23}; inverse of
        :func:`connected_four_point` (book (1.54) solved for the full correlator).
    """
    K2, C4 = _check_even_inputs("full_four_point", ("K2", "C4"), (K2, C4))
    return C4 + sum(_partition_product([(a, K2), (b, K2)], 4) for a, b in _SPLITS_4_22)


def full_six_point(K2, C4, C6) -> np.ndarray:
    """Sixth moments of a zero-mean, parity-even distribution from its cumulants.

    Parameters
    ----------
    K2, C4, C6 : array_like, shapes (N, N), (N,) * 4, (N,) * 6
        Covariance, connected four-point and connected six-point correlators.

    Returns
    -------
    ndarray, shape (N,) * 6
        C6 + Σ_{15 (4,2) splits} C4 K2 + Σ_{15 pairings} K2 K2 K2; inverse of
        :func:`connected_six_point` (book (1.61) solved for the full correlator).
    """
    K2, C4, C6 = _check_even_inputs("full_six_point", ("K2", "C4", "C6"), (K2, C4, C6))
    four_two = sum(_partition_product([(a, C4), (b, K2)], 6) for a, b in _SPLITS_6_42)
    two_two_two = sum(_partition_product([(a, K2), (b, K2), (c, K2)], 6) for a, b, c in _SPLITS_6_222)
    return C6 + four_two + two_two_two


# ------------------------------------------------------ moments ↔ cumulants (set partitions)
def _check_partition_inputs(fn, indices, owner: str, fn_name: str) -> tuple:
    if not callable(fn):
        raise _fail(fn_name, owner, "callable", repr(fn))
    idx = tuple(indices)
    if not 1 <= len(idx) <= _MAX_PARTITION_ORDER:
        raise _fail("indices", owner, f"a sequence of length 1 to {_MAX_PARTITION_ORDER}", repr(idx))
    for mu in idx:
        if not isinstance(mu, Hashable):
            raise _fail("indices", owner, "a sequence of hashable labels", repr(idx))
    return idx


def cumulants_from_moments(moment_fn: Callable[[tuple], float], indices: Sequence) -> float:
    """Joint cumulant κ(z_{μ1}, …, z_{μk}) from moments, for any distribution.

    Parameters
    ----------
    moment_fn : callable
        ``moment_fn(sub)`` returns E[Π_{μ ∈ sub} z_μ] for a non-empty tuple ``sub`` of the given
        labels (a sub-sequence of ``indices``, in their original order).  Called once per
        distinct sub-tuple.
    indices : sequence of hashable labels, length 1 ≤ k ≤ 8
        Which variables; repetitions allowed.  Labels are passed through to ``moment_fn``
        unchanged, so they may be anything it understands (ints, names, functions of z).

    Returns
    -------
    float
        κ = Σ_{partitions π of the k positions} (−1)^{|π|−1} (|π| − 1)! Π_{B ∈ π} E[Π_{μ∈B} z_μ].

    Notes
    -----
    The Möbius inversion on the lattice of set partitions; no assumption of zero mean or
    parity.  For zero-mean, parity-even distributions it reduces to book (1.54) at k = 4 and
    (1.61) at k = 6, and the cumulants are the connected correlators of (1.52)–(1.61).

    Examples
    --------
    >>> import math
    >>> exp_moment = lambda sub: float(math.factorial(len(sub)))  # Exp(1): E[X^k] = k!
    >>> cumulants_from_moments(exp_moment, (0, 0, 0, 0))  # κ_k = (k − 1)!
    6.0
    """
    idx = _check_partition_inputs(moment_fn, indices, "cumulants_from_moments", "moment_fn")
    cache: dict[tuple, float] = {}

    def moment(block: tuple[int, ...]) -> float:
        sub = tuple(idx[p] for p in block)
        if sub not in cache:
            cache[sub] = float(moment_fn(sub))
        return cache[sub]

    total = 0.0
    for partition in _set_partitions(tuple(range(len(idx)))):
        b = len(partition)
        weight = (-1) ** (b - 1) * math.factorial(b - 1)
        total += weight * math.prod(moment(block) for block in partition)
    return total


def moments_from_cumulants(cumulant_fn: Callable[[tuple], float], indices: Sequence) -> float:
    """Moment E[z_{μ1} ⋯ z_{μk}] from joint cumulants, for any distribution.

    Parameters
    ----------
    cumulant_fn : callable
        ``cumulant_fn(sub)`` returns the joint cumulant κ(z_μ : μ ∈ sub) for a non-empty tuple
        ``sub`` of the given labels (a sub-sequence of ``indices``, in their original order).
    indices : sequence of hashable labels, length 1 ≤ k ≤ 8

    Returns
    -------
    float
        E = Σ_{partitions π of the k positions} Π_{B ∈ π} κ(B); the inverse of
        :func:`cumulants_from_moments`.

    Notes
    -----
    For a Gaussian only two-element blocks survive and this is Wick's theorem (1.50); for a
    zero-mean parity-even distribution at k = 4, 6 it is :func:`full_four_point` and
    :func:`full_six_point`.

    Examples
    --------
    >>> moments_from_cumulants(lambda sub: 1.0 if len(sub) == 2 else 0.0, (0, 0, 0, 0))
    3.0
    """
    idx = _check_partition_inputs(cumulant_fn, indices, "moments_from_cumulants", "cumulant_fn")
    cache: dict[tuple, float] = {}

    def cumulant(block: tuple[int, ...]) -> float:
        sub = tuple(idx[p] for p in block)
        if sub not in cache:
            cache[sub] = float(cumulant_fn(sub))
        return cache[sub]

    return float(sum(
        math.prod(cumulant(block) for block in partition)
        for partition in _set_partitions(tuple(range(len(idx))))
    ))


# ----------------------------------------------------------------- nearly-Gaussian actions
def _contract_all(T: np.ndarray, A: np.ndarray) -> np.ndarray:
    """T'_{i1…ik} = Σ A_{i1 j1} ⋯ A_{ik jk} T_{j1…jk}: one tensordot per axis, O(k N^{k+1})."""
    for axis in range(T.ndim):
        T = np.moveaxis(np.tensordot(A, T, axes=([1], [axis])), 0, axis)
    return T


class QuarticCorrelators(NamedTuple):
    """First-order correlators of the quartic action (book (1.74), (1.78))."""

    #: E[z_μ1 z_μ2], shape (N, N).
    two_point: np.ndarray
    #: E[z_μ1 z_μ2 z_μ3 z_μ4]|_c, shape (N, N, N, N).
    connected_four_point: np.ndarray


def _check_eps(eps, owner: str, nonzero: bool = False) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise _fail("eps", owner, "a real number", repr(eps)) from None
    if not math.isfinite(value) or (nonzero and value == 0.0):
        raise _fail("eps", owner, "finite and non-zero" if nonzero else "finite", repr(eps))
    return value


def quartic_action_correlators(K, V, eps: float) -> QuarticCorrelators:
    """Two-point and connected four-point functions of the quartic action, to first order in ε.

    Parameters
    ----------
    K : array_like, shape (N, N)
        Covariance of the Gaussian part (lower indices); the quadratic coupling is its inverse
        K^{μν}.  Symmetric positive semi-definite.
    V : array_like, shape (N, N, N, N)
        Quartic coupling V^{μνρλ} (upper indices), fully symmetric (use :func:`symmetrize`).
    eps : float
        Small parameter ε.

    Returns
    -------
    QuarticCorrelators
        ``two_point``: E[z_μ1 z_μ2] = K_μ1μ2 − (ε/2) Σ V^{ρ1ρ2ρ3ρ4} K_μ1ρ1 K_μ2ρ2 K_ρ3ρ4;
        ``connected_four_point``: E[z_μ1 z_μ2 z_μ3 z_μ4]|_c = −ε Σ V^{ρ1…ρ4} K_μ1ρ1 ⋯ K_μ4ρ4.
        Both carry O(ε²) errors.

    Notes
    -----
    The action (1.62)–(1.66), (1.71) is S(z) = ½ K^{μν} z_μ z_ν + (ε/4!) V^{μνρλ} z_μ z_ν z_ρ z_λ
    with p(z) = e^{−S}/Z.  Expanding e^{−S} to first order in ε and applying Wick's theorem gives
    (1.74) and (1.78).  A positive quartic coupling makes the connected four-point function
    *negative* (the distribution has lighter tails than the Gaussian).

    Examples
    --------
    >>> out = quartic_action_correlators([[1.0]], [[[[1.0]]]], 0.01)
    >>> round(float(out.two_point[0, 0]), 12), round(float(out.connected_four_point[0, 0, 0, 0]), 12)
    (0.995, -0.01)
    """
    owner = "quartic_action_correlators"
    K = _check_covariance(K, owner)
    N = K.shape[0]
    V = _check_tensor(V, N, 4, "V", owner)
    _check_symmetry(V, _S4_GENERATORS, "V", owner, "fully symmetric",
                    "Pass symmetrize(V); only the symmetric part enters the action.")
    eps = _check_eps(eps, owner)
    VK = np.tensordot(V, K, axes=([2, 3], [0, 1]))  # Σ_ρ3ρ4 V^{ρ1ρ2ρ3ρ4} K_ρ3ρ4
    two = K - 0.5 * eps * (K @ VK @ K)
    four = -eps * _contract_all(V, K)
    return QuarticCorrelators(0.5 * (two + two.T), _group_average(four, _S4))


def quartic_coupling_from_connected(K, C4, eps: float = 1.0) -> np.ndarray:
    """Quartic coupling V^{μνρλ} that produces a given connected four-point function at first order.

    Parameters
    ----------
    K : array_like, shape (N, N)
        Covariance (lower indices); must be positive definite, since the coupling carries raised
        indices K^{μν} = (K⁻¹)_{μν}.
    C4 : array_like, shape (N, N, N, N)
        Connected four-point correlator E[zzzz]|_c, fully symmetric.
    eps : float, default 1.0
        The ε multiplying V in the action; with the default the result is εV.

    Returns
    -------
    ndarray, shape (N, N, N, N)
        V^{μνρλ} = −(1/ε) Σ K^{μα} K^{νβ} K^{ργ} K^{λδ} C4_{αβγδ}, fully symmetric; the inverse of
        the four-point part of :func:`quartic_action_correlators`.

    Notes
    -----
    Book (1.78) solved for the coupling (first order in ε).  The book's ch. 4 action uses the
    same raising of the connected four-point function, split into pairs (theory/init.md §3).
    """
    owner = "quartic_coupling_from_connected"
    K = _check_covariance(K, owner)
    N = K.shape[0]
    C4 = _check_tensor(C4, N, 4, "C4", owner)
    _check_symmetry(C4, _S4_GENERATORS, "C4", owner, "fully symmetric")
    eps = _check_eps(eps, owner, nonzero=True)
    Kinv = _cholesky_inverse(K, owner)
    return _group_average(-_contract_all(C4, Kinv) / eps, _S4)


class LayerCouplings(NamedTuple):
    """Couplings of the layer-ℓ preactivation action (theory/init.md §3, book §4.2–4.3)."""

    #: Quadratic coupling g^{α1α2}, shape (P, P).
    g: np.ndarray
    #: Quartic coupling v^{(α1α2)(α3α4)}, shape (P, P, P, P).
    v: np.ndarray


def layer_action_couplings(K, G1, V, n_prev: float, n_this: float) -> LayerCouplings:
    """Couplings g and v of the layer-ℓ action, to first order in 1/n_{ℓ−1}.

    Parameters
    ----------
    K : array_like, shape (P, P)
        Leading-order kernel K^(ℓ)_{α1α2} over P samples; positive definite.
    G1 : array_like, shape (P, P)
        Next-to-leading-order metric correction G^{1}(ℓ)_{α1α2} (symmetric).
    V : array_like, shape (P, P, P, P)
        Four-point vertex V^(ℓ)_{(α1α2)(α3α4)} (lower indices), symmetric within each pair and
        under exchange of the pairs.
    n_prev : float > 0
        Fan-in width n_{ℓ−1}, which normalises G^{1} and V.
    n_this : float > 0
        Number n_ℓ of neurons of layer ℓ kept in the distribution.

    Returns
    -------
    LayerCouplings
        ``g`` = K^{α1α2} + (1/n_{ℓ−1}) [−G^{1 α1α2} + Σ K_{β1β2} V^{(α1β1)(α2β2)}
        + (n_ℓ/2) Σ K_{β1β2} V^{(α1α2)(β1β2)}] and ``v`` = V^{(α1α2)(α3α4)} / n_{ℓ−1}, with all
        indices raised by K^{αβ} = (K⁻¹)_{αβ}.  Both carry O(1/n²) errors.

    Notes
    -----
    The distribution of the layer-ℓ preactivations z_{i;α} (i = 1…n_ℓ) is
    p ∝ exp[−½ Σ g^{α1α2} Σ_i z_{iα1} z_{iα2} + ⅛ Σ v^{(α1α2)(α3α4)} Σ_{i,j} z_{iα1} z_{iα2} z_{jα3} z_{jα4}]
    (book §4.2–4.3; theory/init.md §3).  It is the quartic action (1.71) over the combined index
    (i, α) with εV = −[δ_{i1i2}δ_{i3i4} v^{(α1α2)(α3α4)} + 2 pairings], and the formulas above make
    its first-order correlators (1.74), (1.78) equal K + G^{1}/n_{ℓ−1} and the ch. 4 connected
    four-point function.  The last term of ``g`` is O(n_ℓ/n_{ℓ−1}), i.e. O(1) when all n_ℓ neurons
    are kept: g is not K⁻¹ (theory/init.md §6, pitfall 7).  For one input this reduces to
    g = 1/K + (1/n_{ℓ−1})[−G^{1}/K² + (n_ℓ/2 + 1) V/K³] and v = V/(n_{ℓ−1} K⁴).

    Examples
    --------
    >>> c = layer_action_couplings([[2.0]], [[0.0]], [[[[4.0]]]], n_prev=100, n_this=2)
    >>> round(float(c.g[0, 0]), 6), round(float(c.v[0, 0, 0, 0]), 6)
    (0.51, 0.0025)
    """
    owner = "layer_action_couplings"
    K = _check_covariance(K, owner)
    P = K.shape[0]
    G1 = _as_float_array(G1, "G1", owner)
    if G1.shape != (P, P):
        raise _fail("G1", owner, f"an array of shape {(P, P)}", f"shape {G1.shape}")
    _check_symmetry(G1, [(1, 0)], "G1", owner, "symmetric")
    V = _check_tensor(V, P, 4, "V", owner)
    _check_symmetry(V, _PAIR_GENERATORS, "V", owner,
                    "symmetric within each pair (α1α2), (α3α4) and under exchange of the pairs")
    for name, value in (("n_prev", n_prev), ("n_this", n_this)):
        try:
            ok = math.isfinite(float(value)) and float(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise _fail(name, owner, "a finite number > 0", repr(value))
    n_prev, n_this = float(n_prev), float(n_this)
    Kinv = _cholesky_inverse(K, owner)
    V_up = _group_average(_contract_all(V, Kinv), _PAIR_GROUP)
    G1_up = Kinv @ (0.5 * (G1 + G1.T)) @ Kinv
    cross = np.einsum("bd,abcd->ac", K, V_up)  # Σ K_{β1β2} V^{(α1β1)(α2β2)}
    trace = np.tensordot(V_up, K, axes=([2, 3], [0, 1]))  # Σ K_{β1β2} V^{(α1α2)(β1β2)}
    g = Kinv + (-G1_up + cross + 0.5 * n_this * trace) / n_prev
    return LayerCouplings(0.5 * (g + g.T), V_up / n_prev)
