"""Layer maps of the MLP for the dNTK and ddNTK statistics P, Q, R, S, T, U (book ch. 11, ∞).

One step ℓ → ℓ+1 of the leading-order (1/n) recursions of theory/dntk.md §2 (P, Q as in
training.md §3.3; R, S, U as in training.md §4.3; T as derived in dntk.md).  Index conventions
are exactly those of theory/training.md §0 (every tensor of layer ℓ normalised by 1/n_{ℓ−1}):

* ``P[a0, a1, a2, a3]``, ``Q[…]``: E[dĤ_{i0i1i2;a0a1a2} z_{i3;a3}] =
  (1/n)[δ03δ12 P_0123 + δ01δ23 Q_0123 + δ02δ13 Q_0213] (dĤ slots 0, 1, 2, then the z slot);
* ``R[a0, a1, a2, a3]``: E[ddĤ^I_{i0i1i2i3}] = (1/n)[δ01δ23 R_0123 + δ02δ31 R_0231 + δ03δ12 R_0312];
* ``S[a1, a2, a3, a4]``, ``T[a1, a3, a4, a2]``, ``U[a1, a4, a2, a3]``: E[ddĤ^II_{i1i2i3i4}] =
  (1/n)[δ12δ34 S_1234 + δ13δ42 T_1342 + δ14δ23 U_1423] — each array is stored in the index order
  of its subscript, so e.g. ``T[1, 1, 0, 0]`` is T_1342 with (α1, α3, α4, α2) = (1, 1, 0, 0).

Exact symmetries (tested): P_0123 = P_0213, R_0123 = R_0132, S_1234 = S_2143, T_1342 = T_2431,
U_1423 = U_2314.

Kinked activations (ReLU family, σ'' = (a₊ − a₋)δ).  pdlt defines every statistic as the limit of
the same statistic for the activation with its kink smoothed on a scale ε → 0.  Gaussian
expectations with a δ or δ' on a variable carried by no other factor are ordinary integrals (the
engine integrates by parts).  When several factors share one variable (coinciding samples),
scaling z = εu near the kink shows that the product on that variable is O(ε^e) with
e = 1 + n₀ − n₂ − 2n₃ (n_d = number of σ^(d) factors there): e ≥ 1 gives 0 (e.g. ⟨σ''σ…⟩, since
σ(0) = 0); e = 0 gives a multiple of δ that does not depend on the smoothing only for
σ''σ'^k → (a₊^{k+1} − a₋^{k+1})/(k+1) δ and σ'''σ → −(a₊² − a₋²)/2 δ; every other case (δ², δ'·step,
…) diverges or depends on the smoothing and is *undefined*.  For ReLU this leaves P and Q defined
everywhere, S, T, U defined exactly where α1 ≠ α2, and R where α0 differs from α1, α2, α3
(σ'''σ' at a coinciding pair diverges like 1/ε, so R does *not* vanish there — it is undefined).
Undefined components raise :class:`~pdlt.errors.NumericalError` by default, or are NaN with
``undefined="nan"``.  docs/dntk.md has the derivation and the checks.
"""

from __future__ import annotations


import attrs
import numpy as np

from pdlt.contractions import LayerExpectations, first_derivative_terms
from pdlt.errors import NumericalError, ParameterError
from pdlt.flow import Flow, Statistics
from pdlt.gaussian import _coincidence_labels, all_index_tuples, expect

__all__ = ["DNTK_FIELDS", "dntk_step", "first_layer_dntk", "dntk_flow", "defined_components"]

#: The tensors computed here, in the order of :class:`pdlt.flow.Statistics`.
DNTK_FIELDS = ("P", "Q", "R", "S", "T", "U")


def first_layer_dntk(N: int) -> dict[str, np.ndarray]:
    """P, Q, R, S, T, U of layer 1: all zero (z^(1) is linear in the parameters, dĤ^(1) = 0)."""
    z4 = np.zeros((N,) * 4)
    return {name: z4 for name in DNTK_FIELDS}


# ---------------------------------------------------------------------------------------------
# Gaussian expectations, including the kink limits


