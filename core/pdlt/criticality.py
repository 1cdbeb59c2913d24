"""Criticality: universality classes, critical initializations and the equivalence principle.

For any activation σ, :func:`criticality` finds the initialization hyperparameters (C_b, C_W) at
which the single-input kernel recursion K' = C_b + C_W ⟨σ²⟩_K neither explodes nor vanishes
exponentially — χ_∥(K*) = χ_⊥(K*) = 1 at its fixed point K* — and sorts σ into one of the
universality classes of book ch. 5 (theory/init.md §4): *scale-invariant* (ReLU family, every K
is a fixed point), *K* = 0* (tanh, sin, erf, …), *half-stable* (a fixed point K* > 0 reached from
one side only: SWISH, GELU) or *none*.  Classification is numerical and general (no table by
activation name): homogeneity from metadata or from evaluating σ, the K* = 0 class from Taylor
coefficients at 0, and otherwise a root search of χ_∥(K)/χ_⊥(K) = 1 with Gaussian expectations
from :mod:`pdlt.gaussian`.  The report also carries the large-depth coefficients the theory
derives for each class (ch. 5 and ch. 9; for the dNTK/ddNTK ch. 11 and ∞), and
:func:`learning_rate_schedule` implements the learning-rate equivalence principle (book §9; theory/init.md §5).
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Any

import attrs
import numpy as np
from scipy.optimize import brentq

from .activation import Activation
from .errors import NoCriticalityError, NumericalError, ParameterError, check_parameter
from .gaussian import QuadratureRule, expect

__all__ = [
    "CriticalityReport",
    "criticality",
    "susceptibilities",
    "learning_rate_schedule",
    "UNIVERSALITY_CLASSES",
    "SEARCH_GRID",
]

UNIVERSALITY_CLASSES = ("scale-invariant", "K*=0", "half-stable", "none")

#: K grid on which χ_∥/χ_⊥ − 1 is scanned for sign changes (40 points per decade).
SEARCH_GRID = np.logspace(-4.0, 3.0, 281)
SEARCH_GRID.setflags(write=False)

# The root refinement uses twice the default 1-D node count: the default rule already agrees
# with 25-digit mpmath to ~1e-11 at the SWISH/GELU fixed points, the finer one makes the
# bracket's function values smooth well below brentq's tolerance.
_FINE_RULE = QuadratureRule({1: 48, 2: 32, 3: 24, 4: 16})
_TAYLOR_COUNT = 6  # σ_0..σ_5: enough for a_2 (the K³ coefficient of C_W⟨σ²⟩)
_ZERO_TOL = 1e-12


def _opt_float(x) -> float | None:
    return None if x is None else float(x) + 0.0  # + 0.0 turns −0.0 into 0.0


def _opt_tuple(x) -> tuple[float, ...] | None:
    return None if x is None else tuple(float(v) for v in x)


# --------------------------------------------------------------------------------- report
@attrs.frozen(kw_only=True)
class CriticalityReport:
    """Critical initialization of an activation and the large-depth behaviour of its class.

    Attributes
    ----------
    activation : Activation
    universality_class : {"scale-invariant", "K*=0", "half-stable", "none"}
    c_b, c_w : float or None
        Critical bias and weight variances (None when there is no criticality).
    K_star : float or None
        Fixed point K* of the single-input kernel; None for the scale-invariant class, where
        every K is a fixed point.
    chi_parallel, chi_perp : float or None
        χ_∥ and χ_⊥ at K* (scale-invariant: at any K; K* = 0: the limit K → 0⁺), recomputed
        with the engine (Taylor coefficients for K* = 0), so they show how well criticality holds.
    reason : str or None
        Why there is no criticality (class "none").
    slopes : (a₊, a₋) or None
        Scale-invariant class: σ = a₊ z Θ(z) + a₋ z Θ(−z).
    A_2, A_4, nu : float or None
        Scale-invariant: A_2 = (a₊² + a₋²)/2, A_4 = (a₊⁴ + a₋⁴)/2, ν = 3A_4/A_2² − 1, the slope of
        V^(ℓ)/(n K²) ≈ ν(ℓ − 1)/n at equal widths.
    taylor : tuple of float or None
        σ^(p)(0), p = 0..5, when σ is smooth at 0.
    sigma_1, sigma_2, sigma_3, a_1, a_2, b_1, p_perp : float or None
        Small-K expansion (set when σ(0) = 0, σ'(0) ≠ 0): with C_W = 1/σ_1²,
        C_W⟨σ²⟩_K = K + a_1 K² + a_2 K³ + …, χ_⊥ = 1 + b_1 K + …, p_⊥ = b_1/a_1.
    k_leading, k_log : float or None
        K* = 0 class: K^(ℓ) ≈ k_leading/ℓ + k_log · log ℓ/ℓ², k_leading = 1/(−a_1),
        k_log = (a_2 − a_1²)/(−a_1)³ (None when a_2 is unknown).
    v_slope, g1_slope : float or None
        K* = 0 class: V^(ℓ)/(n K^(ℓ)²) → v_slope · ℓ/n and G1^(ℓ)/K^(ℓ) → g1_slope · ℓ.
    dchi_parallel_dK : float or None
        Half-stable class: dχ_∥/dK = C_W g''(K*).
    approached_from : {"below", "above"} or None
        Half-stable class: the side from which the kernel flows into K*.
    notes : tuple of str
        Caveats found during the analysis (other roots, p_⊥ ≠ 1, …).

    Notes
    -----
    Book §5.1 (susceptibilities), §5.2 (scale-invariant), §5.3 (K* = 0 and half-stable
    classes), §5.4 (fluctuations V, G1), §9 (NTK and the learning-rate equivalence principle);
    formulas as restated in theory/init.md §4–§5.  Normalisation: weights have variance
    C_W/n_{ℓ−1}; V and G1 of layer ℓ are normalised by 1/n_{ℓ−1}.
    """

    activation: Activation
    universality_class: str = attrs.field(validator=attrs.validators.in_(UNIVERSALITY_CLASSES))
    c_b: float | None = attrs.field(default=None, converter=_opt_float)
    c_w: float | None = attrs.field(default=None, converter=_opt_float)
    K_star: float | None = attrs.field(default=None, converter=_opt_float)
    chi_parallel: float | None = attrs.field(default=None, converter=_opt_float)
    chi_perp: float | None = attrs.field(default=None, converter=_opt_float)
    reason: str | None = None
    # scale-invariant
    slopes: tuple[float, ...] | None = attrs.field(default=None, converter=_opt_tuple)
    A_2: float | None = attrs.field(default=None, converter=_opt_float)
    A_4: float | None = attrs.field(default=None, converter=_opt_float)
    nu: float | None = attrs.field(default=None, converter=_opt_float)
    # small-K expansion (K* = 0 class; also informative for the others)
    taylor: tuple[float, ...] | None = attrs.field(default=None, converter=_opt_tuple)
    sigma_1: float | None = attrs.field(default=None, converter=_opt_float)
    sigma_2: float | None = attrs.field(default=None, converter=_opt_float)
    sigma_3: float | None = attrs.field(default=None, converter=_opt_float)
    a_1: float | None = attrs.field(default=None, converter=_opt_float)
    a_2: float | None = attrs.field(default=None, converter=_opt_float)
    b_1: float | None = attrs.field(default=None, converter=_opt_float)
    p_perp: float | None = attrs.field(default=None, converter=_opt_float)
    k_leading: float | None = attrs.field(default=None, converter=_opt_float)
    k_log: float | None = attrs.field(default=None, converter=_opt_float)
    v_slope: float | None = attrs.field(default=None, converter=_opt_float)
    g1_slope: float | None = attrs.field(default=None, converter=_opt_float)
    # half-stable
    dchi_parallel_dK: float | None = attrs.field(default=None, converter=_opt_float)
    approached_from: str | None = None
    notes: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    # ----------------------------------------------------------------- derived quantities
    @property
    def is_critical(self) -> bool:
        """False for the class "none"."""
        return self.universality_class != "none"

    def kernel_asymptotic(self, ell):
        """K^(ℓ) ≈ 1/((−a_1)ℓ) + [(a_2 − a_1²)/(−a_1)³] log ℓ/ℓ² (K* = 0 class, book §5.3.3).

        Parameters
        ----------
        ell : float or array_like, ≥ 1
            Layer index ℓ.
        """
        self._require("K*=0", "kernel_asymptotic")
        ell = np.asarray(ell, dtype=float)
        return self.k_leading / ell + (self.k_log or 0.0) * np.log(ell) / ell**2

    def ntk_ratios(self, f_w: float | None = None, *, lambda_b: float = 1.0, lambda_w: float = 1.0) -> dict[str, float]:
        """Large-depth slopes of the normalised NTK fluctuations, per ℓ/n.

        Returns the coefficients c_X with X/(n·norm) ≈ c_X ℓ/n at large ℓ (equal widths) for
        F/(nKΘ), B/(nΘ²), D/(nKΘ), A/(nΘ²), and V/(nK²) (key "V").

        Parameters
        ----------
        f_w : float in [0, 1]
            Scale-invariant class: f_W = λ_W A_2 K/(λ_b + λ_W A_2 K), the weights' share of the
            per-layer NTK contribution.
        lambda_b, lambda_w : float ≥ 0
            K* = 0 class: the rescaled learning rates λ̃_b, λ̃_W of :func:`learning_rate_schedule`.

        Notes
        -----
        Scale-invariant (book §9.2, theory/init.md §5), c ≡ A_4/A_2², ν = 3c − 1:
        F: c/2, B: c/3, D: (ν f_W + c − 1)/2, A: [(c − 1)(1 + f_W) + ν f_W²]/3.
        K* = 0 with p_⊥ = 1 (book §9.3), Θ* = λ̃_b + λ̃_W σ_1²/(−a_1), ρ = λ̃_b/Θ*:
        F: 1/4, B: 1/3, D: −2ρ/9, A: 4ρ²/27.  The theory is stated only for p_⊥ = 1 (odd σ).
        """
        if self.universality_class == "scale-invariant":
            if f_w is None or not 0.0 <= float(f_w) <= 1.0:
                raise ParameterError(
                    f"The 'f_w' parameter of CriticalityReport.ntk_ratios must be in [0, 1] for the scale-invariant "
                    f"class. Got {f_w!r} instead."
                )
            f = float(f_w)
            c = self.A_4 / self.A_2**2
            nu = self.nu
            return {
                "V": nu,
                "F": c / 2,
                "B": c / 3,
                "D": (nu * f + c - 1) / 2,
                "A": ((c - 1) * (1 + f) + nu * f**2) / 3,
            }
        if self.universality_class == "K*=0":
            rho = self._k_star_zero_rho("ntk_ratios", "NTK fluctuation asymptotics", "theory/init.md §5", f_w, lambda_b, lambda_w)
            return {"V": self.v_slope, "F": 0.25, "B": 1.0 / 3.0, "D": -2.0 * rho / 9.0, "A": 4.0 * rho**2 / 27.0}
        raise NotImplementedError(
            f"NTK fluctuation asymptotics are implemented for the scale-invariant and K*=0 classes; "
            f"{self.activation.name!r} is in class {self.universality_class!r}."
        )

    def _k_star_zero_rho(self, method, what, where, f_w, lambda_b, lambda_w) -> float:
        """ρ = λ̃_b/Θ* of the K*=0 class (p_⊥ = 1), after checking the arguments of ``method``."""
        owner = f"CriticalityReport.{method}"
        if f_w is not None:
            raise ParameterError(
                f"The 'f_w' parameter of {owner} applies to the scale-invariant class only; "
                "pass lambda_b and lambda_w for the K*=0 class."
            )
        if abs(self.p_perp - 1.0) > 1e-9:
            raise NotImplementedError(
                f"{what} of the K*=0 class are derived here only for p_⊥ = 1 (odd σ); "
                f"{self.activation.name!r} has p_⊥ = {self.p_perp:.6g} ({where})."
            )
        for name, val in (("lambda_b", lambda_b), ("lambda_w", lambda_w)):
            check_parameter(math.isfinite(val) and val >= 0, name, owner, "finite and >= 0", val)
        theta_star = lambda_b + lambda_w * self.sigma_1**2 / (-self.a_1)
        if theta_star <= 0:
            raise ParameterError(f"lambda_b and lambda_w of {owner} must not both be 0.")
        return lambda_b / theta_star

    def dntk_ratios(self, f_w: float | None = None, *, lambda_b: float = 1.0, lambda_w: float = 1.0) -> dict[str, float]:
        """Large-depth slopes of the dimensionless dNTK and ddNTK statistics, per ℓ/n.

        Returns the coefficients c_X with X ≈ c_X ℓ/n at large ℓ (single input, equal widths,
        at criticality) for P/(nΘ²), Q/(nΘ²) and R K/(nΘ³), S K/(nΘ³), T K/(nΘ³), U K/(nΘ³) (keys
        "P" … "U"; K, Θ, P … U of the same layer ℓ, the tensors normalised by 1/n_{ℓ−1}).

        Parameters
        ----------
        f_w : float in [0, 1]
            Scale-invariant class: f_W = λ_W A_2 K/(λ_b + λ_W A_2 K), as in :meth:`ntk_ratios`.
        lambda_b, lambda_w : float ≥ 0
            K* = 0 class: the rescaled learning rates λ̃_b, λ̃_W of :func:`learning_rate_schedule`
            (λ_b^(ℓ) = λ̃_b/ℓ, λ_W^(ℓ) = λ̃_W for p_⊥ = 1), so that Θ^(ℓ) → Θ*.

        Returns
        -------
        dict of str to float
            K* = 0 class: all six keys.  Scale-invariant class: "P" and "Q"; "R" … "U" only when σ
            has no kink (a₊ = a₋, the linear network), since for a kinked σ they are undefined at
            coinciding inputs (docs/dntk.md, "Kinked activations").

        Notes
        -----
        Book §11.3 (P, Q) and §∞.3 (R, S, T, U); derivation in docs/dntk.md ("Asymptotics at
        criticality") from the single-input recursions of theory/dntk.md §2, with F, B of
        :meth:`ntk_ratios`.  c ≡ A_4/A_2², ρ = λ̃_b/Θ*, Θ* = λ̃_b + λ̃_W σ_1²/(−a_1):

        * scale-invariant (C_b = 0): P = 0 exactly (every source carries σ''σ ∝ zδ(z) = 0), and
          Q' = Q + (λ_W/C_W) F' gives Q/(nΘ²) → (c f_W/6) ℓ/n; for a₊ = a₋ (c = 1, σ'' = 0):
          R = U = 0, S K/(nΘ³) → (f_W/12) ℓ/n, T K/(nΘ³) → (f_W²/12) ℓ/n;
        * K* = 0 with p_⊥ = 1 (odd σ): P → −1/12, Q → −ρ/16, R → −(4 − ρ)/48, S → (1 − ρ)/12,
          T → ρ²/32 (per ℓ/n), and U K/(nΘ³) → 1/(2n): no growth (c_U = 0).

        Subleading terms are O(1) (scale-invariant) and O(log ℓ) (K* = 0) in the ratio; the
        tests compare with the recursions iterated to ℓ = 200–800.
        """
        if self.universality_class == "scale-invariant":
            if f_w is None or not 0.0 <= float(f_w) <= 1.0:
                raise ParameterError(
                    f"The 'f_w' parameter of CriticalityReport.dntk_ratios must be in [0, 1] for the scale-invariant "
                    f"class. Got {f_w!r} instead."
                )
            f = float(f_w)
            c = self.A_4 / self.A_2**2
            out = {"P": 0.0, "Q": c * f / 6.0}
            if self.slopes[0] == self.slopes[1]:
                out.update({"R": 0.0, "S": f / 12.0, "T": f * f / 12.0, "U": 0.0})
            return out
        if self.universality_class == "K*=0":
            rho = self._k_star_zero_rho("dntk_ratios", "dNTK asymptotics", "docs/dntk.md", f_w, lambda_b, lambda_w)
            return {
                "P": -1.0 / 12.0,
                "Q": -rho / 16.0,
                "R": -(4.0 - rho) / 48.0,
                "S": (1.0 - rho) / 12.0,
                "T": rho**2 / 32.0,
                "U": 0.0,
            }
        raise NotImplementedError(
            f"dNTK asymptotics are implemented for the scale-invariant and K*=0 classes; "
            f"{self.activation.name!r} is in class {self.universality_class!r}."
        )

    def _require(self, cls: str, what: str) -> None:
        if self.universality_class != cls:
            raise ParameterError(
                f"CriticalityReport.{what} applies to the {cls!r} class; {self.activation.name!r} is in class "
                f"{self.universality_class!r}."
            )

    # ----------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary (the activation as its ``describe()`` string; tuples as lists)."""
        out: dict[str, Any] = {"activation": self.activation.describe()}
        for a in attrs.fields(type(self)):
            if a.name == "activation":
                continue
            v = getattr(self, a.name)
            out[a.name] = list(v) if isinstance(v, tuple) else v
        return out

    def summary(self) -> str:
        """A few lines of human-readable text."""
        g = lambda x: "?" if x is None else f"{x:.6g}"  # noqa: E731
        lines = [f"{self.activation.describe()}: universality class {self.universality_class!r}"]
        if not self.is_critical:
            lines.append(f"  no criticality: {self.reason}")
        else:
            k = "any K (every K is a fixed point)" if self.K_star is None else f"K* = {g(self.K_star)}"
            lines.append(
                f"  critical point: C_b = {g(self.c_b)}, C_W = {g(self.c_w)}, {k}; "
                f"χ_∥ = {g(self.chi_parallel)}, χ_⊥ = {g(self.chi_perp)}"
            )
        if self.universality_class == "scale-invariant":
            lines.append(
                f"  slopes (a₊, a₋) = ({g(self.slopes[0])}, {g(self.slopes[1])}); A_2 = {g(self.A_2)}, "
                f"A_4 = {g(self.A_4)}; V/(nK²) ≈ ν(ℓ−1)/n with ν = {g(self.nu)}"
            )
        if self.a_1 is not None:
            lines.append(
                f"  σ_1 = {g(self.sigma_1)}, σ_2 = {g(self.sigma_2)}, σ_3 = {g(self.sigma_3)}; a_1 = {g(self.a_1)}, "
                f"a_2 = {g(self.a_2)}, b_1 = {g(self.b_1)}, p_⊥ = {g(self.p_perp)}"
            )
        if self.universality_class == "K*=0":
            lines.append(
                f"  large depth: K ≈ {g(self.k_leading)}/ℓ + ({g(self.k_log)}) log ℓ/ℓ², V/(nK²) ≈ {g(self.v_slope)} ℓ/n, "
                f"G1/K ≈ {g(self.g1_slope)} ℓ, χ_∥ ≈ 1 − 2/ℓ, χ_⊥ ≈ 1 − {g(self.p_perp)}/ℓ"
            )
        if self.universality_class == "half-stable":
            lines.append(f"  dχ_∥/dK at K* = {self.dchi_parallel_dK:.3g}: approached from {self.approached_from} only")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------------- expectations
def _blocks(K) -> np.ndarray:
    K = np.atleast_1d(np.asarray(K, dtype=float))
    return K[:, None, None] * np.ones((1, 2, 2))


def _ex(act, orders, K, insert=None, rule=None) -> np.ndarray:
    # Coinciding 2-slot blocks are merged into one variable by the quadrature: a single input.
    # Closed forms are skipped on purpose: the arc-cosine kernels evaluate arccos(ρ) at ρ = 1 − ε,
    # which costs √ε ≈ 1e-8 relative accuracy at coinciding inputs, while the 1-D quadrature
    # of a single input is accurate to ~1e-15 and cheap.
    with np.errstate(over="ignore", invalid="ignore"):
        return expect(act, orders, _blocks(K), insert=insert, rule=rule, method="quadrature")[0]


def _g(act, K, rule=None):
    """g(K) = ⟨σ²⟩_K."""
    return _ex(act, (0, 0), K, rule=rule)


def _g1(act, K, rule=None):
    """g'(K) = ½⟨∂²(σσ)⟩_K: derivative form when σ'' is a function, else the Hermite insertion."""
    if act.max_derivative >= 2:
        return _ex(act, (1, 1), K, rule=rule) + _ex(act, (0, 2), K, rule=rule)
    return 0.5 * _ex(act, (0, 0), K, insert=(2, 0), rule=rule)


def _g2(act, K, rule=None):
    """g''(K) = ¼⟨∂⁴(σσ)⟩_K = ½⟨σσ''''⟩ + 2⟨σ'σ'''⟩ + 3/2⟨σ''²⟩ (or the Hermite insertion)."""
    if act.max_derivative >= 4:
        return 0.5 * _ex(act, (0, 4), K, rule=rule) + 2.0 * _ex(act, (1, 3), K, rule=rule) + 1.5 * _ex(act, (2, 2), K, rule=rule)
    return 0.25 * _ex(act, (0, 0), K, insert=(4, 0), rule=rule)


def _s11(act, K, rule=None):
    """⟨σ'²⟩_K; raises NumericalError when σ' is a distribution (δ² is not defined)."""
    return _ex(act, (1, 1), K, rule=rule)


def susceptibilities(activation: Activation, K, c_w):
    """Parallel and perpendicular susceptibilities χ_∥(K), χ_⊥(K) of a single input.

    Parameters
    ----------
    activation : Activation
    K : float or array_like of float > 0
        Kernel value(s) K of the layer feeding the activation.
    c_w : float > 0
        Weight variance C_W of the next layer.

    Returns
    -------
    chi_parallel, chi_perp : float or ndarray (shape of K)
        χ_∥ = C_W g'(K) = C_W ⟨σ'² + σσ''⟩_K and χ_⊥ = C_W ⟨σ'²⟩_K.

    Raises
    ------
    ParameterError
        K not positive or c_w not positive.
    NumericalError
        χ_⊥ is not finite (σ' is a δ-function, e.g. the perceptron).

    Notes
    -----
    Book §5.1; theory/init.md §4.  For σ whose σ'' is a distribution (ReLU family) χ_∥ uses the
    integration-by-parts form (C_W/2K²)⟨σσ(z² − K)⟩_K.

    Examples
    --------
    >>> import pdlt
    >>> [round(float(x), 12) for x in susceptibilities(pdlt.activation("relu"), 1.7, 2.0)]
    [1.0, 1.0]
    """
    if not isinstance(activation, Activation):
        raise ParameterError(f"The 'activation' parameter of susceptibilities must be an Activation. Got {activation!r} instead.")
    Karr = np.asarray(K, dtype=float)
    check_parameter(bool(np.all(np.isfinite(Karr)) and np.all(Karr > 0)), "K", "susceptibilities", "finite and > 0", K)
    check_parameter(
        isinstance(c_w, numbers.Real) and math.isfinite(c_w) and c_w > 0, "c_w", "susceptibilities", "finite and > 0", c_w
    )
    flat = Karr.ravel()
    chi_par = (c_w * _g1(activation, flat)).reshape(Karr.shape)
    chi_perp = (c_w * _s11(activation, flat)).reshape(Karr.shape)
    if Karr.ndim == 0:
        return float(chi_par), float(chi_perp)
    return chi_par, chi_perp


# --------------------------------------------------------------------------------- classification
def _homogeneous_slopes(act: Activation) -> tuple[float, float] | None:
    """(a₊, a₋) if σ(cz) = cσ(z) for c > 0 (checked at sample points), else None."""
    meta = act.scale_invariant_slopes
    if meta is not None:
        return (float(meta[0]), float(meta[1]))
    z = np.array([0.37, 1.3, 2.9, 7.1])
    z = np.concatenate([z, -z])
    try:
        with np.errstate(all="ignore"):
            base = np.asarray(act(z), dtype=float)
            a_plus, a_minus = float(act(np.array(1.0))), -float(act(np.array(-1.0)))
            ok = np.all(np.isfinite(base)) and float(act(np.array(0.0))) == 0.0
            for c in (0.5, 3.0):
                ok = ok and np.allclose(np.asarray(act(c * z), dtype=float), c * base, rtol=1e-12, atol=0.0)
            ok = ok and np.allclose(base, np.where(z > 0, a_plus, a_minus) * z, rtol=1e-12, atol=0.0)
    except Exception:  # σ not defined on these points: certainly not homogeneous of degree 1
        return None
    if not ok or (a_plus == 0.0 and a_minus == 0.0):
        return None
    return (a_plus, a_minus)


def _taylor(act: Activation) -> np.ndarray | None:
    try:
        with np.errstate(all="ignore"):
            t = act.taylor_coefficients(_TAYLOR_COUNT)
    except Exception:  # a plugin whose taylor_coefficients cannot handle this count
        return None
    if t is None:
        return None
    t = np.asarray(t, dtype=float)
    if t.size < 4 or not np.all(np.isfinite(t[:4])):
        return None
    return t


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def _gaussian_series(coefs: np.ndarray) -> np.ndarray:
    """Power series in K of ⟨P(z)⟩_K for P(z) = Σ coefs[n] zⁿ: ⟨z^{2m}⟩ = (2m − 1)!! K^m."""
    return np.array([coefs[2 * m] * _double_factorial(2 * m - 1) for m in range((len(coefs) + 1) // 2)])


def _small_k_expansion(t: np.ndarray) -> dict[str, float] | None:
    """a_1, a_2, b_1, p_⊥ and the V-source coefficient from Taylor coefficients σ_p = t[p]."""
    if abs(t[0]) > _ZERO_TOL * max(1.0, abs(t[1])) or abs(t[1]) <= _ZERO_TOL:
        return None
    n = len(t)
    s = np.array([t[p] / math.factorial(p) for p in range(n)])  # σ = Σ s_p z^p
    ds = np.array([t[p + 1] / math.factorial(p) for p in range(n - 1)])  # σ' = Σ ds_p z^p
    cw = 1.0 / t[1] ** 2
    # σ² is known through z^n when σ_0 = 0 (its z^n coefficient pairs σ_1 with σ_{n−1}).
    g = cw * _gaussian_series(np.convolve(s, s)[: n + 1])  # C_W⟨σ²⟩ = K + a_1 K² + a_2 K³ …
    chi_perp = cw * _gaussian_series(np.convolve(ds, ds)[: n - 1])  # C_W⟨σ'²⟩ = 1 + b_1 K + …
    s2 = np.convolve(s, s)[:5]
    # V source C_W²(⟨σ⁴⟩ − ⟨σ²⟩²) = m_2 K² + …; σ ≈ σ_1 z gives m_2 = 3 − 1 = 2.
    m_2 = cw**2 * (3.0 * np.convolve(s2, s2)[4] - s2[2] ** 2)
    a_1 = g[2]
    a_2 = g[3] if len(g) > 3 and np.isfinite(g[3]) else math.nan
    b_1 = chi_perp[1]
    return {
        "sigma_1": t[1],
        "sigma_2": t[2],
        "sigma_3": t[3],
        "a_1": a_1,
        "a_2": a_2,
        "b_1": b_1,
        "p_perp": b_1 / a_1 if a_1 != 0 else math.nan,
        "m_2": m_2,
        "c_w": cw,
    }


def _safe_grid(act: Activation, Ks: np.ndarray, fn) -> np.ndarray:
    """fn on the whole grid, or point by point (NaN where the engine fails) if the batch fails."""
    try:
        return np.asarray(fn(act, Ks), dtype=float)
    except NumericalError:
        out = np.full(Ks.shape, math.nan)
        for i, k in enumerate(Ks):
            try:
                out[i] = float(fn(act, np.array([k]))[0])
            except NumericalError:
                pass
        return out


def _fmt_range(lo: float, hi: float) -> str:
    return f"[{lo:.6g}, {hi:.6g}]"


@lru_cache(maxsize=256)
def _criticality_cached(activation: Activation) -> CriticalityReport:
    return _analyse(activation)


def criticality(activation: Activation) -> CriticalityReport:
    """Classify an activation and find its critical initialization (C_b, C_W).

    Parameters
    ----------
    activation : Activation
        Any activation; nothing is looked up by name.

    Returns
    -------
    CriticalityReport
        Class "none" (with :attr:`CriticalityReport.reason`) when no critical point exists;
        :class:`NoCriticalityError` is raised only by callers that need one
        (``Architecture.at_criticality``, :func:`learning_rate_schedule`).

    Notes
    -----
    Decision procedure (book §5.2–§5.3; theory/init.md §4):

    1. Scale-invariant if σ declares slopes (a₊, a₋) or is numerically homogeneous of degree 1:
       C_b = 0, C_W = 1/A_2, χ_∥ = χ_⊥ = C_W A_2 at every K.
    2. K* = 0 if σ(0) = 0, σ'(0) ≠ 0 and a_1 = σ_3/σ_1 + ¾(σ_2/σ_1)² < 0 (Taylor coefficients):
       C_b = 0, C_W = 1/σ_1².
    3. Otherwise the roots of χ_∥(K)/χ_⊥(K) = 1 (C_W cancels) are bracketed on
       :data:`SEARCH_GRID` (K ∈ [1e-4, 1e3]) and refined with Brent's method to |ΔK| ≲ 1e-12 K;
       then C_W = 1/⟨σ'²⟩_{K*} and C_b = K* − C_W⟨σ²⟩_{K*}, which must be ≥ 0.  The smallest
       admissible root is reported ("half-stable": the fixed point is marginal, and the sign
       of dχ_∥/dK = C_W g''(K*) decides from which side the kernel flows into it).
    4. Otherwise "none".  Roots where the ratio touches 1 without crossing, or outside the
       grid, are not found.

    Examples
    --------
    >>> import pdlt
    >>> r = criticality(pdlt.activation("gelu"))
    >>> r.universality_class, round(r.K_star, 5), round(r.c_w, 5), round(r.c_b, 6)
    ('half-stable', 3.56155, 1.98306, 0.172922)
    """
    if not isinstance(activation, Activation):
        raise ParameterError(
            f"The 'activation' parameter of criticality must be an Activation (e.g. pdlt.activation('tanh')). "
            f"Got {activation!r} instead."
        )
    try:
        hash(activation)
    except TypeError:  # an unhashable third-party activation: no caching
        return _analyse(activation)
    return _criticality_cached(activation)


def _analyse(act: Activation) -> CriticalityReport:
    slopes = _homogeneous_slopes(act)
    if slopes is not None:
        return _scale_invariant(act, slopes)

    t = _taylor(act)
    small = _small_k_expansion(t) if t is not None else None
    taylor_fields: dict[str, Any] = {}
    if small is not None:
        taylor_fields = {k: small[k] for k in ("sigma_1", "sigma_2", "sigma_3", "a_1", "b_1")}
        taylor_fields["a_2"] = None if math.isnan(small["a_2"]) else small["a_2"]
        taylor_fields["p_perp"] = None if math.isnan(small["p_perp"]) else small["p_perp"]
    if t is not None:
        taylor_fields["taylor"] = tuple(t)

    if small is not None and small["a_1"] < -_ZERO_TOL:
        return _k_star_zero(act, small, taylor_fields)

    return _root_search(act, t, small, taylor_fields)


def _scale_invariant(act: Activation, slopes: tuple[float, float]) -> CriticalityReport:
    a_p, a_m = slopes
    A_2 = (a_p**2 + a_m**2) / 2
    A_4 = (a_p**4 + a_m**4) / 2
    c_w = 1.0 / A_2
    # χ's are recomputed with the engine (at K = 1; both are K-independent by homogeneity).
    chi_par, chi_perp = susceptibilities(act, 1.0, c_w)
    return CriticalityReport(
        activation=act,
        universality_class="scale-invariant",
        c_b=0.0,
        c_w=c_w,
        K_star=None,
        chi_parallel=chi_par,
        chi_perp=chi_perp,
        slopes=slopes,
        A_2=A_2,
        A_4=A_4,
        nu=3 * A_4 / A_2**2 - 1,
        notes=("every K is a fixed point (C_b = 0); K stays at its first-layer value",),
    )


def _k_star_zero(act: Activation, small: dict, taylor_fields: dict) -> CriticalityReport:
    t = np.asarray(taylor_fields["taylor"])
    cw = small["c_w"]
    kappa = -small["a_1"]
    a_2 = small["a_2"]
    # 1/K' = 1/K + κ + (κ² − a_2)K + …  ⇒  1/K^(ℓ) = κℓ + ((κ² − a_2)/κ) log ℓ + …
    k_log = (a_2 - kappa**2) / kappa**3 if not math.isnan(a_2) else None
    # With K ≈ 1/(κℓ) and χ_∥ ≈ 1 − 2/ℓ (universal: 2a_1 K = −2/ℓ), V' = χ_∥² V + m_2 K² gives
    # V ≈ m_2/(3κ²ℓ), and G1' = χ_∥ G1 + ½C_W g'' V with C_W g'' ≈ 2a_1 gives G1 ≈ −m_2/(6κ).
    v_slope = small["m_2"] / 3.0
    g1_slope = -small["m_2"] / 6.0
    notes = []
    if abs(small["p_perp"] - 1.0) > 1e-9:
        notes.append(
            f"p_⊥ = {small['p_perp']:.6g} ≠ 1 (σ not odd): χ_⊥ ≈ 1 − p_⊥/ℓ; the NTK fluctuation asymptotics of "
            "theory/init.md §5 assume p_⊥ = 1"
        )
    if math.isnan(a_2):
        notes.append("σ^(4)(0) or σ^(5)(0) unavailable: a_2 and the log ℓ/ℓ² coefficient of K^(ℓ) are unknown")
    return CriticalityReport(
        activation=act,
        universality_class="K*=0",
        c_b=0.0,
        c_w=cw,
        K_star=0.0,
        # K → 0⁺ limits from the Taylor series: C_W(σ_1² + σ_0σ_2) and C_W σ_1²
        chi_parallel=cw * (t[1] ** 2 + t[0] * t[2]),
        chi_perp=cw * t[1] ** 2,
        k_leading=1.0 / kappa,
        k_log=k_log,
        v_slope=v_slope,
        g1_slope=g1_slope,
        notes=tuple(notes),
        **taylor_fields,
    )


def _ratio_minus_one(act: Activation, K: float, rule=None) -> float:
    return float(_g1(act, np.array([K]), rule)[0] / _s11(act, np.array([K]), rule)[0]) - 1.0


def _root_search(act: Activation, t, small, taylor_fields: dict) -> CriticalityReport:
    def none(reason: str, notes=()) -> CriticalityReport:
        return CriticalityReport(activation=act, universality_class="none", reason=reason, notes=tuple(notes), **taylor_fields)

    prefix = []
    try:
        with np.errstate(all="ignore"):
            sigma_0 = float(t[0]) if t is not None else float(act(np.array(0.0)))
    except Exception:  # σ(0) undefined: say nothing about it
        sigma_0 = 0.0
    if math.isfinite(sigma_0) and abs(sigma_0) > _ZERO_TOL:
        prefix.append(f"σ(0) = {sigma_0:.6g} ≠ 0, so K* = 0 is not a fixed point")
    elif small is None and t is not None and abs(t[1]) <= _ZERO_TOL:
        prefix.append("σ(0) = σ'(0) = 0, so the K* = 0 criticality C_W = 1/σ'(0)² does not exist")
    elif small is not None:
        prefix.append(f"a_1 = {small['a_1']:.6g} ≥ 0, so K* = 0 is not approached from K > 0")

    Ks = np.asarray(SEARCH_GRID)
    s11 = _safe_grid(act, Ks, _s11)
    if not np.any(np.isfinite(s11)):
        return none(
            "; ".join(prefix + ["χ_⊥ = C_W⟨σ'²⟩ is not finite at any K (σ' is a distribution, e.g. a δ-function)"])
        )
    g1 = _safe_grid(act, Ks, _g1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = g1 / s11 - 1.0
    ok = np.isfinite(f)
    Kv, fv = Ks[ok], f[ok]
    lo, hi = 1.0 + float(fv.min()), 1.0 + float(fv.max())
    roots = []
    for i in np.nonzero(np.sign(fv[:-1]) * np.sign(fv[1:]) <= 0)[0]:
        a, b = Kv[i], Kv[i + 1]
        if fv[i] == 0.0:
            roots.append(a)
            continue
        if fv[i + 1] == 0.0:
            continue  # picked up as the left end of the next bracket
        func = lambda K: _ratio_minus_one(act, K, _FINE_RULE)  # noqa: E731
        fa, fb = func(a), func(b)
        if np.sign(fa) == np.sign(fb):  # sign change was grid-rule noise
            continue
        roots.append(brentq(func, a, b, xtol=1e-14, rtol=1e-13, maxiter=200))

    admissible = []
    rejected = []
    for K in roots:
        Kb = np.array([K])
        s = float(_s11(act, Kb, _FINE_RULE)[0])
        c_w = 1.0 / s
        c_b = K - c_w * float(_g(act, Kb, _FINE_RULE)[0])
        if c_b < -1e-12 * max(1.0, K):
            rejected.append(f"χ_∥ = χ_⊥ at K = {K:.6g} would need C_b = {c_b:.6g} < 0")
        else:
            admissible.append((K, c_w, max(c_b, 0.0)))

    if not admissible:
        where = f"K ∈ [{Ks[0]:.0e}, {Ks[-1]:.0e}]"
        if roots:
            ratio = "; ".join(rejected)
        elif lo > 1.0:
            ratio = f"χ_∥/χ_⊥ > 1 for all {where} (range {_fmt_range(lo, hi)})"
        elif hi < 1.0:
            ratio = f"χ_∥/χ_⊥ < 1 for all {where} (range {_fmt_range(lo, hi)})"
        else:
            ratio = f"χ_∥/χ_⊥ ∈ {_fmt_range(lo, hi)} never crosses 1 on {where}"
        return none("; ".join(prefix + [ratio]))

    K, c_w, c_b = admissible[0]
    Kb = np.array([K])
    chi_par = c_w * float(_g1(act, Kb, _FINE_RULE)[0])
    chi_perp = c_w * float(_s11(act, Kb, _FINE_RULE)[0])
    dchi = c_w * float(_g2(act, Kb, _FINE_RULE)[0])
    # ΔK' = ΔK + ½ dχ_∥/dK ΔK²: the quadratic term shrinks |ΔK| only on the side where
    # ΔK and dχ_∥/dK have opposite signs.
    side = "below" if dchi > 0 else "above"
    notes = [f"other critical point at K* = {k:.6g} (C_W = {w:.6g}, C_b = {b:.6g})" for k, w, b in admissible[1:]]
    notes += [f"rejected: {r}" for r in rejected]
    if prefix:
        notes.append(prefix[0])
    return CriticalityReport(
        activation=act,
        universality_class="half-stable",
        c_b=c_b,
        c_w=c_w,
        K_star=K,
        chi_parallel=chi_par,
        chi_perp=chi_perp,
        dchi_parallel_dK=dchi,
        approached_from=side,
        notes=tuple(notes),
        **taylor_fields,
    )


# --------------------------------------------------------------------------------- learning rates
def learning_rate_schedule(activation_or_report, depth: int, lambda_b: float = 1.0, lambda_w: float = 1.0):
    """Per-layer learning rates (λ_b^(ℓ), λ_W^(ℓ)), ℓ = 1..L, from the equivalence principle.

    Each layer then contributes equally (∝ 1/L) to the output NTK Θ^(L) at criticality.

    Parameters
    ----------
    activation_or_report : Activation or CriticalityReport
    depth : int ≥ 1
        L, the number of layers.
    lambda_b, lambda_w : float ≥ 0
        Rescaled, depth-independent learning rates λ̃_b, λ̃_W.

    Returns
    -------
    lambda_b, lambda_w : ndarray, shape (L,)
        Read-only arrays, entry ℓ−1 for layer ℓ; pass them to ``net.evolve(lambda_b=tuple(...),
        lambda_w=tuple(...))``.

    Raises
    ------
    NoCriticalityError
        The activation has no critical point.

    Notes
    -----
    Book §9 (theory/init.md §5):

    * scale-invariant: λ_b^(ℓ) = λ̃_b/L, λ_W^(ℓ) = λ̃_W/L, so Θ^(L) = λ̃_b + λ̃_W A_2 K;
    * K* = 0: λ_b^(ℓ) = λ̃_b ℓ^{−p_⊥} L^{p_⊥−1}, λ_W^(ℓ) = λ̃_W (L/ℓ)^{p_⊥−1}; layer ℓ's
      contribution is multiplied by Π χ_⊥ ≈ (ℓ/L)^{p_⊥} on its way to layer L;
    * half-stable: at K = K* the Θ recursion Θ' = λ_b + λ_W g(K*) + Θ is that of the
      scale-invariant class, so λ/L again (derived here, not stated in init.md).

    Examples
    --------
    >>> import pdlt
    >>> lb, lw = learning_rate_schedule(pdlt.activation("relu"), 4)
    >>> lb.tolist(), lw.tolist()
    ([0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25])
    """
    report = activation_or_report if isinstance(activation_or_report, CriticalityReport) else criticality(activation_or_report)
    ok = isinstance(depth, numbers.Integral) and not isinstance(depth, bool) and depth >= 1
    check_parameter(ok, "depth", "learning_rate_schedule", "a positive integer", depth)
    for name, val in (("lambda_b", lambda_b), ("lambda_w", lambda_w)):
        ok = isinstance(val, numbers.Real) and not isinstance(val, bool) and math.isfinite(val) and val >= 0
        check_parameter(ok, name, "learning_rate_schedule", "finite and >= 0", val)
    if not report.is_critical:
        raise NoCriticalityError(
            f"Activation {report.activation.name!r} admits no critical initialization, so the learning-rate "
            f"equivalence principle does not apply: {report.reason}."
        )
    L = int(depth)
    ell = np.arange(1, L + 1, dtype=float)
    if report.universality_class == "K*=0":
        p = report.p_perp
        lb = lambda_b * ell ** (-p) * float(L) ** (p - 1)
        lw = lambda_w * (L / ell) ** (p - 1)
    else:
        lb = np.full(L, lambda_b / L)
        lw = np.full(L, lambda_w / L)
    lb.setflags(write=False)
    lw.setflags(write=False)
    return lb, lw
