"""Generalisation for nearby inputs: γ-basis kernels, bias and variance of kernel prediction (book §4.3, §10.3).

Two training inputs x± = x₀ ± δx and test inputs x_t = x₀ + t·δx on the same line (t = 0: the
interpolation midpoint, |t| > 1: extrapolation).  At infinite width the fully trained network
is Gaussian with mean m^∞(t) = Θ_{tA} Θ̃⁻¹ y_A and variance Σ^∞(t) = Var(z_t − Θ_{tA} Θ̃⁻¹ z_A)
(z ~ GP(K)), so the generalisation error splits as E[(z_t − y_t)²] = (m^∞ − y_t)² + Σ^∞ (bias² +
variance).  This module writes the 2×2 training-pair kernels in the γ-basis
M = M_[0] γ^[0] + M_[1] γ^[1] + M_[2] γ^[2], follows the components through the layers, and gives
the exact bias/variance together with their leading order in δ (derivation in docs/learning.md,
section "Generalisation near training points").

Convention (stated once, used everywhere): x± = x₀ ± δx, i.e. δx is the *half* separation; with the
book's x± = x₀ ± δx/2 every formula holds with δx → δx/2.  For a symmetric pair matrix M (order
(+, −)): M_[0] = (M₊₊ + M₋₋ + 2M₊₋)/4, M_[1] = (M₊₊ − M₋₋)/2, M_[2] = (M₊₊ + M₋₋ − 2M₊₋)/4.
For smooth σ, M_[0] = O(1), M_[1] = O(δ), M_[2] = O(δ²).

Leading order (smooth kernels).  Let c_pq be the δ-expansion coefficients of Θ along the line,
Θ(x₀ + aδx, x₀ + bδx) = Σ c_pq a^p b^q (c_pq = O(δ^{p+q})), k_pq those of K, and
p = (p₀, p₁) solve [[c00, c10], [c10, c11]] p = (c20, c21).  Then

    m^∞(t)  = ȳ(1 + η) + (Δ/2)(t + ρ),   η = −(1 − t²) p₀ + O(δ³),  ρ = −(1 − t²) p₁ + O(δ²),
    bias    = (ȳ + tΔ/2 − y_t) − (1 − t²)(ȳ p₀ + (Δ/2) p₁)            (ȳ, Δ: label mean, difference)
    Σ^∞(t)  = (1 − t²)² Var(z₂ − p₀ z₀ − p₁ z₁) + O(δ⁵)
            = (1 − t²)² [k22 − 2p₀k20 − 2p₁k21 + p₀²k00 + 2p₀p₁k10 + p₁²k11],

with c00c11 − c10² = det Θ̃ / 4 = Θ_[0]Θ_[2] − Θ_[1]²/4 and the remaining coefficients read off
exactly from the kernel on the three points x₊, x₀, x₋ (see :func:`delta_coefficients`).
"""

from __future__ import annotations

import numbers
import attrs
import numpy as np

from .activation import Activation
from .architecture import Architecture
from .criticality import susceptibilities
from .errors import NumericalError, ParameterError, check_parameter

__all__ = [
    "GAMMA",
    "gamma_components",
    "GammaFlow",
    "gamma_flow",
    "gamma_recursion",
    "delta_coefficients",
    "NearbyInputs",
    "nearby_inputs",
    "depth_profile",
]

#: The γ-basis of symmetric 2×2 pair matrices, shape (3, 2, 2): γ^[0] = [[1, 1], [1, 1]],
#: γ^[1] = [[1, 0], [0, −1]], γ^[2] = [[1, −1], [−1, 1]] (book §4.3).
GAMMA = np.array([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]], [[1.0, -1.0], [-1.0, 1.0]]])
GAMMA.setflags(write=False)

# Θ̃ is treated as singular below this value of det Θ̃ / (4 Θ_[0]²) (relative conditioning ~ 1e-13).
_SINGULAR = 1e-13


def _ro(a) -> np.ndarray:
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


_arr = attrs.cmp_using(eq=np.array_equal)


