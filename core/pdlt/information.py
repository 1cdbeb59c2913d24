"""Information theory of the nearly-Gaussian output distribution and the optimal aspect ratio.

Book Appendix A (theory/training.md §6).  At width n the outputs z_{i;α} (i = 1..n_L neurons,
α = 1..N inputs) are Gaussian with metric K + G1/n up to a connected four-point function
V/n; this module turns those statistics into entropies and mutual informations, order by order
in 1/n, and derives from them the aspect ratio r* = L/n at which the inter-neuron mutual
information is largest.

Derivation (docs/information.md).  For one input the output distribution of an MLP is an
exact Gaussian *scale mixture*: given the penultimate layer the n_L outputs are i.i.d.
N(0, Ĝ) with the random metric Ĝ (theory/init.md §0).  Writing Ĝ = G(1 + δ) and
ε ≡ Var(Ĝ)/G² = V/(nK²) + O(1/n²), the density is p = φ_G(1 + Σ_k E[δ^k]/k! · h_k) with h_k =
G^k ∂_G^k φ_G/φ_G, and S = S_G − ½E[η²] + ⅙E[η³] + … .  To O(ε³) the entropy of m neurons is

    S(m) = (m/2) log(2πeG) − m(m+2) ε²/16 + m(m+2)(m+8) ε³/48 + O(ε⁴)

(the third and fourth cumulants of δ — the six- and eight-point vertices — drop out at this
order).  Hence the mutual information between two disjoint groups of a and b output neurons,

    I(A;B) = S(a) + S(b) − S(a+b) = (ab/48) ε² [6 − (3(a+b) + 20) ε] + O(ε⁴),

first appears at O(1/n²) and, truncated at this order, peaks at ε* = 4/(20 + 3 n_L) with
n_L = a + b.  With ε ≈ ν L/n (ν = growth rate of V/K² per layer) this is the book's
r* = 4/(20 + 3n_L) · 1/ν.  (The total correlation m S(1) − S(m) instead peaks at ε = 2/(m + 11).)
The exact mixture information keeps growing with ε (checked numerically with
:func:`scale_mixture_mutual_information`); r* is where the 1/n expansion's next order
cancels a third of the leading one — the edge of the perturbative regime, as the book reads it.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import attrs
import numpy as np
from scipy.special import gammaln, roots_genlaguerre, roots_hermite

from .activation import Activation
from .criticality import criticality
from .errors import NoCriticalityError, ParameterError, check_parameter

__all__ = [
    "gaussian_entropy",
    "EntropyExpansion",
    "output_entropy",
    "input_mutual_information",
    "neuron_mutual_information",
    "neuron_mutual_information_single_input",
    "scale_mixture_entropy",
    "scale_mixture_mutual_information",
    "lognormal_scales",
    "hermite_projections",
    "growth_rate",
    "optimal_epsilon",
    "optimal_aspect_ratio",
]


# ---------------------------------------------------------------------------------------------
# Gaussian pieces


def _spd(M, name: str, owner: str) -> np.ndarray:
    M = np.atleast_2d(np.asarray(M, dtype=float))
    if M.ndim != 2 or M.shape[0] != M.shape[1] or not np.all(np.isfinite(M)):
        raise ParameterError(f"The {name!r} parameter of {owner} must be a finite square matrix. Got shape {M.shape} instead.")
    M = 0.5 * (M + M.T)
    if np.linalg.eigvalsh(M)[0] <= 0:
        raise ParameterError(
            f"The {name!r} parameter of {owner} must be positive definite. Got smallest eigenvalue "
            f"{np.linalg.eigvalsh(M)[0]:.3g} instead. Hint: drop duplicated inputs."
        )
    return M


def _count(value, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ParameterError(f"The {name!r} parameter of {owner} must be a positive integer. Got {value!r} instead.")
    return int(value)


def gaussian_entropy(cov, n_out: int = 1) -> float:
    """Entropy (nats) of n_out independent N(0, cov) vectors: (n_out/2) log det(2πe cov).

    Parameters
    ----------
    cov : array_like (N, N), positive definite
    n_out : int
        Number of i.i.d. copies (output neurons).

    Examples
    --------
    >>> round(gaussian_entropy([[1.0]]), 6)  # ½ log(2πe)
    1.418939
    """
    C = _spd(cov, "cov", "gaussian_entropy")
    n_out = _count(n_out, "n_out", "gaussian_entropy")
    sign, logdet = np.linalg.slogdet(2 * math.pi * math.e * C)
    return 0.5 * n_out * float(logdet)


def _raised_norm(V: np.ndarray, K: np.ndarray) -> tuple[float, float]:
    """(Σ V_(12)(34) V^(12)(34), Σ V_(12)(34) V^(13)(24)) with indices raised by K⁻¹."""
    Ki = np.linalg.inv(K)
    Vr = np.einsum("ae,bf,cg,dh,efgh->abcd", Ki, Ki, Ki, Ki, V, optimize=True)
    return float(np.sum(V * Vr)), float(np.sum(V * Vr.transpose(0, 2, 1, 3)))


@attrs.frozen(kw_only=True)
class EntropyExpansion:
    """Entropy of the output distribution (N inputs × n_L neurons), term by term in 1/n.

    Attributes
    ----------
    gaussian : float
        (n_L/2) log det(2πe K): infinite width.
    metric : float
        (n_L/2n) tr(K⁻¹ G1): the O(1/n) term (NLO metric).
    non_gaussian : float
        −(n_L² ‖V‖² + 2 n_L ⟨V, V⟩ₓ)/(16 n²): the leading effect of the four-point vertex,
        O(1/n²).  The O(1/n²) metric correction G2 is not known and is not included, so the
        O(1/n²) part of the *entropy* is incomplete; mutual informations between groups of
        neurons need only this term (G2 is per-neuron Gaussian and cancels).
    width : int
        n = n_{L−1}, the fan-in the 1/n tensors are normalised by.
    n_out : int
    """

    gaussian: float
    metric: float
    non_gaussian: float
    width: int
    n_out: int

    @property
    def to_first_order(self) -> float:
        """Gaussian + O(1/n) terms."""
        return self.gaussian + self.metric

    @property
    def total(self) -> float:
        """All computed terms (see :attr:`non_gaussian` for what is missing at O(1/n²))."""
        return self.gaussian + self.metric + self.non_gaussian


def _stats_parts(stats, owner: str):
    for name in ("K", "V", "G1"):
        if getattr(stats, name, None) is None:
            raise ParameterError(
                f"The 'stats' parameter of {owner} must carry {name} (compute the flow with order='full'). Got None instead."
            )
    return np.asarray(stats.K, dtype=float), np.asarray(stats.G1, dtype=float), np.asarray(stats.V, dtype=float), int(stats.fan_in)


def output_entropy(stats, n_out: int | None = None) -> EntropyExpansion:
    """Entropy of the outputs over the inputs of ``stats`` (e.g. ``pdlt.flow(net, X)[-1]``).

    Parameters
    ----------
    stats : pdlt.Statistics
        Output-layer statistics with K, G1, V (order="full").
    n_out : int, optional
        Number of output neurons (default: ``stats.width``).

    Returns
    -------
    EntropyExpansion

    Notes
    -----
    Book Appendix A.1–A.3.  S = ½ log det(2πe Σ) for the exact covariance Σ = K + G1/n + O(1/n²)
    minus the negentropy (1/48) Σ κ₄ κ₄ (κ₄ raised with K⁻¹) of the connected four-point function
    κ₄ = (1/n)[δδV + δδV + δδV]; contracting the neural Kronecker deltas gives
    (1/16n²)(n_L² Σ V_(12)(34)V^(12)(34) + 2 n_L Σ V_(12)(34)V^(13)(24)).
    """
    K, G1, V, n = _stats_parts(stats, "output_entropy")
    n_out = int(stats.width) if n_out is None else _count(n_out, "n_out", "output_entropy")
    _spd(K, "stats.K", "output_entropy")
    g = gaussian_entropy(K, n_out)
    metric = 0.5 * n_out * float(np.trace(np.linalg.solve(K, G1))) / n
    v2, v2x = _raised_norm(V, K)
    non_g = -(n_out**2 * v2 + 2 * n_out * v2x) / (16.0 * n**2)
    return EntropyExpansion(gaussian=g, metric=metric, non_gaussian=non_g, width=n, n_out=n_out)


def input_mutual_information(stats, A: Sequence[int], B: Sequence[int], n_out: int | None = None) -> tuple[float, float]:
    """Mutual information between the outputs on input sets A and B, to O(1/n).

    Parameters
    ----------
    stats : pdlt.Statistics
        Output-layer statistics (K; G1 for the 1/n term).
    A, B : sequences of int
        Disjoint input indices.
    n_out : int, optional
        Output neurons (default ``stats.width``).

    Returns
    -------
    (leading, correction) : floats
        I = leading + correction + O(1/n²): the Gaussian mutual information with K, and its
        first-order change when K → K + G1/n.  For two inputs,
        leading = −(n_L/2) log(1 − ρ²), ρ = K_12/√(K_11K_22) (book A.2; critical χ_⊥ = 1 keeps
        it finite and non-zero at large depth).
    """
    A = [int(a) for a in A]
    B = [int(b) for b in B]
    if not A or not B or set(A) & set(B):
        raise ParameterError(f"The 'A' and 'B' parameters of input_mutual_information must be non-empty and disjoint. Got {A!r}, {B!r} instead.")
    K = np.asarray(stats.K, dtype=float)
    n_out = int(stats.width) if n_out is None else _count(n_out, "n_out", "input_mutual_information")

    def mi(M):
        AB = A + B
        return 0.5 * n_out * (
            np.linalg.slogdet(M[np.ix_(A, A)])[1] + np.linalg.slogdet(M[np.ix_(B, B)])[1] - np.linalg.slogdet(M[np.ix_(AB, AB)])[1]
        )

    _spd(K[np.ix_(A + B, A + B)], "stats.K", "input_mutual_information")
    lead = float(mi(K))
    corr = 0.0
    if getattr(stats, "G1", None) is not None:
        G1 = np.asarray(stats.G1, dtype=float)
        n = int(stats.fan_in)

        def dlog(idx):
            return float(np.trace(np.linalg.solve(K[np.ix_(idx, idx)], G1[np.ix_(idx, idx)])))

        corr = 0.5 * n_out * (dlog(A) + dlog(B) - dlog(A + B)) / n
    return lead, corr


def neuron_mutual_information(stats, n_a: int, n_b: int) -> float:
    """Leading mutual information between two disjoint groups of n_a and n_b output neurons.

    I(A;B) = n_a n_b Σ V_(12)(34) V^(12)(34) / (8 n²) + O(1/n³), over all inputs of ``stats``
    (indices raised with K⁻¹; n = fan-in of the output layer).  Zero at infinite width (book A.2).
    """
    K, _, V, n = _stats_parts(stats, "neuron_mutual_information")
    n_a = _count(n_a, "n_a", "neuron_mutual_information")
    n_b = _count(n_b, "n_b", "neuron_mutual_information")
    v2, _ = _raised_norm(V, _spd(K, "stats.K", "neuron_mutual_information"))
    return n_a * n_b * v2 / (8.0 * n**2)


def neuron_mutual_information_single_input(epsilon, n_a: int, n_b: int, order: int = 3):
    """I(A;B) between neuron groups for one input, as a series in ε = Var(Ĝ)/G² ≈ V/(nK²).

    Parameters
    ----------
    epsilon : float or array_like ≥ 0
    n_a, n_b : int
    order : {2, 3}
        Keep terms up to ε^order.

    Returns
    -------
    float or ndarray
        (n_a n_b/8) ε² − (n_a n_b/48)(3(n_a+n_b) + 20) ε³  (module docstring).

    Examples
    --------
    >>> round(neuron_mutual_information_single_input(0.1, 1, 1), 6)
    0.000708
    """
    n_a = _count(n_a, "n_a", "neuron_mutual_information_single_input")
    n_b = _count(n_b, "n_b", "neuron_mutual_information_single_input")
    check_parameter(order in (2, 3), "order", "neuron_mutual_information_single_input", "2 or 3", order)
    e = np.asarray(epsilon, dtype=float)
    out = n_a * n_b * e**2 / 8.0
    if order == 3:
        out = out - n_a * n_b * (3 * (n_a + n_b) + 20) * e**3 / 48.0
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# exact Gaussian scale mixtures (numerical reference)


def lognormal_scales(s2: float, nodes: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes (scales Ĝ/G, weights) of a log-normal metric with E[Ĝ] = G.

    log(Ĝ/G) ~ N(−s²/2, s²): the exact large-depth limit (fixed L/n) of the single-input
    metric of scale-invariant networks, with s² = ν L/n and ε = e^{s²} − 1 (docs/information.md).
    """
    check_parameter(isinstance(s2, numbers.Real) and s2 >= 0, "s2", "lognormal_scales", ">= 0", s2)
    x, w = roots_hermite(int(nodes))
    s = math.sqrt(float(s2))
    return np.exp(math.sqrt(2.0) * s * x - 0.5 * s * s), w / math.sqrt(math.pi)