def _reduce_variable(orders: list[int], maxd: int, slopes):
    """The ε → 0 limit of Π σ^(d)(z) for the factors ``orders`` sharing one variable z.

    Returns ("ordinary",) | ("zero",) | ("undefined",) | ("dist", coef, d): coef · σ^(d)(z) with
    a single distributional factor (d > maxd), which the engine integrates by parts.
    """
    if max(orders) <= maxd:
        return ("ordinary",)
    if len(orders) == 1:
        return ("dist", 1.0, orders[0])
    if slopes is None or maxd != 1:
        return ("undefined",)
    a_p, a_m = slopes
    jump = a_p - a_m
    if jump == 0.0:  # σ is linear: every distributional factor vanishes
        return ("zero",)
    n = [orders.count(d) for d in range(4)]
    if any(d > 3 for d in orders):
        return ("undefined",)
    # near the kink σ = ε s(u), σ' = s'(u), σ'' = s''(u)/ε, σ''' = s'''(u)/ε², dz = ε du
    e = 1 + n[0] - n[2] - 2 * n[3]
    if e >= 1:
        return ("zero",)
    if e == 0 and n[3] == 0 and n[2] == 1 and n[0] == 0:
        k = n[1]  # σ''σ'^k = (σ'^{k+1})'/(k+1) → (a₊^{k+1} − a₋^{k+1})/(k+1) δ
        return ("dist", (a_p ** (k + 1) - a_m ** (k + 1)) / ((k + 1) * jump), 2)
    if e == 0 and n[3] == 1 and n[0] == 1 and n[1] == 0 and n[2] == 0:
        # σ'''σ = (σ''σ)' − σ''σ' → −(a₊² − a₋²)/2 δ
        return ("dist", -(a_p**2 - a_m**2) / (2 * jump), 2)
    return ("undefined",)


class _Fallback(Exception):
    """A conditioned block left the cases :meth:`_Expectations._conditioned` handles."""


def _deterministic(C: np.ndarray) -> np.ndarray:
    """(B,) bool: a variable of a conditional covariance block has (numerically) zero variance."""
    d = np.diagonal(C, axis1=1, axis2=2)
    return np.any(d <= 1e-13 * np.maximum(d.max(axis=1), 1e-300)[:, None], axis=1)


