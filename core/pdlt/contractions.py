"""Sample-space building blocks of the layer recursions.

A layer step needs, for every pair or quadruple of inputs, Gaussian expectations of products of
σ and its derivatives (:class:`LayerExpectations`), and contractions of the lower layer's
rank-4 tensors with "derivative insertions" ⟨∂_β1∂_β2 (f_a g_b)⟩.  Because f_a g_b depends only on
z_a and z_b, such an insertion is non-zero only for β ∈ {a, b}: it is a *pair operator* with three
coefficients per pair (a, b) — ⟨f''g⟩ at (a,a), ⟨f'g'⟩ at (a,b) and (b,a), ⟨fg''⟩ at (b,b) —
and contracting it with a tensor is a gather, O(N⁴) for a rank-4 tensor, never a dense N²×N²
product.  The same holds for first and fourth derivatives.  These helpers are shared by every
architecture plugin (MLP, residual MLP, …).
"""

from __future__ import annotations

import itertools

import attrs
import numpy as np

from .activation import Activation
from .errors import NumericalError
from .gaussian import (
    DEFAULT_RULE,
    MEHLER_KMAX,
    QuadratureRule,
    _closed_form,
    _closed_pair_matrices,
    _coincidence_labels,
    _evaluate,
    _hermite_coefficients,
    _pair_matrix,
    _T,
    _scales,
    expect,
    quadrature_many,
)

__all__ = ["LayerExpectations", "PairOp", "apply_pair_op", "first_derivative_terms", "fourth_contract"]


@attrs.frozen
class PairOp:
    """Coefficients c_aa, c_ab, c_bb (each (N, N), indexed by the pair (a, b)) of ⟨∂∂(f_a g_b)⟩."""

    aa: np.ndarray
    ab: np.ndarray
    bb: np.ndarray

    def scaled(self, s) -> "PairOp":
        return PairOp(self.aa * s, self.ab * s, self.bb * s)

    def __add__(self, other: "PairOp") -> "PairOp":
        return PairOp(self.aa + other.aa, self.ab + other.ab, self.bb + other.bb)


def apply_pair_op(X: np.ndarray, op: PairOp, axis: int) -> np.ndarray:
    """Σ_{β1β2} X[..., β1, β2, ...] c^{ab}_{β1β2}, replacing the pair axes (axis, axis+1) by (a, b).

    Notes
    -----
    Σ_β X_β c^{ab}_β = c_aa X_aa + c_ab (X_ab + X_ba) + c_bb X_bb, with the pair (a, b) taking the
    place of the contracted pair.
    """
    Xm = np.moveaxis(X, (axis, axis + 1), (0, 1))
    N = Xm.shape[0]
    diag = Xm[np.arange(N), np.arange(N)]  # (N, rest)
    extra = (None,) * (Xm.ndim - 2)
    out = (
        op.aa[(...,) + extra] * diag[:, None]
        + op.ab[(...,) + extra] * (Xm + np.swapaxes(Xm, 0, 1))
        + op.bb[(...,) + extra] * diag[None, :]
    )
    return np.moveaxis(out, (0, 1), (axis, axis + 1))