def scale_mixture_entropy(m: int, scales, weights=None, nodes: int = 120) -> float:
    """Differential entropy (nats) of the m-dimensional mixture Σ_s w_s N(0, G_s I_m).

    Parameters
    ----------
    m : int
        Dimension (number of neurons).
    scales : array_like of float > 0
        G_s.
    weights : array_like, optional
        w_s ≥ 0 (normalised here); default uniform.
    nodes : int
        Generalised Gauss–Laguerre nodes per component for the radial integral.

    Notes
    -----
    S = Σ_s w_s E_{t ~ G_s χ²_m}[−log φ(t)], φ(t) = Σ_s' w_s' (2πG_s')^{−m/2} e^{−t/2G_s'} with
    t = |z|²; −log φ is smooth in t, so Gauss–Laguerre (weight y^{m/2−1}e^{−y}, t = 2G_s y) is
    accurate to ~1e-12 relative with the default nodes.  Cost O(S² · nodes).
    """
    m = _count(m, "m", "scale_mixture_entropy")
    G = np.atleast_1d(np.asarray(scales, dtype=float))
    if G.ndim != 1 or np.any(G <= 0) or not np.all(np.isfinite(G)):
        raise ParameterError(f"The 'scales' parameter of scale_mixture_entropy must be finite and > 0. Got {scales!r} instead.")
    w = np.full(G.shape, 1.0 / G.size) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != G.shape or np.any(w < 0) or w.sum() <= 0:
        raise ParameterError(f"The 'weights' parameter of scale_mixture_entropy must be >= 0 with the shape of 'scales'. Got {weights!r} instead.")
    keep = w > 0
    G, w = G[keep], w[keep] / w[keep].sum()
    alpha = m / 2.0 - 1.0
    y, wy = roots_genlaguerre(int(nodes), alpha)
    wy = wy / math.exp(gammaln(m / 2.0))
    t = 2.0 * G[:, None] * y[None, :]  # (S, nodes)
    # log φ(t) = logsumexp_s'[log w_s' − (m/2) log(2πG_s') − t/(2G_s')], in blocks of s to bound memory
    c = np.log(w) - 0.5 * m * np.log(2 * math.pi * G)
    logphi = np.empty_like(t)
    step = max(1, 2_000_000 // (G.size * t.shape[1]))
    for i in range(0, G.size, step):
        e = c[:, None, None] - t[None, i : i + step, :] / (2.0 * G[:, None, None])  # (S', block, nodes)
        mx = e.max(axis=0)
        logphi[i : i + step] = mx + np.log(np.exp(e - mx).sum(axis=0))
    return float(-np.sum(w[:, None] * wy[None, :] * logphi))


def scale_mixture_mutual_information(n_a: int, n_b: int, scales, weights=None, nodes: int = 120) -> float:
    """I(A;B) = S(n_a) + S(n_b) − S(n_a + n_b) of a Gaussian scale mixture (exact, numerical)."""
    S = lambda m: scale_mixture_entropy(m, scales, weights, nodes)  # noqa: E731
    n_a = _count(n_a, "n_a", "scale_mixture_mutual_information")
    n_b = _count(n_b, "n_b", "scale_mixture_mutual_information")
    return S(n_a) + S(n_b) - S(n_a + n_b)


# ---------------------------------------------------------------------------------------------
# growth rate ν and the optimal aspect ratio


def hermite_projections(f, K: float, degree: int, kinks: Sequence[float] = ()) -> np.ndarray:
    """⟨f(z) h_b(z)⟩ for z ~ N(0, K), b = 0..degree, with h_b(z) = He_b(z/√K)/√(b!).

    Parameters
    ----------
    f : callable
        Vectorised function of z (may have kinks).
    K : float > 0
    degree : int ≥ 0
    kinks : sequence of float
        Points (in z) where f is not smooth; the quadrature panels break there.

    Notes
    -----
    Uses the Hermite functions ψ_b(x) = h_b(x) φ(x)^{1/2} (stable three-term recurrence, bounded
    by 1) so that ⟨f h_b⟩ = ∫ f(√K x) ψ_b(x) ψ_0(x) dx; composite 12-point Gauss–Legendre panels of
    width ¼ on |x| ≤ √(4·degree + 2) + 9, broken at the kinks.
    """
    check_parameter(isinstance(K, numbers.Real) and K > 0, "K", "hermite_projections", "> 0", K)
    degree = int(degree)
    T = math.sqrt(4 * degree + 2) + 9.0
    sk = math.sqrt(float(K))
    brk = np.unique(np.concatenate([np.linspace(-T, T, int(8 * T) + 1), [k / sk for k in kinks if abs(k / sk) < T]]))
    xg, wg = np.polynomial.legendre.leggauss(12)
    a, b = brk[:-1, None], brk[1:, None]
    x = (0.5 * (b - a) * xg + 0.5 * (a + b)).ravel()
    w = (0.5 * (b - a) * wg).ravel()
    psi0 = np.exp(-0.25 * x * x) / (2 * math.pi) ** 0.25
    fw = np.asarray(f(sk * x), dtype=float) * w * psi0
    out = np.empty(degree + 1)
    prev, cur = np.zeros_like(x), psi0
    for k in range(degree + 1):
        out[k] = float(np.dot(fw, cur))
        prev, cur = cur, (x * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
    return out


def _kinks(act: Activation) -> tuple[float, ...]:
    try:
        return tuple(float(k) for k in act.kinks)
    except Exception:  # a third-party activation without the metadata
        return ()


def growth_rate(activation: Activation, gamma: float = 0.0) -> float:
    """ν(γ): the per-layer growth of V/K² at criticality, V^(ℓ)/(nK²) ≈ ν ℓ/n (equal widths).

    Parameters
    ----------
    activation : Activation
        Must have a critical initialization (:func:`pdlt.criticality`).
    gamma : float, |γ| < 1
        Residual shortcut strength (0: the MLP).  The branch strength ξ drops out at criticality.

    Returns
    -------
    float

    Notes
    -----
    Exact at O(1/n) for one input (docs/residual.md, "single-input tower").  At a fixed point K
    (scale-invariant: any K; half-stable: K*) with c = ξ²C_W = (1 − γ²)C_W* and χ_∥ = 1,

        ν(γ) = c² Var_K(σ²)/K² + 2γ²c ⟨(σ²)''⟩_K + (2c²/K²) Σ_{b≥1, b≠2} γ^b S_b²/(1 − γ^b),

    S_b = ⟨σ² h_b⟩_K (normalised Hermite projections).  The sum is the neuron-specific metric
    coupling that the shortcut creates for non-odd σ: its b = 1 term is the three-point
    function Ω of the closed recursions, b ≥ 3 are the higher terms of the tower.
    Scale-invariant σ = a₊zΘ(z) + a₋zΘ(−z): only odd b contribute, b = 1 gives
    (4/π)γ(1+γ)(1−γ²)Δ²/A_2² (Δ = a₊² − a₋²), so that with the b ≥ 3 terms
    ν(γ) = (1−γ²)[(1−γ²)(3A_4/A_2² − 1) + 4γ² + (4/π)γ(1+γ)Δ²/A_2²] + O(γ³Δ²)
    (ReLU: 6.496 at γ = 0.5 against (1−γ²)(5−γ²) = 3.56 from the reference recursion).
    K* = 0 class: ν(γ) = (2/3)(1 − γ⁴) (the non-odd terms are O(K) and vanish at large depth).
    """
    if not isinstance(activation, Activation):
        raise ParameterError(f"The 'activation' parameter of growth_rate must be an Activation. Got {activation!r} instead.")
    check_parameter(
        isinstance(gamma, numbers.Real) and not isinstance(gamma, bool) and abs(gamma) < 1,
        "gamma", "growth_rate", "a real number with |gamma| < 1", gamma,
    )
    g = float(gamma)
    rep = criticality(activation)
    if not rep.is_critical:
        raise NoCriticalityError(f"growth_rate needs a critical activation; {activation.name!r} has none: {rep.reason}")
    if rep.universality_class == "K*=0":
        return float(rep.v_slope) * (1.0 - g**4)
    K = 1.0 if rep.universality_class == "scale-invariant" else float(rep.K_star)
    c = (1.0 - g**2) * rep.c_w
    # terms of the series below γ^b ≈ 1e-16 are dropped
    degree = 2 if g == 0 else int(min(1200, max(8, math.ceil(math.log(1e-16) / math.log(abs(g))))))
    sq = lambda z: np.asarray(activation(z), dtype=float) ** 2  # noqa: E731
    S = hermite_projections(sq, K, degree, _kinks(activation))
    s4 = hermite_projections(lambda z: sq(z) ** 2, K, 0, _kinks(activation))[0]
    var = s4 - S[0] ** 2
    b = np.arange(1, degree + 1)
    tower = 0.0
    if g != 0:
        gb = g ** b.astype(float)
        terms = gb * S[1:] ** 2 / (1.0 - gb)
        terms[1] = 0.0  # b = 2 is the metric direction itself
        tower = float(np.sum(terms))
    d2 = math.sqrt(2.0) * S[2] / K  # ⟨(σ²)''⟩_K
    return float(c**2 * var / K**2 + 2 * g**2 * c * d2 + 2 * c**2 * tower / K**2)


def optimal_epsilon(n_out: int) -> float:
    """ε* = 4/(20 + 3 n_L): where the O(ε³)-truncated inter-neuron information peaks."""
    n_out = _count(n_out, "n_out", "optimal_epsilon")
    return 4.0 / (20.0 + 3.0 * n_out)


def optimal_aspect_ratio(activation_or_nu, n_out: int, gamma: float | None = None) -> float:
    """The optimal aspect ratio r* = (L/n)* = 4/(20 + 3 n_L) · 1/ν (book Appendix A.3).

    Parameters
    ----------
    activation_or_nu : Activation or float > 0
        The activation (ν from :func:`growth_rate`) or ν itself.
    n_out : int
        n_L, the number of output neurons (split into two groups; only n_L enters).
    gamma : float, optional
        Residual shortcut strength (|γ| < 1); requires an activation.

    Returns
    -------
    float

    Notes
    -----
    Derived in the module docstring: the mutual information between two groups of output
    neurons, (ab/48)ε²[6 − (3n_L + 20)ε], peaks at ε* = 4/(20 + 3n_L), and ε ≈ νL/n.
    Residual networks: ν → ν(γ), so r*(γ) → ∞ as γ → 1.

    Examples
    --------
    >>> round(optimal_aspect_ratio(5.0, 1), 4)  # ReLU, n_L = 1: 4/115
    0.0348
    >>> round(optimal_aspect_ratio(2 / 3, 1), 4)  # tanh: 6/23
    0.2609
    """
    if isinstance(activation_or_nu, Activation):
        nu = growth_rate(activation_or_nu, 0.0 if gamma is None else gamma)
    else:
        if gamma is not None:
            raise ParameterError("The 'gamma' parameter of optimal_aspect_ratio needs an Activation (ν is computed from it). Got a number for ν instead.")
        nu = activation_or_nu
        check_parameter(isinstance(nu, numbers.Real) and nu > 0 and math.isfinite(nu), "activation_or_nu", "optimal_aspect_ratio", "an Activation or a finite number > 0", nu)
    return optimal_epsilon(n_out) / float(nu)