def gamma_components(M) -> np.ndarray:
    """γ-basis components (M_[0], M_[1], M_[2]) of symmetric 2×2 pair matrices.

    Parameters
    ----------
    M : array_like, shape (..., 2, 2)
        Finite matrices on the pair (x₊, x₋), in that order (e.g. K or Θ of one layer).

    Returns
    -------
    ndarray, shape (..., 3)
        M_[0] = (M₊₊ + M₋₋ + 2M₊₋)/4, M_[1] = (M₊₊ − M₋₋)/2, M_[2] = (M₊₊ + M₋₋ − 2M₊₋)/4, so that
        M = Σ_a M_[a] γ^[a] (:data:`GAMMA`).  M₊₋ is taken as the mean of the two off-diagonal entries.

    Raises
    ------
    ParameterError
        M not of shape (..., 2, 2) or not finite.

    Notes
    -----
    Book §4.3 (kernel) and §8 (NTK): for x± = x₀ ± δx and smooth σ, M_[0] = O(1), M_[1] = O(δ),
    M_[2] = O(δ²).  The same decomposition applies to any (2, 2) pair kernel.

    Examples
    --------
    >>> gamma_components([[3.0, 1.0], [1.0, 1.0]]).tolist()
    [1.5, 1.0, 0.5]
    """
    M = np.asarray(M, dtype=float)
    check_parameter(M.ndim >= 2 and M.shape[-2:] == (2, 2), "M", "gamma_components", "of shape (..., 2, 2)",
                    M.shape)
    check_parameter(bool(np.all(np.isfinite(M))), "M", "gamma_components", "finite", "non-finite entries")
    pp, mm = M[..., 0, 0], M[..., 1, 1]
    pm = 0.5 * (M[..., 0, 1] + M[..., 1, 0])
    return np.stack([(pp + mm + 2 * pm) / 4, (pp - mm) / 2, (pp + mm - 2 * pm) / 4], axis=-1)


def _vector(value, name: str, owner: str, dim: int | None) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(f"The {name!r} parameter of {owner} must be a real vector. Got {value!r} instead.") from None
    check_parameter(v.ndim == 1 and (dim is None or v.shape[0] == dim), name, owner,
                    f"a vector of length input_dim = {dim}", v.shape)
    check_parameter(bool(np.all(np.isfinite(v))), name, owner, "finite", value)
    return v


def _pair_inputs(net, x0, dx, owner: str):
    if not isinstance(net, Architecture):
        raise ParameterError(f"The 'net' parameter of {owner} must be an Architecture (e.g. pdlt.MLP). Got {net!r} instead.")
    n0 = int(net.input_dim)
    x0 = _vector(x0, "x0", owner, n0)
    dx = _vector(dx, "dx", owner, n0)
    check_parameter(bool(np.any(dx != 0)), "dx", owner, "non-zero (x± = x0 ± dx must differ)", dx.tolist())
    return x0, dx


def _flow(net, X):
    from .flow import flow  # late import: flow imports the plugin machinery

    return flow(net, X, order="leading")


# --------------------------------------------------------------------------------------------- flow
@attrs.frozen(kw_only=True)
class GammaFlow:
    """γ-components of K and Θ of the pair x± = x₀ ± δx at every layer, and the midpoint kernels.

    Attributes
    ----------
    K, Theta : ndarray, shape (L, 3)
        Rows ℓ − 1 hold (M_[0], M_[1], M_[2]) of layer ℓ (book numbering 1..L), exact.
    K_mid, Theta_mid : ndarray, shape (L,)
        K^(ℓ)(x₀, x₀) and Θ^(ℓ)(x₀, x₀): the base point of the δ-expansion.
    x0, dx : ndarray, shape (input_dim,)
    """

    K: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    Theta: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    K_mid: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    Theta_mid: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    x0: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    dx: np.ndarray = attrs.field(converter=_ro, eq=_arr)

    @property
    def depth(self) -> int:
        return int(self.K.shape[0])

    def ratio(self, name: str = "K", component: int = 2) -> np.ndarray:
        """M_[a]/M_[0] over depth (shape (L,)), e.g. K_[2]/K_[0] — the dimensionless separation."""
        check_parameter(name in ("K", "Theta"), "name", "GammaFlow.ratio", "'K' or 'Theta'", name)
        check_parameter(component in (1, 2), "component", "GammaFlow.ratio", "1 or 2", component)
        M = getattr(self, name)
        return M[:, component] / M[:, 0]


