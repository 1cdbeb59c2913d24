"""A validity guide for the 1/n expansion: is this network inside the perturbative regime?

Every prediction of pdlt is a truncated series in the fluctuation size ε = V/(nK²) (the relative
variance of the random metric, ≈ ν L/n at criticality; book ch. 3–5, epilogue ε, Appendix A).
:func:`validity` computes ε for a concrete network and inputs from its own flow, compares the
aspect ratio r = L/n with the optimal aspect ratio r* (:mod:`pdlt.information`), estimates the
size of the neglected O(1/n²) effects, suggests the width that brings them below a target, and
issues a :class:`~pdlt.errors.RegimeWarning` when the network is outside the regime.

Size estimates (docs/information.md, "validity"):

* O(1/n) effects relative to O(1): ε (e.g. E[z⁴]_c / E[z²]² = 3ε for one neuron).
* O(1/n²) effects relative to O(1): ≈ ε²/2.  This is exact for scale-invariant MLPs, where
  Var(Ĝ)/G² = Π_ℓ(1 + ν/n_ℓ) − 1 = ε + ε²/2 + … with ε = Σ_ℓ ν/n_ℓ (init.md §4); for those
  networks the exact product law is reported as well.
* Regime: ε ≤ ε* = 4/(20 + 3n_L) (equivalently r ≤ r*) is "perturbative"; ε* < ε < 1 is
  "beyond-optimal" (the next order is a sizeable fraction of the leading one); ε ≥ 1 is
  "breakdown" (the series does not converge).
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from .architecture import Architecture
from .criticality import criticality
from .errors import ParameterError, PdltError, RegimeWarning, warn
from .flow import flow as _flow
from .flow import validate_inputs
from .information import growth_rate, optimal_epsilon

__all__ = ["ValidityReport", "validity"]

REGIMES = ("perturbative", "beyond-optimal", "breakdown")


@attrs.frozen(kw_only=True)
class ValidityReport:
    """How far a network is inside the regime of the 1/n expansion.

    Attributes
    ----------
    depth : int
        L.
    widths : tuple of int
        (n_0, …, n_L).
    n_out : int
        n_L.
    aspect_ratio : float
        r = L · mean_ℓ(1/n_ℓ) over the hidden layers (= L/n for equal widths).
    nu : float or None
        Growth rate ν (:func:`pdlt.information.growth_rate`; residual: ν(γ)); None when the
        activation has no criticality.
    r_star : float or None
        Optimal aspect ratio 4/(20 + 3n_L)/ν.
    epsilon : float
        max over inputs of V^(L)_αααα/(n_{L−1} K_αα²) from the flow: the relative size of O(1/n)
        effects.
    epsilon_star : float
        4/(20 + 3n_L).
    next_order : float
        Estimated relative size of the neglected O(1/n²) effects, ε²/2.
    next_order_exact : float or None
        Scale-invariant MLPs with C_b = 0: Π(1 + ν/n_ℓ) − 1 − Σ ν/n_ℓ, exact.
    target : float
        Tolerated relative size of neglected effects used for :attr:`suggested_width`.
    suggested_width : int
        Smallest common hidden width with next-order effects ≤ ``target`` (all hidden widths
        scaled together; O(1/n²) effects scale as 1/n²).
    regime : {"perturbative", "beyond-optimal", "breakdown"}
    message : str
    """

    depth: int
    widths: tuple[int, ...]
    n_out: int
    aspect_ratio: float
    nu: float | None
    r_star: float | None
    epsilon: float
    epsilon_star: float
    next_order: float
    next_order_exact: float | None
    target: float
    suggested_width: int
    regime: str
    message: str

    def width_for_accuracy(self, target: float) -> int:
        """Hidden width at which the O(1/n²) effects fall to ``target`` (relative)."""
        if not (isinstance(target, (int, float)) and target > 0):
            raise ParameterError(f"The 'target' parameter of ValidityReport.width_for_accuracy must be > 0. Got {target!r} instead.")
        n_now = _harmonic_width(self.widths)
        size = self.next_order_exact if self.next_order_exact is not None else self.next_order
        return max(1, math.ceil(n_now * math.sqrt(max(size, 0.0) / target)))

    def summary(self) -> str:
        lines = [
            f"depth L = {self.depth}, widths {self.widths}, aspect ratio r = {self.aspect_ratio:.4g}",
            f"fluctuation size ε = V/(nK²) = {self.epsilon:.4g} (ε* = {self.epsilon_star:.4g})",
        ]
        if self.r_star is not None:
            lines.append(f"ν = {self.nu:.4g}, optimal aspect ratio r* = {self.r_star:.4g} (r/r* = {self.aspect_ratio / self.r_star:.3g})")
        nxt = f"next-order (1/n²) effects ≈ {self.next_order:.3g}"
        if self.next_order_exact is not None:
            nxt += f" (exact product law: {self.next_order_exact:.3g})"
        lines += [nxt, f"width for {self.target:g} accuracy: {self.suggested_width}", f"regime: {self.regime} — {self.message}"]
        return "\n".join(lines)


def _harmonic_width(widths) -> float:
    hidden = np.asarray(widths[1:-1], dtype=float)
    if hidden.size == 0:
        return float(widths[0])
    return float(hidden.size / np.sum(1.0 / hidden))


def _representative_gamma(net) -> float:
    g = np.asarray(getattr(net, "gammas", np.zeros(1)), dtype=float)
    nz = g[g != 0]
    if nz.size == 0:
        return 0.0
    return float(np.mean(nz))


def validity(net: Architecture, X=None, *, target: float = 0.01, warn_outside: bool = True) -> ValidityReport:
    """Report how well the 1/n expansion describes ``net`` on inputs ``X``.

    Parameters
    ----------
    net : Architecture
        Any architecture (MLP, residual MLP, …).
    X : array_like (N, n_0), optional
        Inputs; ε is the maximum over them.  Default: one input of ones.
    target : float > 0
        Tolerated relative size of neglected O(1/n²) effects for the suggested width.
    warn_outside : bool
        Emit a :class:`~pdlt.errors.RegimeWarning` unless the regime is "perturbative".

    Returns
    -------
    ValidityReport

    Notes
    -----
    ε is computed from single-input flows (order "full"), one per input, so the cost is
    O(L · N) small flows.  Module docstring for the estimates and thresholds.

    Examples
    --------
    >>> import pdlt, warnings
    >>> net = pdlt.MLP(input_dim=1, hidden_widths=[64] * 3, activation=pdlt.activation("relu"), c_w=2.0)
    >>> rep = validity(net, [[1.0]], warn_outside=False)
    >>> round(rep.epsilon, 4), rep.regime   # ε = 5·3/64
    (0.2344, 'beyond-optimal')
    """
    if not isinstance(net, Architecture):
        raise ParameterError(f"The 'net' parameter of validity must be an Architecture. Got {net!r} instead.")
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and target > 0):
        raise ParameterError(f"The 'target' parameter of validity must be > 0. Got {target!r} instead.")
    X = np.ones((1, net.input_dim)) if X is None else validate_inputs(X, net.input_dim, owner="validity")
    widths = net.widths
    L, n_out = net.depth, widths[-1]
    hidden = np.asarray(widths[1:-1], dtype=float)
    r = float(L * np.mean(1.0 / hidden)) if hidden.size else 0.0

    eps = 0.0
    for x in X:
        out = _flow(net, x[None, :], order="full")[-1]
        eps = max(eps, float(out.V[0, 0, 0, 0]) / (out.fan_in * float(out.K[0, 0]) ** 2))

    nu = r_star = None
    rep = criticality(net.activation)
    gamma = _representative_gamma(net)
    if rep.is_critical and abs(gamma) < 1:
        try:
            nu = growth_rate(net.activation, gamma)
        except PdltError:
            nu = None
    eps_star = optimal_epsilon(n_out)
    if nu is not None and nu > 0:
        r_star = eps_star / nu

    next_order = 0.5 * eps**2
    exact = None
    is_plain = not np.any(np.asarray(getattr(net, "gammas", [0.0])) != 0)
    if rep.universality_class == "scale-invariant" and is_plain and np.all(net.C_b == 0) and hidden.size:
        lead = float(np.sum(rep.nu / hidden))
        exact = float(np.prod(1.0 + rep.nu / hidden) - 1.0 - lead)

    if eps >= 1.0:
        regime = "breakdown"
        msg = (
            f"ε = {eps:.3g} ≥ 1: the 1/n expansion does not converge here; predictions of pdlt are not "
            "meaningful for this network. Widen it or make it shallower"
        )
    elif eps > eps_star:
        regime = "beyond-optimal"
        msg = (
            f"ε = {eps:.3g} exceeds ε* = {eps_star:.3g} (r = {r:.3g}"
            + (f" > r* = {r_star:.3g}" if r_star is not None else "")
            + f"): next-order effects ≈ {(exact if exact is not None else next_order):.2g} of O(1) quantities"
        )
    else:
        regime = "perturbative"
        msg = f"ε = {eps:.3g} ≤ ε* = {eps_star:.3g}: inside the regime of the 1/n expansion"
    size = exact if exact is not None else next_order
    n_now = _harmonic_width(widths)
    suggested = max(1, math.ceil(n_now * math.sqrt(max(size, 0.0) / target)))
    if regime != "perturbative":
        msg += f"; hidden width ≥ {suggested} brings them below {target:g}."
    report = ValidityReport(
        depth=L,
        widths=tuple(int(w) for w in widths),
        n_out=int(n_out),
        aspect_ratio=r,
        nu=nu,
        r_star=r_star,
        epsilon=eps,
        epsilon_star=eps_star,
        next_order=next_order,
        next_order_exact=exact,
        target=float(target),
        suggested_width=suggested,
        regime=regime,
        message=msg,
    )
    if warn_outside and regime != "perturbative":
        warn(f"{type(net).__name__}: {msg}", RegimeWarning, stacklevel=2)
    return report
