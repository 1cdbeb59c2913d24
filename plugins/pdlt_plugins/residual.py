"""Built-in architecture: the residual MLP of book Appendix B, with its layer maps.

``z^(ℓ+1) = ξ^(ℓ+1)[b^(ℓ+1) + W^(ℓ+1) σ(z^(ℓ))] + γ^(ℓ+1) z^(ℓ)`` (theory/training.md §7): ξ is the
branch strength, γ the shortcut strength.  Only ξ²C_b, ξ²C_W, ξ²λ_b, ξ²λ_W enter the statistics,
so every recursion below is the MLP one (theory/init.md §3, §5, ntk-nlo.md §1) with those
effective hyperparameters, plus shortcut terms: γ² on the two-point objects, γ⁴ on the inherited
four-point objects and γ²-weighted cross terms between z^(ℓ) (or Ĥ^(ℓ)) and the branch.

Odd correlators.  For an activation that is not odd (ReLU, GELU, …) the shortcut breaks the
z → −z symmetry of a single neuron across layers and makes three-point functions O(1/n): with
i ≠ k neurons of layer ℓ and fan-in n,

    n E[z_{k;α1} z_{k;α2} z_{i;α3}]       = Ω_{(α1α2)α3}     (one neuron: Ω_(12)3 + Ω_(13)2 + Ω_(23)1)
    n E[ΔĤ_{kk;α1α2} z_{i;α3}]             = Π_{(α1α2)α3}
    n E[Ĥ_{ik;pr} z_{i;q}]                 = Φ_{pqr}          (one neuron: n E[ΔĤ_ii;12 z_i;3] = Π_(12)3 + Φ_132 + Φ_231)

(all-distinct three-point functions vanish; cumulants in which a neuron appears once among
four or more slots are O(1/n²)).  They enter V, G1, A, D, F, H1 at O(1/n) — through
Cov(f(z_j), g(z_k)) = (1/n)[¼ΣV⟨∂∂f⟩⟨∂∂g⟩ + ½ΣΩ(⟨∂∂f⟩⟨∂g⟩ + ⟨∂f⟩⟨∂∂g⟩)] and the one-neuron
third cumulant in E[f(z_j)] — and are what the earlier (reference) residual V recursion
omitted (the ~50 % ReLU discrepancy of theory/README.md).  For odd σ they vanish identically.

Closure.  The recursions of :func:`next_layer` (all inputs, all tensors) keep, of the O(1/n)
coupling between two neurons, what linear and quadratic functions see (Ω and V).  The shortcut
also couples higher Hermite components (the conditional variance of one neuron depends on the
whole history of another); :func:`single_input_tower` (one input) and :func:`input_tower`
(N inputs, kernel and NTK sectors) treat that exactly.  The closure error is 1–3 % on V, G1, B, F
and up to ~10 % on A, H1 beyond the first residual layer for γ ≈ 0.5–0.6 (measured; docs/residual.md,
which also derives every recursion and lists the checks against real networks).  The flow uses the
exact tower (``ResidualMLP.tower``: the N-input tower for N ≤ 4 inputs, assembled from the four-input
towers of :func:`subset_tower` for N = 5, 6), computed once in :func:`first_layer` and handed from
layer to layer.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from warnings import warn

import attrs
import numpy as np

from pdlt.architecture import Architecture, per_layer
from pdlt.contractions import LayerExpectations, PairOp, apply_pair_op, first_derivative_terms, fourth_contract
from pdlt.criticality import criticality
from pdlt.errors import AccuracyWarning, NoCriticalityError, NumericalError, ParameterError
from pdlt.flow import Statistics
from pdlt.hookspecs import hookimpl
from pdlt.information import hermite_projections

__all__ = [
    "MultiTowerLayer", "ResidualMLP", "ResidualStatistics", "TowerLayer", "first_layer", "input_tower", "next_layer", "odd_tensors_vanish",
    "residual_dntk_step", "single_input_tower", "subset_tower",
]


def _readonly(x):
    if x is None:
        return None
    a = np.array(x, dtype=float)
    a.setflags(write=False)
    return a


def _eq(a, b):
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


_arr = dict(converter=_readonly, eq=attrs.cmp_using(eq=_eq), default=None)


@attrs.frozen(kw_only=True)
class ResidualStatistics(Statistics):
    """:class:`pdlt.Statistics` plus the three-point tensors of residual networks.

    Attributes
    ----------
    Omega : ndarray (N, N, N) or None
        Ω_{(α1α2)α3} = n_{ℓ−1} E[z_{k;α1} z_{k;α2} z_{i;α3}], i ≠ k (symmetric in α1 ↔ α2).
    Pi : ndarray (N, N, N) or None
        Π_{(α1α2)α3} = n_{ℓ−1} E[ΔĤ_{kk;α1α2} z_{i;α3}], i ≠ k.
    Phi : ndarray (N, N, N) or None
        Φ_{pqr} = n_{ℓ−1} E[Ĥ_{ik;pr} z_{i;q}], i ≠ k (NTK index p and preactivation q on neuron i).
    K_below, Theta_below : ndarray (N, N) or None
        K^(ℓ−1) and Θ^(ℓ−1) of the layer the shortcut reads (set when γ^(ℓ) ≠ 0, else None): the
        dNTK map of the next layer needs the joint law of (z^(ℓ−1)_k, z^(ℓ)_k) of one neuron
        (:func:`_self_term_corrections`).
    Xi : ndarray (N, N, N) or None
        Ξ_{012} = n_{ℓ−1} E[dĤ_{(i,0)(i,1)(k,2)}], i ≠ k: the odd dNTK mean (order="dntk", residual layers,
        σ not odd; else None).

    Ω, Π, Φ, Ξ vanish for odd σ and for plain (γ = 0) layers.
    """

    #: Appended to the learning algorithms' "statistics missing" errors (pdlt_plugins.learning).
    unavailable_note = (
        "For residual networks the dNTK/ddNTK statistics P, Q, R, S, T, U come from pdlt.flow(net, X, order='dntk') "
        "(docs/residual.md); without them gradient descent and the Newton step are available at infinite width "
        "(order='leading'), and Bayesian inference needs only K, V, G1 (and the output's third cumulant Omega). "
    )

    Omega: np.ndarray | None = attrs.field(**_arr)
    Pi: np.ndarray | None = attrs.field(**_arr)
    Phi: np.ndarray | None = attrs.field(**_arr)
    K_below: np.ndarray | None = attrs.field(**_arr)
    Theta_below: np.ndarray | None = attrs.field(**_arr)
    Xi: np.ndarray | None = attrs.field(**_arr)

    def restrict(self, idx):
        out = super().restrict(idx)
        idx = np.asarray(idx, dtype=int)
        changes = {
            n: getattr(self, n)[np.ix_(*[idx] * getattr(self, n).ndim)]
            for n in ("Omega", "Pi", "Phi", "K_below", "Theta_below", "Xi")
            if getattr(self, n) is not None
        }
        return attrs.evolve(out, **changes)

    def one_neuron_three_point(self) -> np.ndarray:
        """n_{ℓ−1} E[z_{i;α1} z_{i;α2} z_{i;α3}] = Ω_(12)3 + Ω_(13)2 + Ω_(23)1 (one neuron)."""
        O = self.Omega
        return O + O.transpose(0, 2, 1) + np.einsum("bca->abc", O)


@attrs.frozen(kw_only=True)
class ResidualMLP(Architecture):
    """Residual MLP z^(ℓ+1) = ξ[b + W σ(z^(ℓ))] + γ z^(ℓ) (book Appendix B; training.md §7).

    Parameters
    ----------
    input_dim, hidden_widths, output_dim, activation, c_b, c_w, lambda_b, lambda_w
        As for :class:`pdlt_plugins.architectures.MLP` (C_b, C_W, λ_b, λ_W are the branch's
        own; the branch factor ξ multiplies them as ξ²C_b, ξ²C_W, ξ²λ_b, ξ²λ_W).
    gamma : float or sequence of L floats, default 0
        Shortcut strength γ^(ℓ).  A scalar applies to every layer that can carry a shortcut
        (ℓ ≥ 2 with n_ℓ = n_{ℓ−1}); the others get γ = 0.  A sequence must have γ^(1) = 0 (the
        first layer is plain) and γ^(ℓ) = 0 wherever n_ℓ ≠ n_{ℓ−1}.
    xi : float or sequence of L floats, default 1
        Branch strength ξ^(ℓ) > 0.  A scalar applies to the same layers as a scalar γ; the
        others get ξ = 1.  A sequence is used as given.
    tower : {"auto", "exact", "closure"}, default "auto"
        How :func:`pdlt.flow` computes the O(1/n) tensors (V, G1, H1, A, B, D, F, Ω, Π, Φ).
        "exact": the Hermite tower (:func:`input_tower` with ``ntk=True``; beyond four inputs assembled
        from the C(N, 4) four-input towers, :func:`subset_tower`), exact at O(1/n) up to a truncation
        error that falls like γ^degree; cost grows steeply with the number of inputs N (depth 4: ≈ 0.05 s
        for N = 1, ≈ 0.5 s for N = 2–3, ≈ 1–3 s for N = 4, then C(N, 4) times that: ≈ 6 s for N = 5,
        ≈ 20 s for N = 6, ≈ 1.5 min for N = 8).
        "closure": the closed recursions of :func:`next_layer` (fast for any N; 1–3 % off V, B, F
        and up to ~10 % off A, H1 beyond the first residual layer for γ ≈ 0.5–0.6).
        "auto": "exact" when N ≤ 6, some γ ≠ 0 and every input has a variance > 0 (a rank-deficient
        K^(1), e.g. one-dimensional inputs with C_b = 0, is fine; coinciding inputs are computed once),
        else "closure" (for γ = 0 everywhere the closure is already exact).  When a deeper kernel of
        the distinct inputs is singular or so ill-conditioned that the tower fails its internal check
        (e.g. six one-dimensional inputs), "auto" uses the closure and says so with an AccuracyWarning;
        "exact" raises.

    Notes
    -----
    γ = 0 and ξ = 1 in every layer is exactly the MLP (same statistics, same random draws).
    Resolved per-layer values: :attr:`gammas`, :attr:`xis`; :attr:`residual_layers`.
    Criticality (:meth:`at_criticality`): with C̃ = ξ²C/(1 − γ²) the single-input kernel
    recursion K' = γ²K + ξ²(C_b + C_W⟨σ²⟩) becomes the MLP one, so the residual critical point
    is C_b = (1 − γ²) C_b*/ξ², C_W = (1 − γ²) C_W*/ξ² with (C_b*, C_W*) the MLP's (e.g.
    γ² + ξ²C_W/2 = 1 for ReLU, γ² + ξ²C_W = 1 for tanh), the same K* and χ_∥ = χ_⊥ = 1; it
    needs |γ| < 1.

    Examples
    --------
    >>> from pdlt_plugins.activations import Tanh
    >>> net = ResidualMLP(input_dim=2, hidden_widths=[32] * 3, output_dim=1, activation=Tanh(),
    ...                   gamma=0.6, xi=0.8).at_criticality()
    >>> net.gammas.tolist(), [round(float(c), 3) for c in net.C_W]
    ([0.0, 0.6, 0.6, 0.0], [1.0, 1.0, 1.0, 1.0])
    """

    name = "residual_mlp"

    gamma: float | tuple[float, ...] = attrs.field(default=0.0, converter=per_layer)
    xi: float | tuple[float, ...] = attrs.field(default=1.0, converter=per_layer)
    tower: str = attrs.field(default="auto")

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        owner = type(self).__name__
        L, w = self.depth, self.widths
        for pname in ("gamma", "xi"):
            raw = getattr(self, pname)
            if isinstance(raw, tuple) and len(raw) != L:
                raise ParameterError(
                    f"The {pname!r} parameter of {owner} must be a scalar or a sequence of L = {L} values "
                    f"(one per layer). Got {len(raw)} values instead."
                )
            if not np.all(np.isfinite(np.atleast_1d(raw))):
                raise ParameterError(f"The {pname!r} parameter of {owner} must be finite. Got {raw!r} instead.")
        if self.tower not in TOWER_MODES:
            raise ParameterError(f"The 'tower' parameter of {owner} must be one of {TOWER_MODES}. Got {self.tower!r} instead.")
        if np.any(np.atleast_1d(self.xi) <= 0):
            raise ParameterError(f"The 'xi' parameter of {owner} must be > 0. Got {self.xi!r} instead.")
        if isinstance(self.gamma, tuple):
            if self.gamma[0] != 0.0:
                raise ParameterError(
                    f"The 'gamma' parameter of {owner} must have gamma^(1) = 0: the first layer is plain "
                    f"(it acts on the n_0-dimensional input). Got {self.gamma[0]!r} instead."
                )
            for ell in range(2, L + 1):
                if self.gamma[ell - 1] != 0.0 and w[ell] != w[ell - 1]:
                    raise ParameterError(
                        f"The 'gamma' parameter of {owner} must be 0 at layer {ell}: a shortcut needs equal widths, "
                        f"but n_{ell - 1} = {w[ell - 1]} and n_{ell} = {w[ell]}. Got {self.gamma[ell - 1]!r} instead."
                    )

    # ----------------------------------------------------------------- residual hyperparameters
    @property
    def residual_layers(self) -> tuple[bool, ...]:
        """For ℓ = 1..L: whether layer ℓ can carry a shortcut (ℓ ≥ 2 and n_ℓ = n_{ℓ−1})."""
        w = self.widths
        return tuple(ell >= 2 and w[ell] == w[ell - 1] for ell in range(1, self.depth + 1))

    def _resolve(self, pname: str, plain: float) -> np.ndarray:
        raw = getattr(self, pname)
        if isinstance(raw, tuple):
            return np.asarray(raw, dtype=float)
        return np.where(np.array(self.residual_layers), float(raw), plain)

    @property
    def gammas(self) -> np.ndarray:
        """γ^(ℓ), ℓ = 1..L (shape (L,))."""
        return self._resolve("gamma", 0.0)

    @property
    def xis(self) -> np.ndarray:
        """ξ^(ℓ), ℓ = 1..L (shape (L,))."""
        return self._resolve("xi", 1.0)

    def hyperparameters(self, ell: int) -> dict[str, float]:
        """C_b, C_W, λ_b, λ_W, γ and ξ of layer ``ell`` (book numbering 1..L)."""
        h = super().hyperparameters(ell)
        h.update(gamma=float(self.gammas[ell - 1]), xi=float(self.xis[ell - 1]))
        return h

    def effective_hyperparameters(self, ell: int) -> dict[str, float]:
        """ξ²C_b, ξ²C_W, ξ²λ_b, ξ²λ_W and γ of layer ``ell``: the combinations the statistics see."""
        h = self.hyperparameters(ell)
        x2 = h["xi"] ** 2
        return dict(c_b=x2 * h["c_b"], c_w=x2 * h["c_w"], lambda_b=x2 * h["lambda_b"], lambda_w=x2 * h["lambda_w"], gamma=h["gamma"])

    # ----------------------------------------------------------------- criticality
    def at_criticality(self) -> "ResidualMLP":
        """A copy with the residual-critical (C_b, C_W) in every layer.

        Raises
        ------
        NoCriticalityError
            The activation has no critical initialization, or some |γ^(ℓ)| ≥ 1 (then
            χ_∥ = γ² + ξ²C_W g'(K) > 1 for every C_W > 0).

        Notes
        -----
        C_b^(ℓ) = (1 − γ²) C_b*/ξ², C_W^(ℓ) = (1 − γ²) C_W*/ξ² (class docstring; training.md §7).
        """
        report = criticality(self.activation)
        if not report.is_critical:
            raise NoCriticalityError(
                f"{type(self).__name__} with activation {self.activation.describe()!r} has no critical "
                f"initialization: {report.reason}. Choose an activation of a critical universality class."
            )
        g, x = self.gammas, self.xis
        if np.any(np.abs(g) >= 1):
            raise NoCriticalityError(
                f"{type(self).__name__} has no critical initialization with shortcut strengths |gamma| >= 1 "
                f"(got {g.tolist()}): χ_∥ = γ² + ξ²C_W g'(K) exceeds 1 for every C_W > 0. Use |gamma| < 1."
            )
        f = (1.0 - g**2) / x**2
        return self.evolve(c_b=tuple(f * report.c_b), c_w=tuple(f * report.c_w))

    # ----------------------------------------------------------------- theory and real networks
    def first_layer(self, X, *, order="full"):
        return first_layer(self, X, order)

    def next_layer(self, stats, ell, *, order="full", rule=None):
        return next_layer(self, stats, ell, order, rule)

    def sample_forward(self, X, size, rng, *, ntk=True):
        from pdlt.residual_networks import residual_forward

        return residual_forward(self, X, size, rng, ntk=ntk)


@hookimpl
def pdlt_register_architectures():
    return [ResidualMLP]


# =============================================================================================
# layer maps


TOWER_MODES = ("auto", "exact", "closure")

# Layer statistics built by the flow with the exact tower carry it here (keyed by id, dropped with the
# object), so that next_layer can read layer ℓ+1 without a field that Flow.to_npz would try to save.
_TOWERS: dict[int, tuple] = {}


def _attach_tower(stats, tower) -> None:
    key = id(stats)
    _TOWERS[key] = (weakref.ref(stats, lambda _ref, key=key: _TOWERS.pop(key, None)), tower)


def _tower_of(stats):
    entry = _TOWERS.get(id(stats))
    return entry[1] if entry is not None and entry[0]() is stats else None


#: ``tower="auto"`` uses the exact tower up to this many inputs.  The projections are pairwise 2-D
#: integrals (Gauss–Hermite for smooth σ, kink-aligned panels for kinked σ), so depth 4 costs ≈ 0.5 s for
#: N = 3 and ≈ 2–3 s for N = 4; beyond four inputs the flow assembles the tensors from the C(N, 4)
#: four-input towers (:func:`subset_tower`: 5 towers for N = 5, 15 for N = 6, 70 for N = 8).
AUTO_TOWER_INPUTS = 6


def _wants_tower(net: "ResidualMLP", X: np.ndarray) -> bool:
    if net.tower == "closure":
        return False
    if net.tower == "exact":
        return True
    if X.shape[0] > AUTO_TOWER_INPUTS or not np.any(net.gammas != 0.0):
        return False
    h = net.effective_hyperparameters(1)
    K1 = h["c_b"] + h["c_w"] * (X @ X.T) / net.widths[0]
    ev = np.linalg.eigvalsh(K1)
    if ev[0] > 1e-8 * max(ev[-1], 1e-300):
        return True
    # rank-deficient K^(1) (e.g. one-dimensional inputs with C_b = 0): the tower takes any square root of
    # K^(1) (first_layer still falls back to the closure, with a warning, if a deeper kernel of the distinct inputs
    # is singular or ill-conditioned, e.g. proportional inputs with a scale-invariant σ); every input needs a
    # variance > 0
    return bool(np.all(np.diag(K1) > 1e-12 * max(ev[-1], 1e-300)))


def _check_order(order: str) -> None:
    if order not in ("full", "leading", "dntk"):
        raise ParameterError(
            f"The 'order' parameter of the residual_mlp layer maps must be 'full', 'leading' or 'dntk'. Got {order!r} instead."
        )


def first_layer(net: ResidualMLP, X: np.ndarray, order: str) -> ResidualStatistics:
    """Layer 1 (plain, exactly Gaussian): K^(1) = ξ²(C_b + C_W x·x/n_0), Θ^(1) = ξ²(λ_b + λ_W x·x/n_0)."""
    _check_order(order)
    n0 = net.widths[0]
    h = net.effective_hyperparameters(1)
    G0 = X @ X.T / n0
    fields = dict(K=h["c_b"] + h["c_w"] * G0, Theta=h["lambda_b"] + h["lambda_w"] * G0)
    if order != "leading":
        N = X.shape[0]
        z2, z3, z4 = np.zeros((N, N)), np.zeros((N,) * 3), np.zeros((N,) * 4)
        fields.update(V=z4, G1=z2, H1=z2, A=z4, B=z4, D=z4, F=z4, Omega=z3, Pi=z3, Phi=z3)
    if order == "dntk":
        from .dntk_recursions import first_layer_dntk

        fields.update(first_layer_dntk(X.shape[0]))
    out = ResidualStatistics(layer=1, width=net.widths[1], fan_in=n0, **fields)
    if order != "leading" and net.depth > 1 and _wants_tower(net, X):
        try:
            _attach_tower(out, subset_tower(net, X))
        except (ParameterError, NumericalError) as err:
            if net.tower == "exact":
                raise
            # "auto": a deeper kernel is singular (e.g. proportional inputs with a scale-invariant σ) or so
            # ill-conditioned that the whitened tower loses its accuracy (many one-dimensional inputs)
            warn(
                f"ResidualMLP(tower='auto'): the exact Hermite tower is not usable for these inputs ({err}) The "
                "O(1/n) tensors come from the closed recursions instead (1–10 % off beyond the first residual "
                "layer, docs/residual.md). Spread the inputs further apart for the exact tower, or pass "
                "tower='closure' to choose the closure without this warning.",
                AccuracyWarning,
                stacklevel=2,
            )
    return out


def odd_tensors_vanish(activation) -> bool:
    """True when σ is odd (σ(−z) = −σ(z), checked on a grid), so Ω = Π = Φ = 0 exactly."""
    z = np.linspace(-4.0, 4.0, 41) + 0.0137
    return bool(np.allclose(activation(-z), -np.asarray(activation(z)), rtol=1e-12, atol=1e-14))


def _mask(E: LayerExpectations, X: np.ndarray, total: np.ndarray | None) -> np.ndarray:
    return np.where(E.degenerate, 0.0 if total is None else total, X)


def _third(E: LayerExpectations, d1: int, d2: int) -> dict[int, np.ndarray]:
    """{n_a: ⟨σ^(d1+n_a)_a σ^(d2+3−n_a)_b⟩} with the total ⟨∂³(σ^(d1)σ^(d2))⟩ on coinciding pairs."""
    off = not E.degenerate.all()
    z = np.zeros((E.N, E.N))
    return {n: _mask(E, E.pair(d1 + n, d2 + 3 - n) if off else z, E.total(d1, d2, 3) if n == 3 else None) for n in range(4)}


def _third_contract(O: np.ndarray, E3: dict[int, np.ndarray]) -> np.ndarray:
    """Σ_{β1β2β3} Ω_{β1β2β3} ⟨∂β1∂β2∂β3 (f_a g_b)⟩ for every pair (a, b) (8 slot assignments)."""
    N = O.shape[0]
    a = np.arange(N)[:, None] * np.ones((1, N), dtype=int)
    b = a.T
    out = np.zeros((N, N))
    for t in itertools.product((0, 1), repeat=3):
        idx = tuple(a if ti == 0 else b for ti in t)
        out += O[idx] * E3[3 - sum(t)]
    return out


def _first_apply(X: np.ndarray, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ_γ X[..., γ] ⟨∂_γ(f_a g_b)⟩ → out[..., a, b] = X[..., a] u_ab + X[..., b] w_ab."""
    return X[..., :, None] * u + X[..., None, :] * w


def _z1(K: np.ndarray, u: np.ndarray, w: np.ndarray) -> np.ndarray:
    """⟨f_a g_b z_c⟩ = K_ca u_ab + K_cb w_ab (Stein), indexed [a, b, c]."""
    return K.T[:, None, :] * u[:, :, None] + K.T[None, :, :] * w[:, :, None]


def _z2(K: np.ndarray, op: PairOp) -> np.ndarray:
    """⟨f_a g_b z_c z_d⟩ − ⟨f_a g_b⟩ K_cd = Σ_{βγ} K_cβ K_dγ ⟨∂β∂γ(f_a g_b)⟩, indexed [a, b, c, d]."""
    Kca = K.T[:, None, :, None]  # [a, ., c, .]
    Kda = K.T[:, None, None, :]
    Kcb = K.T[None, :, :, None]
    Kdb = K.T[None, :, None, :]
    aa, ab, bb = (x[:, :, None, None] for x in (op.aa, op.ab, op.bb))
    return Kca * Kda * aa + (Kca * Kdb + Kcb * Kda) * ab + Kcb * Kdb * bb


def _outer(a, b):
    return a[:, :, None, None] * b[None, None, :, :]


def next_layer(net: ResidualMLP, s: Statistics, ell: int, order: str, rule=None) -> ResidualStatistics:
    """Statistics of layer ℓ+1 from those of layer ℓ (``s``); recursions in docs/residual.md."""
    _check_order(order)
    h = net.effective_hyperparameters(ell + 1)
    cb, C, lb, lw, g = h["c_b"], h["c_w"], h["lambda_b"], h["lambda_w"], h["gamma"]
    E = LayerExpectations(net.activation, s.K, rule)
    S00, S11 = E.pair(0, 0), E.pair(1, 1)
    K = cb + C * S00 + g**2 * s.K
    Theta = lb + lw * S00 + C * S11 * s.Theta + g**2 * s.Theta
    fields = dict(K=K, Theta=Theta)
    tower = _tower_of(s) if order != "leading" else None
    if tower is not None:
        T = tower[ell]
        fields.update({name: getattr(T, name) for name in ("V", "G1", "H1", "A", "B", "D", "F", "Omega", "Pi", "Phi")})
    elif order != "leading":
        fields.update(_corrections(net, E, s, C, lw, g))
    if g != 0.0:
        fields.update(K_below=s.K, Theta_below=s.Theta)
    if order == "dntk":
        fields.update(residual_dntk_step(net, E, s, C, lw, g, layer=ell + 1, F_next=fields.get("F")))
    out = ResidualStatistics(layer=ell + 1, width=net.widths[ell + 1], fan_in=s.width, quadrature_error=E.max_error, **fields)
    if tower is not None:
        _attach_tower(out, tower)
    return out


def _get(s: Statistics, name: str, N: int) -> np.ndarray:
    x = getattr(s, name, None)
    return np.zeros((N,) * 3) if x is None else np.asarray(x)


def _corrections(net, E: LayerExpectations, s: Statistics, C: float, lw: float, g: float) -> dict:
    r = s.width / s.fan_in
    N = E.N
    K, Th = E.K, np.asarray(s.Theta)
    V, G1, H1, A, B, D, F = (np.asarray(getattr(s, n)) for n in ("V", "G1", "H1", "A", "B", "D", "F"))
    Om, Pi, Phi = (_get(s, n, N) for n in ("Omega", "Pi", "Phi"))
    odd_free = odd_tensors_vanish(net.activation)
    g2, g4 = g * g, g**4

    # --- Gaussian expectations at K^(ℓ)
    S00, S11, S10 = E.pair(0, 0), E.pair(1, 1), E.pair(1, 0)
    T0000 = E.quad((0, 0, 0, 0))
    T1100 = E.quad((1, 1, 0, 0))
    T0011 = T1100.transpose(2, 3, 0, 1)
    T1111 = E.quad((1, 1, 1, 1))
    T1010 = E.quad((1, 0, 1, 0))
    Th12, Th34 = Th[:, :, None, None], Th[None, None, :, :]
    S11_12, S11_34 = S11[:, :, None, None], S11[None, None, :, :]
    Qm = lw * S00 + C * Th * S11  # ⟨q⟩, q_ab = λ_W σ_aσ_b + C Θ_ab σ'_aσ'_b
    Sm = C * S00  # ⟨s⟩, s_ab = C σ_aσ_b

    cov_ss = C**2 * (T0000 - _outer(S00, S00))
    qq = lw**2 * T0000 + lw * C * (Th34 * T0011 + Th12 * T1100) + C**2 * Th12 * Th34 * T1111
    cov_qq = qq - _outer(Qm, Qm)
    cov_qs = C * (lw * T0000 + C * Th12 * T1100) - _outer(Qm, Sm)

    op_ss, op_11 = E.pair_op(0, 0), E.pair_op(1, 1)
    op_s = op_ss.scaled(C)  # ⟨∂∂ s_ab⟩
    op_q = op_ss.scaled(lw) + op_11.scaled(C * Th)  # ⟨∂∂ q_ab⟩ (Θ held fixed)

    # --- MLP part (branch with effective C, λ): theory/init.md §3, §5; ntk-nlo.md §1
    Vs = apply_pair_op(V, op_s, 0)
    Vq = apply_pair_op(V, op_q, 0)
    Dq = apply_pair_op(D, op_q, 2)  # Σ_β D_{12β1β2} ⟨∂β1∂β2 q_34⟩
    Ds = apply_pair_op(D, op_s, 2)
    V_new = cov_ss + r * (0.25 * apply_pair_op(Vs, op_s, 2) + g4 * V)
    G1_new = r * (C * (0.5 * apply_pair_op(G1, op_ss, 0) + 0.125 * fourth_contract(V, E.fourth(0, 0))) + g2 * G1)
    half_C_Dq = 0.5 * C * S11_12 * Dq
    A_new = cov_qq + r * (
        0.25 * apply_pair_op(Vq, op_q, 2) + half_C_Dq + half_C_Dq.transpose(2, 3, 0, 1) + C**2 * S11_12 * S11_34 * A + g4 * A
    )
    D_new = cov_qs + r * (0.25 * apply_pair_op(Vq, op_s, 2) + 0.5 * C * S11_12 * Ds + g4 * D)
    Th_pr_qs = Th[:, None, :, None] * Th[None, :, None, :]
    B_new = C**2 * (Th_pr_qs * T1111 + r * S11[:, :, None, None] * S11[None, None] * B) + r * g4 * B
    u10, w10 = E.first(1, 0)
    F_new = C**2 * (Th[:, None, :, None] * T1010 + r * first_derivative_terms(F, u10, w10)) + r * g4 * F

    F4s, F4p = E.fourth(0, 0), E.fourth(1, 1)
    Eq4 = {n: lw * F4s[n] + C * Th * F4p[n] for n in range(5)}
    Y = 0.5 * D + F.transpose(0, 2, 1, 3)  # Y_{abβ1β2} = ½ D_{abβ1β2} + F_{aβ1bβ2}: one-neuron ½(D + F + F)
    a = np.arange(N)[:, None]
    b = np.arange(N)[None, :]
    DF = op_11.aa * Y[a, b, a, a] + op_11.ab * (Y[a, b, a, b] + Y[a, b, b, a]) + op_11.bb * Y[a, b, b, b]
    H1_new = r * (0.5 * apply_pair_op(G1, op_q, 0) + 0.125 * fourth_contract(V, Eq4) + C * S11 * H1 + C * DF + g2 * H1)

    # --- shortcut × branch cross terms (even, present for every σ when γ ≠ 0)
    if g != 0.0:
        Z2s = _z2(K, op_s)  # Cov_K(s_12, z_3 z_4)
        Z2q = _z2(K, op_q)  # Cov_K(q_12, z_3 z_4)
        # n Cov(Ĝ_12, z_k3 z_k4) and n Cov(Ĵ_12, z_k3 z_k4) (Ĵ: the NTK metric of the branch)
        Ys = Z2s + r * 0.5 * Vs
        Yq = Z2q + r * (0.5 * Vq + C * S11_12 * D)
        # n Cov(Ĥ_ii;12, Ĝ_34) and n Cov(Ĵ_12, Ĥ_kk;34)
        Hs = r * 0.5 * Ds
        Jq = r * (0.5 * Dq.transpose(2, 3, 0, 1) + C * S11_12 * A)
        V_new = V_new + g2 * (Ys + Ys.transpose(2, 3, 0, 1))
        D_new = D_new + g2 * (Yq + Hs)
        A_new = A_new + g2 * (Jq + Jq.transpose(2, 3, 0, 1))
        # B: Σ_j W σ' Ĥ cross terms squared
        B_new = B_new + g2 * C * (S11[:, :, None, None] + S11[None, None, :, :]) * (Th_pr_qs + r * B)
        # F: cross terms (c) and (d) of docs/residual.md
        Z1f = _z1(K, u10, w10)  # ⟨σ'_p σ_q z_s⟩ indexed [p, q, s]
        ar = np.arange(N)
        Fpp = F[ar, ar]  # F_{p p r s} indexed [p, r, s]
        dF_f = u10[:, :, None, None] * Fpp[:, None, :, :] + w10[:, :, None, None] * F  # Σ_β⟨∂β(σ'_pσ_q)⟩F_{pβrs}
        Frr = F[:, :, ar, ar]  # F_{p q r r} indexed [p, q, r]
        dF_g = u10[None, None, :, :] * Frr[:, :, :, None] + w10[None, None, :, :] * F  # Σ_β⟨∂β(σ'_rσ_s)⟩F_{pqrβ}
        Z1g = np.einsum("rsq->qrs", Z1f)[None]  # ⟨z_q σ'_r σ_s⟩ as [p, q, r, s]
        F_new = F_new + g2 * C * (Th[:, None, :, None] * (Z1f[:, :, None, :] + Z1g) + r * (dF_f + dF_g))

    out = dict(V=V_new, G1=G1_new, H1=H1_new, A=A_new, B=B_new, D=D_new, F=F_new)

    # --- odd (three-point) tensors and their feedback (non-odd σ with γ ≠ 0 somewhere below)
    zero3 = np.zeros((N,) * 3)
    have_odd = not odd_free and (g != 0.0 or np.any(Om) or np.any(Pi) or np.any(Phi))
    if not have_odd:
        out.update(Omega=zero3, Pi=zero3, Phi=zero3)
        return out

    u00, w00 = E.first(0, 0)
    u11, w11 = E.first(1, 1)
    us, ws = C * u00, C * w00  # ⟨∂ s_ab⟩
    uq, wq = lw * u00 + C * Th * u11, lw * w00 + C * Th * w11  # ⟨∂ q_ab⟩

    # cross-neuron covariance pieces ½ΣΩ(⟨∂∂f⟩⟨∂g⟩ + ⟨∂f⟩⟨∂∂g⟩)
    Om_s = apply_pair_op(Om, op_s, 0)  # [a, b, γ] = Σ_β Ω_{β1β2γ} ⟨∂β1∂β2 s_ab⟩
    Om_q = apply_pair_op(Om, op_q, 0)

    def om_cross(Pf_om, uf, wf, Pg_om, ug, wg):
        # ½ Σ Ω ⟨∂∂f_12⟩⟨∂g_34⟩ + ½ Σ Ω ⟨∂f_12⟩⟨∂∂g_34⟩ as [1, 2, 3, 4]
        t1 = _first_apply(Pf_om, ug, wg)  # [a, b, c, d]
        t2 = _first_apply(Pg_om, uf, wf).transpose(2, 3, 0, 1)
        return 0.5 * (t1 + t2)

    Pi_s = _first_apply(Pi, us, ws)  # Σ_β Π_{12β} ⟨∂β s_34⟩, [1, 2, 3, 4]
    Pi_q = _first_apply(Pi, uq, wq)

    out["V"] = out["V"] + r * om_cross(Om_s, us, ws, Om_s, us, ws)
    out["D"] = out["D"] + r * (om_cross(Om_q, uq, wq, Om_s, us, ws) + C * S11_12 * Pi_s)
    out["A"] = out["A"] + r * (
        om_cross(Om_q, uq, wq, Om_q, uq, wq) + C * S11_12 * Pi_q + (C * S11_12 * Pi_q).transpose(2, 3, 0, 1)
    )
    # F: Σ_β⟨∂β f_pq⟩⟨g_rs⟩Φ_{pβr} + ⟨f_pq⟩Σ_β⟨∂β g_rs⟩Φ_{rβp}, f = g = σ'σ
    ar = np.arange(N)
    Phi_pp = Phi[ar, ar]  # Φ_{p p r} indexed [p, r]
    dPhi = u10[:, :, None] * Phi_pp[:, None, :] + w10[:, :, None] * Phi  # [p, q, r] = Σ_β⟨∂β(σ'_pσ_q)⟩Φ_{pβr}
    phi_f = dPhi[:, :, :, None] * S10[None, None, :, :]  # [p, q, r, s] (s enters through ⟨g_rs⟩)
    out["F"] = out["F"] + C**2 * r * (phi_f + phi_f.transpose(2, 3, 0, 1))
    # one-neuron third cumulant in E[f(z_j)]: ½ΣΩ⟨∂³ f⟩
    E3s, E3p = _third(E, 0, 0), _third(E, 1, 1)
    E3q = {n: lw * E3s[n] + C * Th * E3p[n] for n in range(4)}
    out["G1"] = out["G1"] + r * C * 0.5 * _third_contract(Om, E3s)
    P1 = _one_neuron_ntk_three_point(Pi, Phi)
    out["H1"] = out["H1"] + r * (0.5 * _third_contract(Om, E3q) + C * (u11 * P1[a, b, a] + w11 * P1[a, b, b]))

    if g != 0.0:
        Omega_new = r * g**3 * Om + g * (_z1(K, us, ws) + r * 0.5 * Om_s)
        Pi_new = r * g**3 * Pi + g * (_z1(K, uq, wq) + r * (0.5 * Om_q + C * S11[:, :, None] * Pi))
        Phi_new = r * g**3 * Phi + g * C * (Th[:, None, :] * S10[:, :, None] + r * dPhi)
        # shortcut cross terms of V, D, A, F involving the odd tensors
        Om_zz = _first_apply(Om, us, ws).transpose(2, 3, 0, 1)  # Σ_γ Ω_{34γ}⟨∂γ s_12⟩ as [1, 2, 3, 4]
        Om_zzq = _first_apply(Om, uq, wq).transpose(2, 3, 0, 1)
        out["V"] = out["V"] + g2 * r * (Om_zz + Om_zz.transpose(2, 3, 0, 1))
        out["D"] = out["D"] + g2 * r * (Om_zzq + Pi_s)
        Jodd = r * _first_apply(Pi, uq, wq).transpose(2, 3, 0, 1)  # Σ_β Π_{34β}⟨∂β q_12⟩
        out["A"] = out["A"] + g2 * (Jodd + Jodd.transpose(2, 3, 0, 1))
        # F (c): ⟨f_pq⟩Φ_{rsp}; (d): ⟨g_rs⟩Φ_{pqr}
        Phi_rsp = np.einsum("rsp->prs", Phi)[:, None, :, :]  # Φ_{rsp} as [p, q, r, s]
        out["F"] = out["F"] + g2 * C * r * (S10[:, :, None, None] * Phi_rsp + Phi[:, :, :, None] * S10[None, None, :, :])
    else:
        Omega_new = Pi_new = Phi_new = zero3
    out.update(Omega=Omega_new, Pi=Pi_new, Phi=Phi_new)
    return out


def residual_dntk_step(
    net, E: LayerExpectations, s: Statistics, C: float, lw: float, g: float, *, layer: int | None = None, F_next=None
) -> dict:
    """P, Q, R, S, T, U of the residual layer ℓ+1 from the statistics of layer ℓ (docs/residual.md).

    Parameters
    ----------
    net : ResidualMLP
        Its activation and per-layer γ, ξ (layer ℓ's own shortcut decides which map is exact).
    E : LayerExpectations
        Gaussian expectations over K^(ℓ) = ``s.K``.
    s : Statistics
        Layer ℓ with Θ, B, F and P, Q, R, S, T, U (None read as zero, as for layer 1); a residual
        layer ℓ also carries ``K_below``, ``Theta_below`` (:class:`ResidualStatistics`).
    C, lw : float
        Effective ξ²C_W and ξ²λ_W of layer ℓ+1 (> 0 and >= 0).
    g : float
        Shortcut strength γ^(ℓ+1).
    layer : int, optional
        ℓ+1, for messages.
    F_next : ndarray (N,)*4, optional
        F^(ℓ+1) of the flow (plain layer ℓ+1 only: it enters Q as (λ_W/C_W)F'); recomputed from
        the MLP formula when None.

    Returns
    -------
    dict
        ``{"P", "Q", "R", "S", "T", "U"}`` in the storage order of :mod:`pdlt_plugins.dntk_recursions`.

    Notes
    -----
    Book ch. 11, ∞ and App. B.  With z^(ℓ+1) = y + γz^(ℓ) (y the MLP branch) every tensor is the MLP
    layer map (:func:`pdlt_plugins.dntk_recursions.dntk_step`, with the branch's own F' in Q) plus

        P += γ²{CΘ01Θ02⟨σ''_0σ_3⟩ + rC[B_0012⟨σ''_0σ_3⟩ + Σ_e P_012e⟨∂_e(σ'_0σ_3)⟩] + rC⟨σ'_1σ'_2⟩P} + γ⁴rP
        Q += γ²{Θ02⟨τ_01 z_3⟩ + rΣ_e F_0e23⟨∂_eτ_01⟩ + rC⟨σ'_0σ'_1⟩Q + rCΣ_g Q_012g⟨∂_g(σ'_2σ_3)⟩} + γ⁴rQ
        R += γ²{Θ02Θ03⟨∂_(0)τ_01⟩ + r[B_0023⟨∂_(0)τ_01⟩ + Σ_e P_023e⟨∂_eτ_01⟩] + rC(⟨σ'_0σ'_1⟩ + ⟨σ'_2σ'_3⟩)R} + γ⁴rR
        S += γ²{Θ13Θ24⟨∂_(1)∂_(2)q_12⟩ + r⟨∂_(1)∂_(2)q_12⟩B_1234 + rC(⟨σ'_1σ'_2⟩ + ⟨σ'_3σ'_4⟩)S} + γ⁴rS
        T += γ²{rΣ_e Q_132e⟨∂_eτ_24⟩ + rΣ_g Q_241g⟨∂_gτ_13⟩ + rC(⟨σ'_1σ'_3⟩ + ⟨σ'_2σ'_4⟩)T} + γ⁴rT
        U += γ²rC(⟨σ'_1σ'_4⟩ + ⟨σ'_2σ'_3⟩)U + γ⁴rU

    (τ_ab = λ_Wσ'_aσ_b + CΘ_abσ''_aσ'_b, q_ab = λ_Wσ_aσ_b + CΘ_abσ'_aσ'_b, r = n_ℓ/n_{ℓ−1}, ⟨·⟩ over
    K^(ℓ), slot derivatives as in theory/dntk.md).  Two-neuron correlators of layer ℓ are closed
    as in the MLP (E[Ĥ_jmĤ_jm f(z_j)g(z_m)] = B⟨f⟩⟨g⟩/n, …): exact when layer ℓ is plain, for any σ
    (every correlator the map needs is then even in each neuron of layer ℓ).  When layer ℓ has a
    shortcut over a plain layer ℓ−1, the "self" parts of those correlators (neuron j's branch reading
    neuron k of layer ℓ−1, whose shortcut feeds z_k) are replaced by their exact joint expectations
    (:func:`_self_term_corrections`, for the MLP part and, when layer ℓ+1 has a shortcut too, its mixed
    terms): exact at O(1/n) for any σ, including the odd parts a non-odd σ creates.  When layers ℓ−1
    and ℓ both have shortcuts the same corrections are applied (the joint law of (z^(ℓ−1), z^(ℓ)) is still
    Gaussian at leading order) together with the odd zeroth-order couplings inherited from below (Φ and
    the odd dNTK mean Ξ, tracked here for non-odd σ); what is then left out is the non-Gaussian part of
    the lower shortcut's own coupling (second generation): measured ≈ 1 % at three adjacent shortcut
    layers, up to 3 % at four (docs/residual.md).
    """
    from .dntk_recursions import _Broadcast, _Expectations, _insert_last, _p_insert, dntk_step

    N = E.N
    lower_residual = getattr(s, "K_below", None) is not None
    corr = None
    if lower_residual:
        if layer is None:
            raise ParameterError(
                "The 'layer' parameter of residual_dntk_step must be given (ℓ+1) when layer ℓ has a shortcut: its "
                "self-term corrections need the hyperparameters of layer ℓ. Got None instead."
            )
        h = net.effective_hyperparameters(layer - 1)
        corr = _self_term_corrections(
            net.activation, E, s, C, lw, float(net.gammas[layer - 2]), h["c_w"], h["lambda_w"], g_next=g
        )
    if g == 0.0:
        base = dntk_step(E, s, C, lw, F_next=F_next if corr is None else None, undefined="nan")
        return base if corr is None else {k: base[k] + corr[k] for k in base}
    base = dntk_step(E, s, C, lw, F_next=None, undefined="nan")
    if corr is not None:
        base = {k: base[k] + corr[k] for k in base}
    zero = np.zeros((N,) * 4)
    B, F, P, Q, R, S, T, U = (zero if getattr(s, f) is None else np.asarray(getattr(s, f)) for f in ("B", "F", "P", "Q", "R", "S", "T", "U"))
    r = s.width / s.fan_in
    Th, K = np.asarray(s.Theta), np.asarray(s.K)
    Ex = _Expectations(E)
    S11, S20, S22, S31 = Ex.pair(1, 1), Ex.pair(2, 0), Ex.pair(2, 2), Ex.pair(3, 1)
    uw10, uw21 = Ex.first(1, 0), Ex.first(2, 1)
    Tu = lw * uw10[0] + C * Th * uw21[0]  # ⟨∂_e τ_ab⟩ = δ_ea Tu_ab + δ_eb Tw_ab
    Tw = lw * uw10[1] + C * Th * uw21[1]
    dtau = lw * S20 + C * Th * S31  # ⟨∂_(0) τ_01⟩
    ddq = lw * S11 + C * Th * S22  # ⟨∂_(1)∂_(2) q_12⟩
    ar = np.arange(N)
    g2, g4r = g * g, g**4 * r

    # ---- P, Q, R (slots 0, 1, 2, 3)
    th, pr = _Broadcast(Th, "0123"), _Broadcast(None, "0123")
    B0012 = B[ar, ar][:, :, :, None]
    P_x = C * th("0", "1") * th("0", "2") * pr(S20, "0", "3") + r * C * (
        B0012 * pr(S20, "0", "3") + _p_insert(P, uw10) + pr(S11, "1", "2") * P
    )
    tz = Tu[:, :, None] * K[:, None, :] + Tw[:, :, None] * K[None, :, :]  # ⟨τ_01 z_3⟩ = Σ_e K_e3⟨∂_eτ_01⟩, [0, 1, 3]
    F_tau = Tu[:, :, None, None] * F[ar, ar][:, None, :, :] + Tw[:, :, None, None] * F  # Σ_e F_0e23⟨∂_eτ_01⟩
    Q_x = th("0", "2") * tz[:, :, None, :] + r * F_tau + r * C * (pr(S11, "0", "1") * Q + _insert_last(Q, uw10))
    P0230 = np.einsum("abca->abc", P)
    P_tau = Tu[:, :, None, None] * P0230[:, None, :, :] + Tw[:, :, None, None] * np.einsum("acdb->abcd", P)
    R_x = th("0", "2") * th("0", "3") * pr(dtau, "0", "1") + r * (
        np.einsum("aacd->acd", B)[:, None, :, :] * pr(dtau, "0", "1") + P_tau
    ) + r * C * (pr(S11, "0", "1") + pr(S11, "2", "3")) * R

    # ---- S, T, U (slots 1, 2, 3, 4)
    th, pr = _Broadcast(Th, "1234"), _Broadcast(None, "1234")
    S_x = th("1", "3") * th("2", "4") * pr(ddq, "1", "2") + r * pr(ddq, "1", "2") * B + r * C * (pr(S11, "1", "2") + pr(S11, "3", "4")) * S
    U_x = r * C * (S11[:, :, None, None] + S11[None, None, :, :]) * U  # storage order (1, 4, 2, 3)
    Q_bda = np.einsum("bdaa->abd", Q)
    Q_term1 = Tu[:, None, :, None] * Q_bda[:, :, None, :] + Tw[:, None, :, None] * np.einsum("bdac->abcd", Q)  # Σ_e Q_241e⟨∂_eτ_13⟩
    Q_term2 = np.einsum("badc->abcd", Q_term1)  # Σ_g Q_132g⟨∂_gτ_24⟩
    T1234 = np.einsum("acdb->abcd", T)
    T_x = np.einsum("abcd->acdb", r * (Q_term1 + Q_term2) + r * C * (pr(S11, "1", "3") + pr(S11, "2", "4")) * T1234)

    extra = {"P": (P_x, P), "Q": (Q_x, Q), "R": (R_x, R), "S": (S_x, S), "T": (T_x, T), "U": (U_x, U)}
    out = {k: base[k] + g2 * x + g4r * old for k, (x, old) in extra.items()}
    if not odd_tensors_vanish(net.activation):
        # Ξ' = n E[dĤ'_jjk] (docs/residual.md): self γΘ_02⟨τ_01⟩ + γ³ r Ξ + γ r[Σ_q Φ_0q2⟨∂_qτ_01⟩ + C⟨σ'_0σ'_1⟩Ξ]
        Phi = _get(s, "Phi", N)
        Xi = _get(s, "Xi", N)
        tau_m = lw * Ex.pair(1, 0) + C * Th * Ex.pair(2, 1)
        out["Xi"] = g * Th[:, None, :] * tau_m[:, :, None] + g**3 * r * Xi + g * r * (
            np.einsum("aac->ac", Phi)[:, None, :] * Tu[:, :, None] + Phi * Tw[:, :, None] + C * S11[:, :, None] * Xi
        )
    return out


#: Derivative orders (x_a, x_b, z_c, z_d) of the joint expectations :func:`_self_term_corrections` uses.
_JOINT_ORDERS = (
    (1, 1, 1, 1), (1, 1, 2, 0), (1, 1, 3, 1), (1, 1, 2, 2), (2, 0, 1, 1), (3, 1, 1, 1), (2, 2, 1, 1),
    (1, 0, 1, 0), (1, 0, 2, 1), (2, 1, 1, 0), (2, 1, 2, 1),
)


def _joint_quads(act, Kx, Kr, gam, orders_list, E) -> dict:
    """E_J[σ^(o1)(x_a) σ^(o2)(x_b) σ^(o3)(z_c) σ^(o4)(z_d)] for all a, b, c, d, per pattern (N,)*4.

    (x, z) = (z^(ℓ−1), z^(ℓ)) of one neuron: jointly Gaussian with covariances K^(ℓ−1), K^(ℓ) and
    Cov(x, z) = γK^(ℓ−1).  Only the N⁴ mixed blocks are integrated, all patterns on one grid per block
    (:func:`pdlt.gaussian.quadrature_many`); their error estimates are recorded in ``E`` (so they reach
    ``Statistics.quadrature_error``).  Activations with distributional derivatives (kinks) go through the
    dNTK engine's kink limits instead (NaN where undefined).
    """
    from pdlt.gaussian import quadrature_many

    from .dntk_recursions import _Expectations

    N = Kx.shape[0]
    Kaug = np.block([[Kx, gam * Kx], [gam * Kx, Kr]])
    if max(max(o) for o in orders_list) > act.max_derivative or act.kinks:
        EJ = _Expectations(LayerExpectations(act, Kaug, E.rule))
        return {o: EJ.quad(o)[:N, :N, N:, N:] for o in orders_list}
    # blocks a <= b, c <= d only; the patterns with either pair of slots swapped give the other entries
    pairs = np.array([(a, b) for a in range(N) for b in range(a, N)])
    ii, jj = np.meshgrid(np.arange(len(pairs)), np.arange(len(pairs)), indexing="ij")
    idx = np.concatenate([pairs[ii.ravel()], pairs[jj.ravel()] + N], axis=1)  # (M, 4) into Kaug
    blocks = Kaug[idx[:, :, None], idx[:, None, :]]

    def variants(o):
        return [(o[0], o[1], o[2], o[3]), (o[1], o[0], o[2], o[3]), (o[0], o[1], o[3], o[2]), (o[1], o[0], o[3], o[2])]

    pats = list(dict.fromkeys(v for o in orders_list for v in variants(tuple(o))))
    vals, _ = quadrature_many(act, pats, blocks, rule=E.rule, estimate_error=False)
    probe = np.unique(np.linspace(0, len(blocks) - 1, min(len(blocks), 24)).astype(int))
    pv, pe = quadrature_many(act, pats, blocks[probe], rule=E.rule)
    E._record(pv.ravel(), pe.ravel())
    if not np.all(np.isfinite(vals)):
        raise NumericalError(
            f"The joint Gaussian expectations of activation {act.name!r} over (z^(ℓ−1), z^(ℓ)) of a residual layer "
            "are not finite (overflow): use an activation that grows more slowly or smaller variances."
        )
    a, b, c, d = idx[:, 0], idx[:, 1], idx[:, 2] - N, idx[:, 3] - N
    out = {}
    for o in orders_list:
        v0, v1, v2, v3 = (vals[pats.index(v)] for v in variants(tuple(o)))
        T = np.empty((N,) * 4)
        T[b, a, d, c] = v3
        T[a, b, d, c] = v2
        T[b, a, c, d] = v1
        T[a, b, c, d] = v0
        out[tuple(o)] = T
    return out


def _self_term_corrections(act, E: LayerExpectations, s, C: float, lw: float, gam: float, Cr: float, lr: float, g_next: float = 0.0) -> dict:
    """Exact-minus-closure of the "self" correlators a plain layer ℓ+1 consumes from a residual layer ℓ.

    Parameters
    ----------
    act : Activation
    E : LayerExpectations
        Over K^(ℓ) = ``s.K`` (the consumer's own expectations).
    s : ResidualStatistics
        Layer ℓ (shortcut γ over a plain layer ℓ−1), with ``K_below`` = K^(ℓ−1), ``Theta_below`` = Θ^(ℓ−1).
    C, lw : float
        Effective C_W, λ_W of layer ℓ+1 (of its branch when it has a shortcut).
    gam, Cr, lr : float
        γ^(ℓ) and the effective C_W, λ_W of layer ℓ.
    g_next : float
        γ^(ℓ+1).  When non-zero, layer ℓ+1 is itself residual: its MLP part gets the same corrections
        and its mixed (one neuron through the shortcut, the other through the branch) terms, which
        consume the same correlators with f or g equal to 1 or to z, get theirs (× γ^(ℓ+1)²).

    Returns
    -------
    dict
        Additive corrections to ``P, Q, R, S, T, U`` of :func:`pdlt_plugins.dntk_recursions.dntk_step`
        (storage order of that module).

    Notes
    -----
    Write z_k = y_k + γ x_k (x = z^(ℓ−1), y the branch of layer ℓ).  For neurons j ≠ k of layer ℓ, the
    two-neuron correlators the dNTK map needs (E[Ĥ_jkĤ_jk f g], E[Ĥ_jk f g], E[dĤ_jkk f g], E[dĤ_jjk f g],
    E[ddĤ^I_jjkk f g], E[ddĤ^II_jjkk f g] with f = f(z_j), g = g(z_k)) have, besides the factorising
    MLP-like part, a part of the same order 1/n in which neuron j's branch reads x_k through W_jk
    (twice, or once and once through y_j inside f) while neuron k reads x_k through its shortcut.
    That part is (C_r or λ_r)/n × Θ^(ℓ−1) factors × E_J[F(x_k) g(z_k)] × (⟨f⟩ or ⟨∂f⟩), where E_J is
    the Gaussian expectation over the joint law of (x_k, z_k) (covariances K^(ℓ−1), K^(ℓ) and
    Cov(x, z) = γK^(ℓ−1)).  The closure (the tensors B, F, P, Q, R, S of layer ℓ) keeps only its
    lowest Hermite component in g (zeroth or first); here the full expectation replaces it.  This
    also supplies the odd parts a non-odd σ creates (e.g. E[dĤ_jjk] = γΘ_02⟨τ_01⟩/n ≠ 0).
    Derivation and checks: docs/residual.md ("Plain layer above a shortcut").
    """
    from .dntk_recursions import _Expectations

    N = E.N
    r = s.width / s.fan_in
    Kx, Thx = np.asarray(s.K_below), np.asarray(s.Theta_below)
    Kr, Thr = np.asarray(s.K), np.asarray(s.Theta)
    rule = E.rule
    Ex = _Expectations(LayerExpectations(act, Kx, rule))
    Er = _Expectations(E)
    J = _joint_quads(act, Kx, Kr, gam, _JOINT_ORDERS, E)

    # consumer-side expectations over K^(ℓ)
    S11r, S20r, S31r, S22r = Er.pair(1, 1), Er.pair(2, 0), Er.pair(3, 1), Er.pair(2, 2)
    u10r, w10r = Er.first(1, 0)
    u21r, w21r = Er.first(2, 1)
    Tu, Tw = lw * u10r + C * Thr * u21r, lw * w10r + C * Thr * w21r  # ⟨∂_e τ_ab⟩ (consumer τ)
    dtau_r = lw * S20r + C * Thr * S31r
    ddq_r = lw * S11r + C * Thr * S22r
    # layer-(ℓ−1) expectations of the closure's self terms (layer ℓ's own λ_r, C_r)
    S11x, S20x = Ex.pair(1, 1), Ex.pair(2, 0)
    u10x, w10x = Ex.first(1, 0)
    u21x, w21x = Ex.first(2, 1)
    Tux, Twx = lr * u10x + Cr * Thx * u21x, lr * w10x + Cr * Thx * w21x
    tz = Tux[:, :, None] * Kx[:, None, :] + Twx[:, :, None] * Kx[None, :, :]  # ⟨τ^(ℓ)_ab x_e⟩ [a, b, e]
    dtau_x = lr * S20x + Cr * Thx * Ex.pair(3, 1)
    ddq_x = lr * S11x + Cr * Thx * Ex.pair(2, 2)
    Z1f = u10x[:, :, None] * Kx[:, None, :] + w10x[:, :, None] * Kx[None, :, :]  # ⟨σ'_p σ_q x_s⟩ [p, q, s]

    J1111, J1120, J1131, J1122 = J[1, 1, 1, 1], J[1, 1, 2, 0], J[1, 1, 3, 1], J[1, 1, 2, 2]
    J2011, J3111, J2211 = J[2, 0, 1, 1], J[3, 1, 1, 1], J[2, 2, 1, 1]
    J1010, J1021, J2110, J2121 = J[1, 0, 1, 0], J[1, 0, 2, 1], J[2, 1, 1, 0], J[2, 1, 2, 1]
    ein = np.einsum
    g2 = gam * gam
    out = {}

    # ---- P (slots 0, 1, 2, 3): B-type and P-type self parts
    ThTh = Thx[:, :, None] * Thx[:, None, :]  # Θx_01 Θx_02 as [0, 1, 2]
    dB = S20r[:, None, None, :] * (ein("aacd->acd", J1111)[:, :, :, None] - S11x.diagonal()[:, None, None, None] * S11r[None, :, :, None])
    dB = dB + (ein("bcad->abcd", J1120) - S11x[None, :, :, None] * S20r[:, None, None, :]) * S11r[None, :, :, None]
    D = J2011 - S20x[:, :, None, None] * S11r[None, None, :, :]  # [a, e, c, d]
    dP = ein("aacd->acd", D)[:, :, :, None] * u10r[:, None, None, :] + ein("adbc->abcd", D) * w10r[:, None, None, :]
    out["P"] = r * C**2 * g2 * Cr * ThTh[:, :, :, None] * (dB + dP)

    # ---- Q (slots 0, 1, 2, 3): Q-type (γ¹ and γ² together) and F-type self parts
    EJtau = lr * J1010 + Cr * Thx[:, :, None, None] * J2110  # E_J[τ^(ℓ)_01(x) σ'(z_2)σ(z_3)]
    clo = gam * (tz[:, :, :, None] * u10r[None, None] + tz[:, :, None, :] * w10r[None, None])
    dQ = S11r[:, :, None, None] * gam * Thx[:, None, :, None] * (EJtau - clo)
    Z1g = ein("rsq->qrs", Z1f)  # ⟨x_q σ'_r σ_s⟩ [q, r, s]
    W = Z1f[:, :, None, :] + Z1g[None, :, :, :]  # [p, q, r, s]: Z1f[p,q,s] + Z1g[q,r,s]
    W0q2s = {  # W[p=0, q, r=2, s] for the four (q, s) choices, as [0, 1, 2, 3] arrays
        ("0", "2"): ein("aacc->ac", W)[:, None, :, None],
        ("0", "3"): ein("aacd->acd", W)[:, None, :, :],
        ("1", "2"): ein("abcc->abc", W)[:, :, :, None],
        ("1", "3"): W,
    }

    def f_type_q(uwf, uwg, Jf, Jg):
        """Exact − closure of E[Ĥ_jk;02 f(z_j;0,1) g(z_k;2,3)] (NTK slots 0, 2), [0, 1, 2, 3]: ⟨∂f⟩ = (uf, wf),
        ⟨∂g⟩ = (ug, wg); Jf[a, b, c, d] = E_J[σ'(x_a)σ(x_b) g(z_c, z_d)], Jg likewise with f."""
        (uf, wf), (ug, wg) = uwf, uwg
        exact = (
            uf[:, :, None, None] * ein("aacd->acd", Jf)[:, None, :, :]
            + wf[:, :, None, None] * Jf
            + ug[None, None, :, :] * ein("ccab->abc", Jg)[:, :, :, None]
            + wg[None, None, :, :] * ein("cdab->abcd", Jg)
        )
        dq = {"0": uf[:, :, None, None], "1": wf[:, :, None, None]}
        ds = {"2": ug[None, None], "3": wg[None, None]}
        closure = gam * sum(W0q2s[q, t] * dq[q] * ds[t] for q in "01" for t in "23")  # W[0, q, 2, s]⟨∂_q f⟩⟨∂_s g⟩
        return gam * Cr * Thx[:, None, :, None] * (exact - closure)

    dF = f_type_q((u21r, w21r), (u10r, w10r), J1010, J1021)  # f = σ''σ', g = σ'σ
    # (λ_W/C_W)F' in Q: F'_0123 = C²[Θ_02⟨σ'σσ'σ⟩ + r ΣF⟨∂(σ'_0σ_1)⟩⟨∂(σ'_2σ_3)⟩] consumes the F-type
    # correlator with f = σ'σ(z_j; 0, 1), g = σ'σ(z_k; 2, 3)
    dFp = f_type_q((u10r, w10r), (u10r, w10r), J1010, J1010)
    out["Q"] = r * C**2 * (dQ + Thr[:, :, None, None] * dF) + r * lw * C * dFp

    # ---- R (slots 0, 1, 2, 3): B-type, P-type and R-type self parts
    ThTh3 = Thx[:, None, :, None] * Thx[:, None, None, :]  # Θx_02 Θx_03
    Ef = lw * J1120 + C * Thr[None, None] * J1131  # E_J[σ'(x_a)σ'(x_b) ∂_(0)τ_cd(z)] [a, b, c, d]
    dBR = dtau_r[:, :, None, None] * (ein("aacd->acd", J1111)[:, None, :, :] - S11x.diagonal()[:, None, None, None] * S11r[None, None])
    dBR = dBR + (ein("cdab->abcd", Ef) - S11x[None, None] * dtau_r[:, :, None, None]) * S11r[None, None]
    dPR = ein("aacd->acd", D)[:, None, :, :] * Tu[:, :, None, None] + D * Tw[:, :, None, None]
    EJdt = lr * J2011 + Cr * Thx[:, :, None, None] * J3111
    dRR = C * S11r[:, :, None, None] * (EJdt - dtau_x[:, :, None, None] * S11r[None, None])
    out["R"] = r * C * g2 * ThTh3 * (Cr * (dBR + dPR) + dRR)

    # ---- S (slots 1, 2, 3, 4): B-type and S-type self parts
    ThS = Thx[:, None, :, None] * Thx[None, :, None, :]  # Θx_13 Θx_24
    Eq = lw * J1111 + C * Thr[None, None] * J1122  # E_J[σ'(x_a)σ'(x_b) ∂∂q_cd(z)]
    dBS = ddq_r[:, :, None, None] * (J1111 - S11x[:, :, None, None] * S11r[None, None])
    dBS = dBS + (ein("cdab->abcd", Eq) - S11x[None, None] * ddq_r[:, :, None, None]) * S11r[None, None]
    EJq = lr * J1111 + Cr * Thx[:, :, None, None] * J2211
    dSS = C * S11r[:, :, None, None] * (EJq - ddq_x[:, :, None, None] * S11r[None, None])
    out["S"] = r * C * g2 * ThS * (Cr * dBS + dSS)

    # ---- T (slots 1, 2, 3, 4; stored as (1, 3, 4, 2)): Q-type and F-type self parts
    EJ2 = lr * lw * J1010 + lr * C * Thr[None, None] * J1021 + Cr * Thx[:, :, None, None] * (lw * J2110 + C * Thr[None, None] * J2121)
    # Q1[1,2,3,4] = S11r_24 γ Θx_12 [E_J[τ^(ℓ)_24(x) τ_13(z)] − γ(tz_241 Tu_13 + tz_243 Tw_13)]
    e2 = ein("bdac->abcd", EJ2)  # EJ2[2,4,1,3] as [1, 2, 3, 4]
    cl2 = gam * (ein("bda->abd", tz)[:, :, None, :] * Tu[:, None, :, None] + ein("bdc->bcd", tz)[None] * Tw[:, None, :, None])
    q1 = gam * Thx[:, :, None, None] * (e2 - cl2)  # the Q-type self part with f = 1 (× ⟨f⟩ = S11r_24 below)
    Q1 = S11r[None, :, None, :] * q1
    Q2 = ein("badc->abcd", Q1)
    M = lw * J1010 + C * Thr[None, None] * J1021  # E_J[σ'(x_a)σ(x_b) τ_cd(z)]
    exT = (
        Tu[:, None, :, None] * ein("aabd->abd", M)[:, :, None, :]
        + Tw[:, None, :, None] * ein("acbd->abcd", M)
        + Tu[None, :, None, :] * ein("bbac->abc", M)[:, :, :, None]
        + Tw[None, :, None, :] * ein("bdac->abcd", M)
    )
    # closure: γ Σ_{q∈{1,3}, s∈{2,4}} W[1, q, 2, s] ⟨∂_q τ_13⟩⟨∂_s τ_24⟩
    Wq = {
        ("1", "2"): ein("aabb->ab", W)[:, :, None, None],
        ("1", "4"): ein("aabd->abd", W)[:, :, None, :],
        ("3", "2"): ein("acbb->abc", W)[:, :, :, None],
        ("3", "4"): ein("acbd->abcd", W),
    }
    dq = {"1": Tu[:, None, :, None], "3": Tw[:, None, :, None]}
    ds = {"2": Tu[None, :, None, :], "4": Tw[None, :, None, :]}
    clT = gam * sum(Wq[q, t] * dq[q] * ds[t] for q in "13" for t in "24")
    dFT = gam * Cr * Thx[:, :, None, None] * (exT - clT)
    out["T"] = ein("abcd->acdb", r * C * (Q1 + Q2) + r * dFT)

    # ---- U (slots 1, 2, 3, 4; stored as (1, 4, 2, 3)): the products Ĥ_jk;13 dĤ_kjj;214 and
    # dĤ_jkk;123 Ĥ_kj;24 of the layer map (they vanish when layer ℓ is plain) through the self parts
    # εγσ'(x_j;3)Θx_13 · εγ²σ''(x_j;2)Θx_12Θx_24 (ε = W_kj) and its image (1↔2, 3↔4)
    Th3 = Thx[:, :, None, None] * Thx[:, None, :, None] * Thx[None, :, None, :]  # Θx_12 Θx_13 Θx_24
    JU1, JU2 = ein("bcad->abcd", J2121), ein("adbc->abcd", J2121)  # E_J[σ''(x_2)σ'(x_3)σ''(z_1)σ'(z_4)] and image
    dU = S11r[None, :, :, None] * JU1 + S11r[:, None, None, :] * JU2
    out["U"] = ein("abcd->adbc", r * C**2 * gam**3 * Cr * Th3 * dU)

    # ---- odd couplings inherited from below layer ℓ (non-odd σ, shortcut layers ℓ−1 and ℓ): the zeroth-order
    # F-type (Φ) and Q-type (Ξ) couplings minus their self parts (those are in the E_J terms above); the
    # closure tensors F, Q carry only first-order couplings
    Phi, Xi = getattr(s, "Phi", None), getattr(s, "Xi", None)
    odd = Phi is not None and Xi is not None and (np.any(Phi) or np.any(Xi))
    if odd:
        S10x, S21x, S10r, S21r = Ex.pair(1, 0), Ex.pair(2, 1), Er.pair(1, 0), Er.pair(2, 1)
        Phi_in = np.asarray(Phi) - gam * Cr * Thx[:, None, :] * S10x[:, :, None]  # Φ minus its self part γCΘ⟨σ'σ⟩
        Xi_in = np.asarray(Xi) - gam * Thx[:, None, :] * (lr * S10x + Cr * Thx * S21x)[:, :, None]  # minus γΘ_02⟨τ_01⟩
        tau_m = lw * S10r + C * Thr * S21r  # ⟨τ_ab⟩ of the consumer
        Phi_002, Phi_220, Phi_230 = ein("aac->ac", Phi_in)[:, None, :, None], ein("cca->ac", Phi_in)[:, None, :, None], ein("cda->acd", Phi_in)[:, None, :, :]
        Phi_012 = Phi_in[:, :, :, None]

        def f_type(uf, wf, mf, ug, wg, mg):  # E[Ĥ_jk;02 f_01 g_23] zeroth-order parts, [0, 1, 2, 3]
            return (Phi_002 * uf[:, :, None, None] + Phi_012 * wf[:, :, None, None]) * mg[None, None] + mf[:, :, None, None] * (
                Phi_220 * ug[None, None] + Phi_230 * wg[None, None]
            )

        out["Q"] = out["Q"] + r * C**2 * (
            S11r[:, :, None, None] * Xi_in[:, :, :, None] * S10r[None, None] + Thr[:, :, None, None] * f_type(u21r, w21r, S21r, u10r, w10r, S10r)
        ) + r * lw * C * f_type(u10r, w10r, S10r, u10r, w10r, S10r)
        XiT = ein("bda->abd", Xi_in)[:, :, None, :]  # Ξ_241 as [1, 2, ·, 4]
        qT = C * S11r[None, :, None, :] * XiT * tau_m[:, None, :, None]
        fT = (ein("aab->ab", Phi_in)[:, :, None, None] * Tu[:, None, :, None] + ein("acb->abc", Phi_in)[:, :, :, None] * Tw[:, None, :, None]) * tau_m[None, :, None, :]
        fT = fT + tau_m[:, None, :, None] * (ein("bba->ab", Phi_in)[:, :, None, None] * Tu[None, :, None, :] + ein("bda->abd", Phi_in)[:, :, None, :] * Tw[None, :, None, :])
        out["T"] = out["T"] + ein("abcd->acdb", r * (qT + ein("badc->abcd", qT) + fT))
    if g_next == 0.0:
        return out

    # ---- mixed terms of a residual layer ℓ+1 (× γ^(ℓ+1)²; docs/residual.md)
    gn2 = g_next * g_next
    Bm = ein("bcad->abcd", J1120) - S11x[None, :, :, None] * S20r[:, None, None, :]  # B-type, g = 1 (mirror part)
    mP = r * C * Cr * g2 * ThTh[:, :, :, None] * (Bm + ein("adbc->abcd", D))  # + P-type with f = z_3
    zt = gam * (ein("cda->acd", Z1f)[:, None, :, :] * Tu[:, :, None, None] + ein("cdb->bcd", Z1f)[None] * Tw[:, :, None, None])
    mQ = r * gam * Thx[:, None, :, None] * (Cr * (ein("cdab->abcd", M) - zt) + C * (EJtau - clo))
    mR = r * g2 * ThTh3 * (
        Cr * (ein("cdab->abcd", Ef) - S11x[None, None] * dtau_r[:, :, None, None])
        + C * (EJdt - dtau_x[:, :, None, None] * S11r[None, None])
    )
    mS = r * g2 * ThS * (
        Cr * (ein("cdab->abcd", Eq) - S11x[None, None] * ddq_r[:, :, None, None])
        + C * (EJq - ddq_x[:, :, None, None] * S11r[None, None])
    )
    mT = ein("abcd->acdb", r * (q1 + ein("badc->abcd", q1)))
    mU = ein("abcd->adbc", r * C * gam**3 * Cr * Th3 * (JU1 + JU2))
    if odd:  # mixed terms: F-type with g = z (mirror, zeroth in f) and Q-type with f = 1 (zeroth in g)
        mQ = mQ + r * (tau_m[:, :, None, None] * Phi_230 + C * Xi_in[:, :, :, None] * S10r[None, None])
        mq = XiT * tau_m[:, None, :, None]
        mT = mT + ein("abcd->acdb", r * (mq + ein("badc->abcd", mq)))
    for k, v in (("P", mP), ("Q", mQ), ("R", mR), ("S", mS), ("T", mT), ("U", mU)):
        out[k] = out[k] + gn2 * v
    return out


def _one_neuron_ntk_three_point(Pi: np.ndarray, Phi: np.ndarray) -> np.ndarray:
    """P1_{12β} = n E[ΔĤ_{ii;12} z_{i;β}] = Π_{12β} + Φ_{1β2} + Φ_{2β1}, indexed [1, 2, β]."""
    return Pi + Phi.transpose(0, 2, 1) + np.einsum("bca->abc", Phi)


# =============================================================================================
# exact single-input O(1/n) statistics: the Hermite tower


@attrs.frozen(kw_only=True)
class TowerLayer:
    """Exact O(1/n) single-input statistics of one layer from :func:`single_input_tower`.

    Attributes
    ----------
    layer, fan_in : int
    K, G1, V, Omega, three_point : float
        K, G1 = n(E[z²] − K), V = n Cov(z_i², z_k²), Ω = n E[z_k² z_i] (i ≠ k) and the one-neuron
        n E[z³], all with n = fan-in.
    c : ndarray (M+1, M+1)
        Two-neuron coefficients: n Cov(f(z_i), g(z_k)) = Σ_ab c_ab F_a G_b with F_a = ⟨f h_a⟩_K.
    d : ndarray (M+1,)
        One-neuron coefficients: n(E[f(z_i)] − ⟨f⟩_K) = Σ_a d_a F_a.
    """

    layer: int
    fan_in: int
    K: float
    G1: float
    V: float
    Omega: float
    three_point: float
    c: np.ndarray = attrs.field(eq=False, repr=False)
    d: np.ndarray = attrs.field(eq=False, repr=False)


def single_input_tower(net: ResidualMLP, x, degree: int = 40, *, closure: bool = False) -> list[TowerLayer]:
    """Exact O(1/n) kernel statistics K, G1, V, Ω of a residual MLP for one input.

    The closed recursions of :func:`next_layer` keep, of the O(1/n) coupling between two
    neurons, only the parts seen by quadratic (V) and linear (Ω) functions; the shortcut also
    creates couplings n Cov(z_i², h_b(z_k)) for every Hermite order b ≥ 3 (the conditional
    variance of one neuron depends on the other's whole history through the self term
    (C_W/n)σ(z_k)² of the metric).  For one input they are tracked here exactly, truncated at
    Hermite degree ``degree`` (docs/residual.md; the truncation error falls like γ^degree).

    Parameters
    ----------
    net : ResidualMLP
    x : array_like, shape (n_0,) or (1, n_0)
    degree : int ≥ 4
    closure : bool
        Keep only the components that the closed recursions of :func:`next_layer` track
        (two-neuron b ≤ 2, one-neuron a ≤ 4): then K, V, Ω, G1 equal the flow's exactly, which
        isolates the effect of the rest of the tower.

    Returns
    -------
    list of TowerLayer
        Layers 1..L.

    Notes
    -----
    With f̃(x) = E_u f(γx + ξu), u ~ N(0, Ĝ), ρ = γ√(K/K'), α = ξ²/(√2K'), β = ξ²/(2K'),
    S_b = ⟨σ²h_b⟩_K, v_s = Var_K(σ²), r = n_ℓ/n_{ℓ−1} and C = C_W (branch):

        c'_ab = r ρ^{a+b} c_ab + [a=2] αCρ^b (S_b + r(Sc)_b) + [b=2] αCρ^a (S_a + r(cS)_a)
                + [a=b=2] α²C² (v_s + r SᵀcS)
        d'_a  = r ρ^a d_a + [a=2] r αC (d·S) + [a≥3] C β ρ^{a−2} √(a(a−1)) (S_{a−2} + r(cS)_{a−2})
                + [a=4] ½ β² √24 C² (v_s + r SᵀcS)

    V = 2K²c_22, Ω = √2 K^{3/2} c_21, G1 = √2 K d_2, n E[z³] = √6 K^{3/2} d_3.
    """
    if not isinstance(net, ResidualMLP):
        raise ParameterError(f"The 'net' parameter of single_input_tower must be a ResidualMLP. Got {net!r} instead.")
    X = np.asarray(x, dtype=float).reshape(1, -1)
    if X.shape[1] != net.input_dim or not np.all(np.isfinite(X)):
        raise ParameterError(
            f"The 'x' parameter of single_input_tower must be one finite input of dimension {net.input_dim}. Got shape {np.shape(x)} instead."
        )
    M = int(degree)
    if M < 4:
        raise ParameterError(f"The 'degree' parameter of single_input_tower must be >= 4. Got {degree!r} instead.")
    act = net.activation
    kinks = tuple(float(k) for k in getattr(act, "kinks", ()))
    sq = lambda z: np.asarray(act(z), dtype=float) ** 2  # noqa: E731
    h1 = net.effective_hyperparameters(1)
    K = float(h1["c_b"] + h1["c_w"] * (X @ X.T)[0, 0] / net.widths[0])
    c, d = np.zeros((M + 1, M + 1)), np.zeros(M + 1)
    out = [TowerLayer(layer=1, fan_in=net.widths[0], K=K, G1=0.0, V=0.0, Omega=0.0, three_point=0.0, c=c, d=d)]
    a = np.arange(M + 1)
    for ell in range(1, net.depth):
        h = net.hyperparameters(ell + 1)
        g, xi, Cw, Cb = h["gamma"], h["xi"], h["c_w"], h["c_b"]
        r = net.widths[ell] / net.widths[ell - 1]
        S = hermite_projections(sq, K, M, kinks)
        vs = hermite_projections(lambda z: sq(z) ** 2, K, 0, kinks)[0] - S[0] ** 2
        S[0] = 0.0  # constants carry no covariance
        Kn = g**2 * K + xi**2 * (Cb + Cw * hermite_projections(sq, K, 0, kinks)[0])
        rho, alpha, beta = g * math.sqrt(K / Kn), xi**2 / (math.sqrt(2) * Kn), xi**2 / (2 * Kn)
        pw = rho ** a.astype(float)
        cS = c @ S
        varG = Cw**2 * (vs + r * S @ cS)
        cn = r * np.outer(pw, pw) * c
        row = alpha * Cw * pw * (S + r * cS)
        row[0] = 0.0
        cn[2, :] += row
        cn[:, 2] += row
        cn[2, 2] += alpha**2 * varG
        dn = r * pw * d
        dn[2] += r * alpha * Cw * float(d @ S)
        src = S + r * cS  # Cov_K(h_m, s) + r C[h_m, s], m = a − 2
        am = a[3:]
        dn[3:] += Cw * beta * rho ** (am - 2.0) * np.sqrt(am * (am - 1.0)) * src[1 : M - 1]
        dn[4] += 0.5 * beta**2 * math.sqrt(24.0) * varG
        if closure:
            cn[3:, :] = 0.0
            cn[:, 3:] = 0.0
            dn[5:] = 0.0
        c, d, K = cn, dn, Kn
        out.append(
            TowerLayer(
                layer=ell + 1, fan_in=net.widths[ell], K=K, G1=math.sqrt(2) * K * d[2], V=2 * K**2 * c[2, 2],
                Omega=math.sqrt(2) * K**1.5 * c[2, 1], three_point=math.sqrt(6) * K**1.5 * d[3], c=c, d=d,
            )
        )
    return out


# =============================================================================================
# exact multi-input O(1/n) kernel statistics: the Hermite tower on R^N


@attrs.frozen(kw_only=True)
class MultiTowerLayer:
    """Exact O(1/n) kernel statistics of one layer from :func:`input_tower` or :func:`subset_tower` (N inputs).

    Attributes
    ----------
    layer, fan_in : int
    K : ndarray (N, N)
    G1 : ndarray (N, N)
        n(E[z_α z_β] − K_αβ).
    V : ndarray (N, N, N, N)
        n Cov(z_{i;α1} z_{i;α2}, z_{k;α3} z_{k;α4}), i ≠ k.
    Omega : ndarray (N, N, N)
        n E[z_{k;α1} z_{k;α2} z_{i;α3}], i ≠ k.
    c : ndarray (nb, nb)
        Two-neuron coefficients n Cov(f(z_i), g(z_k)) = Σ_AB c_AB F_A G_B, F_A = ⟨f h_A⟩_K with
        h_A(w) = Π_j He_{a_j}(w_j)/√(a_j!) of the whitened w = L⁻¹z (K = LLᵀ, Cholesky).
    d : ndarray (nb,)
        One-neuron coefficients n(E f(z_i) − ⟨f⟩_K) = Σ_A d_A F_A.
    multi_indices : ndarray (nb, N)
        c, d and multi_indices are None for layers assembled from several towers (:func:`subset_tower`).
    Theta, H1, A, B, D, F, Pi, Phi : ndarray or None
        With ``ntk=True``: the NTK mean Θ, its correction H1 = n(E Ĥ_ii − Θ), and the NTK tensors in
        the flow's index conventions (book §8–9; Π, Φ as in :mod:`pdlt_plugins.residual`):
        A_1234 = n Cov(Ĥ_ii;12, Ĥ_kk;34), B_1234 = n E[Ĥ_ik;13 Ĥ_ik;24], D_1234 = n Cov(Ĥ_ii;12, z_k3 z_k4),
        F_1234 = n E[Ĥ_ik;13 z_i2 z_k4], Π_123 = n E[Ĥ_ii;12 z_k3], Φ_123 = n E[Ĥ_ik;13 z_i2] (i ≠ k).
    """

    layer: int
    fan_in: int
    K: np.ndarray = attrs.field(eq=False)
    G1: np.ndarray = attrs.field(eq=False)
    V: np.ndarray = attrs.field(eq=False)
    Omega: np.ndarray = attrs.field(eq=False)
    c: np.ndarray | None = attrs.field(default=None, eq=False, repr=False)
    d: np.ndarray | None = attrs.field(default=None, eq=False, repr=False)
    multi_indices: np.ndarray | None = attrs.field(default=None, eq=False, repr=False)
    Theta: np.ndarray | None = attrs.field(default=None, eq=False)
    H1: np.ndarray | None = attrs.field(default=None, eq=False)
    A: np.ndarray | None = attrs.field(default=None, eq=False)
    B: np.ndarray | None = attrs.field(default=None, eq=False)
    D: np.ndarray | None = attrs.field(default=None, eq=False)
    F: np.ndarray | None = attrs.field(default=None, eq=False)
    Pi: np.ndarray | None = attrs.field(default=None, eq=False)
    Phi: np.ndarray | None = attrs.field(default=None, eq=False)


class _Basis:
    """Multi-indices A ∈ N^N with |A| ≤ M and the linear-algebra helpers of the tower."""

    def __init__(self, N: int, M: int):
        idx = [a for deg in range(M + 1) for a in _compositions(deg, N)]
        self.N, self.M = N, M
        self.A = np.array(idx, dtype=int).reshape(len(idx), N)
        self.deg = self.A.sum(1)
        self.pos = {tuple(a): k for k, a in enumerate(idx)}
        self.nb = len(idx)
        fact = np.array([math.prod(math.factorial(int(x)) for x in a) for a in self.A], dtype=float)
        self.sqrt_fact = np.sqrt(fact)
        # ∂/∂w_j on coefficient vectors: (D_j F)_B = √(b_j + 1) F_{B+e_j}
        self.Dw = []
        for j in range(N):
            D = np.zeros((self.nb, self.nb))
            for k, a in enumerate(self.A):
                up = a.copy()
                up[j] += 1
                kk = self.pos.get(tuple(up))
                if kk is not None:
                    D[k, kk] = math.sqrt(a[j] + 1)
            self.Dw.append(D)
        # multiplication of homogeneous polynomials by w_j: monomial index maps (−1: beyond M)
        self.times = np.full((N, self.nb), -1, dtype=int)
        for k, a in enumerate(self.A):
            for j in range(N):
                up = a.copy()
                up[j] += 1
                self.times[j, k] = self.pos.get(tuple(up), -1)

    def mehler(self, Rt: np.ndarray) -> np.ndarray:
        """M̃_AB with E[h_A(w') | w] = Σ_B M̃_AB h_B(w) when w' = Rt w + independent noise.

        E[:w'^A: | w] = :Π_i (Rt_i·w)^{a_i}: (Wick products of the conditional means), so M̃ is the
        coefficient matrix of the product of linear forms, block-diagonal in the degree."""
        nb = self.nb
        P = np.zeros((nb, nb))  # P[A] = monomial coefficients of Π_i (Rt_i·w)^{a_i}
        P[0, 0] = 1.0
        for k in range(1, nb):
            a = self.A[k]
            i = int(np.nonzero(a)[0][0])
            low = a.copy()
            low[i] -= 1
            prev = P[self.pos[tuple(low)]]
            nz = np.nonzero(prev)[0]
            row = np.zeros(nb)
            for j in range(self.N):
                if Rt[i, j] != 0.0:
                    np.add.at(row, self.times[j, nz], Rt[i, j] * prev[nz])
            P[k] = row
        return P * self.sqrt_fact[None, :] / self.sqrt_fact[:, None]

    def quadratic(self, L: np.ndarray) -> np.ndarray:
        """Coefficients Z[α, β, :] of z_α z_β (z = L w) in the basis h_A (constant part dropped)."""
        N = self.N
        Z = np.zeros((N, N, self.nb))
        for i in range(N):
            for j in range(N):
                e = np.zeros(N, dtype=int)
                e[i] += 1
                e[j] += 1
                k = self.pos[tuple(e)]
                coef = math.sqrt(2.0) if i == j else 1.0
                Z[:, :, k] += coef * L[:, i][:, None] * L[:, j][None, :] * (1.0 if i == j else 1.0)
        # for i ≠ j the (i, j) and (j, i) terms both land on h_{e_i+e_j}: L_αi L_βj + L_αj L_βi ✓
        return Z

    def linear(self, L: np.ndarray) -> np.ndarray:
        """Coefficients Z[α, :] of z_α = Σ_i L_αi w_i."""
        Z = np.zeros((self.N, self.nb))
        for i in range(self.N):
            e = np.zeros(self.N, dtype=int)
            e[i] = 1
            Z[:, self.pos[tuple(e)]] = L[:, i]
        return Z

    def first(self, Linv: np.ndarray) -> np.ndarray:
        """D1[α] = ∂_{z_α} on coefficient vectors, for z = L w (∂_z = L⁻ᵀ ∂_w)."""
        return np.array([sum(Linv[i, a] * self.Dw[i] for i in range(self.N)) for a in range(self.N)])

    def second(self, Linv: np.ndarray) -> np.ndarray:
        """D2[α, β] = ∂_{z_α}∂_{z_β} on coefficient vectors, for z = L w (∂_z = L⁻ᵀ ∂_w)."""
        N = self.N
        D1 = [sum(Linv[i, a] * self.Dw[i] for i in range(N)) for a in range(N)]
        return np.array([[D1[a] @ D1[b] for b in range(N)] for a in range(N)])


def _compositions(deg: int, N: int):
    if N == 1:
        yield (deg,)
        return
    for first in range(deg, -1, -1):
        for rest in _compositions(deg - first, N - 1):
            yield (first,) + rest


def _hermite_grid(M: int, half_width: float = 10.0, panel: float = 0.25, order: int = 8):
    """1-D composite Gauss–Legendre grid x and Ψ[k, p] = h_k(x_p) φ(x_p) w_p (k ≤ M), built from
    the bounded Hermite functions ψ_k = h_k φ^{1/2}."""
    n_pan = int(round(2 * half_width / panel))
    brk = np.linspace(-half_width, half_width, n_pan + 1)
    xg, wg = np.polynomial.legendre.leggauss(order)
    a, b = brk[:-1, None], brk[1:, None]
    x = (0.5 * (b - a) * xg + 0.5 * (a + b)).ravel()
    w = (0.5 * (b - a) * wg).ravel()
    psi0 = np.exp(-0.25 * x * x) / (2 * math.pi) ** 0.25
    Psi = np.empty((M + 1, x.size))
    prev, cur = np.zeros_like(x), psi0
    for k in range(M + 1):
        Psi[k] = cur
        nxt = (x * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
        prev, cur = cur, nxt
    return x, Psi * psi0 * w


def _hermite_rows(M: int, u: np.ndarray) -> np.ndarray:
    """h_k(u), k = 0..M (orthonormal probabilists' Hermite polynomials), stacked on a new first axis."""
    H = np.empty((M + 1,) + u.shape)
    prev, cur = np.zeros_like(u), np.ones_like(u)
    for k in range(M + 1):
        H[k] = cur
        prev, cur = cur, (u * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
    return H


def _mirror_equal_orders(out: dict[tuple[int, int], np.ndarray]) -> None:
    """Fill the lower triangle (b < a) of P[:, a, b] from the upper one where d1 = d2 (symmetric)."""
    for (d1, d2), P in out.items():
        if d1 == d2:
            iu = np.triu_indices(P.shape[1], 1)
            P[:, iu[1], iu[0]] = P[:, iu[0], iu[1]]


def _gauss_hermite_grid(M: int, n: int):
    """n-point Gauss–Hermite grid x and Ψ[k, p] = h_k(x_p) ω_p (k ≤ M; ω the N(0, 1) weights)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, _hermite_rows(M, x) * (w / w.sum())


def _tower_grid(act, M: int, scale: float, composite):
    """The tower's 1-D quadrature grid for one layer: Gauss–Hermite for smooth σ when it converges.

    For σ without kinks the projections ⟨σ^(d1)σ^(d2) h_A⟩ are integrals of analytic functions against
    the Gaussian, for which Gauss–Hermite converges far faster than the composite rule (the tensor
    grid has n^N points: the composite rule's 320 per axis made N = 3 cost ~40 s).  The node count is
    the smallest n in 24, 32, 48, … ≤ 128 for which the 1-D projections ⟨σ^(d)(s x)² h_k⟩, k ≤ M, at
    the layer's largest scale s agree with those at 2n to 1e-10 (relative); otherwise, and for kinked
    σ, the composite Gauss–Legendre grid ``composite()`` is used.
    """
    if act.kinks:
        return composite()
    orders = (0, 1)

    @functools.cache
    def proj(n):
        x, Psi = _gauss_hermite_grid(M, n)
        z = scale * x
        return np.stack([Psi @ (np.asarray(act(z) if o == 0 else act.derivative(z, o), dtype=float) ** 2) for o in orders])

    for n in (24, 32, 48, 64, 96, 128):  # 2n ≤ 256: numpy's hermegauss overflows beyond ~300 nodes
        a, b = proj(n), proj(2 * n)
        if np.max(np.abs(a - b)) <= 1e-10 * max(1.0, float(np.max(np.abs(b)))):
            return _gauss_hermite_grid(M, n)
    return composite()


def _project_products(act, L: np.ndarray, basis: _Basis, grid, kinds=((0, 0), (0, 1), (1, 1)),
                      max_points: int = 2_000_000, reduce: bool = True) -> dict[tuple[int, int], np.ndarray]:
    """{(d1, d2): P[A, a, b] = ⟨σ^(d1)(z_a) σ^(d2)(z_b) h_A⟩_K}, constant component included.

    For N ≥ 3, or N = 2 with a kinked σ (``reduce``), each pair is integrated in the plane it spans: with an orthogonal Q whose
    first two columns span the rows L_a, L_b (z = L w, w = Q v), h_A(Qv) = Σ_B M̃(Q)_AB h_B(v) (the
    Mehler matrix of the rotation) and ⟨f(v1, v2) h_B(v)⟩ vanishes unless B_3 = … = 0, so only 2-D
    integrals are needed (N² of them instead of an N-D tensor grid).  Otherwise the N-D tensor grid in
    w = L⁻¹z is visited in slabs of the first axis of at most ``max_points`` points."""
    x, Psi = grid
    N, m = L.shape[0], x.size
    if reduce and (N >= 3 or (N == 2 and act.kinks)):
        return _project_products_planar(act, L, basis, grid, kinds)
    step = max(1, max_points // m ** (N - 1))
    sel = tuple(basis.A.T)
    out = {kd: np.zeros((basis.nb, N, N)) for kd in kinds}
    orders = sorted({o for kd in kinds for o in kd})
    for s0 in range(0, m, step):
        xs = x[s0 : s0 + step]
        mesh = np.stack(np.meshgrid(xs, *([x] * (N - 1)), indexing="ij"), axis=-1)
        zz = mesh @ L.T
        vals = {o: np.asarray(act(zz) if o == 0 else act.derivative(zz, o), dtype=float) for o in orders}
        for d1, d2 in kinds:
            P = out[(d1, d2)]
            for a in range(N):
                for b in range(N):
                    if d1 == d2 and b < a:
                        continue
                    T = vals[d1][..., a] * vals[d2][..., b]
                    for k in range(N):  # contract the last grid axis each time; the slab axis comes last
                        T = np.tensordot(Psi if k < N - 1 else Psi[:, s0 : s0 + step], T, axes=([1], [N - 1]))
                    P[:, a, b] += T[sel]
    _mirror_equal_orders(out)
    return out


def _kink_aligned_plane(act, M: int, c1: float, c2a: float, c2b: float):
    """Nodes of a 2-D rule for N(0, I_2) on which z_a = c1 v1 and z_b = c2a v1 + c2b v2 have their kinks
    on panel edges: a composite Gauss–Legendre rule in v1 broken at the kinks of z_a, and for each v1
    node one in v2 broken where z_b crosses a kink.  Returns (v1 (m1,), Ψ1 (M+1, m1), v2 (m1, m2),
    W2 (M+1, m1, m2)) with Ψ1 = h_k(v1)·weight and W2 = h_l(v2)·weight (weights include the density)."""
    from pdlt.gaussian import _T, _composite_rule

    kinks = np.asarray(act.kinks, dtype=float)
    xg, wg = np.polynomial.legendre.leggauss(8)
    fixed = np.linspace(-_T, _T, 69)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.concatenate([fixed, kinks / c1 if c1 != 0.0 else np.full(len(kinks), np.nan)])
        v1, w1 = _composite_rule(c[None, :], xg, wg)
        v1, w1 = v1[0], w1[0]
        brk = (kinks[None, :] - c2a * v1[:, None]) / c2b if abs(c2b) > 1e-14 else np.full((len(v1), len(kinks)), np.nan)
    v2, w2 = _composite_rule(np.concatenate([np.broadcast_to(fixed, (len(v1), len(fixed))), brk], axis=1), xg, wg)
    return v1, _hermite_rows(M, v1) * w1, v2, _hermite_rows(M, v2) * w2


def _project_products_planar(act, L: np.ndarray, basis: _Basis, grid, kinds) -> dict[tuple[int, int], np.ndarray]:
    """:func:`_project_products` by pairwise 2-D integrals and Mehler rotations (N ≥ 3).

    Smooth σ use the tensor product of ``grid``; kinked σ a rule whose panels end on the kinks of
    both factors (:func:`_kink_aligned_plane`): a step σ' on a slanted kink line would otherwise
    converge only linearly in the panel width (1e-4 relative at 0.25)."""
    x, Psi = grid
    N, M = L.shape[0], basis.M
    orders = sorted({o for kd in kinds for o in kd})
    planar = np.all(basis.A[:, 2:] == 0, axis=1)  # B with B_3 = … = B_N = 0
    b1, b2 = basis.A[planar, 0], basis.A[planar, 1]
    out = {kd: np.zeros((basis.nb, N, N)) for kd in kinds}
    if not act.kinks:
        v1, v2 = np.meshgrid(x, x, indexing="ij")
    for a in range(N):
        for b in range(a, N):
            la, lb = L[a], L[b]
            q1 = la / np.linalg.norm(la)
            r = lb - (lb @ q1) * q1
            # complete (q1, r) to an orthonormal basis (r may vanish: a = b or proportional rows)
            Q, _ = np.linalg.qr(np.column_stack([q1, r if np.linalg.norm(r) > 1e-12 * np.linalg.norm(lb) else np.zeros(N), np.eye(N)]))
            Mq = basis.mehler(Q)  # h_A(Qv) = Σ_B Mq[A, B] h_B(v); z_a, z_b lie in the plane of Q's first two columns
            c1, c2a, c2b = la @ Q[:, 0], lb @ Q[:, 0], lb @ Q[:, 1]
            if act.kinks:
                u1, Psi1, u2, W2 = _kink_aligned_plane(act, M, c1, c2a, c2b)
                za, zb = np.broadcast_to((c1 * u1)[:, None], u2.shape), c2a * u1[:, None] + c2b * u2
            else:
                za, zb = c1 * v1, c2a * v1 + c2b * v2
            vals = {o: (np.asarray(act(za) if o == 0 else act.derivative(za, o), dtype=float),
                        np.asarray(act(zb) if o == 0 else act.derivative(zb, o), dtype=float)) for o in orders}
            for d1, d2 in kinds:
                pairs = [(a, b, vals[d1][0] * vals[d2][1])]
                if a != b:
                    pairs.append((b, a, vals[d1][1] * vals[d2][0]))
                for i, j, F in pairs:
                    if d1 == d2 and j < i:
                        continue
                    if act.kinks:
                        C2 = np.einsum("kp,lpq,pq->kl", Psi1, W2, F, optimize=True)  # ⟨F h_k(v1) h_l(v2)⟩
                    else:
                        C2 = Psi @ F @ Psi.T  # ⟨F h_k(v1) h_l(v2)⟩, k, l ≤ M
                    G = np.zeros(basis.nb)
                    G[planar] = C2[b1, b2]
                    out[(d1, d2)][:, i, j] = Mq @ G
    _mirror_equal_orders(out)
    return out


class _NTKTower:
    """State and layer map of the NTK side of the multi-input tower (docs/residual.md, "The NTK tower").

    Atoms of one neuron i of layer ℓ: K(h_A) = h_A(w_i) and H_p(h_A) = Ĥ_ii;p h_A(w_i) (p = (α ≤ β)).
    Tracked at O(1/n) (fan-in n): the two-neuron covariance ``CE`` of all atoms (blocks c, e, A), the
    one-neuron NTK correction ``ah[p, A]`` = n(E[Ĥ_ii;p h_A] − Θ_p⟨h_A⟩), the off-diagonal
    ``phi[α, β]`` = n E[Ĥ_ik;αβ f(z_i) g(z_k)] and, at leading order, ``b[α, β, γ, δ]`` =
    n E[Ĥ_ik;αβ Ĥ_ik;γδ f(z_i) g(z_k)] (bilinear forms on Hermite coefficients, i ≠ k).
    """

    def __init__(self, N: int, nb: int, Theta: np.ndarray):
        self.N, self.nb = N, nb
        self.pairs = [(a, b) for a in range(N) for b in range(a, N)]
        self.nH = len(self.pairs)
        nE = nb * (1 + self.nH)
        self.Theta = Theta
        self.CE = np.zeros((nE, nE))
        self.ah = np.zeros((self.nH, nb))
        self.phi = np.zeros((N, N, nb, nb))
        self.b = np.zeros((N, N, N, N, nb, nb))
        # b_αβγδ(f, g) = b_γδαβ(f, g) (the two Ĥ_ik factors commute) = b_βαδγ(g, f) (i ↔ k, Ĥ_ik;αβ = Ĥ_ki;βα):
        # the γ⁴ M̃ b M̃ᵀ term is computed on one index tuple per orbit and copied (transposed) to the others
        tuples = list(itertools.product(range(N), repeat=4))
        flat = {t: j for j, t in enumerate(tuples)}
        rep, flip, reps = np.empty(len(tuples), dtype=int), np.zeros(len(tuples), dtype=bool), []
        for j, (a, b_, c, d) in enumerate(tuples):
            orbit = [((a, b_, c, d), False), ((c, d, a, b_), False), ((b_, a, d, c), True), ((d, c, b_, a), True)]
            head, transposed = min(orbit)
            if head == (a, b_, c, d):
                reps.append(j)
            rep[j], flip[j] = flat[head], transposed
        self._b_reps = np.array(reps)
        where = {j: k for k, j in enumerate(reps)}
        self._b_rep_of, self._b_flip = np.array([where[r] for r in rep]), flip

    def blk(self, t: int) -> slice:
        return slice(t * self.nb, (t + 1) * self.nb)

    def step(self, *, E, proj, Mt, D1n, D2n, d, dn, r, g, xi, Cw, lb, lw):
        """Map the state to layer ℓ+1 (raw C_W, λ_b, λ_W of layer ℓ+1; ``E`` the Gaussian engine at K,
        ``proj`` from :func:`_project_products`, ``Mt`` the Mehler matrix, ``D1n``/``D2n`` the first
        and second derivative operators at K'); ``d`` is the kernel tower's one-neuron vector at ℓ,
        ``dn`` at ℓ+1.  Returns the kernel block of the new two-neuron covariance."""
        N, nb, nH, pairs, blk = self.N, self.nb, self.nH, self.pairs, self.blk
        Th, CE, ah, phi, bb = self.Theta, self.CE, self.ah, self.phi, self.b
        x2 = xi * xi
        e0 = np.zeros(nb)
        e0[0] = 1.0
        P00, P01, P11 = proj[(0, 0)], proj[(0, 1)], proj[(1, 1)]  # ⟨σσ h⟩, ⟨σσ' h⟩, ⟨σ'σ' h⟩ (full)
        S0 = P00.copy()
        S0[0] = 0.0
        S00, S11 = E.pair(0, 0), E.pair(1, 1)
        q0000, q0011, q1111 = E.quad((0, 0, 0, 0)), E.quad((0, 0, 1, 1)), E.quad((1, 1, 1, 1))
        q0110, q0101 = E.quad((0, 1, 1, 0)), E.quad((0, 1, 0, 1))
        Thp = np.array([Th[a, b] for a, b in pairs])
        Lam = x2 * (lb + lw * S00 + Cw * S11 * Th)  # Θ' − γ²Θ
        Thn = Lam + g * g * Th
        Lamp, Thnp = np.array([Lam[a, b] for a, b in pairs]), np.array([Thn[a, b] for a, b in pairs])
        p1 = D1n[:, 0, :]  # ⟨∂_ρ h_A⟩ at K'
        p2 = D2n[:, :, 0, :]  # ⟨∂_ρ∂_τ h_A⟩ at K'
        nE, nG = CE.shape[0], N * N + nH

        # globals Σ̂_ρτ = (1/n)Σ_j σ_ρσ_τ(z_j) (ordered ρτ) and Ŝ'_p = (1/n)Σ_j σ'σ'(z_j)Ĥ_jj;p
        G = np.zeros((nE, nG))
        for ro in range(N):
            for ta in range(N):
                G[blk(0), ro * N + ta] = S0[:, ro, ta]
        for k, (a, b_) in enumerate(pairs):
            G[blk(1 + k), N * N + k] = P11[:, a, b_]
        u = np.concatenate([[1.0], Thp])
        I0 = np.ones(nb)
        I0[0] = 0.0
        SigG = np.zeros_like(G)  # one-neuron (self) covariance of the atoms with the globals
        Gsum = sum(u[t] * I0[:, None] * G[blk(t)] for t in range(1 + nH))
        for t in range(1 + nH):
            SigG[blk(t)] = u[t] * Gsum
        SGG = np.zeros((nG, nG))
        SGG[: N * N, : N * N] = (q0000 - _outer(S00, S00)).reshape(N * N, N * N)
        pa, pb = np.array(pairs, dtype=int).T
        cs = Thp * (q0011[:, :, pa, pb] - S00[:, :, None] * S11[pa, pb])
        SGG[: N * N, N * N :] = cs.reshape(N * N, nH)
        SGG[N * N :, : N * N] = SGG[: N * N, N * N :].T
        SGG[N * N :, N * N :] = np.outer(Thp, Thp) * (
            q1111[pa[:, None], pb[:, None], pa[None, :], pb[None, :]] - np.outer(S11[pa, pb], S11[pa, pb])
        )
        CG = CE @ G
        LocG = SigG + r * CG  # n Cov(atom of neuron i, globals)
        GG = SGG + r * G.T @ CG  # n Cov(globals, globals)

        # linear representation of the atoms of layer ℓ+1: δX' = Lm δa_i + Gm δglob
        Lm = np.zeros((nE, nE))
        Gm = np.zeros((nE, nG))
        Lm[blk(0), blk(0)] = Mt
        gK = 0.5 * x2 * Cw * p2.reshape(N * N, nb).T  # (nb, N²): ½ξ²C_W⟨∂_ρ∂_τ f⟩
        Gm[blk(0), : N * N] = gK
        for k, (a, b_) in enumerate(pairs):
            Lm[blk(1 + k), blk(0)] = Lamp[k] * Mt
            Lm[blk(1 + k), blk(1 + k)] = g * g * Mt
            Gm[blk(1 + k), : N * N] = Thnp[k] * gK
            Gm[blk(1 + k), a * N + b_] += x2 * lw * e0
            Gm[blk(1 + k), N * N + k] = x2 * Cw * e0
        LG = Lm @ LocG @ Gm.T
        # Lm = B ⊗ M̃ (block (0, 0): 1; (k, 0): Λ_k; (k, k): γ²), so Lm CE Lmᵀ costs (1 + nH)² nb³, not nE³
        Bk = np.zeros((1 + nH, 1 + nH))
        Bk[0, 0] = 1.0
        Bk[1:, 0] = Lamp
        Bk[np.arange(1, 1 + nH), np.arange(1, 1 + nH)] = g * g
        C4 = CE.reshape(1 + nH, nb, 1 + nH, nb)
        C4 = np.einsum("pq,qarb->parb", Bk, C4)
        C4 = np.einsum("parb,sr->pasb", C4, Bk)
        iu = np.triu_indices(1 + nH)  # the result is symmetric: blocks (p, s) with p ≤ s, then mirrored
        up = np.matmul(np.matmul(Mt, C4.transpose(0, 2, 1, 3)[iu]), Mt.T)
        C4 = np.empty((1 + nH, 1 + nH, nb, nb))
        C4[iu] = up
        C4[iu[1], iu[0]] = up.transpose(0, 2, 1)
        C4 = C4.transpose(0, 2, 1, 3)
        CEn = r * C4.reshape(nE, nE) + LG + LG.T + Gm @ GG @ Gm.T

        # one-neuron NTK correction, for every ordered (α, β) (symmetric), then kept on the pairs p
        Pv = P01.transpose(1, 2, 0)  # [ρ, α, A] = ⟨σ_ρσ'_α h_A⟩
        covK = Mt @ LocG[blk(0)] + Gm[blk(0)] @ GG  # (nb, nG): n Cov(f(z'_i), globals)
        pid = np.empty((N, N), dtype=int)
        for k, (a, b_) in enumerate(pairs):
            pid[a, b_] = pid[b_, a] = k
        ahf = ah[pid]  # (N, N, nb)
        Eab = np.stack([CE[blk(1 + k), blk(0)] for k in range(nH)])[pid]  # e_αβ(f, g): (N, N, nb, nb)
        c_ = CE[blk(0), blk(0)]
        Qf = P11.transpose(1, 2, 0)  # [α, β, A] = ⟨σ'_ασ'_β h_A⟩
        sel_S = np.arange(N * N).reshape(N, N)
        sel_Q = N * N + pid
        v = Thn[:, :, None] * dn
        v += x2 * lw * (r * np.einsum("A,Aab->ab", d, S0)[:, :, None] * e0 + np.moveaxis(covK[:, sel_S], 0, -1))
        v += x2 * Cw * (r * np.einsum("abA,Aab->ab", ahf, P11)[:, :, None] * e0 + np.moveaxis(covK[:, sel_Q], 0, -1))
        w3 = Th[:, :, None, None] * np.einsum("raBt->aBrt", q0110) + r * np.einsum("raA,abAB,tbB->abrt", Pv, phi, Pv, optimize=True)
        v += x2 * x2 * Cw * Cw * np.einsum("abrt,rtA->abA", w3, p2)
        if g != 0.0:
            w4 = Th[:, :, None, None] * (Pv.transpose(1, 0, 2)[:, None] + Pv.transpose(1, 0, 2)[None, :])
            w4 = w4 + r * (np.einsum("abAB,raA->abrB", phi, Pv) + np.einsum("baAB,rbA->abrB", phi, Pv))
            v += x2 * g * Cw * np.einsum("rBA,abrB->abA", D1n, w4 @ Mt.T)
            v += g * g * r * (ahf - Th[:, :, None] * d) @ Mt.T
            eS = np.einsum("abAB,Brt->abrtA", Eab - Th[:, :, None, None] * c_, S0)
            v += g * g * 0.5 * x2 * Cw * r * np.einsum("rtBA,abrtB->abA", D2n, eS @ Mt.T)
        ahn = np.stack([v[a, b_] for a, b_ in pairs])

        # off-diagonal NTK: φ (O(1/n)) and b (leading order); all ordered index tuples at once
        phin = r * g * g * Mt @ phi @ Mt.T
        left = Th[:, :, None, None] * Pv.transpose(1, 0, 2)[:, None] + r * np.einsum("abAB,raA->abrB", phi, Pv)
        right = Th[:, :, None, None] * Pv.transpose(1, 0, 2)[None, :] + r * np.einsum("abAB,rbB->abrA", phi, Pv)
        phin += x2 * g * Cw * (np.einsum("rA,abrB->abAB", p1, left @ Mt.T) + np.einsum("abrA,rB->abAB", right @ Mt.T, p1))
        w = Th[:, :, None, None] * np.einsum("ratb->abrt", q0101) + r * np.einsum("raA,abAB,tbB->abrt", Pv, phi, Pv, optimize=True)
        phin += x2 * x2 * Cw * Cw * np.einsum("abrt,rA,tB->abAB", w, p1, p1, optimize=True)
        TT = Th[:, :, None, None] * Th[None, None, :, :]
        Qac, Qbd = Qf[:, None, :, None, :], Qf[None, :, None, :, :]  # σ'_ασ'_γ on neuron i, σ'_βσ'_δ on k
        bn = np.zeros_like(bb)
        bn[..., 0, 0] = x2 * x2 * Cw * Cw * (TT * q1111 + r * np.einsum("acA,abcdAB,bdB->abcd", Qf, bb, Qf, optimize=True))
        if g != 0.0:
            rowv = TT[..., None] * Qac + r * np.einsum("abcdAB,acA->abcdB", bb, Qf)
            colv = TT[..., None] * Qbd + r * np.einsum("abcdAB,bdB->abcdA", bb, Qf)
            bn[..., 0, :] += x2 * g * g * Cw * (rowv @ Mt.T)
            bn[..., :, 0] += x2 * g * g * Cw * (colv @ Mt.T)
            bf = bb.reshape(-1, nb, nb)
            mbm = (Mt @ bf[self._b_reps]) @ Mt.T
            mbm = mbm[self._b_rep_of]
            mbm[self._b_flip] = mbm[self._b_flip].transpose(0, 2, 1)
            bn += r * g**4 * mbm.reshape(bb.shape)
        self.Theta, self.CE, self.ah, self.phi, self.b = Thn, CEn, ahn, phin, bn
        return CEn[blk(0), blk(0)]

    def truncate_to_closure(self, deg: np.ndarray, d: np.ndarray) -> None:
        """Keep what the closed recursions of :func:`next_layer` track, in the fluctuation variables
        ΔĤ = Ĥ − Θ: n Cov(ΔĤ_ii f(z_i), g(z_k)) for f = 1 and deg g ≤ 2 (D, Π), n Cov(ΔĤ_ii, ΔĤ_kk) (A),
        n E[ΔĤ_ii f(z_i)] for deg f ≤ 2 (H1, Π + 2Φ, D + 2F), φ for degrees ≤ 1 (F, Φ) and b for
        degree 0 (B).  ``deg`` are the total degrees of the basis, ``d`` the truncated kernel d."""
        nb, nH, blk, CE = self.nb, self.nH, self.blk, self.CE
        Thp = np.array([self.Theta[a, b_] for a, b_ in self.pairs])
        c = CE[blk(0), blk(0)]
        eh = [CE[blk(1 + k), blk(0)] - Thp[k] * c for k in range(nH)]
        Ah = [[CE[blk(1 + k), blk(1 + m)] - Thp[k] * Thp[m] * c - Thp[k] * eh[m].T - Thp[m] * eh[k] for m in range(nH)]
              for k in range(nH)]
        row0 = deg == 0
        keep_e = np.outer(row0, deg <= 2)
        keep_A = np.outer(row0, row0)
        for k in range(nH):
            eh[k] = np.where(keep_e, eh[k], 0.0)
        for k in range(nH):
            CE[blk(1 + k), blk(0)] = Thp[k] * c + eh[k]
            CE[blk(0), blk(1 + k)] = CE[blk(1 + k), blk(0)].T
            for m in range(nH):
                CE[blk(1 + k), blk(1 + m)] = (Thp[k] * Thp[m] * c + Thp[k] * eh[m].T + Thp[m] * eh[k]
                                              + np.where(keep_A, Ah[k][m], 0.0))
        at = self.ah - Thp[:, None] * d
        at[:, deg > 2] = 0.0
        self.ah = at + Thp[:, None] * d
        lin = deg <= 1
        self.phi = np.where(np.outer(lin, lin), self.phi, 0.0)
        self.b = np.where(np.outer(row0, row0), self.b, 0.0)

    def tensors(self, Z1: np.ndarray, Z2: np.ndarray) -> dict:
        """Θ, H1, A, B, D, F, Π, Φ of the current layer in the flow's conventions."""
        N, nH, blk = self.N, self.nH, self.blk
        pid = np.empty((N, N), dtype=int)
        for k, (a, b_) in enumerate(self.pairs):
            pid[a, b_] = pid[b_, a] = k
        A0 = np.array([[self.CE[k * self.nb + self.nb, m * self.nb + self.nb] for m in range(nH)] for k in range(nH)])
        erow = np.stack([self.CE[blk(1 + k), blk(0)][0] for k in range(nH)])[pid]  # (N, N, nb): e_αβ(1, ·)
        return dict(
            Theta=self.Theta.copy(),
            H1=self.ah[pid, 0],
            A=A0[pid[:, :, None, None], pid[None, None, :, :]],
            B=np.einsum("prqs->pqrs", self.b[..., 0, 0]).copy(),  # a copy: a view would keep the whole b tensor alive
            D=np.einsum("abA,cdA->abcd", erow, Z2),
            F=np.einsum("qA,prAB,sB->pqrs", Z1, self.phi, Z1),
            Pi=np.einsum("abA,cA->abc", erow, Z1),
            Phi=np.einsum("qA,prA->pqr", Z1, self.phi[..., 0]),
        )


def _tower_inputs(net, X, owner: str) -> np.ndarray:
    """Check the ``net`` and ``X`` arguments of the tower functions; ``X`` as a (N, n_0) float array."""
    if not isinstance(net, ResidualMLP):
        raise ParameterError(f"The 'net' parameter of {owner} must be a ResidualMLP. Got {net!r} instead.")
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2 or X.shape[1] != net.input_dim or not np.all(np.isfinite(X)):
        raise ParameterError(
            f"The 'X' parameter of {owner} must be finite inputs of shape (N, {net.input_dim}). Got shape {np.shape(X)} instead."
        )
    return X


def input_tower(net: ResidualMLP, X, degree: int | None = None, *, closure: bool = False, ntk: bool = False,
                grid_half_width: float = 10.0, grid_panel: float | None = None) -> list[MultiTowerLayer]:
    """Exact O(1/n) statistics of a residual MLP for N inputs (Hermite tower on R^N): K, G1, V, Ω and,
    with ``ntk=True``, Θ, H1, A, B, D, F, Π, Φ.

    Generalises :func:`single_input_tower` to several inputs: the two-neuron coupling
    n Cov(f(z_i), g(z_k)) and the one-neuron correction n(E f(z_i) − ⟨f⟩_K) are tracked as
    coefficient matrices on the multivariate Hermite basis h_A(L⁻¹z) of total degree ≤ ``degree``
    (book App. B; docs/residual.md "The multi-input tower").

    Parameters
    ----------
    net : ResidualMLP
    X : array_like (N, n_0)
        Inputs whose kernel K^(1) has a positive diagonal (it may be rank-deficient: any square root of it
        is used) and whose deeper kernels K^(ℓ ≥ 2) are non-singular.
    degree : int ≥ 4 or None
        Hermite truncation M; None: 40 for N = 1, 20 for N = 2, 12 for N = 3, 8 otherwise (with
        ``ntk=True``: 40, 16, 8, 6).  The neglected couplings fall like γ^M.
    closure : bool
        Keep only what the closed recursions of :func:`next_layer` track (two-neuron degree ≤ 2,
        one-neuron degree ≤ 4; with ``ntk``: :meth:`_NTKTower.truncate_to_closure`); then the tensors
        reproduce the flow's closed recursions (up to the grid quadrature error).
    ntk : bool
        Also the exact NTK sector Θ, H1, A, B, D, F, Π, Φ (docs/residual.md, "The NTK tower"); this is
        what :func:`pdlt.flow` uses for a :class:`ResidualMLP` with ``tower="auto"`` and N ≤ 2.
    grid_half_width, grid_panel : float
        Tensor composite Gauss–Legendre grid on [−w, w]^N in whitened coordinates (8 nodes per
        panel; default panel 0.25 for N ≤ 2, 0.5 for N ≥ 3), used for kinked σ, when ``grid_panel``
        is given, or when Gauss–Hermite does not converge; smooth σ otherwise use a Gauss–Hermite
        tensor grid whose size is chosen per layer (:func:`_tower_grid`).

    Returns
    -------
    list of MultiTowerLayer, layers 1..L.

    Notes
    -----
    With T f(x) = E_u f(γx + ξu), u ~ N(0, G), G = C_b + C_W⟨σσ⟩_K, acting on Hermite coefficients by
    the multivariate Mehler matrix M̃ (cross-covariance R = L⁻¹γK L'⁻ᵀ), S[A, αβ] = ⟨σ_ασ_β h_A⟩_K,
    v = Cov_K(σσ, σσ), P[A, αβ] = ½ξ²⟨∂_α∂_β h_A⟩_{K'}, r = n_ℓ/n_{ℓ−1} and C = C_W (branch):

        Γ  = C M̃ (S + r c S),   W = C² (v + r Sᵀ c S)                     (n Cov(Tf, Ĝ), n Var Ĝ)
        c' = r M̃ c M̃ᵀ + Γ Pᵀ + P Γᵀ + P W Pᵀ
        d' = r M̃ d + r C P Sᵀ d + Σ_αβ ½ξ² D_αβᵀ Γ[:, αβ] + ½ Σ (½ξ²)² (D_αβ D_γδ)[0, :] W_{αβ,γδ}

    (D_αβ: ∂_α∂_β at K' on coefficient vectors).  V = Z_12ᵀ c Z_34, Ω = Z_12ᵀ c Z_3, G1 = Z_12·d.
    The NTK sector (:class:`_NTKTower`) extends the atoms f(z_i) by Ĥ_ii;αβ f(z_i) and tracks the
    off-diagonal n E[Ĥ_ik f g] (φ) and n E[Ĥ_ik Ĥ_ik f g] (b); its recursions are in docs/residual.md.

    Raises
    ------
    ParameterError
        ``net`` is not a ResidualMLP, ``X`` has the wrong shape or gives a singular kernel,
        or ``degree`` < 4.
    NumericalError
        The NTK tower's kernel block disagrees with the kernel tower (an internal consistency check).
    """
    X = _tower_inputs(net, X, "input_tower")
    N = X.shape[0]
    if degree is None:
        M = ({1: 40, 2: 16, 3: 8}.get(N, 6) if ntk else {1: 40, 2: 20, 3: 12}.get(N, 8))
    else:
        M = int(degree)
    if M < 4:
        raise ParameterError(f"The 'degree' parameter of input_tower must be >= 4. Got {degree!r} instead.")
    basis = _Basis(N, M)
    _composite_grid: list = []

    def composite():
        if not _composite_grid:
            _composite_grid.append(_hermite_grid(M, grid_half_width, grid_panel if grid_panel is not None else (0.25 if N <= 2 else 0.5)))
        return _composite_grid[0]

    act = net.activation
    h1 = net.effective_hyperparameters(1)
    K = h1["c_b"] + h1["c_w"] * (X @ X.T) / net.widths[0]
    nb = basis.nb
    c, d = np.zeros((nb, nb)), np.zeros(nb)

    def chol(Kmat, ell):
        try:
            ev = np.linalg.eigvalsh(Kmat)
            if ev[0] <= 1e-12 * max(ev[-1], 1e-300):  # numerically singular: Cholesky may still "succeed"
                if ell == 1 and np.all(np.diag(Kmat) > 1e-12 * max(ev[-1], 1e-300)):
                    # K^(1) of rank r < N (e.g. one-dimensional inputs with C_b = 0): any square root
                    # z = L w works for the tower (projections, Z1, Z2 and Cov(w', w) = γ Ln⁻¹ L use L
                    # only, never L⁻¹); the null directions of w carry nothing
                    lam, V = np.linalg.eigh(Kmat)
                    return V * np.sqrt(np.clip(lam, 0.0, None))
                raise np.linalg.LinAlgError
            return np.linalg.cholesky(Kmat)
        except np.linalg.LinAlgError:
            raise ParameterError(
                f"The 'X' parameter of input_tower must give a non-singular kernel; K^({ell}) is singular "
                f"(eigenvalues {np.linalg.eigvalsh(Kmat).tolist()}). Remove (nearly) coinciding inputs."
            ) from None

    def stats(ell, Kmat, c, d):
        Lm = chol(Kmat, ell)
        Z2, Z1 = basis.quadratic(Lm), basis.linear(Lm)
        V = np.einsum("abk,kl,cdl->abcd", Z2, c, Z2)
        Om = np.einsum("abk,kl,cl->abc", Z2, c, Z1)
        G1 = Z2 @ d
        extra = ntk_state.tensors(Z1, Z2) if ntk_state is not None else {}
        if odd:  # σ odd: the three-point tensors vanish identically (drop the grid's rounding residue)
            Om = np.zeros_like(Om)
            extra.update({k: np.zeros_like(extra[k]) for k in ("Pi", "Phi") if k in extra})
        return MultiTowerLayer(layer=ell, fan_in=net.widths[ell - 1], K=Kmat, G1=G1, V=V, Omega=Om, c=c, d=d,
                               multi_indices=basis.A, **extra)

    odd = odd_tensors_vanish(act)
    ntk_state = _NTKTower(N, nb, h1["lambda_b"] + h1["lambda_w"] * (X @ X.T) / net.widths[0]) if ntk else None
    out = [stats(1, K, c, d)]
    low2 = basis.deg <= 2
    low4 = basis.deg <= 4
    for ell in range(1, net.depth):
        hp = net.hyperparameters(ell + 1)
        g, xi, Cw, Cb = hp["gamma"], hp["xi"], hp["c_w"], hp["c_b"]
        r = net.widths[ell] / net.widths[ell - 1]
        L = chol(K, ell)
        grid = composite() if grid_panel is not None else _tower_grid(act, M, math.sqrt(float(np.linalg.eigvalsh(K)[-1])), composite)
        proj = _project_products(act, L, basis, grid, ((0, 0), (0, 1), (1, 1)) if ntk_state is not None else ((0, 0),))
        S = proj[(0, 0)].reshape(nb, N * N).copy()
        S[0] = 0.0
        E = LayerExpectations(act, K)  # the flow's Gaussian engine for ⟨σσ⟩ and Cov(σσ, σσ)
        mean_ss = E.pair(0, 0)
        v = (E.quad((0, 0, 0, 0)) - _outer(mean_ss, mean_ss)).reshape(N * N, N * N)
        Kn = g**2 * K + xi**2 * (Cb + Cw * mean_ss)
        Ln = chol(Kn, ell + 1)
        Lninv = np.linalg.inv(Ln)
        Rt = (g * Lninv @ L) if g != 0.0 else np.zeros((N, N))  # Cov(w', w) = γ Ln⁻¹ Cov(z, w) = γ Ln⁻¹ L
        Mt = basis.mehler(Rt)
        D2 = basis.second(Lninv)  # (N, N, nb, nb)
        h = 0.5 * xi**2
        P = h * D2[:, :, 0, :].reshape(N * N, nb).T  # P[A, αβ]
        cS = c @ S
        Gam = Cw * Mt @ (S + r * cS)
        W = Cw**2 * (v + r * S.T @ cS)
        cn = r * Mt @ c @ Mt.T + Gam @ P.T + P @ Gam.T + P @ W @ P.T
        dn = r * Mt @ d + r * Cw * P @ (S.T @ d)
        D2f = D2.reshape(N * N, nb, nb)
        dn += h * np.einsum("pkA,kp->A", D2f, Gam)
        DD0 = np.einsum("pk,qkA->pqA", D2f[:, 0, :], D2f)  # (D_p D_q)[0, A]
        dn += 0.5 * h**2 * np.einsum("pqA,pq->A", DD0, W)
        if closure:
            cn[~low2, :] = 0.0
            cn[:, ~low2] = 0.0
            dn[~low4] = 0.0
        if ntk_state is not None:
            cE = ntk_state.step(E=E, proj=proj, Mt=Mt, D1n=basis.first(Lninv), D2n=D2, d=d, dn=dn,
                                r=r, g=g, xi=xi, Cw=Cw, lb=hp["lambda_b"], lw=hp["lambda_w"])
            if closure:
                cE[~low2, :] = 0.0
                cE[:, ~low2] = 0.0
                ntk_state.CE[:nb, :nb] = cE
                ntk_state.truncate_to_closure(basis.deg, dn)
            # the two towers share the Gaussian engine but not its summation order: they agree to rounding of
            # the quadrature (≲ 1e-8 relative; 8e-9 seen with a rank-one K^(1)); a wrong step is O(1) off
            if not np.allclose(cE, cn, rtol=1e-7, atol=1e-10 * max(1.0, float(np.abs(cn).max()))):
                raise NumericalError(f"input_tower: the NTK tower's kernel block disagrees with the kernel tower at layer {ell + 1} "
                                     f"(max difference {float(np.abs(cE - cn).max()):.3g}).")
        c, d, K = cn, dn, Kn
        out.append(stats(ell + 1, K, c, d))
    return out


def subset_tower(net: ResidualMLP, X, size: int = 4, **tower_options) -> list:
    """Exact O(1/n) kernel and NTK statistics for any number of inputs from towers on input subsets.

    Every tensor the flow tracks has at most four input indices, and the statistics of a network on a
    subset of the inputs are the marginal of those on all of them (the network does not know which other
    inputs it is evaluated on).  So a component whose indices take the values D ⊆ {1..N} (|D| ≤ 4) is the
    same in the N-input tower and in the tower of any input subset S ⊇ D.  This runs
    :func:`input_tower` (``ntk=True``) on every ``size``-subset of the inputs — C(N, size) towers, each
    of the cost of an N = ``size`` tower — and takes each component from the first subset (in
    lexicographic order) that contains its indices, so that components related by a symmetry of the
    tensor come from the same tower.  Coinciding inputs are computed once (the towers run on the
    distinct inputs; a repeated input repeats their indices).

    Parameters
    ----------
    net : ResidualMLP
    X : array_like (N, n_0)
        Inputs, as for :func:`input_tower`.
    size : int, 4 (default) or more
        Inputs per subset; 4 is the smallest that covers every component.  With N ≤ ``size`` this is
        :func:`input_tower` itself.
    **tower_options
        Passed to :func:`input_tower` (``degree``, ``grid_panel``, ...).

    Returns
    -------
    list of MultiTowerLayer, layers 1..L (without c, d, multi_indices when assembled from several towers or
    with coinciding inputs).

    Raises
    ------
    ParameterError
        ``size`` < 4, or as :func:`input_tower` for any subset.

    Notes
    -----
    Cost: C(N, 4) four-input towers (depth 4: ≈ 2–3 s each), e.g. 5 for N = 5, 70 for N = 8; memory that
    of one four-input tower (the five-input tower needs ~1 GB and, at depth 4, ≈ 30 s instead of ≈ 9 s).
    The result equals the N-input tower of the same degree to rounding (unit test: 1e-12), since the
    space of polynomials of total degree ≤ M is invariant under the linear maps that restrict and
    re-whiten the inputs; taking each index set from one subset keeps the tensors' symmetries to rounding.
    """
    X = _tower_inputs(net, X, "subset_tower")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 4:
        raise ParameterError(f"The 'size' parameter of subset_tower must be an integer >= 4. Got {size!r} instead.")
    N = X.shape[0]
    # coinciding inputs: the towers run on the distinct ones (a repeated input only repeats indices)
    _, first, inv = np.unique(X, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=int)
    rank[np.argsort(first)] = np.arange(len(first))
    idx = rank[np.ravel(inv)]  # position of each input among the distinct ones, in their original order
    U = X[np.sort(first)]
    Nu = U.shape[0]
    if N <= size and Nu == N:
        return input_tower(net, X, ntk=True, **tower_options)
    subsets = list(itertools.combinations(range(Nu), size)) if Nu > size else [tuple(range(Nu))]
    names = ("K", "Theta", "G1", "H1", "V", "A", "B", "D", "F", "Omega", "Pi", "Phi")  # every one has ≤ 4 input indices
    full: list[dict] = [{} for _ in range(net.depth)]
    # reverse lexicographic order: the last write to a component is by the first subset containing its indices
    for S in reversed(subsets):
        for layer, T in zip(full, input_tower(net, U[list(S)], ntk=True, **tower_options)):
            for name in names:
                part = getattr(T, name)
                if name not in layer:
                    layer[name] = np.zeros((Nu,) * part.ndim)
                layer[name][np.ix_(*[S] * part.ndim)] = part
    if Nu < N:
        full = [{name: arr[np.ix_(*[idx] * arr.ndim)] for name, arr in layer.items()} for layer in full]
    return [MultiTowerLayer(layer=ell, fan_in=net.widths[ell - 1], **full[ell - 1]) for ell in range(1, net.depth + 1)]