def gamma_flow(net: Architecture, x0, dx) -> GammaFlow:
    """γ-components of K^(ℓ) and Θ^(ℓ) for the pair x± = x₀ ± δx, ℓ = 1..L (exact, no δ-expansion).

    Parameters
    ----------
    net : Architecture
    x0, dx : array_like, shape (input_dim,)
        Midpoint and half-separation; ``dx`` must be non-zero.

    Returns
    -------
    GammaFlow

    Notes
    -----
    Book §4.3 (K), §8.3 / §9 (Θ).  Computed from ``pdlt.flow(net, [x₊, x₋, x₀], order="leading")``.
    For an MLP with smooth σ the components obey, to leading order in δ,
    K_[1]^(ℓ+1) = χ_∥ K_[1]^(ℓ) and K_[2]^(ℓ+1) = χ_⊥ K_[2]^(ℓ) + h (K_[1]^(ℓ))², h = ½ dχ_⊥/dK
    (:func:`gamma_recursion`); so K_[2]/K_[0] decays or grows like a power of ℓ at criticality and
    exponentially off it.

    Examples
    --------
    >>> import pdlt, numpy as np
    >>> net = pdlt.MLP(input_dim=2, hidden_widths=[8], activation=pdlt.activation("relu"), c_w=2.0)
    >>> g = pdlt.generalization.gamma_flow(net, [1.0, 0.0], [0.0, 0.1])
    >>> g.K[0].round(6).tolist()   # layer 1: C_W x·x'/n0 → K_[0] = 1, K_[1] = 0, K_[2] = C_W|δx|²/n0
    [1.0, 0.0, 0.01]
    """
    x0, dx = _pair_inputs(net, x0, dx, "gamma_flow")
    fl = _flow(net, np.stack([x0 + dx, x0 - dx, x0]))
    K = fl.series("K")
    T = fl.series("Theta")
    return GammaFlow(K=gamma_components(K[:, :2, :2]), Theta=gamma_components(T[:, :2, :2]),
                     K_mid=K[:, 2, 2], Theta_mid=T[:, 2, 2], x0=x0, dx=dx)


def gamma_recursion(activation: Activation, c_w: float, K_mid, K1, K2):
    """Leading-order next-layer γ-components of the MLP kernel: (K_[1]', K_[2]').

    Parameters
    ----------
    activation : Activation
    c_w : float > 0
        C_W of the next layer.
    K_mid : float or array_like > 0
        K(x₀, x₀) of the current layer (the δ-expansion base point).
    K1, K2 : float or array_like
        K_[1], K_[2] of the current layer.

    Returns
    -------
    K1_next, K2_next : float or ndarray
        K_[1]' = χ_∥(K₀₀) K_[1] and K_[2]' = χ_⊥(K₀₀) K_[2] + h(K₀₀) K_[1]², h = ½ dχ_⊥/dK, each with
        a relative error O(δ²).

    Notes
    -----
    Book §4.3 (δ-expansion of the kernel recursion).  Derivation: write z± = z₀ ± ∂z + …; then
    K_[1]' = C_W⟨σ'σ z⟩ K_[1]/K = χ_∥ K_[1] and the perpendicular part picks up
    C_W⟨σ'²(z² − K)⟩/K² · (K_[1]/2)² = h K_[1]².  h is taken by a central difference of χ_⊥ (relative
    step 1e-4, error ~1e-8).  Valid for the MLP map K' = C_b + C_W⟨σσ⟩ (not for residual networks).
    """
    Km = np.asarray(K_mid, dtype=float)
    chi_par, chi_perp = susceptibilities(activation, Km, c_w)
    step = 1e-4 * Km
    h = 0.5 * (susceptibilities(activation, Km + step, c_w)[1] - susceptibilities(activation, Km - step, c_w)[1]) / (2 * step)
    K1 = np.asarray(K1, dtype=float)
    K2 = np.asarray(K2, dtype=float)
    return chi_par * K1, chi_perp * K2 + h * K1**2