class _Expectations:
    """The Gaussian expectations of one dNTK step, over the kernel of ``E``.

    Ordinary products go to :class:`~pdlt.contractions.LayerExpectations` (cached, shared with
    the MLP step); products with distributional factors of a kinked σ are evaluated here, slot
    pattern by slot pattern, with the kink limits of :func:`_reduce_variable` (NaN = undefined).
    """

    def __init__(self, E: LayerExpectations):
        self.E = E
        self.act = E.activation
        self.maxd = int(self.act.max_derivative)
        self.N = E.N
        self.slopes = self.act.scale_invariant_slopes if self.maxd == 1 and self.act.kinks == (0.0,) else None
        self._cache: dict = {}

    # -- generic evaluation ---------------------------------------------------------------
    def _labels(self, tup) -> tuple[int, ...]:
        co = self.E.coincident
        labels: list[int] = []
        for s, a in enumerate(tup):
            for t in range(s):
                if co[tup[t], a]:
                    labels.append(labels[t])
                    break
            else:
                labels.append(max(labels, default=-1) + 1)
        return tuple(labels)

    def _kinked(self, orders: tuple[int, ...], insert_first: int = 0, mask=None) -> np.ndarray:
        """⟨Π_s σ^(o_s)(z_{a_s})⟩ for every index tuple (a_s), with ``insert_first`` derivatives of
        the whole product on the variable of slot 0 (``mask``: tuples to evaluate, others NaN)."""
        k = len(orders)
        full = all_index_tuples(self.N, k)
        # one representative per set of tuples related by permuting slots of equal order
        canon = full.copy()
        for d in set(orders):
            same = [s for s, o in enumerate(orders) if o == d and not (insert_first and s == 0)]
            if len(same) > 1:
                canon[:, same] = np.sort(canon[:, same], axis=1)
        tuples, inverse = np.unique(canon, axis=0, return_inverse=True)
        out = np.full(len(tuples), np.nan)
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, tup in enumerate(tuples):
            if mask is None or mask[tuple(tup)]:
                groups.setdefault(self._labels(tuple(tup)), []).append(row)
        for labels, rows in groups.items():
            rows = np.asarray(rows)
            m = max(labels) + 1
            slots, red_orders, coef, zero, undefined = [], [], 1.0, False, False
            ins = []
            for v in range(m):
                on_v = [s for s in range(k) if labels[s] == v]
                red = _reduce_variable([orders[s] for s in on_v], self.maxd, self.slopes)
                n_ins = insert_first if v == labels[0] else 0
                if red[0] == "zero":
                    zero = True
                elif red[0] == "undefined":
                    undefined = True
                elif red[0] == "ordinary":
                    for j, s in enumerate(on_v):
                        slots.append(s)
                        red_orders.append(orders[s])
                        ins.append(n_ins if j == 0 else 0)
                else:
                    coef *= red[1]
                    slots.append(on_v[0])
                    red_orders.append(red[2])
                    ins.append(n_ins)
            if zero:
                out[rows] = 0.0
                continue
            if undefined:
                continue
            idx = tuples[rows][:, slots]
            blocks = self.E.K[idx[:, :, None], idx[:, None, :]]
            if not any(ins) and self.slopes is not None and max(red_orders) > self.maxd:
                # δ or δ' factors: condition on the kink instead of integrating by parts on the
                # full grid (same values, one dimension less per δ)
                distinct = [slots.index(s) for s in range(k) if s in slots and labels.index(labels[s]) == s]
                vals = self._conditioned(tuple(red_orders), blocks, distinct)
                if vals is not None:
                    out[rows] = coef * vals
                    continue
            try:
                vals, errs = expect(self.act, tuple(red_orders), blocks, insert=tuple(ins), rule=self.E.rule)
            except NumericalError:
                continue
            self.E._record(np.atleast_1d(vals), np.atleast_1d(errs))
            out[rows] = coef * np.atleast_1d(vals)
        return out[inverse.ravel()].reshape((self.N,) * k)

    def _conditioned(self, orders: tuple[int, ...], blocks: np.ndarray, distinct: list[int]) -> np.ndarray | None:
        """⟨Π_s σ^(o_s)(z_s)⟩ on blocks of distinct variables for the ReLU family, whose σ'' = J δ
        and σ''' = J δ' (J = a₊ − a₋), by conditioning on the kink of one distributional factor:

        ⟨δ(z_s) g⟩ = φ_s(0) ⟨g⟩_{z_s=0},  ⟨δ'(z_s) g⟩ = −φ_s(0) Σ_{r≠s} (K_rs/K_ss) ⟨∂_r g⟩_{z_s=0},

        with φ_s(0) = (2πK_ss)^(−1/2) and the conditional covariance K_rt − K_rs K_st/K_ss; recursive
        until every factor is ordinary (book §∞.3 statistics; docs/dntk.md).  ``distinct``: one slot
        per distinct variable (slots of coinciding inputs carry ordinary factors only).  Returns None
        (the caller then integrates by parts as before, which raises or leaves NaN) when the block of
        distinct variables is ill-conditioned, a conditioned variable becomes deterministic, or the
        engine finds an undefined product of distributions.
        """
        sub = blocks[:, distinct][:, :, distinct]
        d = np.diagonal(sub, axis1=1, axis2=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = np.linalg.cond(sub) if sub.shape[1] > 1 else np.where(d[:, 0] > 0, 1.0, np.inf)
        if np.any(d <= 0) or np.any(~np.isfinite(cond)) or np.any(cond > 1e12):
            return None
        try:
            vals, errs = self._condition_rec(orders, blocks)
        except (_Fallback, NumericalError):
            return None
        self.E._record(vals, errs)
        return vals

    def _condition_rec(self, orders, blocks):
        if max(orders) <= self.maxd:
            v, e = expect(self.act, orders, blocks, rule=self.E.rule)
            return np.atleast_1d(v), np.atleast_1d(e)
        a_p, a_m = self.slopes
        jump = a_p - a_m
        s = max(range(len(orders)), key=lambda t: orders[t])  # condition on the highest order
        rest = [t for t in range(len(orders)) if t != s]
        if orders[s] not in (2, 3) or not rest:
            raise _Fallback
        Kss = blocks[:, s, s]
        ks = blocks[:, rest, s]
        C = blocks[:, rest][:, :, rest] - ks[:, :, None] * ks[:, None, :] / Kss[:, None, None]
        C = 0.5 * (C + np.swapaxes(C, 1, 2))
        if np.any(_deterministic(C)):
            raise _Fallback
        phi = jump / np.sqrt(2 * np.pi * Kss)
        sub = [orders[t] for t in rest]
        if orders[s] == 2:
            v, e = self._condition_rec(tuple(sub), C)
            return phi * v, np.abs(phi) * e
        # δ': the derivative of the rest along the regression direction, slot by slot (product
        # rule); slots of coinciding inputs form one variable, whose raised product is reduced to
        # its kink limit (σ''σ'^k → a δ, or zero) as in _reduce_variable
        labels = _coincidence_labels(C)
        if np.any(labels != labels[0]):
            raise _Fallback
        labels = [int(x) for x in labels[0]]
        v = np.zeros(len(blocks))
        e = np.zeros(len(blocks))
        for j in range(len(rest)):
            raised = list(sub)
            raised[j] += 1
            on_v = [t for t in range(len(sub)) if labels[t] == labels[j]]
            keep = list(range(len(sub)))
            coef = 1.0
            if len(on_v) > 1:
                red = _reduce_variable([raised[t] for t in on_v], self.maxd, self.slopes)
                if red[0] == "zero":
                    continue
                if red[0] == "undefined":
                    raise _Fallback
                if red[0] == "dist":
                    coef = red[1]
                    raised[j] = red[2]
                    keep = [t for t in keep if t == j or t not in on_v]
            Cj = C[:, keep][:, :, keep]
            vj, ej = self._condition_rec(tuple(raised[t] for t in keep), Cj)
            c = -coef * phi * ks[:, j] / Kss
            v += c * vj
            e += np.abs(c) * ej
        return v, e

    def _ordinary(self, *orders) -> bool:
        return max(orders) <= self.maxd

    # -- the expectations the recursions use ----------------------------------------------
    def quad(self, orders) -> np.ndarray:
        """⟨σ^(o1)_a σ^(o2)_b σ^(o3)_c σ^(o4)_d⟩, shape (N,)*4."""
        orders = tuple(orders)
        if self._ordinary(*orders):
            return self.E.quad(orders)
        key = ("quad", orders)
        if key not in self._cache:
            self._cache[key] = self._kinked(orders)
        return self._cache[key]

    def pair(self, d1: int, d2: int) -> np.ndarray:
        """⟨σ^(d1)_a σ^(d2)_b⟩ as a *slot* product (NaN where undefined)."""
        if self._ordinary(d1, d2):
            return self.E.pair(d1, d2)
        key = ("pair", d1, d2)
        if key not in self._cache:
            self._cache[key] = self._kinked((d1, d2))
        return self._cache[key]

    def first(self, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
        """(u, w) with ⟨∂_e(σ^(d1)_a σ^(d2)_b)⟩ = δ_ea u_ab + δ_eb w_ab (slot derivatives).

        On coinciding pairs u carries the derivative of the whole product and w = 0, as in
        :meth:`LayerExpectations.first` (equivalent: the contracted tensors are symmetric there).
        """
        if self._ordinary(d1 + 1, d2 + 1):
            return self.E.first(d1, d2)
        key = ("first", d1, d2)
        if key not in self._cache:
            co = self.E.coincident
            off = ~co
            u = np.where(co, 0.0, self._kinked((d1 + 1, d2), mask=off))
            w = np.where(co, 0.0, self._kinked((d1, d2 + 1), mask=off))
            if co.any():
                total = self._kinked((d1, d2), insert_first=1, mask=co)
                u = np.where(co, total, u)
            self._cache[key] = (u, w)
        return self._cache[key]


# ---------------------------------------------------------------------------------------------
# contractions


def _first_terms(X: np.ndarray, uw1, uw2) -> np.ndarray:
    """Σ_{e,g} X_{p e r g} ⟨∂_e h1_pq⟩⟨∂_g h2_rs⟩ indexed (p, q, r, s), with (u, w) of h1 and h2.

    Generalises :func:`pdlt.contractions.first_derivative_terms` to two different pair functions.
    """
    (u1, w1), (u2, w2) = uw1, uw2
    if u1 is u2 and w1 is w2:
        return first_derivative_terms(X, u1, w1)
    N = X.shape[0]
    ar = np.arange(N)
    G = u1[:, :, None, None] * X[ar, ar][:, None, :, :] + w1[:, :, None, None] * X  # (p, q, r, g)
    return u2[None, None] * G[:, :, ar, ar][:, :, :, None] + w2[None, None] * G


def _insert_last(X: np.ndarray, uw) -> np.ndarray:
    """Σ_g X_{abcg} ⟨∂_g h_cd⟩ indexed (a, b, c, d): u_cd X_{abcc} + w_cd X_{abcd}."""
    u, w = uw
    N = X.shape[0]
    ar = np.arange(N)
    return u[None, None] * X[:, :, ar, ar][:, :, :, None] + w[None, None] * X


def _f_next(Ex: _Expectations, s: Statistics, F: np.ndarray, C: float) -> np.ndarray:
    """F^(ℓ+1)_pqrs = C²[Θ_pr⟨σ'_pσ_qσ'_rσ_s⟩ + r Σ F_perg⟨∂_e(σ'_pσ_q)⟩⟨∂_g(σ'_rσ_s)⟩] (init.md §5)."""
    r = s.width / s.fan_in
    Th = s.Theta
    return C**2 * (Th[:, None, :, None] * Ex.quad((1, 0, 1, 0)) + r * first_derivative_terms(F, *Ex.first(1, 0)))


def dntk_step(
    E: LayerExpectations,
    s: Statistics,
    C: float,
    lw: float,
    *,
    F_next: np.ndarray | None = None,
    undefined: str = "raise",
) -> dict[str, np.ndarray]:
    """P, Q, R, S, T, U of layer ℓ+1 from the statistics of layer ℓ (theory/dntk.md §2).

    Parameters
    ----------
    E : LayerExpectations
        Gaussian expectations over K^(ℓ) = ``s.K`` (share it with the MLP step: cached).
    s : Statistics
        Layer ℓ: uses ``Theta``, ``B``, ``F``, ``P``, ``Q``, ``R``, ``S``, ``T``, ``U`` (all
        (N,)*4 except Θ (N, N); None is read as zero, as for layer 1), ``width`` = n_ℓ and
        ``fan_in`` = n_{ℓ−1}; r = n_ℓ/n_{ℓ−1} multiplies every inherited term.
    C : float
        C_W^(ℓ+1) > 0.
    lw : float
        λ_W^(ℓ+1) >= 0.
    F_next : ndarray (N,)*4, optional
        F^(ℓ+1) when already computed (it enters Q' as (λ_W/C_W) F'); recomputed otherwise with
        the formula of the MLP step.
    undefined : {"raise", "nan"}
        Kinked σ only: what to do with components whose kink limit is undefined (module
        docstring) — raise :class:`~pdlt.errors.NumericalError`, or return NaN there.

    Returns
    -------
    dict
        ``{"P", "Q", "R", "S", "T", "U"}`` → (N,)*4 arrays of layer ℓ+1 (normalised by 1/n_ℓ),
        stored in the index order of their subscripts (P_0123, Q_0123, R_0123, S_1234, T_1342,
        U_1423; module docstring).

    Notes
    -----
    Book §11.2 (P, Q) and §∞.3 (R, S, T, U); recursions as restated in theory/dntk.md §2 with
    τ_ab = λ_Wσ'_aσ_b + C Θ_ab σ''_aσ'_b.  Derivative insertions ⟨∂_e ·⟩ are slot derivatives (Stein's
    lemma, no K⁻¹).  Cost O(N⁴) beyond the Gaussian expectations.

    Raises
    ------
    NumericalError
        With ``undefined="raise"``, when a kink limit is undefined (ReLU: S, T, U at α1 = α2,
        R where α0 coincides with another slot).
    """
    if undefined not in ("raise", "nan"):
        raise ParameterError(f"The 'undefined' parameter of dntk_step must be 'raise' or 'nan'. Got {undefined!r} instead.")
    if not (np.isfinite(C) and C > 0):
        raise ParameterError(f"The 'C' parameter of dntk_step must be finite and > 0. Got {C!r} instead.")
    N = s.K.shape[0]
    zero = np.zeros((N,) * 4)
    B, F, P, Q, R, S, T, U = (zero if getattr(s, f) is None else np.asarray(getattr(s, f)) for f in ("B", "F", "P", "Q", "R", "S", "T", "U"))
    r = s.width / s.fan_in
    Th = s.Theta
    Ex = _Expectations(E)
    # the three higher-order quadruple families below, integrated together on one grid per input
    # multiset (smooth σ; no-op for the distributional ones of a kinked σ)
    E.prefetch_quads([(2, 1, 1, 0), (3, 1, 1, 1), (2, 2, 1, 1)])

    S11 = Ex.pair(1, 1)
    S20 = Ex.pair(2, 0)
    S22 = Ex.pair(2, 2)
    S31 = Ex.pair(3, 1)
    uw10 = Ex.first(1, 0)  # ⟨∂_e(σ'_aσ_b)⟩
    uw21 = Ex.first(2, 1)  # ⟨∂_e(σ''_aσ'_b)⟩
    Q2110 = Ex.quad((2, 1, 1, 0))

    # ---- P, Q, R: slots named 0, 1, 2, 3 -------------------------------------------------
    th = _Broadcast(Th, "0123")
    pr = _Broadcast(None, "0123")
    first_PQ = C**2 * th("0", "1") * th("0", "2") * Q2110
    ar = np.arange(N)
    B0012 = B[ar, ar][:, :, :, None]  # B_0012 as (a0, a1, a2, ·)
    P_new = first_PQ + r * C**2 * pr(S11, "1", "2") * (B0012 * pr(S20, "0", "3") + _p_insert(P, uw10))

    if F_next is None:
        F_next = _f_next(Ex, s, F, C)
    Q_new = (lw / C) * np.asarray(F_next) + first_PQ + r * C**2 * (
        pr(S11, "0", "1") * _insert_last(Q, uw10) + th("0", "1") * _first_terms(F, uw21, uw10)
    )

    # ⟨∂_(0) τ_01⟩ and ⟨∂_e τ_01⟩ (τ_ab = λ_W σ'_aσ_b + C Θ_ab σ''_aσ'_b)
    dtau = lw * S20 + C * Th * S31
    Tu = lw * uw10[0] + C * Th * uw21[0]
    Tw = lw * uw10[1] + C * Th * uw21[1]
    R_first = C * th("0", "2") * th("0", "3") * (lw * Ex.quad((2, 0, 1, 1)) + C * th("0", "1") * Ex.quad((3, 1, 1, 1)))
    # Σ_e P_023e ⟨∂_e τ_01⟩ = Tu_01 P_0230 + Tw_01 P_0231, indexed (0, 1, 2, 3)
    P0230 = np.einsum("abca->abc", P)  # (a0, a2, a3)
    P_tau = Tu[:, :, None, None] * P0230[:, None, :, :] + Tw[:, :, None, None] * np.einsum("acdb->abcd", P)
    R_new = (
        R_first
        + r * C * pr(S11, "2", "3") * (np.einsum("aacd->acd", B)[:, None, :, :] * pr(dtau, "0", "1") + P_tau)
        + r * C**2 * pr(S11, "0", "1") * pr(S11, "2", "3") * R
    )

    # ---- S, T, U: slots named 1, 2, 3, 4; computed in the order (α1, α2, α3, α4) --------
    th = _Broadcast(Th, "1234")
    pr = _Broadcast(None, "1234")
    Q1111 = Ex.quad((1, 1, 1, 1))
    Q2211 = Ex.quad((2, 2, 1, 1))
    ddq = lw * S11 + C * Th * S22  # ⟨∂_(1)∂_(2) q_12⟩
    S_new = (
        C * th("1", "3") * th("2", "4") * (lw * Q1111 + C * th("1", "2") * Q2211)
        + r * C * pr(S11, "3", "4") * pr(ddq, "1", "2") * B
        + r * C**2 * pr(S11, "1", "2") * pr(S11, "3", "4") * S
    )

    U_x = C**2 * th("1", "2") * th("1", "3") * th("2", "4") * Q2211 + r * C**2 * pr(S11, "1", "4") * pr(
        S11, "2", "3"
    ) * np.einsum("adbc->abcd", U)
    U_new = np.einsum("abcd->adbc", U_x)

    uwtau = (Tu, Tw)
    T_first = th("1", "2") * (
        lw**2 * Ex.quad((1, 1, 0, 0))
        + lw * C * (th("2", "4") * Ex.quad((1, 2, 0, 1)) + th("1", "3") * Q2110)
        + C**2 * th("1", "3") * th("2", "4") * Q2211
    )
    F_part = np.einsum("acbd->abcd", _first_terms(F, uwtau, uwtau))  # F_1e2g⟨∂_eτ_13⟩⟨∂_gτ_24⟩
    # Σ_e Q_241e ⟨∂_e τ_13⟩ = Tu_13 Q_2411 + Tw_13 Q_2413, in (1, 2, 3, 4) order
    Q_bda = np.einsum("bdaa->abd", Q)  # Q_{2 4 1 1} as (1, 2, 4)
    Q_term1 = Tu[:, None, :, None] * Q_bda[:, :, None, :] + Tw[:, None, :, None] * np.einsum("bdac->abcd", Q)
    Q_term2 = np.einsum("badc->abcd", Q_term1)  # the (1↔2, 3↔4) image: Σ_g Q_132g⟨∂_gτ_24⟩
    T_x = (
        T_first
        + r * F_part
        + r * C * (pr(S11, "2", "4") * Q_term1 + pr(S11, "1", "3") * Q_term2)
        + r * C**2 * pr(S11, "1", "3") * pr(S11, "2", "4") * np.einsum("acdb->abcd", T)
    )
    T_new = np.einsum("abcd->acdb", T_x)

    out = {"P": P_new, "Q": Q_new, "R": R_new, "S": S_new, "T": T_new, "U": U_new}
    bad = {k: v for k, v in out.items() if not np.all(np.isfinite(v))}
    if bad and undefined == "raise":
        name, arr = next(iter(bad.items()))
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        counts = ", ".join(f"{k}: {int((~np.isfinite(v)).sum())}" for k, v in bad.items())
        raise NumericalError(
            f"The dNTK statistics of layer ℓ+1 = {s.layer + 1} are undefined for activation "
            f"{E.activation.name!r} at some sample components ({counts} of {N**4}; e.g. {name}{list(idx)}): "
            "products of the kink's δ with itself or with a step at coinciding inputs diverge or depend on "
            "how the kink is smoothed. Pass undefined='nan' to get the defined components, use distinct "
            "inputs in the affected slots, or use a smooth activation."
        )
    return out


class _Broadcast:
    """Pair matrices M_ab broadcast over four named slots (e.g. "0123"): ``b(M, "0", "2")`` or,
    with a fixed matrix, ``b("0", "2")``."""

    def __init__(self, fixed, slots: str):
        self.fixed = fixed
        self.pos = {c: i for i, c in enumerate(slots)}

    def __call__(self, *args):
        M, a, b = (self.fixed, *args) if len(args) == 2 else args
        pa, pb = self.pos[a], self.pos[b]
        shape = [1, 1, 1, 1]
        shape[pa] = shape[pb] = M.shape[0]
        return (M if pa < pb else M.T).reshape(shape)


def _p_insert(P: np.ndarray, uw) -> np.ndarray:
    """Σ_e P_012e ⟨∂_e(σ'_0σ_3)⟩ = u_03 P_0120 + w_03 P_0123, indexed (0, 1, 2, 3)."""
    u, w = uw
    P0120 = np.einsum("abca->abc", P)  # (a0, a1, a2)
    return u[:, None, None, :] * P0120[:, :, :, None] + w[:, None, None, :] * P


# ---------------------------------------------------------------------------------------------
# convenience: a whole flow


def dntk_flow(net, X, *, undefined: str = "raise", rule=None) -> Flow:
    """``pdlt.flow(net, X)`` with P, Q, R, S, T, U filled in for every layer.

    Parameters
    ----------
    net : MLP
        The architecture (per-layer C_W, λ_W are read with ``net.hyperparameters``).
    X : array_like, shape (N, input_dim)
    undefined : {"raise", "nan"}
        Passed to :func:`dntk_step`.
    rule : QuadratureRule, optional

    Returns
    -------
    Flow
        As :func:`pdlt.flow` (order "full"), each layer evolved with the six tensors.
    """
    import pdlt

    from .architectures import MLP

    if type(net) is not MLP:
        raise pdlt.ParameterError(
            f"The 'net' parameter of dntk_flow must be a plain MLP (these are the MLP recursions). Got {type(net).__name__} instead."
        )
    if rule is None:
        base = pdlt.flow(net, X)
    else:  # the MLP step with the same quadrature rule
        from . import mlp_recursions
        from pdlt.flow import validate_inputs

        X = validate_inputs(X, net.input_dim, owner="dntk_flow")
        stats = [mlp_recursions.first_layer(net, X, "full")]
        for ell in range(1, net.depth):
            stats.append(mlp_recursions.next_layer(net, stats[-1], ell, "full", rule))
        base = Flow(tuple(stats), net, X)
    N = base[0].K.shape[0]
    layers = [attrs.evolve(base[0], **first_layer_dntk(N))]
    for ell in range(1, len(base)):
        h = net.hyperparameters(ell + 1)
        prev = layers[-1]
        E = LayerExpectations(net.activation, prev.K, rule)
        new = dntk_step(E, prev, h["c_w"], h["lambda_w"], F_next=base[ell].F, undefined=undefined)
        layers.append(attrs.evolve(base[ell], **new))
    return Flow(tuple(layers), base.network, base.X)


def defined_components(activation, X_or_K, tensor: str) -> np.ndarray:
    """Boolean mask (N,)*4 of the components of ``tensor`` that are defined for ``activation``.

    Smooth activations: everything.  Kinked (ReLU family): P, Q everywhere; S, T, U where the
    samples in slots α1 and α2 differ; R where α0 differs from α1, α2, α3 (module docstring).
    ``X_or_K`` is a kernel (N, N) used only to detect coinciding samples.
    """
    K = np.asarray(X_or_K, dtype=float)
    N = K.shape[0]
    d = np.diag(K)
    co = np.abs(d[:, None] + d[None, :] - 2 * K) <= 1e-13 * max(float(d.max()), 1e-300)
    full = np.ones((N,) * 4, dtype=bool)
    if activation.max_derivative >= 3 or tensor in ("P", "Q"):
        return full
    idx = np.indices((N,) * 4)
    if tensor == "R":
        a0 = idx[0]
        return ~(co[a0, idx[1]] | co[a0, idx[2]] | co[a0, idx[3]])
    if tensor == "S":
        return ~co[idx[0], idx[1]]
    if tensor == "T":  # T[α1, α3, α4, α2]
        return ~co[idx[0], idx[3]]
    if tensor == "U":  # U[α1, α4, α2, α3]
        return ~co[idx[0], idx[2]]
    raise ParameterError(f"The 'tensor' parameter of defined_components must be one of {DNTK_FIELDS}. Got {tensor!r} instead.")