def first_derivative_terms(F: np.ndarray, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ_{e,g} F_{p e r g} ⟨∂_e(f_p g_q)⟩⟨∂_g(f_r g_s)⟩ with ⟨∂_p(f_p g_q)⟩ = u_pq, ⟨∂_q(...)⟩ = w_pq.

    Returns the tensor indexed (p, q, r, s); used by the F, Q and T recursions.
    """
    N = F.shape[0]
    ar = np.arange(N)
    # G_{pqrg} = Σ_e F_{p e r g} ⟨∂_e(f_p g_q)⟩ = u_pq F_{pprg} + w_pq F_{pqrg}
    Fpp = F[ar, ar]  # (p, r, g)
    G = u[:, :, None, None] * Fpp[:, None, :, :] + w[:, :, None, None] * F
    # Σ_g G_{pqrg} ⟨∂_g(f_r g_s)⟩ = u_rs G_{pqrr} + w_rs G_{pqrs}
    Grr = G[:, :, ar, ar]  # (p, q, r)
    return u[None, None, :, :] * Grr[:, :, :, None] + w[None, None, :, :] * G


def fourth_contract(V: np.ndarray, E4: dict[int, np.ndarray]) -> np.ndarray:
    """Σ_{β1..β4} V_{(β1β2)(β3β4)} ⟨∂β1∂β2∂β3∂β4 (f_a g_b)⟩ for every pair (a, b).

    ``E4[n_a]`` is the (N, N) matrix ⟨f^(n_a)_a g^(4−n_a)_b⟩ (see
    :meth:`LayerExpectations.fourth`); every β is a or b (slot derivatives), so the sum runs
    over the 16 assignments of the four β's to the two slots.
    """
    N = V.shape[0]
    a = np.arange(N)[:, None] * np.ones((1, N), dtype=int)
    b = a.T
    out = np.zeros((N, N))
    for t in itertools.product((0, 1), repeat=4):
        n_a = 4 - sum(t)
        idx = tuple(a if ti == 0 else b for ti in t)
        out += V[idx] * E4[n_a]
    return out


#: The four-slot derivative patterns integrated together on one shared grid (σ and σ' only:
#: every O(1/n) recursion of the MLP and the residual MLP draws its quadruples from these).
_FIRST_ORDER_FAMILY = tuple(itertools.product((0, 1), repeat=4))
#: Codes of higher-order four-slot patterns: orders (o1..o4) ↦ Σ o_s B^(3−s), orders < B.
_HIGHER_BASE = 8
_HIGHER_WEIGHTS = _HIGHER_BASE ** np.arange(3, -1, -1)


class LayerExpectations:
    """Cached Gaussian expectations over one layer's kernel K (N×N) for pairs and quadruples.

    ``pair(d1, d2)`` is the (N, N) matrix ⟨σ^(d1)_a σ^(d2)_b⟩_K; ``quad(o)`` the (N, N, N, N)
    tensor ⟨σ^(o1)_a σ^(o2)_b σ^(o3)_c σ^(o4)_d⟩_K.  Only one representative of each set of
    index tuples related by permutations of equal-order slots is integrated.  Quadruples with
    orders in {0, 1} are integrated once per *multiset* of indices for all 16 such patterns at
    once (:func:`~pdlt.gaussian.quadrature_many`: one grid, σ and σ' evaluated once), and every
    requested tensor is gathered from that table.

    Coinciding inputs (a = b, or duplicated inputs with z_a ≡ z_b) are special: there a slot
    derivative such as ⟨σ''_a σ'_a⟩ may be an undefined product of distributions for kinked σ
    (δ(z)Θ(z) for ReLU), while the recursions only ever need the *sum* over slot assignments,
    which is the well-defined derivative of the whole product, ⟨∂^m (f g)⟩.  The derivative
    operators below therefore carry that total on coinciding pairs (in the (a,a) coefficient)
    and zero elsewhere — equivalent, since every tensor is symmetric under a ↔ b there.

    Parameters
    ----------
    activation : Activation
    K : ndarray, shape (N, N)
        The layer's kernel, symmetric positive semi-definite (it is not validated again).
    rule : QuadratureRule, optional
    error_probes : int or None
        Quadrature errors are estimated (by the engine's coarse second pass) on every block
        when a batch has at most this many blocks, else on about this many of its hardest
        blocks, shared among the block dimensions — those with the largest variance and the
        strongest correlation — which saves the coarse pass on the rest.  None: on every
        block.  The estimates feed :attr:`max_error` (``Statistics.quadrature_error``).
    """

    def __init__(self, activation: Activation, K: np.ndarray, rule: QuadratureRule | None = None, error_probes: int | None = 64):
        self.activation = activation
        self.K = np.asarray(K, dtype=float)
        self.N = self.K.shape[0]
        self.rule = rule
        self.error_probes = error_probes
        self._coincident: np.ndarray | None = None
        self._degenerate: np.ndarray | None = None
        self._closed_pairs_tried: set[tuple[int, int]] = set()
        self._pairs: dict[tuple[int, int], np.ndarray] = {}
        self._quads: dict[tuple[int, ...], np.ndarray] = {}
        self._totals: dict[tuple[int, int, int], np.ndarray] = {}
        self._family: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._multisets: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._multiset_rows: np.ndarray | None = None
        self._higher: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._hermite: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.max_error = 0.0

    @property
    def coincident(self) -> np.ndarray:
        """(N, N) bool: inputs a, b coincide (K_aa + K_bb − 2K_ab ≤ 1e-13 max K_cc, z_a = z_b)."""
        if self._coincident is None:
            d = np.diag(self.K)
            scale = max(float(d.max()), 1e-300)
            self._coincident = np.abs(d[:, None] + d[None, :] - 2 * self.K) <= 1e-13 * scale
        return self._coincident

    @property
    def degenerate(self) -> np.ndarray:
        """(N, N) bool: coinciding pairs and, for kinked σ, exactly proportional ones (z_b = c z_a).

        Proportional preactivations (one-dimensional inputs, or x_b = c x_a, with C_b = 0; kept
        proportional by ReLU-like layers) make the 2×2 block singular, so integration by parts
        cannot produce the distributional pair expectations there.  Like coinciding pairs, they get
        the derivative of the whole product along the degenerate direction (:meth:`total`): every
        tensor contracted with a pair operator has preactivation slots, which scale as
        X_{…b…} = c X_{…a…} on such a pair, so Σ_β X_β ⟨∂_β…⟩ = X_{aa…} d/du[σ^(d1)(u)σ^(d2)(cu)]
        (smooth σ keep the regular blocks: their expectations need no inverse).
        """
        if self._degenerate is None:
            deg = self.coincident.copy()
            if self.activation.kinks:
                d = np.diag(self.K)
                pos = d > 0
                with np.errstate(divide="ignore", invalid="ignore"):
                    corr = np.where(pos[:, None] & pos[None, :], self.K / np.sqrt(np.outer(d, d)), 0.0)
                deg |= np.abs(corr) >= 1.0 - 2e-12
            self._degenerate = deg
        return self._degenerate

    def _record(self, vals, errs):
        errs = np.asarray(errs)
        known = ~np.isnan(errs)
        if known.any():
            rel = errs[known] / np.maximum(np.abs(np.asarray(vals)[known]), 1.0)
            self.max_error = max(self.max_error, float(np.max(rel)))

    def _probe_all(self, n_blocks: int) -> bool:
        return self.error_probes is None or n_blocks <= self.error_probes

    def _probes(self, blocks: np.ndarray) -> np.ndarray:
        """Indices of the blocks whose error is estimated: per number of distinct variables, the
        largest variances and the strongest (not exactly coinciding) correlations."""
        labels = _coincidence_labels(blocks)
        dims = labels.max(axis=1)
        var = np.diagonal(blocks, axis1=1, axis2=2)
        s = np.sqrt(np.maximum(var, 1e-300))
        rho = np.abs(blocks / (s[:, :, None] * s[:, None, :]))
        rho = np.where(rho < 1.0 - 1e-12, rho, 0.0).max(axis=(1, 2))
        per_dim = max(1, self.error_probes // (2 * (dims.max() + 1)))
        picks = []
        for m in np.unique(dims):
            idx = np.flatnonzero(dims == m)
            picks += [idx[np.argsort(-var[idx].max(axis=1), kind="stable")[:per_dim]]]
            picks += [idx[np.argsort(-rho[idx], kind="stable")[:per_dim]]]
        return np.unique(np.concatenate(picks))

    def _expect(self, orders: tuple[int, ...], blocks: np.ndarray, insert=None) -> np.ndarray:
        """expect() on blocks of self.K, recording the (probed) quadrature error; values (B,)."""
        ins = (0,) * len(orders) if insert is None else tuple(insert)
        full = self._probe_all(len(blocks))
        v, e = _evaluate(self.activation, orders, blocks, ins, rule=self.rule, estimate_error=full)
        self._record(v, e)
        if not full and np.isnan(e).any():
            sel = self._probes(blocks)
            self._record(*_evaluate(self.activation, orders, blocks[sel], ins, rule=self.rule))
        return v

    def _compute(self, orders: tuple[int, ...], skip_coincident: bool = False) -> np.ndarray:
        k = len(orders)
        N = self.N
        if k == 2:
            return self._compute_pairs(orders, skip_coincident)
        canon = np.indices((N,) * k).reshape(k, -1).T
        # sort indices within groups of slots carrying the same derivative order
        for d in set(orders):
            slots = [s for s, o in enumerate(orders) if o == d]
            if len(slots) > 1:
                canon[:, slots] = np.sort(canon[:, slots], axis=1)
        uniq, inverse = _unique_rows(canon, N)
        vals = self._expect(orders, self.K[uniq[:, :, None], uniq[:, None, :]])
        return vals[inverse].reshape((N,) * k)

    def _compute_pairs(self, orders: tuple[int, int], skip_coincident: bool) -> np.ndarray:
        """The (N, N) matrix of ⟨σ^(d1)_a σ^(d2)_b⟩ (NaN on coinciding pairs if ``skip_coincident``).

        Equal orders make it symmetric: only a ≤ b is evaluated.  The 2×2 blocks are filled from
        three 1-D gathers (faster than fancy-indexing K for N² blocks; closed forms are cheap
        enough for that to matter).
        """
        N = self.N
        symmetric = orders[0] == orders[1]
        ii, jj = np.triu_indices(N) if symmetric else (x.ravel() for x in np.indices((N, N)))
        if skip_coincident:
            keep = ~self.degenerate[ii, jj]
            ii, jj = ii[keep], jj[keep]
        out = np.full((N, N), np.nan)
        if len(ii):
            d = np.diag(self.K)
            blocks = np.empty((len(ii), 2, 2))
            blocks[:, 0, 0] = d[ii]
            blocks[:, 1, 1] = d[jj]
            blocks[:, 0, 1] = blocks[:, 1, 0] = self.K[ii, jj]
            v = self._expect(orders, blocks)
            out[ii, jj] = v
            if symmetric:
                out[jj, ii] = v
        return out

    def _ordinary(self, *orders) -> bool:
        return max(orders) <= self.activation.max_derivative

    def pair(self, d1: int, d2: int) -> np.ndarray:
        """⟨σ^(d1)_a σ^(d2)_b⟩; NaN on coinciding pairs when it is a product of distributions there."""
        key = (d1, d2)
        if key not in self._pairs:
            if (d2, d1) in self._pairs:
                self._pairs[key] = self._pairs[(d2, d1)].T
            elif self._closed_pairs(key):
                pass
            elif not self.activation.kinks and self.N >= 2 and not self._has_closed_form(key):
                # smooth σ: all pairs at once by Mehler's expansion, O(N² k)
                tables = self._hermite_tables(d1, d2)
                vals, errs = _pair_matrix(self.activation, d1, d2, self.K, rule=self.rule, estimate_error=self._probe_all(self.N), tables=tables)
                self._record(vals.ravel(), errs.ravel())
                self._pairs[key] = vals
            else:
                self._pairs[key] = self._compute(key, skip_coincident=not self._ordinary(d1, d2))
                if not self._ordinary(d1, d2):
                    # where only one factor is distributional the slot form is still defined
                    mask = self.coincident
                    if mask.any():
                        try:
                            ii, jj = np.nonzero(mask)
                            blocks = self.K[np.stack([ii, jj], 1)[:, :, None], np.stack([ii, jj], 1)[:, None, :]]
                            v, e = expect(self.activation, key, blocks, rule=self.rule)
                            self._pairs[key][ii, jj] = v
                        except NumericalError:
                            pass
        return self._pairs[key]

    def release_pair(self, d1: int, d2: int) -> np.ndarray:
        """:meth:`pair` handed over to the caller, who may overwrite it: it leaves the cache.

        The leading-order layer map turns ⟨σσ⟩ and ⟨σ'σ'⟩ into K and Θ in place, saving two
        fresh N×N arrays per layer.
        """
        X = self.pair(d1, d2)
        for key in ((d1, d2), (d2, d1)):
            self._pairs.pop(key, None)
        if not (X.flags.writeable and X.flags.owndata and X.flags.c_contiguous):
            X = np.array(X)
        return X

    def _closed_pairs(self, key: tuple[int, int]) -> bool:
        """Fill ``self._pairs[key]`` from the plugins' pair-matrix closed forms, if any.

        On first use ⟨σσ⟩ and ⟨σ'σ'⟩ are asked for together (K and Θ always need both, and a
        closed form shares its angle between them); exact, so no error is recorded.
        """
        if key in self._closed_pairs_tried:
            return False
        wanted = [key] + [o for o in ((0, 0), (1, 1)) if o != key and o not in self._pairs and o not in self._closed_pairs_tried]
        mats = _closed_pair_matrices(self.activation, wanted, self.K)
        if mats is None and len(wanted) > 1:
            wanted = [key]
            mats = _closed_pair_matrices(self.activation, wanted, self.K)
        if mats is None:
            self._closed_pairs_tried.add(key)
            return False
        for o, m in zip(wanted, mats):
            self._pairs[o] = m
        return True

    def _hermite_tables(self, d1: int, d2: int) -> dict:
        """Mehler coefficients of σ^(d) at the scales of K, shared by every smooth pair matrix;
        σ and σ' are computed together on first use (K and Θ always need both)."""
        wanted = {d1, d2} | ({0, 1} if not self._hermite else set())
        missing = sorted(wanted - self._hermite.keys())
        if missing:
            rule = DEFAULT_RULE if self.rule is None else self.rule
            self._hermite.update(_hermite_coefficients(self.activation, missing, _scales(self.K)[1], MEHLER_KMAX, rule))
        return self._hermite

    def _has_closed_form(self, orders: tuple[int, ...]) -> bool:
        probe = self.K[np.zeros((1, len(orders), 1), dtype=int), np.zeros((1, 1, len(orders)), dtype=int)]
        return _closed_form(self.activation, orders, probe) is not None

    def total(self, d1: int, d2: int, m: int) -> np.ndarray:
        """⟨∂^m (σ^(d1) σ^(d2))(z_a)⟩ on coinciding pairs (the derivative of the whole product), else 0.

        On exactly proportional pairs of a kinked σ (:attr:`degenerate`, z_b = c z_a) it is
        ⟨d^m/du^m [σ^(d1)(u) σ^(d2)(cu)]⟩ over u = z_a (NaN if a factor is itself a distribution).
        """
        key = (d1, d2, m)
        if key not in self._totals:
            out = np.zeros((self.N, self.N))
            ii, jj = np.nonzero(self.coincident)
            if len(ii):
                idx = np.stack([ii, jj], 1)
                out[ii, jj] = self._expect((d1, d2), self.K[idx[:, :, None], idx[:, None, :]], insert=(m, 0))
            pi, pj = np.nonzero(self.degenerate & ~self.coincident)
            if len(pi):
                out[pi, pj] = _proportional_total(self.activation, d1, d2, m, self.K[pi, pi], self.K[pi, pj] / self.K[pi, pi])
            self._totals[key] = out
        return self._totals[key]

    def _masked(self, X: np.ndarray, total: np.ndarray | None) -> np.ndarray:
        if total is None:
            return np.where(self.degenerate, 0.0, X)
        return np.where(self.degenerate, total, X)

    def quad(self, orders: tuple[int, int, int, int]) -> np.ndarray:
        orders = tuple(orders)
        if orders not in self._quads:
            if orders in _FIRST_ORDER_FAMILY and self._ordinary(1):
                self._quads[orders] = self._gather_family(orders)
                return self._quads[orders]
            if len(orders) == 4 and self._ordinary(*orders) and max(orders) < _HIGHER_BASE:
                self._quads[orders] = self._gather_higher(orders)
                return self._quads[orders]
            # reuse a computed tensor whose slots are a permutation of these
            for perm in itertools.permutations(range(4)):
                key = tuple(orders[p] for p in perm)
                if key in self._quads:
                    # T_key[x_perm] = T_orders[x]: T_orders = T_key transposed by argsort(perm)
                    self._quads[orders] = np.transpose(self._quads[key], np.argsort(perm))
                    break
            else:
                self._quads[orders] = self._compute(orders)
        return self._quads[orders]

    def _gather_family(self, orders: tuple[int, ...]) -> np.ndarray:
        """T_orders[t] = table[multiset of t, orders carried to the sorted positions of t]."""
        if self._family is None:
            self._family = self._integrate_family()
        table, inverse, perm = self._family
        carried = np.asarray(orders)[perm]  # the derivative order at each sorted position
        pattern = carried @ (2 ** np.arange(3, -1, -1))  # index in _FIRST_ORDER_FAMILY
        return table[inverse, pattern].reshape((self.N,) * 4)

    def _multiset_blocks(self):
        """(blocks, inverse, perm): the 4×4 blocks of K on every multiset {a ≤ b ≤ c ≤ d} of inputs,
        the multiset of every index tuple (N⁴,) and the permutation that sorts it (N⁴, 4)."""
        if self._multisets is None:
            N = self.N
            tuples = np.indices((N,) * 4).reshape(4, -1).T
            perm = np.argsort(tuples, axis=1, kind="stable")
            uniq, inverse = _unique_rows(np.take_along_axis(tuples, perm, axis=1), N)
            self._multisets = (self.K[uniq[:, :, None], uniq[:, None, :]], inverse, perm)
            self._multiset_rows = uniq
        return self._multisets

    def _multiset_blocks_index(self) -> np.ndarray:
        """(M, 4) sorted input indices of the multisets of :meth:`_multiset_blocks`."""
        self._multiset_blocks()
        return self._multiset_rows

    def prefetch_quads(self, orders_list) -> None:
        """Integrate the four-slot tensors ⟨σ^(o1)σ^(o2)σ^(o3)σ^(o4)⟩ of several order multisets
        together, so that later :meth:`quad` calls for any slot arrangement of them are gathers.

        Every distinct arrangement of each multiset of orders (e.g. the 12 of {2, 1, 1, 0}) is
        integrated once per multiset of inputs, on at most three grids per input multiset shared by
        all patterns (:func:`~pdlt.gaussian.quadrature_many`).  Used by the dNTK step (book §11.2,
        §∞.3), whose recursions need {2,1,1,0}, {3,1,1,1} and {2,2,1,1}.

        Parameters
        ----------
        orders_list : sequence of 4-tuples of int
            Derivative orders; only their multisets matter.  Multisets with an order beyond the
            activation's ordinary derivatives (distributions of a kinked σ) or ≥ 8, of the
            first-order family (σ, σ' only: :meth:`quad` has them), or already computed are skipped.
        """
        keys = []
        for orders in orders_list:
            key = tuple(sorted(int(o) for o in orders))
            if len(key) != 4 or not self._ordinary(*key) or max(key) >= _HIGHER_BASE or max(key) <= 1 or key in self._higher or key in keys:
                continue
            keys.append(key)
        if not keys:
            return
        patterns = [sorted(set(itertools.permutations(key))) for key in keys]
        flat = [p for group in patterns for p in group]
        blocks, _, _ = self._multiset_blocks()
        # Variable order of the integration, per class of multisets (which sorted indices are
        # equal).  3–4 distinct inputs: a variable carrying only σ, σ' goes last — the last
        # Cholesky variable is the one that becomes deterministic when the block is singular
        # (more inputs than input dimensions), and a σ'' there is integrated on outer levels
        # whose panels do not follow its features (measured: 1e-3 instead of 1e-7 relative).
        # ≤ 2 distinct inputs: the variable with the highest order first (the sharpest factor on
        # the outer, feature-split level), as a single pattern's integration orders them.
        # Patterns sharing a variable order share a grid (≤ 3 grids per multiset).
        table = np.empty((len(blocks), len(flat)))
        multisets = self._multiset_blocks_index()
        same = multisets[:, 1:] == multisets[:, :-1]
        classes, cls = np.unique(same, axis=0, return_inverse=True)
        for c, eq in enumerate(classes):
            sel = np.flatnonzero(cls.ravel() == c)
            var = np.concatenate([[0], np.cumsum(~eq)])  # variable of each slot
            m = int(var[-1]) + 1
            grids: dict[tuple[int, ...], list[int]] = {}
            for i, orders in enumerate(flat):
                top = [max(o for o, v in zip(orders, var) if v == u) for u in range(m)]
                if m <= 2:
                    rank = sorted(range(m), key=lambda u: -top[u])
                else:
                    smooth = [u for u in range(m) if top[u] <= 1]
                    last = smooth[-1] if smooth else m - 1
                    rank = [u for u in range(m) if u != last] + [last]
                order = tuple(t for u in rank for t in range(4) if var[t] == u)
                grids.setdefault(order, []).append(i)
            for order, rows in grids.items():
                o_ = list(order)
                sub = blocks[sel][:, o_][:, :, o_]
                table[np.ix_(sel, rows)] = self._integrate_patterns([tuple(flat[i][t] for t in o_) for i in rows], sub)
        start = 0
        for key, group in zip(keys, patterns):
            lookup = np.full(_HIGHER_BASE**4, -1, dtype=np.int64)
            lookup[np.asarray(group) @ _HIGHER_WEIGHTS] = np.arange(len(group))
            self._higher[key] = (table[:, start : start + len(group)], lookup)
            start += len(group)

    def _gather_higher(self, orders: tuple[int, ...]) -> np.ndarray:
        """As :meth:`_gather_family` for one multiset of orders with σ'' or higher (all its slot
        arrangements integrated together by :meth:`prefetch_quads`)."""
        key = tuple(sorted(orders))
        if key not in self._higher:
            self.prefetch_quads([key])
        table, lookup = self._higher[key]
        _, inverse, perm = self._multiset_blocks()
        carried = np.asarray(orders)[perm]
        return table[inverse, lookup[carried @ _HIGHER_WEIGHTS]].reshape((self.N,) * 4)

    def _integrate_patterns(self, orders_list, blocks) -> np.ndarray:
        """(B, P) table of every pattern of ``orders_list`` on ``blocks``: closed forms where a
        plugin has one, the rest on one shared quadrature grid (probed error estimates)."""
        table = np.empty((len(blocks), len(orders_list)))
        open_patterns = []
        for p, orders in enumerate(orders_list):
            closed = _closed_form(self.activation, tuple(orders), blocks)
            if closed is None:
                open_patterns.append(p)
            else:
                table[:, p] = closed[0]
        if open_patterns:
            todo = [tuple(orders_list[p]) for p in open_patterns]
            full = self._probe_all(len(blocks))
            v, e = quadrature_many(self.activation, todo, blocks, rule=self.rule, estimate_error=full)
            self._record(v, e)
            if not full:
                sel = self._probes(blocks)
                self._record(*quadrature_many(self.activation, todo, blocks[sel], rule=self.rule))
            table[:, open_patterns] = v.T
        if not np.all(np.isfinite(table)):
            raise NumericalError(f"Four-point expectations of {self.activation.name} are not finite for some inputs.")
        return table

    def _integrate_family(self):
        """All 16 patterns of _FIRST_ORDER_FAMILY on every multiset {a ≤ b ≤ c ≤ d} of inputs."""
        blocks, inverse, perm = self._multiset_blocks()
        return self._integrate_patterns(_FIRST_ORDER_FAMILY, blocks), inverse, perm

    def first(self, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
        """(u, w): ⟨∂_a(σ^(d1)_a σ^(d2)_b)⟩ and ⟨∂_b(…)⟩ as used by :func:`first_derivative_terms`."""
        u = self._masked(self.pair(d1 + 1, d2) if not self.degenerate.all() else np.zeros((self.N, self.N)), self.total(d1, d2, 1))
        w = self._masked(self.pair(d1, d2 + 1) if not self.degenerate.all() else np.zeros((self.N, self.N)), None)
        return u, w

    def pair_op(self, d1: int, d2: int) -> PairOp:
        """⟨∂∂(σ^(d1)_a σ^(d2)_b)⟩ as a pair operator."""
        off = not self.degenerate.all()
        z = np.zeros((self.N, self.N))
        return PairOp(
            self._masked(self.pair(d1 + 2, d2) if off else z, self.total(d1, d2, 2)),
            self._masked(self.pair(d1 + 1, d2 + 1) if off else z, None),
            self._masked(self.pair(d1, d2 + 2) if off else z, None),
        )

    def fourth(self, d1: int, d2: int) -> dict[int, np.ndarray]:
        """{n_a: ⟨σ^(d1+n_a)_a σ^(d2+4−n_a)_b⟩} for :func:`fourth_contract` (totals on coinciding pairs)."""
        off = not self.degenerate.all()
        z = np.zeros((self.N, self.N))
        out = {}
        for n in range(5):
            X = self.pair(d1 + n, d2 + 4 - n) if off else z
            out[n] = self._masked(X, self.total(d1, d2, 4) if n == 4 else None)
        return out


def _proportional_total(activation: Activation, d1: int, d2: int, m: int, var: np.ndarray, c: np.ndarray) -> np.ndarray:
    """⟨d^m/du^m [σ^(d1)(u) σ^(d2)(c u)]⟩, u ~ N(0, var), per pair (Stein: ⟨F He_m(u/s)⟩ / s^m).

    Composite Gauss–Legendre on a fixed grid of the standardised variable, broken at every kink
    of either factor, so the piecewise-smooth integrand is integrated to rounding.  NaN when a
    factor is not an ordinary function (order above ``activation.max_derivative``).
    """
    if max(d1, d2) > activation.max_derivative:
        return np.full(len(var), np.nan)
    s = np.sqrt(var)
    kinks = np.asarray(activation.kinks, dtype=float)
    breaks = np.concatenate([kinks[None, :] / s[:, None], kinks[None, :] / (c * s)[:, None]], axis=1)
    grid = np.broadcast_to(np.linspace(-_T, _T, 137), (len(s), 137))
    edges = np.sort(np.concatenate([grid, np.clip(breaks, -_T, _T)], axis=1), axis=1)
    x, w = np.polynomial.legendre.leggauss(10)
    lo, half = edges[:, :-1], 0.5 * np.diff(edges, axis=1)
    t = (lo + half)[..., None] + half[..., None] * x
    wt = half[..., None] * w * np.exp(-0.5 * t * t) / np.sqrt(2.0 * np.pi)
    u = s[:, None, None] * t
    F = activation.derivative(u, d1) * activation.derivative(c[:, None, None] * u, d2)
    He = np.polynomial.hermite_e.hermeval(t, [0.0] * m + [1.0])
    return np.sum(F * He * wt, axis=(1, 2)) / s**m


def _unique_rows(rows: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of a (M, k) array of indices in 0..N−1, lexicographically sorted, and the
    inverse map (M,): rows are encoded as base-N integers, far faster than np.unique(axis=0)."""
    k = rows.shape[1]
    weights = N ** np.arange(k - 1, -1, -1, dtype=np.int64)
    codes, inverse = np.unique(rows.astype(np.int64) @ weights, return_inverse=True)
    uniq = (codes[:, None] // weights) % N
    return uniq, inverse.ravel()