# ------------------------------------------------------------------------------- δ-coefficients
def delta_coefficients(M3) -> dict[str, np.ndarray]:
    """δ-expansion coefficients of a kernel along the line, read off its values on (x₊, x₋, x₀).

    Parameters
    ----------
    M3 : array_like, shape (..., 3, 3)
        A symmetric kernel on the inputs (x₊, x₋, x₀) in that order, x± = x₀ ± δx.

    Returns
    -------
    dict of ndarray, each of shape (...)
        Keys ``c00, c10, c11, c20, c21, c22``: the coefficients of M(x₀ + aδx, x₀ + bδx) =
        Σ c_pq a^p b^q (c_pq = c_qp = O(δ^{p+q})), each with a relative error O(δ²):
        c00 = M₀₀, c10 = (M₀₊ − M₀₋)/2, c11 = M_[2], c20 = (M₀₊ + M₀₋)/2 − M₀₀,
        c21 = M_[1]/2 − c10, c22 = M_[0] − (M₀₊ + M₀₋) + M₀₀.

    Notes
    -----
    From M_[0] = c00 + 2c20 + c22 + 2c40 + …, M_[1] = 2(c10 + c30 + c21) + …, M_[2] = c11 + 2c31 + …
    and M₀± = c00 ± c10 + c20 ± c30 + c40 + … (derivation in docs/learning.md, §10.3 section).
    """
    M = np.asarray(M3, dtype=float)
    check_parameter(M.ndim >= 2 and M.shape[-2:] == (3, 3), "M3", "delta_coefficients", "of shape (..., 3, 3)", M.shape)
    g = gamma_components(M[..., :2, :2])
    c00 = M[..., 2, 2]
    s = 0.5 * (M[..., 2, 0] + M[..., 2, 1])
    c10 = 0.5 * (M[..., 2, 0] - M[..., 2, 1])
    return {"c00": c00, "c10": c10, "c11": g[..., 2], "c20": s - c00, "c21": 0.5 * g[..., 1] - c10,
            "c22": g[..., 0] - 2 * s + c00}


# -------------------------------------------------------------------------------- bias/variance
@attrs.frozen(kw_only=True)
class NearbyInputs:
    """Bias and variance of the infinite-width trained network at x_t = x₀ + t·δx, trained on x± = x₀ ± δx.

    Arrays have the shape of ``t`` (scalars for a scalar ``t``).

    Attributes
    ----------
    t : ndarray
        Test positions along the line in units of δx.
    labels : ndarray, shape (2,)
        (y₊, y₋).
    test_label : ndarray
        y_t (default: the linear interpolation ȳ + tΔ/2 of the labels).
    K_gamma, Theta_gamma : ndarray, shape (3,)
        γ-components of K and Θ of the training pair at the chosen layer (exact).
    mean, variance : ndarray
        m^∞(t) = Θ_{tA}Θ̃⁻¹y and Σ^∞(t) from the direct formulas (book §10.2, eq. for the fully trained
        distribution), exact.
    constant_defect, linear_defect : ndarray
        η and ρ with m^∞ = ȳ(1 + η) + (Δ/2)(t + ρ): the predictions for labels (1, 1) and (1, −1)
        minus 1 and t, exact (γ-form: 1 + η = 2α/det Θ̃, t + ρ = 2β/det Θ̃).
    curvature_coefficients : ndarray, shape (2,)
        (p₀, p₁) solving [[c00, c10], [c10, c11]] p = (c20, c21) for Θ's δ-coefficients.
    constant_defect_leading, linear_defect_leading, bias_leading, variance_leading : ndarray
        Leading order in δ: η ≈ −(1 − t²)p₀, ρ ≈ −(1 − t²)p₁, bias ≈ (ȳ + tΔ/2 − y_t) + ȳη + (Δ/2)ρ,
        variance ≈ (1 − t²)² Var(z₂ − p₀z₀ − p₁z₁) with K's δ-coefficients.
    layer : int
        Book numbering of the layer used as output.
    """

    t: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    labels: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    test_label: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    K_gamma: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    Theta_gamma: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    mean: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    variance: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    constant_defect: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    linear_defect: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    curvature_coefficients: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    constant_defect_leading: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    linear_defect_leading: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    bias_leading: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    variance_leading: np.ndarray = attrs.field(converter=_ro, eq=_arr)
    layer: int

    @property
    def bias(self) -> np.ndarray:
        """m^∞(t) − y_t (exact)."""
        return self.mean - self.test_label

    @property
    def error(self) -> np.ndarray:
        """Generalisation error E[(z_t − y_t)²] = bias² + variance (exact)."""
        return self.bias**2 + self.variance


def _analyse(K, T, t, labels, test_label, layer: int) -> NearbyInputs:
    """K, T: (3 + n_t, 3 + n_t) kernels on (x₊, x₋, x₀, x_t...) (t-rows may repeat x±, x₀)."""
    Kg = gamma_components(K[:2, :2])
    Tg = gamma_components(T[:2, :2])
    det = 4 * Tg[0] * Tg[2] - Tg[1] ** 2
    if not det > _SINGULAR * 4 * Tg[0] ** 2:
        raise NumericalError(
            f"Θ̃ of the training pair is numerically singular at layer {layer}: det Θ̃/(4Θ_[0]²) = "
            f"{det / (4 * Tg[0] ** 2):.3g} ≤ {_SINGULAR:g}. Hint: increase |dx| or use a shallower / critical network."
        )
    idx = np.arange(3, K.shape[0])
    Tt = T[idx][:, :2]  # (n_t, 2) test-train NTK
    Kt = K[idx][:, :2]
    s = 0.5 * (Tt[:, 0] + Tt[:, 1])
    d = 0.5 * (Tt[:, 0] - Tt[:, 1])
    # Θ̃⁻¹ = (Θ_[2]γ^[0] − Θ_[1]γ^[1] + Θ_[0]γ^[2]) / det: the test row times Θ̃⁻¹ is (αu + βv)/det,
    # u = (1, 1), v = (1, −1).
    alpha = 2 * s * Tg[2] - d * Tg[1]
    beta = 2 * d * Tg[0] - s * Tg[1]
    m_even, m_odd = 2 * alpha / det, 2 * beta / det
    y = labels
    ybar, half = 0.5 * (y[0] + y[1]), 0.5 * (y[0] - y[1])
    mean = ybar * m_even + half * m_odd
    w = np.stack([m_even + m_odd, m_even - m_odd], axis=-1) / 2  # (n_t, 2) weights on (z₊, z₋)
    Ktt = K[idx, idx]
    variance = Ktt - 2 * np.einsum("ta,ta->t", w, Kt) + np.einsum("ta,ab,tb->t", w, K[:2, :2], w)
    # leading order from the δ-coefficients on (x₊, x₋, x₀)
    c = delta_coefficients(T[:3, :3])
    k = delta_coefficients(K[:3, :3])
    D = c["c00"] * c["c11"] - c["c10"] ** 2
    p0 = (c["c11"] * c["c20"] - c["c10"] * c["c21"]) / D
    p1 = (c["c00"] * c["c21"] - c["c10"] * c["c20"]) / D
    one = 1.0 - t**2
    eta_lo, rho_lo = -one * p0, -one * p1
    bias_lo = (ybar + t * half - test_label) + ybar * eta_lo + half * rho_lo
    resid = (k["c22"] - 2 * p0 * k["c20"] - 2 * p1 * k["c21"] + p0**2 * k["c00"] + 2 * p0 * p1 * k["c10"]
             + p1**2 * k["c11"])
    var_lo = one**2 * resid
    return NearbyInputs(t=t, labels=y, test_label=test_label, K_gamma=Kg, Theta_gamma=Tg, mean=mean,
                        variance=variance, constant_defect=m_even - 1.0, linear_defect=m_odd - t,
                        curvature_coefficients=np.array([p0, p1]), constant_defect_leading=eta_lo,
                        linear_defect_leading=rho_lo, bias_leading=bias_lo, variance_leading=var_lo, layer=layer)


def _prepare(net, x0, dx, t, labels, test_label, owner):
    x0, dx = _pair_inputs(net, x0, dx, owner)
    try:
        tt = np.asarray(t, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(f"The 't' parameter of {owner} must be a real scalar or 1-d array. Got {t!r} instead.") from None
    check_parameter(tt.ndim <= 1 and tt.size >= 1, "t", owner, "a real scalar or non-empty 1-d array", t)
    check_parameter(bool(np.all(np.isfinite(tt))), "t", owner, "finite", t)
    if labels is None:
        raise ParameterError(f"The 'labels' parameter of {owner} must be the pair (y₊, y₋). Got None instead.")
    y = _vector(labels, "labels", owner, 2)
    t1 = np.atleast_1d(tt)
    if test_label is None:
        yt = 0.5 * (y[0] + y[1]) + 0.5 * t1 * (y[0] - y[1])
    else:
        try:
            yt = np.broadcast_to(np.asarray(test_label, dtype=float), t1.shape).copy()
        except (TypeError, ValueError):
            raise ParameterError(
                f"The 'test_label' parameter of {owner} must be a real scalar or an array shaped like t {t1.shape}. "
                f"Got {test_label!r} instead."
            ) from None
        check_parameter(bool(np.all(np.isfinite(yt))), "test_label", owner, "finite", test_label)
    # distinct test points only: a repeated input would make the pair blocks of the flow singular
    base = {1.0: 0, -1.0: 1, 0.0: 2}
    extra = sorted({float(v) for v in t1 if float(v) not in base})
    pos = {**base, **{v: 3 + i for i, v in enumerate(extra)}}
    X = np.stack([x0 + dx, x0 - dx, x0] + [x0 + v * dx for v in extra])
    order = np.array([0, 1, 2] + [pos[float(v)] for v in t1])
    return X, order, t1, y, yt, tt.ndim == 0


def _finish(res: NearbyInputs, scalar: bool) -> NearbyInputs:
    if not scalar:
        return res
    fields = ("t", "test_label", "mean", "variance", "constant_defect", "linear_defect",
              "constant_defect_leading", "linear_defect_leading", "bias_leading", "variance_leading")
    return attrs.evolve(res, **{f: getattr(res, f)[0] for f in fields})


def nearby_inputs(net: Architecture, x0, dx, t, *, labels, test_label=None, layer: int | None = None) -> NearbyInputs:
    """Bias, variance and γ-components for training on x± = x₀ ± δx and testing at x₀ + t·δx (book §10.3).

    Parameters
    ----------
    net : Architecture
    x0, dx : array_like, shape (input_dim,)
        Midpoint and half-separation of the training pair (``dx`` non-zero).
    t : float or array_like of float, shape (n_t,)
        Test positions in units of δx: t = 0 the midpoint (interpolation), |t| > 1 extrapolation,
        t = ±1 the training points.
    labels : array_like, shape (2,)
        (y₊, y₋), one output component (all components behave alike at infinite width).
    test_label : float or array_like, optional
        True y_t; default the linear interpolation ȳ + tΔ/2, so that the bias is the kernel's own
        departure from linear interpolation.
    layer : int, optional
        Book-numbered layer taken as the output (1..L; default L).  At infinite width layer ℓ is the
        output of the network truncated at depth ℓ.

    Returns
    -------
    NearbyInputs
        Exact ``mean``, ``variance``, ``bias``, ``error`` and the leading-order approximations.

    Raises
    ------
    ParameterError
        Bad shapes, non-finite values, ``dx`` = 0, ``labels`` missing, ``layer`` out of range.
    NumericalError
        Θ̃ of the training pair numerically singular (e.g. deep in the ordered phase).

    Notes
    -----
    Infinite-width gradient descent to convergence (book §10.2, algorithm independent), MSE loss.
    Bias² + variance = E[(z_t − y_t)²] (book §10.3).  The leading-order forms assume a smooth kernel
    (δ-expansion); for kinked σ the NTK is not smooth at coinciding inputs (ReLU: Θ_[2] ∝ |δx| beyond
    layer 1), and only the exact fields apply.  Derivation: docs/learning.md, §10.3 section.

    Examples
    --------
    >>> import pdlt, numpy as np
    >>> net = pdlt.MLP(input_dim=2, hidden_widths=[16] * 3, activation=pdlt.activation("tanh")).at_criticality()
    >>> r = pdlt.generalization.nearby_inputs(net, [1.0, 0.5], [0.05, 0.0], 0.0, labels=[0.3, -0.1])
    >>> bool(abs(r.bias - r.bias_leading) < 1e-2 * abs(r.bias)), bool(r.variance > 0)
    (True, True)
    """
    X, order, t1, y, yt, scalar = _prepare(net, x0, dx, t, labels, test_label, "nearby_inputs")
    L = net.depth
    ell = L if layer is None else layer
    check_parameter(isinstance(ell, numbers.Integral) and not isinstance(ell, bool) and 1 <= ell <= L,
                    "layer", "nearby_inputs", f"an integer in 1..{L}", layer)
    s = _flow(net, X)[int(ell) - 1]
    K = s.K[np.ix_(order, order)]
    T = s.Theta[np.ix_(order, order)]
    return _finish(_analyse(K, T, t1, y, yt, int(ell)), scalar)


def depth_profile(net: Architecture, x0, dx, t, *, labels, test_label=None) -> tuple[NearbyInputs, ...]:
    """:func:`nearby_inputs` at every layer ℓ = 1..L from one flow (depth dependence, book §10.3).

    Parameters
    ----------
    net, x0, dx, t, labels, test_label
        As in :func:`nearby_inputs`.

    Returns
    -------
    tuple of NearbyInputs
        Entry ℓ − 1 uses layer ℓ as the output.

    Raises
    ------
    ParameterError, NumericalError
        As :func:`nearby_inputs` (NumericalError names the first layer whose Θ̃ is singular).
    """
    X, order, t1, y, yt, scalar = _prepare(net, x0, dx, t, labels, test_label, "depth_profile")
    fl = _flow(net, X)
    out = []
    for ell, s in enumerate(fl, start=1):
        K = s.K[np.ix_(order, order)]
        T = s.Theta[np.ix_(order, order)]
        out.append(_finish(_analyse(K, T, t1, y, yt, ell), scalar))
    return tuple(out)
