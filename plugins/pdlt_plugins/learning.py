"""Built-in learning algorithms: Bayesian inference, gradient descent and the Newton step.

Each maps the output-layer statistics of a network on D = A ∪ B (training set A, evaluation set)
and the training labels to a :class:`pdlt.learning.TrainedDistribution`, to order 1/n with
n = n_{L−1} (the fan-in of the output layer, the normalisation of every 1/n tensor):

* :class:`Bayesian` — the GP posterior at infinite width and its O(1/n) corrections from the NLO
  kernel G1 and the four-point vertex V (book §6.3–§6.4; theory/training.md §1);
* :class:`GradientDescent` — full-batch GD on the MSE loss: the frozen-NTK solution at infinite width
  for any number of steps, and at O(1/n) the fully trained mean (book §∞.2.3; training.md §4.4–§4.5)
  and covariance (theory/trained-cov.md);
* :class:`NewtonStep` — the single "giant leap" (book §10.2.1; training.md §2) with the learning-rate
  matrix (mean NTK on A)⁻¹, and its O(1/n) mean and covariance (same expansion, one step);
* :class:`GiantLeapSmallStep` — a Newton step followed by GD steps (book §∞.2.1), through the same
  finite-step machinery as gradient descent with a schedule of learning-rate matrices
  (:func:`rate_schedule`); finite-T gradient descent has its O(1/n) mean and covariance as well.

Notation: flattened indices I = (i, δ); sample indices α̃ ∈ A written a, b, …, 1…6; Θ̃ = Θ on A;
Θ̃ = O diag(h) Oᵀ.  Every algorithm tensor of training.md §4.4 (X_II, X_III, Z_A, Z_B, Z_IA, Z_IB,
𝒵1, 𝒵2) pairs its k-th upper with its k-th lower index and is diagonal in the eigenbasis of Θ̃, so all
contractions are done there (training.md §8): cost O(N_D N_A⁴ + N_D² N_A³) and memory O(N_D N_A³)
instead of the O(N_A⁶) rank-6 tensors.

Which objects carry 1/n.  The infinite-width parts use K and Θ only.  The corrections are exactly
(1/n) × (a width-independent coefficient): the 1/n parts of the two-point function (G1, G = K + G1/n)
and of the NTK mean (H1, H = Θ + H1/n) enter only by linearising the leading formulas (the G1⋄ and
H1⋄ terms below); inside terms that already carry a 1/n tensor (V, A, B, D, F, P, …, U) the leading
K and Θ are used — the difference is O(1/n²).
"""

from __future__ import annotations

import numbers
from typing import ClassVar

import attrs
import numpy as np

from pdlt.errors import NumericalError, ParameterError
from pdlt.hookspecs import hookimpl
from pdlt.learning import LearningAlgorithm, TrainedDistribution, validate_labels, expand_outputs, psd_eigh

__all__ = [
    "Bayesian",
    "GradientDescent",
    "NewtonStep",
    "GiantLeapSmallStep",
    "FiniteWidthTerms",
    "algorithm_tensors",
    "newton_tensors",
    "finite_steps_mean_correction",
    "finite_steps_cov_correction",
    "Schedule",
    "constant_schedule",
    "rate_schedule",
]

_DNTK = ("P", "Q", "R", "S", "T", "U")
_NLO = ("V", "G1", "A", "B", "D", "F")


# ---------------------------------------------------------------------------------------------
# small helpers


def _rot(X: np.ndarray, O: np.ndarray, axes) -> np.ndarray:
    """Rotate the given axes of X into the eigenbasis: X'_{..r..} = Σ_a X_{..a..} O_{ar}."""
    for ax in axes:
        X = np.moveaxis(np.tensordot(X, O, axes=([ax], [0])), -1, ax)
    return X


def _unrot(X: np.ndarray, O: np.ndarray, axes) -> np.ndarray:
    """Inverse of :func:`_rot`: X_{..a..} = Σ_r X'_{..r..} O_{ar}."""
    for ax in axes:
        X = np.moveaxis(np.tensordot(X, O, axes=([ax], [1])), -1, ax)
    return X


def _need(stats, names, owner: str, hint: str) -> None:
    missing = [n for n in names if getattr(stats, n) is None]
    if missing:
        raise ParameterError(
            f"{owner}: the O(1/n) result needs the statistics {', '.join(missing)}, which are None in the "
            f"given Statistics. {getattr(type(stats), 'unavailable_note', '')}{hint}"
        )


def _odd_output(stats) -> bool:
    """Whether the statistics carry non-zero three-point tensors Ω, Π, Φ (residual output layer, σ not odd)."""
    return any(getattr(stats, f, None) is not None and np.any(getattr(stats, f)) for f in ("Omega", "Pi", "Phi"))


def _h1(stats) -> np.ndarray:
    return np.zeros_like(stats.K) if stats.H1 is None else np.asarray(stats.H1)


def _g1(stats) -> np.ndarray:
    return np.zeros_like(stats.K) if stats.G1 is None else np.asarray(stats.G1)


# ---------------------------------------------------------------------------------------------
# algorithm tensors (training.md §4.4) in the eigenbasis of Θ̃


@attrs.frozen(kw_only=True)
class FiniteWidthTerms:
    """The algorithm-dependent coefficients of the O(1/n) trained output, in the eigenbasis of H̃.

    For training to convergence by gradient descent these are the eigenvalues of the tensors of
    training.md §4.4/§4.5 (each pairs its k-th upper with its k-th lower index, so it is diagonal in
    the eigenbasis; r, s, t label eigenvectors of H̃ on those index pairs).

    Attributes
    ----------
    zA, zB : ndarray (N_A, N_A)
        Z_A, Z_B (dNTK terms): 𝔪^dNTK and 𝒞^PQ,dir.
    zIA, zIB : ndarray (N_A,)*3
        Z_IA = −Y_III − (η/2)Y_IV, Z_IB = Z_IA − (η/2)Y_I − (η²/6)X_III (ddNTK-I terms).
    z1, z2 : ndarray (N_A,)*3
        𝒵1, 𝒵2 (ddNTK-II terms).
    second_order_ntk : bool
        The trained output contains ΔĤ H̃⁻¹ ΔĤ H̃⁻¹ ε (gradient descent to convergence: 𝔪^ΔNTK and
        the ΔNTK Stein term); False for a single step, which is linear in the NTK.
    projected : bool
        The trained output is "test term minus its projection through H H̃⁻¹" (training.md §4.4):
        true for training to convergence (training outputs end at y), false for a single step.
    """

    zA: np.ndarray
    zB: np.ndarray
    zIA: np.ndarray
    zIB: np.ndarray
    z1: np.ndarray
    z2: np.ndarray
    second_order_ntk: bool
    projected: bool


def algorithm_tensors(h: np.ndarray, eta: float) -> FiniteWidthTerms:
    """Eigenvalues of the §4.4 algorithm tensors of gradient descent run to convergence.

    Parameters
    ----------
    h : ndarray (N_A,)
        Eigenvalues of the mean NTK on the training set, all > 0.
    eta : float
        Global learning rate, 0 < η h < 2.

    Notes
    -----
    Book §∞.2.2 (training.md §4.4, §4.5, §8).  With D2_rs = h_r + h_s − η h_r h_s and
    D3_rst = Σ h − η Σ h h + η² h_r h_s h_t, X_II = 1/D2, X_III = 1/D3 (the time sums
    η Σ_t U^t⊗U^t and η Σ_t U^t⊗U^t⊗U^t, U = 1 − ηH̃), W = 1/h − η, X̄_II = 1/D2 − η:

    * Z_A = W/D2, Z_B = Z_A + (η/2)/D2;
    * Y_I = (1/h_t)(1/D2_rs − 1/D3), Y_III = 1/(h_r h_s h_t) − 1/(h_s h_t D2_rs) − 1/(h_r h_t D2_st)
      + 1/(h_t D2_st D3), Y_IV = 1/(h_r D2_st) − 1/(D2_st D3);
    * Z_IA = −Y_III − (η/2)Y_IV, Z_IB = Z_IA − (η/2)Y_I − (η²/6)/D3;
    * 𝒵1 = η(W_r + X̄_II,rs)/D3, 𝒵2 = W_r X̄_II,rs / D3.
    """
    h = np.asarray(h, dtype=float)
    r = h[:, None, None]
    s = h[None, :, None]
    t = h[None, None, :]
    D2 = h[:, None] + h[None, :] - eta * h[:, None] * h[None, :]
    D3 = r + s + t - eta * (r * s + r * t + s * t) + eta**2 * r * s * t
    W = 1.0 / h - eta
    zA = W[:, None] / D2
    zB = zA + 0.5 * eta / D2
    D2rs = D2[:, :, None]
    D2st = D2[None, :, :]
    Y_I = (1.0 / t) * (1.0 / D2rs - 1.0 / D3)
    Y_III = 1.0 / (r * s * t) - 1.0 / (s * t * D2rs) - 1.0 / (r * t * D2st) + 1.0 / (t * D2st * D3)
    Y_IV = 1.0 / (r * D2st) - 1.0 / (D2st * D3)
    zIA = -Y_III - 0.5 * eta * Y_IV
    zIB = zIA - 0.5 * eta * Y_I - eta**2 / 6.0 / D3
    Wr = W[:, None, None]
    Xbar = 1.0 / D2rs - eta
    z1 = eta * (Wr + Xbar) / D3
    z2 = Wr * Xbar / D3
    return FiniteWidthTerms(zA=zA, zB=zB, zIA=zIA, zIB=zIB, z1=z1, z2=z2, second_order_ntk=True, projected=True)


def newton_tensors(h: np.ndarray) -> FiniteWidthTerms:
    """The same coefficients for one step with learning-rate matrix M = H̃⁻¹ (the giant leap).

    Notes
    -----
    One step z(1) = z − Ĥ M ε + ½ dĤ (Mε)(Mε) − (1/6) ddĤ^I (Mε)³ (training.md §4.2 with η → M);
    its average has the structure of §4.5 with Z_B = ½ M⊗M, Z_IB = −(1/6) M⊗M⊗M and
    Z_A = Z_IA = 𝒵1 = 𝒵2 = 0 (the NTK and dNTK do not move before the single step is taken).
    """
    h = np.asarray(h, dtype=float)
    m = 1.0 / h
    N = h.size
    zero2 = np.zeros((N, N))
    zero3 = np.zeros((N, N, N))
    zB = 0.5 * m[:, None] * m[None, :]
    zIB = -(1.0 / 6.0) * m[:, None, None] * m[None, :, None] * m[None, None, :]
    return FiniteWidthTerms(zA=zero2, zB=zB, zIA=zero3, zIB=zIB, z1=zero3, z2=zero3, second_order_ntk=False, projected=False)


# ---------------------------------------------------------------------------------------------
# the O(1/n) engine for gradient-based training (GD to convergence and the Newton step)


class _Blocks:
    """Sub-blocks of the rank-4 statistics with some slots on the rows R (evaluation points, then
    the training set) and the others on A, the A-slots rotated into the eigenbasis (cached).
    With ``zero_dntk`` (include_dntk=False) P, Q, R, S, T, U are read as zero."""

    def __init__(self, stats, R: np.ndarray, A: np.ndarray, O: np.ndarray, zero_dntk: bool):
        self.stats = stats
        self.R = R
        self.A = A
        self.O = O
        self.zero_dntk = zero_dntk
        self._cache: dict = {}

    def raw(self, name: str, r_slots: tuple[int, ...]) -> np.ndarray:
        key = ("raw", name, r_slots)
        if key not in self._cache:
            X = getattr(self.stats, name)
            if name in _DNTK and (self.zero_dntk or X is None):
                shape = tuple(len(self.R) if k in r_slots else len(self.A) for k in range(4))
                self._cache[key] = np.zeros(shape)
            else:
                idx = [self.R if k in r_slots else self.A for k in range(4)]
                self._cache[key] = np.asarray(X)[np.ix_(*idx)]
        return self._cache[key]

    def rot(self, name: str, r_slots: tuple[int, ...]) -> np.ndarray:
        key = ("rot", name, r_slots)
        if key not in self._cache:
            axes = [k for k in range(4) if k not in r_slots]
            self._cache[key] = _rot(self.raw(name, r_slots), self.O, axes)
        return self._cache[key]


#: ddNTK terms of the trained mean (training.md §4.5): (sign, Z, Z upper labels, Z lower labels,
#: tensor, tensor labels with "d" the evaluation slot, Γ labels).  Labels 1…6 are α̃1…α̃6.
_DD_TERMS = (
    # 𝔪^ddI = −Σ [R_δ123 (Z_IB^{123;456} + Z_IB^{231;564} + Z_IB^{312;645}) + R_1δ23 Z_IA^{123;456}
    #             + R_123δ Z_IA^{123;564} + R_13δ2 Z_IA^{123;645}] Γ_{i;456}
    (-1, "zIB", (1, 2, 3), (4, 5, 6), "R", ("d", 1, 2, 3), (4, 5, 6)),
    (-1, "zIB", (2, 3, 1), (5, 6, 4), "R", ("d", 1, 2, 3), (4, 5, 6)),
    (-1, "zIB", (3, 1, 2), (6, 4, 5), "R", ("d", 1, 2, 3), (4, 5, 6)),
    (-1, "zIA", (1, 2, 3), (4, 5, 6), "R", (1, "d", 2, 3), (4, 5, 6)),
    (-1, "zIA", (1, 2, 3), (5, 6, 4), "R", (1, 2, 3, "d"), (4, 5, 6)),
    (-1, "zIA", (1, 2, 3), (6, 4, 5), "R", (1, 3, "d", 2), (4, 5, 6)),
    # 𝔪^ddII, Σ over Z ∈ {𝒵1, 𝒵2}: S_δ123 Z Γ_456 + T_δ231 Z Γ_546 + U_δ312 Z Γ_645
    *(
        (+1, z, (1, 2, 3), (4, 5, 6), X, lab, g)
        for z in ("z1", "z2")
        for X, lab, g in (
            ("S", ("d", 1, 2, 3), (4, 5, 6)),
            ("T", ("d", 2, 3, 1), (5, 4, 6)),
            ("U", ("d", 3, 1, 2), (6, 4, 5)),
        )
    ),
    # + Σ 𝒵2^{123;456} [S_δ213 Γ_546 + T_δ132 Γ_456 + U_δ321 Γ_645 + S_1δ23 Γ_456 + T_123δ Γ_645
    #                   + U_13δ2 Γ_546 + S_12δ3 Γ_645 + T_1δ32 Γ_456 + U_132δ Γ_546]
    (+1, "z2", (1, 2, 3), (4, 5, 6), "S", ("d", 2, 1, 3), (5, 4, 6)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "T", ("d", 1, 3, 2), (4, 5, 6)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "U", ("d", 3, 2, 1), (6, 4, 5)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "S", (1, "d", 2, 3), (4, 5, 6)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "T", (1, 2, 3, "d"), (6, 4, 5)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "U", (1, 3, "d", 2), (5, 4, 6)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "S", (1, 2, "d", 3), (6, 4, 5)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "T", (1, "d", 3, 2), (4, 5, 6)),
    (+1, "z2", (1, 2, 3), (4, 5, 6), "U", (1, 3, 2, "d"), (5, 4, 6)),
)


class _GradientEngine:
    """O(1/n) mean and covariance of gradient-trained outputs (GD to convergence, Newton step).

    The trained mean coefficient is written 𝔪_{i;δ} = Σ_α L_{δα} y_{i;α} + Σ M_{δ;456} Γ_{i;456}
    (training.md §4.5: linear in y through the ΔNTK and dNTK terms, cubic through Γ in the ddNTK
    terms), which makes the label-derivative (Stein) term of the covariance (trained-cov.md §1 (4))
    a pair of contractions.
    """

    def __init__(self, stats, train, y, test, terms_fn, *, zero_dntk: bool):
        self.stats = stats
        A = np.asarray(train, dtype=int)
        E = np.asarray(test, dtype=int)
        self.A, self.E = A, E
        R = np.concatenate([E, A])
        self.R = R
        self.n = stats.fan_in
        self.nL = y.shape[1]
        self.y = y
        K, Th = np.asarray(stats.K), np.asarray(stats.Theta)
        self.Kt = K[np.ix_(A, A)]
        self.h, self.O, self.cond = psd_eigh(Th[np.ix_(A, A)], "NTK Θ", "gradient-based training")
        self.Hi = (self.O / self.h) @ self.O.T
        self.terms: FiniteWidthTerms = terms_fn(self.h)
        NE = len(E)
        # projection of a slot over R: X⋄_e = X_e − Σ Θ_{eA} Θ̃⁻¹ X_A
        self.Pr = np.hstack([np.eye(NE), -Th[np.ix_(E, A)] @ self.Hi])
        self.Pn = self.Pr if self.terms.projected else np.hstack([np.eye(NE), np.zeros((NE, len(A)))])
        self.K_RR = K[np.ix_(R, R)]
        self.Kd = self.Pr @ K[np.ix_(R, A)]  # K⋄_{eα}
        self.blocks = _Blocks(stats, R, A, self.O, zero_dntk)

    # ------------------------------------------------------------------ infinite width
    def mean_infinite(self) -> np.ndarray:
        Th = np.asarray(self.stats.Theta)
        return Th[np.ix_(self.E, self.A)] @ self.Hi @ self.y

    def cov_infinite(self) -> np.ndarray:
        """Σ^∞ = K⋄⋄ (training.md §2 "Fully trained distribution")."""
        return self.Pr @ self.K_RR @ self.Pr.T

    # ------------------------------------------------------------------ mean coefficient
    def linear_coefficient(self) -> np.ndarray:
        """L (N_R, N_A): the part of 𝔪 linear in y (𝔪^ΔNTK + 𝔪^dNTK, training.md §4.5)."""
        b, nL, T = self.blocks, self.nL, self.terms
        L = np.zeros((len(self.R), len(self.A)))
        if T.second_order_ntk:
            # 𝔪^ΔNTK = −Σ [A_(δ1)(23) + B_δ213 + n_L B_δ312] H̃^{12} H̃^{34} y_4
            A0, B0 = b.raw("A", (0,)), b.raw("B", (0,))
            X = np.einsum("dabc,ab->dc", A0, self.Hi) + np.einsum("dbac,ab->dc", B0, self.Hi) + nL * np.einsum(
                "dcab,ab->dc", B0, self.Hi
            )
            L -= X @ self.Hi
        # 𝔪^dNTK, Z^{pq;cd} pairs (p, c) → r, (q, d) → s
        P0, Q0 = b.rot("P", (0,)), b.rot("Q", (0,))
        P1, Q1, Q2 = b.rot("P", (1,)), b.rot("Q", (1,)), b.rot("Q", (2,))
        zA, zB = T.zA, T.zB
        Lp = np.zeros_like(L)
        # Z_B ([P_δpqc + Q_δpqc + n_L Q_δqpc] y_d + [P_δpqd + n_L Q_δpqd + Q_δqpd] y_c)
        Lp += np.einsum("drsr,rs->ds", P0 + Q0, zB) + nL * np.einsum("dsrr,rs->ds", Q0, zB)
        Lp += np.einsum("drss,rs->dr", P0 + nL * Q0, zB) + np.einsum("dsrs,rs->dr", Q0, zB)
        # Z_A ([n_L P_pδqc + Q_pδqc + Q_pqδc] y_d + [P_pδqd + n_L Q_pδqd + Q_pqδd] y_c)
        Lp += np.einsum("rdsr,rs->ds", nL * P1 + Q1, zA) + np.einsum("rsdr,rs->ds", Q2, zA)
        Lp += np.einsum("rdss,rs->dr", P1 + nL * Q1, zA) + np.einsum("rsds,rs->dr", Q2, zA)
        L -= Lp @ self.O.T
        return L

    def cubic_coefficient(self) -> np.ndarray:
        """M (N_R, N_A, N_A, N_A): 𝔪^ddI + 𝔪^ddII = Σ M_{δ;456} Γ_{i;456} (training.md §4.5)."""
        b, T = self.blocks, self.terms
        NA = len(self.A)
        Mp = np.zeros((len(self.R), NA, NA, NA))
        for sign, zname, up, lo, X, xlab, glab in _DD_TERMS:
            z = getattr(T, zname)
            if not np.any(z):
                continue
            letter = {}
            for k in range(3):
                letter[up[k]] = letter[lo[k]] = "rst"[k]
            pos = xlab.index("d")
            Xr = b.rot(X, (pos,))
            xsub = "".join("d" if lab == "d" else letter[lab] for lab in xlab)
            out = "d" + "".join(letter[g] for g in glab)
            Mp += sign * np.einsum(f"{xsub},rst->{out}", Xr, z)
        return _unrot(Mp, self.O, (1, 2, 3))

    def gamma_contract(self, M: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Σ M_{δ;456} Γ_{i;456}, Γ_{i;456} = y_{i;4}(Σ_j y_{j;5}y_{j;6} + n_L K_56) + y_{i;5}K_64 + y_{i;6}K_45."""
        Kt = self.Kt
        C = y @ y.T + self.nL * Kt
        return (
            np.einsum("dabc,ai,bc->di", M, y, C, optimize=True)
            + np.einsum("dabc,bi,ca->di", M, y, Kt, optimize=True)
            + np.einsum("dabc,ci,ab->di", M, y, Kt, optimize=True)
        )

    def mean_correction(self, L, M) -> np.ndarray:
        """n × (E[z(T)] − m^∞): Pn 𝔪 + H1⋄ Θ̃⁻¹ y (training.md §4.5 with H = Θ + H1/n linearised)."""
        m = L @ self.y + self.gamma_contract(M, self.y)
        H1 = _h1(self.stats)
        H1d = self.Pr @ H1[np.ix_(self.R, self.A)]
        return self.Pn @ m + H1d @ self.Hi @ self.y

    # ------------------------------------------------------------------ covariance
    def cov_correction(self, L, M) -> np.ndarray:
        """n × (Cov − δ Σ^∞), shape (N_E, n_L, N_E, n_L) (trained-cov.md §1)."""
        b, nL, y, T = self.blocks, self.nL, self.y, self.terms
        Pr, Pn, Hi, O = self.Pr, self.Pn, self.Hi, self.O
        Kt, Kd = self.Kt, self.Kd
        R, A = self.R, self.A
        eye = np.eye(nL)

        # (0) 𝔰 = G1⋄⋄ − [H1⋄ Θ̃⁻¹ K⋄ᵀ + (1↔2)]
        G1, H1 = _g1(self.stats), _h1(self.stats)
        H1d = Pr @ H1[np.ix_(R, A)]
        X = H1d @ Hi @ Kd.T
        delta = Pr @ G1[np.ix_(R, R)] @ Pr.T - X - X.T

        # (1) 𝒞^DF = −Σ H̃^{12}[D_{β2 1 β1 2} + n_L F_{β2 β1 1 2} + F_{β2 2 1 β1}]^{⋄⋄} + (1↔2)
        DF = (
            np.einsum("xayb,ab->xy", b.raw("D", (0, 2)), Hi)
            + nL * np.einsum("xyab,ab->xy", b.raw("F", (0, 1)), Hi)
            + np.einsum("xbay,ab->xy", b.raw("F", (0, 3)), Hi)
        )
        C = Pn @ DF @ Pr.T  # [β2, β1]
        delta -= C + C.T

        # (2) 𝒞^AB
        Khat = Hi @ Kt @ Hi
        yh = Hi @ y
        Yh = yh @ yh.T
        A02, B03, B01 = b.raw("A", (0, 2)), b.raw("B", (0, 3)), b.raw("B", (0, 1))
        AB = (
            np.einsum("xayb,ab->xy", A02, Khat)
            + np.einsum("xbay,ab->xy", B03, Khat)
            + np.einsum("xyab,ab->xy", B01, nL * Khat + Yh)
        )
        delta += Pn @ AB @ Pn.T
        lab = np.einsum("xayb,ai,bj->xiyj", A02, yh, yh) + np.einsum("xbay,aj,bi->xiyj", B03, yh, yh)
        lab = np.einsum("ex,xiyj,fy->eifj", Pn, lab, Pn)

        # (3) 𝒞^PQ,dir, Z^{pq;cd} pairs (p, c) → r, (q, d) → s; W indexed [β2, j, β1, i]
        yr = O.T @ y
        Kr = O.T @ Kt @ O
        Cr = nL * Kr + yr @ yr.T
        zA, zB = T.zA, T.zB
        P03, Q03 = b.rot("P", (0, 3)), b.rot("Q", (0, 3))
        Wd = np.einsum("xrsy,rs->xy", P03, zB * Cr) + np.einsum("xrsy,rs->xy", Q03, zB * Kr) + np.einsum(
            "xsry,rs->xy", Q03, zB * Kr
        )
        Wl = np.einsum("xrsy,rs,rj,si->xjyi", Q03, zB, yr, yr) + np.einsum("xsry,rs,ri,sj->xjyi", Q03, zB, yr, yr)
        if np.any(zA):
            P13, Q13, Q23 = b.rot("P", (1, 3)), b.rot("Q", (1, 3)), b.rot("Q", (2, 3))
            Wd += np.einsum("rxsy,rs->xy", P13 + Q13, zA * Kr) + np.einsum("rsxy,rs->xy", Q23, zA * Cr)
            Wl += np.einsum("rxsy,rs,ri,sj->xjyi", P13, zA, yr, yr) + np.einsum("rxsy,rs,rj,si->xjyi", Q13, zA, yr, yr)
        Wd = Pn @ Wd @ Pr.T
        Wl = np.einsum("ex,xjyi,fy->ejfi", Pn, Wl, Pr)
        delta += Wd.T + Wd
        lab += Wl.transpose(2, 3, 0, 1) + Wl

        # (4) Stein: −Σ_α [K⋄_{β1α} ∂𝔪⋄_{j;β2}/∂y_{i;α} + (i,β1 ↔ j,β2)]
        Ln = Pn @ L
        X = Kd @ Ln.T  # [β1, β2]
        delta -= X + X.T
        Mn = np.tensordot(Pn, M, axes=([1], [0]))
        Cm = y @ y.T + nL * Kt
        Xd = (
            np.einsum("xabc,ya,bc->yx", Mn, Kd, Cm, optimize=True)
            + np.einsum("xabc,yb,ca->yx", Mn, Kd, Kt, optimize=True)
            + np.einsum("xabc,yc,ab->yx", Mn, Kd, Kt, optimize=True)
        )
        delta -= Xd + Xd.T
        Xl = np.einsum("xabc,aj,yb,ci->yixj", Mn, y, Kd, y, optimize=True) + np.einsum(
            "xabc,aj,yc,bi->yixj", Mn, y, Kd, y, optimize=True
        )
        lab -= Xl + Xl.transpose(2, 3, 0, 1)

        return expand_outputs(delta, nL) + lab


# ---------------------------------------------------------------------------------------------
# finite number of steps: the same averaging with time-summed weights


#: δ-structures of the flattened moments (training.md §0): (tensor, pair, pair, index order of the
#: stored sample tensor in terms of the four slots).
_MOMENTS = {
    "G4": (("P", (0, 3), (1, 2), (0, 1, 2, 3)), ("Q", (0, 1), (2, 3), (0, 1, 2, 3)), ("Q", (0, 2), (1, 3), (0, 2, 1, 3))),
    "RI": (("R", (0, 1), (2, 3), (0, 1, 2, 3)), ("R", (0, 2), (1, 3), (0, 2, 3, 1)), ("R", (0, 3), (1, 2), (0, 3, 1, 2))),
    "RII": (("S", (0, 1), (2, 3), (0, 1, 2, 3)), ("T", (0, 2), (1, 3), (0, 2, 3, 1)), ("U", (0, 3), (1, 2), (0, 3, 1, 2))),
    "AB": (("A", (0, 1), (2, 3), (0, 1, 2, 3)), ("B", (0, 2), (1, 3), (0, 2, 1, 3)), ("B", (0, 3), (1, 2), (0, 3, 1, 2))),
}


def _reduce(kind: str, slots: tuple, ys: tuple, Ks: tuple, var: dict):
    """Sum over output indices of one flattened moment times label factors.

    Parameters
    ----------
    kind : key of :data:`_MOMENTS`
    slots : 4 sample labels of the moment's slots ("I" is the evaluation slot)
    ys : labels x carrying a factor y_{k_x; x}
    Ks : pairs (x, x') carrying δ_{k_x k_x'} K_{x x'}
    var : label → output variable (labels sharing a variable are the same flattened index)

    Returns
    -------
    list of (tensor name, tensor labels, y labels with output i, Y pairs, K pairs, power of n_L)
    """
    out = []
    for name, p1, p2, order in _MOMENTS[kind]:
        parent = {}

        def find(v):
            while parent.get(v, v) != v:
                v = parent[v]
            return v

        def union(u, v):
            parent[find(u)] = find(v)

        for p, q in (p1, p2):
            union(var[slots[p]], var[slots[q]])
        for x, x2 in Ks:
            union(var[x], var[x2])
        comps: dict = {}
        allvars = {var[l] for l in slots} | {var[x] for x in ys} | {var[x] for K in Ks for x in K}
        for v in allvars:
            comps.setdefault(find(v), []).append(v)
        yi, Ypairs, power = [], [], 0
        root_i = find("i")
        for root in comps:
            ylab = [x for x in ys if find(var[x]) == root]
            if root == root_i:
                if len(ylab) != 1:
                    raise AssertionError("internal: the evaluation output must carry exactly one label")
                yi.append(ylab[0])
            elif not ylab:
                power += 1
            elif len(ylab) == 2:
                Ypairs.append(tuple(ylab))
            else:
                raise AssertionError("internal: unmatched output sum")
        out.append((name, tuple(slots[k] for k in order), tuple(yi), tuple(Ypairs), tuple(Ks), power))
    return out


def _mean_terms(patterns):
    """Expand weighted flattened patterns into sample-index terms of the trained mean.

    ``patterns``: (coefficient, kind, dĤ-or-ddĤ slot labels, weight name).  dNTK patterns ("G4")
    have three slots {I, a, b} contracted with ε_a ε_b: E[dĤ ε_a ε_b] = −E[dĤ z_a] y_b − E[dĤ z_b] y_a.
    ddNTK patterns have four slots {I, a, b, c} contracted with ε_a ε_b ε_c:
    E[ε_a ε_b ε_c] = −(y_a y_b y_c + K_ab y_c + K_ac y_b + K_bc y_a).  The ΔNTK patterns ("AB") are
    added by the caller.  Returns (coefficient, weight, tensor, labels, y_i labels, Y pairs, K pairs, n_L power).
    """
    terms = []
    for coef, kind, slots, wname in patterns:
        var = {"I": "i"}
        for x in "abc":
            var[x] = "k" + x
        if kind == "G4":
            for zl, yl in (("a", "b"), ("b", "a")):
                for t in _reduce(kind, slots + (zl,), (yl,), (), var):
                    terms.append((-coef, wname) + t)
        else:
            for ys, Ks in ((("a", "b", "c"), ()), (("c",), (("a", "b"),)), (("b",), (("a", "c"),)), (("a",), (("b", "c"),))):
                for t in _reduce(kind, slots, ys, Ks, var):
                    terms.append((-coef, wname) + t)
    return terms


# the first-order sources of training.md §4.2 summed over t < T (see _finite_step_weights)
_FINITE_PATTERNS = (
    (1.0, "G4", ("I", "a", "b"), "dI"),
    (1.0, "G4", ("a", "I", "b"), "dA"),
    (1.0, "RI", ("I", "a", "b", "c"), "RI_I"),
    (1.0, "RI", ("a", "I", "b", "c"), "RI_A"),
    (1.0, "RII", ("I", "a", "b", "c"), "RII_I"),
    (1.0, "RII", ("I", "b", "a", "c"), "RII_Ib"),
    (1.0, "RII", ("a", "I", "b", "c"), "W4"),
    (1.0, "RII", ("a", "b", "I", "c"), "W4"),
)


def _geom(x, one_minus_x, T):
    """S_T(x) = Σ_{t<T} x^t for |x| < 1, with 1 − x supplied exactly (T = None: ∞)."""
    if T is None:
        return 1.0 / one_minus_x
    xT = np.where(x > 0, -np.expm1(T * np.log(np.abs(x) + (x <= 0))), 1.0 - x**T)
    return xT / one_minus_x


def _shifted(v, x, T):
    """E_T(v, x) = Σ_{t<T} v^{T−1−t} x^t (elementwise, |v|, |x| < 1), stable when v ≈ x."""
    v, x = np.broadcast_arrays(np.asarray(v, dtype=float), np.asarray(x, dtype=float))
    out = np.empty(v.shape)
    close = np.abs(v - x) <= 1e-2 * np.maximum(np.abs(v), np.abs(x))
    far = ~close
    with np.errstate(divide="ignore", invalid="ignore"):
        out[far] = (v[far] ** T - x[far] ** T) / (v[far] - x[far])
        vc, xc = v[close], x[close]
        zero = vc == 0
        d = np.where(zero, 0.0, (xc - vc) / np.where(zero, 1.0, vc))
        small = np.abs(d) < 1e-300
        ratio = np.where(small, T, np.expm1(T * np.log1p(d)) / np.where(small, 1.0, d))
        # v = 0 (ηh = 1): only t = T − 1 survives, x^{T−1} (= 1 for T = 1 even at x = 0)
        out[close] = np.where(zero, xc ** (T - 1) if T >= 1 else 0.0, vc ** (T - 1) * ratio)
    return out


def _finite_step_weights(h, eta, T):
    """Time-summed weights of the first-order sources after T steps, in the eigenbasis of H̃.

    With u = 1 − ηh, ε⁰_a(t) = u_a^t ε_a, S_t(x) = Σ_{s<t} x^s, the sources of z¹_I(t+1) − z¹_I(t)
    (training.md §4.2, first order in dĤ, ddĤ; dĤ and ddĤ^{I,II} at their initial values, their
    changes integrated) are
    dĤ_Iab εε: η²[½(u_au_b)^t + u_a^t S_t(u_b)];  dĤ_aIb εε: η² u_a^t S_t(u_b);
    ddĤ^I_Iabc εεε: −η³[½P3 + W4 + ½P5 + P6/6];  ddĤ^I_aIbc: −η³[W4 + ½P5];
    ddĤ^II_Iabc: −η³[½P3 + W4 + P5];  ddĤ^II_Ibac: −η³[½P3 + W4];  ddĤ^II_aIbc, ddĤ^II_abIc: −η³ W4,
    with P3 = (u_au_b)^t S_t(u_c), P5 = u_a^t S_t(u_bu_c), P6 = (u_au_bu_c)^t,
    W4 = u_a^t Σ_{s<t} u_b^s S_s(u_c).  Every source is a combination of u_a^t, (u_au_b)^t and
    (u_au_bu_c)^t, so its time sums are geometric: the "A" weights Σ_{t<T}(·) and the "B" weights
    Σ_{t<T} u_e^{T−1−t}(·) (the training residual ε¹_e(T) that finite training leaves).

    Returns
    -------
    A : dict name → (N_A, N_A) or (N_A,)*3 array
    B : dict name → same with a leading eigen-index e, or None when T is None (ε¹(∞) = 0)
    """
    h = np.asarray(h, dtype=float)
    u = 1.0 - eta * h
    a = (slice(None), None, None)
    b = (None, slice(None), None)
    c = (None, None, slice(None))
    ua, ub, uc = u[a], u[b], u[c]
    ha, hb, hc = h[a], h[b], h[c]
    om1 = eta * h  # 1 − u
    om_b, om_c = om1[b], om1[c]
    om_bc = eta * (hb + hc - eta * hb * hc)  # 1 − u_b u_c
    om_ab = eta * (ha + hb - eta * ha * hb)
    # coefficients of the three exponentials u_a^t, (u_au_b)^t, (u_au_bu_c)^t in each source
    one = np.ones((h.size,) * 3)
    P1 = (0 * one, one, 0 * one)
    P2 = (1.0 / om_b * one, -1.0 / om_b * one, 0 * one)
    P3 = (0 * one, 1.0 / om_c * one, -1.0 / om_c * one)
    P5 = (1.0 / om_bc * one, 0 * one, -1.0 / om_bc * one)
    P6 = (0 * one, 0 * one, one)
    # W4 = u_a^t [S_t(u_b) − S_t(u_bu_c)]/(1 − u_c)
    W4 = ((1.0 / om_b - 1.0 / om_bc) / om_c * one, -1.0 / (om_b * om_c) * one, 1.0 / (om_bc * om_c) * one)

    def comb(*pairs):
        return tuple(sum(w * p[k] for w, p in pairs) for k in range(3))

    e2 = eta**2
    e3 = eta**3
    src = {
        "dI": comb((0.5 * e2, P1), (e2, P2)),
        "dA": comb((e2, P2),),
        "RI_I": comb((-0.5 * e3, P3), (-e3, W4), (-0.5 * e3, P5), (-e3 / 6, P6)),
        "RI_A": comb((-e3, W4), (-0.5 * e3, P5)),
        "RII_I": comb((-0.5 * e3, P3), (-e3, W4), (-e3, P5)),
        "RII_Ib": comb((-0.5 * e3, P3), (-e3, W4)),
        "W4": comb((-e3, W4),),
    }
    x1 = ua * one
    x2 = ua * ub * one
    x3 = ua * ub * uc * one
    om_abc = eta * (ha + hb + hc - eta * (ha * hb + ha * hc + hb * hc) + eta**2 * ha * hb * hc) * one
    S1 = _geom(x1, om1[a] * one, T)
    S2 = _geom(x2, om_ab * one, T)
    S3 = _geom(x3, om_abc, T)
    A = {k: v[0] * S1 + v[1] * S2 + v[2] * S3 for k, v in src.items()}
    for k in ("dI", "dA"):
        A[k] = A[k][:, :, 0]
    if T is None:
        return A, None
    ue = u[:, None, None, None]
    B = {}
    E1, E2, E3 = (_shifted(ue, x[None], T) for x in (x1, x2, x3))
    for k, v in src.items():
        B[k] = v[0][None] * E1 + v[1][None] * E2 + v[2][None] * E3
    for k in ("dI", "dA"):
        B[k] = B[k][..., 0]
    return A, B


def _divided_differences(h, eta, T):
    """g_T(x) = Σ_{t<T} η(1 − ηx)^t = (1 − (1 − ηx)^T)/x and its first and second divided
    differences at the eigenvalues h (Daleckii–Krein: the first- and second-order terms of
    g_T(H̃ + Δ) in the eigenbasis are g1_rs Δ_rs and Σ_m g2_rms Δ_rm Δ_ms).  T = None: g = 1/x."""
    h = np.asarray(h, dtype=float)
    if T is None:
        g = 1.0 / h
        g1 = -1.0 / np.multiply.outer(h, h)
        g2 = 1.0 / np.multiply.outer(np.multiply.outer(h, h), h)
        return g, g1, g2
    u = 1.0 - eta * h
    g = _geom(u, eta * h, T) * eta
    # divided differences of u^t in x: −η h_{t−1}(u_r, u_s) and η² h_{t−2}(u_r, u_m, u_s), with the
    # complete homogeneous polynomials h_k(x, y) = y h_{k−1}(x, y) + x^k and
    # h_k(x, y, z) = z h_{k−1}(x, y, z) + h_k(x, y) (h_0 = 1), summed over k by recursion
    N = h.size
    ur, us = u[:, None], u[None, :]
    h2 = np.ones((N, N))
    h3 = np.ones((N, N, N))
    g1 = np.zeros((N, N))
    g2 = np.zeros((N, N, N))
    pw = u.copy()  # u_r^{k+1}
    for k in range(T - 1):  # k = 0 … T − 2
        g1 += h2
        if k <= T - 3:
            g2 += h3
        h2 = us * h2 + pw[:, None]
        h3 = u[None, None, :] * h3 + h2[:, :, None]
        pw = pw * u
        if np.abs(h3).max() < 1e-17 * np.abs(g2).max() and np.abs(h2).max() < 1e-17 * np.abs(g1).max():
            break
    return g, -eta**2 * g1, eta**3 * g2


@attrs.frozen(kw_only=True)
class Schedule:
    """Time-summed coefficients of a training schedule whose learning-rate matrices are diagonal in
    the eigenbasis of the mean NTK H̃ = O diag(h) Oᵀ on the training set.

    Attributes
    ----------
    g, g1, g2 : ndarray (N_A,), (N_A, N_A), (N_A,)*3
        The frozen-NTK solution z(T) = z − Ĥ_{·A} G(Ĥ̃) ε, G = Σ_t M_t Π_{s<t}(1 − Ĥ̃M_s) (later times
        on the left), expanded around Ĥ̃ = H̃ in the eigenbasis: G = O diag(g) Oᵀ +
        [g1_rs Δ_rs] + [Σ_m g2_rms Δ_rm Δ_ms] + O(Δ³).  For a constant rate η these are g_T and its
        first and second divided differences.
    A, B : dict
        Weights of the first-order (dNTK/ddNTK) sources summed over steps (``A``), and summed with the
        leading-order propagator of the training residual to the end (``B``; None when the schedule
        runs to convergence), as in :func:`_finite_step_weights`.
    h1_g1 : ndarray (N_A, N_A)
        The first-order change of G under a change of the *mean* NTK (H1/n), learning rates included
        (equal to g1 when the rates do not depend on H̃; −1/h_rh_s when the first step is the Newton
        step M = H̃⁻¹, after which G ≡ H̃⁻¹).
    """

    g: np.ndarray
    g1: np.ndarray
    g2: np.ndarray
    A: dict
    B: dict | None
    h1_g1: np.ndarray


def constant_schedule(h: np.ndarray, eta: float, T: int | None) -> Schedule:
    """T steps (None: to convergence) of GD at the constant rate η, in closed form."""
    g, g1, g2 = _divided_differences(h, eta, T)
    A, B = _finite_step_weights(h, eta, T)
    return Schedule(g=g, g1=g1, g2=g2, A=A, B=B, h1_g1=g1)


def rate_schedule(h: np.ndarray, rates: np.ndarray, *, h1_g1: np.ndarray | None = None) -> Schedule:
    """Any finite sequence of learning-rate matrices M_t = O diag(rates[t]) Oᵀ, summed step by step.

    Parameters
    ----------
    h : ndarray (N_A,)
        Eigenvalues of H̃.
    rates : ndarray (T, N_A)
        Per-step, per-eigenmode rates m_r(t) (a constant η: all η; the Newton step: 1/h).
    h1_g1 : ndarray (N_A, N_A), optional
        See :class:`Schedule` (default: g1, i.e. rates that do not depend on H̃).

    Notes
    -----
    Same first-order dynamics as training.md §4.2 with η ε → M_t ε.  With u_r(t) = 1 − m_r(t)h_r,
    V_a(t) = m_a(t) Π_{s<t}u_a(s) (the leading-order update M_tε⁰(t) per unit ε_a) and the running sums
    S1_c(t) = Σ_{s<t}V_c(s), S2_bc(t) = Σ_{s<t}V_b(s)V_c(s), W_bc(t) = Σ_{s<t}V_b(s)S1_c(s), the sources
    of step t are those of :func:`_finite_step_weights` with η²u_a^t S_t(u_b) → V_aS1_b, η²(u_au_b)^t
    → V_aV_b, η³P3 → V_aV_bS1_c, η³P5 → V_aS2_bc, η³P6 → V_aV_bV_c and η³W4 → V_aW_bc (every source is
    a product of one update per slot).  The training residual left at the end weights step t by
    Π_{t<s<T}u_e(s).  The frozen-NTK expansion follows from the ordered product: g_r = Σ_t V_r(t),
    g1_rs = −Σ_t m_r(t) F1_rs(t), F1(t+1) = u_r(t)F1(t) + V_s(t); g2_rms = Σ_t m_r(t) F2_rms(t),
    F2(t+1) = u_r(t)F2(t) + m_m(t)F1_ms(t).  For a constant rate this reproduces the closed forms of
    :func:`constant_schedule` (unit test).
    """
    h = np.asarray(h, dtype=float)
    rates = np.atleast_2d(np.asarray(rates, dtype=float))
    T, N = rates.shape
    u = 1.0 - rates * h[None, :]
    U = np.ones(N)
    S1 = np.zeros(N)
    S2 = np.zeros((N, N))
    W = np.zeros((N, N))
    F1 = np.zeros((N, N))
    F2 = np.zeros((N, N, N))
    g = np.zeros(N)
    g1 = np.zeros((N, N))
    g2 = np.zeros((N, N, N))
    names = ("dI", "dA", "RI_I", "RI_A", "RII_I", "RII_Ib", "W4")
    srcs = []
    for t in range(T):
        m = rates[t]
        V = m * U
        a3 = V[:, None, None]
        P1 = np.outer(V, V)
        P2 = np.outer(V, S1)
        P3 = (V[:, None] * V[None, :])[:, :, None] * S1[None, None, :]
        P5 = a3 * S2[None]
        P6 = a3 * P1[None]
        W4 = a3 * W[None]
        srcs.append({
            "dI": 0.5 * P1 + P2, "dA": P2,
            "RI_I": -(0.5 * P3 + W4 + 0.5 * P5 + P6 / 6.0), "RI_A": -(W4 + 0.5 * P5),
            "RII_I": -(0.5 * P3 + W4 + P5), "RII_Ib": -(0.5 * P3 + W4), "W4": -W4,
        })
        g += V
        g1 -= m[:, None] * F1
        g2 += m[:, None, None] * F2
        # advance the running sums to t + 1
        F2 = u[t][:, None, None] * F2 + m[None, :, None] * F1[None, :, :]
        F1 = u[t][:, None] * F1 + V[None, :]
        W = W + np.outer(V, S1)
        S2 = S2 + np.outer(V, V)
        S1 = S1 + V
        U = U * u[t]
    A = {k: sum(sr[k] for sr in srcs) if srcs else np.zeros((N,) * (2 if k in ("dI", "dA") else 3)) for k in names}
    B = {k: np.zeros((N,) + A[k].shape) for k in names}
    tail = np.ones(N)  # Π_{t<s<T} u_e(s), built backwards
    for t in range(T - 1, -1, -1):
        for k in names:
            B[k] += np.multiply.outer(tail, srcs[t][k])
        tail = tail * u[t]
    return Schedule(g=g, g1=g1, g2=g2, A=A, B=B, h1_g1=g1 if h1_g1 is None else np.asarray(h1_g1, dtype=float))


class _PolyTerm:
    """One term of the O(1/n) trained mean as a polynomial in the labels:
    ``coef · rowmap @ einsum(subs; ops)`` with output subscript ``<row letter>i``.

    ``kinds[p]`` marks operand p as a label factor: ``"y"`` (ŷ-rotated labels yr = Oᵀy carrying the
    output i, subscript ``"xi"``), ``"Y"`` (Σ_k yr_{x k} yr_{x' k}) or None.  Keeping the label factors
    apart makes the label derivative that the covariance needs (the Stein term, trained-cov.md §1 (4))
    an exact contraction instead of a finite difference.
    """

    __slots__ = ("coef", "subs", "ops", "out", "kinds", "rowmap")

    def __init__(self, coef, subs, ops, out, kinds, rowmap):
        self.coef, self.subs, self.ops, self.out, self.kinds, self.rowmap = coef, list(subs), list(ops), out, list(kinds), rowmap

    def _eval(self, subs, ops, out):
        X = self.coef * np.einsum(",".join(subs) + "->" + out, *ops, optimize=True)
        return X if self.rowmap is None else np.tensordot(self.rowmap, X, axes=([1], [0]))

    def value(self) -> np.ndarray:
        """The term, shape (N_E, n_L)."""
        return self._eval(self.subs, self.ops, self.out)

    def stein(self, kr: np.ndarray, yr: np.ndarray):
        """Σ_x kr_{Zx} ∂(term)_{i}/∂yr_{j;x}: the δ_ij part [row, Z] and the label part [row, i, Z, j].

        ``kr`` (N_Z, N_A) is K⋄ rotated into the eigenbasis (its sample slot), so this is
        Σ_α K⋄_{Zα} ∂𝔪_{i;row}/∂y_{j;α} (trained-cov.md §1 (4)).
        """
        row = self.out[0]
        delta = lab = 0.0
        for p, kind in enumerate(self.kinds):
            if kind == "y":
                subs, ops = list(self.subs), list(self.ops)
                subs[p], ops[p] = "Z" + self.subs[p][0], kr
                delta = delta + self._eval(subs, ops, row + "Z")
            elif kind == "Y":
                x1, x2 = self.subs[p]
                for pair in ((("Z" + x1, kr), (x2 + "j", yr)), ((x1 + "j", yr), ("Z" + x2, kr))):
                    subs = self.subs[:p] + [pair[0][0], pair[1][0]] + self.subs[p + 1:]
                    ops = self.ops[:p] + [pair[0][1], pair[1][1]] + self.ops[p + 1:]
                    lab = lab + self._eval(subs, ops, row + "iZj")
        return delta, lab


def _term(term, X, W, wlabels, rowlab, yr, Yr, Kr, nL, rowmap, extra=None) -> _PolyTerm:
    """One reduced term (from :func:`_reduce`) as a :class:`_PolyTerm` over eigen-labels."""
    coef, _, name, labels, yi, Ypairs, Ks, power = term
    subs = ["".join(rowlab if l == "I" else l for l in labels), wlabels]
    ops = [X, W]
    kinds = [None, None]
    for x in yi:
        subs.append(x + "i")
        ops.append(yr)
        kinds.append("y")
    for x1, x2 in Ypairs:
        subs.append(x1 + x2)
        ops.append(Yr)
        kinds.append("Y")
    for x1, x2 in Ks:
        subs.append(x1 + x2)
        ops.append(Kr)
        kinds.append(None)
    if extra is not None:
        subs.append(extra[0])
        ops.append(extra[1])
        kinds.append(None)
    out = (extra[2] if extra is not None else rowlab) + "i"
    return _PolyTerm(coef * nL**power, subs, ops, out, kinds, rowmap)


def _finite_mean_terms(eng: "_GradientEngine", sched: "Schedule") -> list[_PolyTerm]:
    """The label-polynomial terms of n·(E[z(T)] − mean at infinite width) other than the H1 term
    (see :func:`finite_steps_mean_correction`): dNTK, ddNTK and the frozen random NTK to second order."""
    h, O = eng.h, eng.O
    y, nL = eng.y, eng.nL
    b = eng.blocks
    yr = O.T @ y
    Yr = yr @ yr.T
    Kr = O.T @ eng.Kt @ O
    A_w, B_w = sched.A, sched.B
    Th = np.asarray(eng.stats.Theta)
    ThEA_O = Th[np.ix_(eng.E, eng.A)] @ O
    NE, NR = len(eng.E), len(eng.R)
    out = []
    Bmap = ThEA_O / h[None, :]
    for term in _mean_terms(_FINITE_PATTERNS):
        wname, labels = term[1], term[3]
        wl = "ab" if wname in ("dI", "dA") else "abc"
        pos = labels.index("I")
        out.append(_term(term, b.rot(term[2], (pos,)), A_w[wname], wl, "d", yr, Yr, Kr, nL, eng.Pr))
        if B_w is not None:
            out.append(_term(term, b.rot(term[2], ()), B_w[wname], "e" + wl, "e", yr, Yr, Kr, nL, Bmap))
    # the frozen random NTK, second order in ΔĤ: +E[ΔĤ_{Ir} ΔĤ_{rs}] g1_rs y_s + (ΘO)_{Ir} E[ΔĤ_{rm} ΔĤ_{ms}] g2_rms y_s
    g1, g2 = sched.g1, sched.g2
    take = np.eye(NR)[:NE]
    for t in _reduce("AB", ("I", "r", "r", "s"), ("s",), (), {"I": "i", "r": "kr", "s": "ks"}):
        X = b.rot(t[0], (t[1].index("I"),))
        out.append(_term((1.0, None) + t, X, g1, "rs", "d", yr, Yr, Kr, nL, take))
    for t in _reduce("AB", ("r", "m", "m", "s"), ("s",), (), {"r": "i", "m": "km", "s": "ks"}):
        out.append(_term((1.0, None) + t, b.rot(t[0], ()), g2, "rms", "d", yr, Yr, Kr, nL, None, extra=("dr", ThEA_O, "d")))
    return out


def _h1_finite(eng: "_GradientEngine", sched: "Schedule"):
    """δM = ∂/∂H [H_{EA} g_T(H̃)] along H1 (the H1 part of the mean NTK), shape (N_E, N_A)."""
    O = eng.O
    g, g1 = sched.g, sched.h1_g1
    H1 = _h1(eng.stats)
    H1r = O.T @ H1[np.ix_(eng.A, eng.A)] @ O
    Th = np.asarray(eng.stats.Theta)
    return H1[np.ix_(eng.E, eng.A)] @ (O * g) @ O.T + Th[np.ix_(eng.E, eng.A)] @ O @ (g1 * H1r) @ O.T


def finite_steps_mean_correction(eng: "_GradientEngine", eta: float, T: int | None, *, schedule: "Schedule | None" = None) -> np.ndarray:
    """n × (E[z(T)] − mean at infinite width) after T steps of GD (None: T = ∞), shape (N_E, n_L).

    ``schedule`` (a :class:`Schedule`) replaces the constant rate η and the T steps by any sequence
    of learning-rate matrices diagonal in the eigenbasis of H̃ (e.g. a Newton step then GD steps).

    Notes
    -----
    First-order solution of training.md §4.2 after T steps, in the eigenbasis of Θ̃ (ε⁰(t) = U^t ε):
    z¹_I(T) = A_I(T) − Θ_{IA}Θ̃⁻¹ A_A(T) + Θ_{IA}Θ̃⁻¹ ε¹_A(T), where A_I(T) = Σ_{t<T} s_I(t) sums the
    sources s_I(t) of :func:`_finite_step_weights` and ε¹_e(T) = Σ_{t<T} u_e^{T−1−t} s_e(t) is the
    first-order training residual (zero at T = ∞, which gives back training.md §4.4–§4.5).  The
    frozen random NTK enters through z − Ĥ_{·A} g_T(Ĥ̃) ε expanded to second order in ΔĤ with the
    divided differences of g_T (:func:`_divided_differences`), and H1 through the linearisation of
    Θ_{·A} g_T(Θ̃) y.  Averages: E[dĤ ε ε] = −E[dĤ z] y − E[dĤ z] y, E[ε ε ε] = −(y y y + 3 K y),
    E[ΔĤ ΔĤ] from A, B (training.md §0), reduced to sample indices by :func:`_reduce`.
    """
    sched = schedule if schedule is not None else constant_schedule(eng.h, eta, T)
    out = sum(t.value() for t in _finite_mean_terms(eng, sched))
    return out + _h1_finite(eng, sched) @ eng.y


def _ntk_slot_operator(eng: "_GradientEngine", sched: "Schedule") -> np.ndarray:
    """Λ_{J x b c} (N_E, N_R, N_A, N_A): the first-order change of Ĥ_{J A} g_T(Ĥ̃) w under ΔĤ is
    Σ_{x∈R, b∈A, c∈A} ΔĤ_{x b} Λ_{J x b c} w_c.

    For x an evaluation row, Λ = δ_{Jx} g_T; for x ∈ A it is the Daleckii–Krein term
    Σ_rs (ΘO)_{Jr} O_{xr} g1_rs O_{bs} O_{cs}.  At T = ∞ (g = H̃⁻¹, g1 = −1/h_rh_s) Λ = Pr ⊗ H̃⁻¹,
    the projection "ΔĤ⋄ H̃⁻¹" of trained-cov.md §2.
    """
    O = eng.O
    g, g1 = sched.g, sched.g1
    NE, NA = len(eng.E), len(eng.A)
    Th = np.asarray(eng.stats.Theta)
    ThO = Th[np.ix_(eng.E, eng.A)] @ O
    Lam = np.zeros((NE, NE + NA, NA, NA))
    Lam[np.arange(NE), np.arange(NE)] = (O * g) @ O.T
    Lam[:, NE:] = np.einsum("Jr,xr,rs,bs,cs->Jxbc", ThO, O, g1, O, O, optimize=True)
    return Lam


def _pq_direct(b, wI, wA, wsub, yr, Kr, nL):
    """The 𝒞^PQ,dir sums Σ_pq w [E[dĤ z_K] E[ε_p ε_q]] before the row and z-slot maps (trained-cov.md §1 (3)),
    for dNTK weights wI (pattern dĤ_{Jpq}) and wA (dĤ_{pJq}) with subscripts ``wsub`` ("rs" or "xrs").

    Returns (δ part [x, y], label part [x, j, y, i]) with x the row slot (evaluation row or rotated
    training eigen-row) and y the preactivation slot over R."""
    rot_row = wsub.startswith("x")
    Cr = nL * Kr + yr @ yr.T
    keep = (3,) if rot_row else (0, 3)
    P03, Q03 = b.rot("P", keep), b.rot("Q", keep)
    e = lambda s, *ops: np.einsum(s, *ops, optimize=True)  # noqa: E731
    Wd = e(f"xrsy,{wsub},rs->xy", P03, wI, Cr) + e(f"xrsy,{wsub},rs->xy", Q03, wI, Kr) + e(f"xsry,{wsub},rs->xy", Q03, wI, Kr)
    Wl = e(f"xrsy,{wsub},rj,si->xjyi", Q03, wI, yr, yr) + e(f"xsry,{wsub},ri,sj->xjyi", Q03, wI, yr, yr)
    if np.any(wA):
        P13, Q13 = (b.rot(n, (3,) if rot_row else (1, 3)) for n in ("P", "Q"))
        Q23 = b.rot("Q", (3,) if rot_row else (2, 3))
        Wd = Wd + e(f"rxsy,{wsub},rs->xy", P13 + Q13, wA, Kr) + e(f"rsxy,{wsub},rs->xy", Q23, wA, Cr)
        Wl = Wl + e(f"rxsy,{wsub},ri,sj->xjyi", P13, wA, yr, yr) + e(f"rxsy,{wsub},rj,si->xjyi", Q13, wA, yr, yr)
    return Wd, Wl


def finite_steps_cov_correction(eng: "_GradientEngine", eta: float, T: int | None, *, schedule: "Schedule | None" = None) -> np.ndarray:
    """n × (Cov[z(T)] − δ_ij Σ_T) after T steps of GD, shape (N_E, n_L, N_E, n_L), indexed [β̇1, i, β̇2, j].

    ``schedule``: as in :func:`finite_steps_mean_correction`.

    Notes
    -----
    trained-cov.md §2 with the finite-T per-network solution (docs/learning.md "finite T, O(1/n)
    covariance"): with P_T = [1, −Θ_{EA}g_T(Θ̃)] (the infinite-width map z ↦ z(T), g_T(x) =
    (1 − (1 − ηx)^T)/x) and K⋄_T = P_T K_{·A},

    * T0: 𝔰_T = P_T G1 P_Tᵀ − [δM K⋄_Tᵀ + (1↔2)], δM the H1-derivative of Θ_{EA}g_T(Θ̃);
    * T1 (D, F): −δ_ij Σ Λ_{β̇2 x b c}[D_{xbyc} + n_L F_{xybc} + F_{xcby}](P_T)_{β̇1 y} + (1↔2), with
      Λ of :func:`_ntk_slot_operator` replacing "⋄ … H̃⁻¹";
    * T2 (A, B): Λ ⊗ Λ contracted with E[ΔĤΔĤ] E[εε] (E[εε] = δK + yy);
    * 𝒞^PQ,dir: the dNTK weights of :func:`_finite_step_weights` (time sums of the sources and the
      first-order training residual ε¹(T)) contracted with E[dĤ z⋄_T] E[εε];
    * 𝒞^Stein = −Σ_α [K⋄_{T;β̇1α} ∂𝔪_{T;j;β̇2}/∂y_{i;α} + (1↔2)] with 𝔪_T the finite-T mean without
      H1, differentiated exactly term by term (:class:`_PolyTerm`).

    At T = ∞ this is the trained-cov.md §1 result (checked to rounding in the unit tests).
    """
    h, O = eng.h, eng.O
    y, nL = eng.y, eng.nL
    b = eng.blocks
    NE = len(eng.E)
    sched = schedule if schedule is not None else constant_schedule(h, eta, T)
    g = sched.g
    Th = np.asarray(eng.stats.Theta)
    ThEA_O = Th[np.ix_(eng.E, eng.A)] @ O
    MT = ThEA_O @ (g[:, None] * O.T)
    PT = np.hstack([np.eye(NE), -MT])
    KdT = PT @ eng.K_RR[:, NE:]  # K⋄_T, (N_E, N_A)
    yr = O.T @ y
    Kr = O.T @ eng.Kt @ O

    # T0: 𝔰_T
    G1 = _g1(eng.stats)
    X = _h1_finite(eng, sched) @ KdT.T
    delta = PT @ G1[np.ix_(eng.R, eng.R)] @ PT.T - X - X.T

    # T1: D, F through the NTK-slot operator Λ
    Lam = _ntk_slot_operator(eng, sched)
    DF4 = b.raw("D", (0, 2)) + nL * b.raw("F", (0, 1)).transpose(0, 2, 1, 3) + b.raw("F", (0, 3)).transpose(0, 2, 3, 1)
    C = np.einsum("Jxbc,xbyc,Iy->JI", Lam, DF4, PT, optimize=True)
    delta -= C + C.T

    # T2: A, B
    Kt = eng.Kt
    A02, B03, B01 = b.raw("A", (0, 2)), b.raw("B", (0, 3)), b.raw("B", (0, 1))
    LK = np.einsum("Jyde,ce->Jydc", Lam, Kt)
    LKY = np.einsum("Jyde,ce->Jydc", Lam, nL * Kt + y @ y.T)
    delta += np.einsum("Ixbc,xbyd,Jydc->IJ", Lam, A02, LK, optimize=True)
    delta += np.einsum("Ixbc,xdby,Jydc->IJ", Lam, B03, LK, optimize=True)
    delta += np.einsum("Ixbc,xybd,Jydc->IJ", Lam, B01, LKY, optimize=True)
    Ly = np.einsum("Ixbc,ci->Ixbi", Lam, y)
    lab = np.einsum("Ixbi,xbyd,Jydj->IiJj", Ly, A02, Ly, optimize=True)
    lab = lab + np.einsum("Ixbj,xdby,Jydi->IiJj", Ly, B03, Ly, optimize=True)

    # 𝒞^PQ,dir: A weights (row map Pn) and, at finite T, the training-residual B weights
    A_w, B_w = sched.A, sched.B
    Wd, Wl = _pq_direct(b, A_w["dI"], A_w["dA"], "rs", yr, Kr, nL)
    Wd = eng.Pr @ Wd @ PT.T
    Wl = np.einsum("ex,xjyi,fy->ejfi", eng.Pr, Wl, PT, optimize=True)
    if B_w is not None:
        Bmap = ThEA_O / h[None, :]
        Bd, Bl = _pq_direct(b, B_w["dI"], B_w["dA"], "xrs", yr, Kr, nL)
        Wd = Wd + Bmap @ Bd @ PT.T
        Wl = Wl + np.einsum("ex,xjyi,fy->ejfi", Bmap, Bl, PT, optimize=True)
    delta += Wd + Wd.T
    lab = lab + Wl.transpose(2, 3, 0, 1) + Wl

    # 𝒞^Stein
    kr = KdT @ O
    for t in _finite_mean_terms(eng, sched):
        sd, sl = t.stein(kr, yr)
        if np.ndim(sd):
            delta -= sd + sd.T
        if np.ndim(sl):
            lab = lab - sl - sl.transpose(2, 3, 0, 1)
    return expand_outputs(delta, nL) + lab


# ---------------------------------------------------------------------------------------------
# gradient descent


def _positive_float(owner, name, strict=True):
    def check(instance, attribute, value):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
        ok = ok and (value > 0 if strict else value >= 0)
        if not ok:
            rel = "> 0" if strict else ">= 0"
            raise ParameterError(f"The {name!r} parameter of {owner} must be finite and {rel}. Got {value!r} instead.")

    return check


def _steps(instance, attribute, value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ParameterError(
            f"The 'steps' parameter of GradientDescent must be None (train to convergence) or an integer >= 0. "
            f"Got {value!r} instead."
        )


def _output_statistics_with_dntk(algorithm, net, X, order, quadrature):
    """pdlt.flow with the dNTK statistics; until pdlt.flow supports order="dntk", the built-in
    recursions of :mod:`pdlt_plugins.dntk_recursions` fill them in."""
    stats = LearningAlgorithm.output_statistics(algorithm, net, X, order=order, quadrature=quadrature)
    if order == "dntk" and stats.P is None and getattr(net, "name", "") == "mlp":
        from pdlt.flow import _rule

        from .dntk_recursions import dntk_flow

        stats = dntk_flow(net, X, rule=_rule(quadrature))[-1]
    return stats


_DNTK_HINT = (
    "Compute them with pdlt.flow(net, X, order='dntk') (or pdlt_plugins.dntk_recursions.dntk_flow), use "
    "order='leading' for the infinite-width result only, or pass include_dntk=False to set P..U to zero "
    "(this drops the dNTK/ddNTK part of the 1/n correction; the result is then biased)."
)


@attrs.frozen(kw_only=True)
class _GradientBase(LearningAlgorithm):
    include_dntk: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))

    order: ClassVar[str] = "dntk"

    def output_statistics(self, net, X, *, order, quadrature=None):
        if order == "dntk" and not self.include_dntk:
            order = "full"  # P..U are set to zero: do not compute them (nor fail where they are not derived)
        return _output_statistics_with_dntk(self, net, X, order, quadrature)

    def _full_distribution(self, eng, stats, n_out: int, corrections: bool, notes: tuple) -> TrainedDistribution:
        """Infinite-width mean and covariance plus, when asked, their O(1/n) corrections."""
        mean = eng.mean_infinite()
        cov = expand_outputs(eng.cov_infinite(), n_out)
        mc = cc = None
        if corrections:
            L, M = eng.linear_coefficient(), eng.cubic_coefficient()
            n = float(stats.fan_in)
            mc = eng.mean_correction(L, M) / n
            cc = eng.cov_correction(L, M) / n
            cc = 0.5 * (cc + cc.transpose(2, 3, 0, 1))
            self._finite(mc, cc)
        return TrainedDistribution(
            algorithm=self, width=stats.fan_in, mean_infinite=mean, covariance_infinite=cov,
            mean_correction=mc, covariance_correction=cc, condition_number=eng.cond, notes=notes,
        )

    def _engine(self, stats, train, y, test, terms_fn, corrections):
        owner = type(self).__name__
        if corrections and _odd_output(stats):
            raise ParameterError(
                f"{owner}: the O(1/n) result of gradient-based training is not derived for an output layer with "
                "non-zero three-point tensors Omega, Pi, Phi (a residual output layer with an activation that is not "
                "odd): they add terms E[ΔĤ z] and odd dNTK means to the trained mean and covariance "
                "(docs/residual.md). Use order='leading' (infinite width), an odd activation, gamma = 0 in the "
                "output layer, or pdlt.Bayesian (whose O(1/n) posterior includes Omega)."
            )
        if corrections:
            _need(stats, ("A", "B", "D", "F"), owner, "Use pdlt.flow(net, X, order='full') or order='leading'.")
            if self.include_dntk:
                _need(stats, _DNTK, owner, _DNTK_HINT)
        return _GradientEngine(stats, train, y, test, terms_fn, zero_dntk=not self.include_dntk)

    def _finite(self, *arrays) -> None:
        if any(a is not None and not np.all(np.isfinite(a)) for a in arrays):
            raise NumericalError(
                f"{type(self).__name__}: the O(1/n) result is not finite. The dNTK/ddNTK statistics P..U are "
                "undefined (NaN) for kinked activations such as ReLU at coinciding samples (σ''σ'' = δ², "
                "docs/dntk.md), and the sums over training samples of training.md §4.5 always include them. "
                "Use a smooth activation (tanh, GELU, …) or include_dntk=False (P..U set to zero: it keeps the "
                "frozen-random-NTK part, which real ReLU networks do follow; their dNTK part was measured not to "
                "scale as 1/n, see docs/learning.md 'ReLU')."
            )

    def _notes(self, stats) -> tuple[str, ...]:
        notes = []
        if not self.include_dntk:
            notes.append("include_dntk=False: the dNTK/ddNTK statistics P, Q, R, S, T, U were set to zero")
        if stats.H1 is None or stats.G1 is None:
            notes.append("H1 or G1 missing: their 1/n parts of the NTK mean / two-point function were set to zero")
        return tuple(notes)


@attrs.frozen(kw_only=True)
class GradientDescent(_GradientBase):
    """Full-batch gradient descent on the MSE loss ½ Σ_{i, α̃∈A} (z_{i;α̃} − y_{i;α̃})².

    Parameters
    ----------
    learning_rate : float
        The global step η > 0; parameter μ moves by −η λ_μ ∂L/∂θ_μ with the architecture's
        learning-rate tensor (λ_b for biases, λ_W/n_{ℓ−1} for weights).  Must satisfy
        η < 2/λ_max(Θ̃) (checked by :func:`pdlt.solve`).
    steps : int or None
        Number of steps T; None trains to convergence (T → ∞).
    include_dntk : bool
        Use the dNTK/ddNTK statistics P, Q, R, S, T, U (required for the O(1/n) result unless
        this is set to False, which sets them to zero — an explicit, biased approximation).

    Notes
    -----
    Infinite width (book §7.2, §10.2.2; training.md §2): with U = 1 − ηΘ̃,
    z(T) = z − Θ_{·A} Θ̃⁻¹(1 − U^T)(z_A − y); the mean is Θ_{BA}Θ̃⁻¹(1 − U^T)y and the covariance
    follows from the Gaussian initial output (covariance K).  At T = ∞: m^∞ = Θ_{BA}Θ̃⁻¹y,
    Σ^∞ = K⋄⋄ (independent of η).

    O(1/n), T = ∞ (book §∞.2.3): the mean m^∞ + (1/n)[𝔪⋄ + H1⋄Θ̃⁻¹y] with 𝔪 = 𝔪^ΔNTK + 𝔪^dNTK +
    𝔪^ddI + 𝔪^ddII of training.md §4.5 and the algorithm tensors of §4.4 (:func:`algorithm_tensors`),
    evaluated in the eigenbasis of Θ̃ (training.md §8); the covariance δ_ij Σ^∞ + (1/n)[δ_ij 𝔰 + 𝒞^DF
    + 𝒞^AB + 𝒞^PQ,dir + 𝒞^Stein] of theory/trained-cov.md §1.

    Finite T: the infinite-width parts are exact for any T; the O(1/n) mean and covariance follow
    from the same first-order dynamics with time sums truncated at T
    (:func:`finite_steps_mean_correction`, :func:`finite_steps_cov_correction`; docs/learning.md);
    as T → ∞ they tend to the converged results above.
    """

    name: ClassVar[str] = "gradient_descent"

    learning_rate: float = attrs.field(validator=_positive_float("GradientDescent", "learning_rate"))
    steps: int | None = attrs.field(default=None, validator=_steps)

    def stability_limit(self, stats, train) -> float:
        """2/λ_max of the mean NTK on the training set: GD diverges for η at or above it (book §7.2)."""
        train = np.asarray(train, dtype=int)
        lam = max(
            float(np.linalg.eigvalsh(np.asarray(M)[np.ix_(train, train)])[-1])
            for M in (stats.Theta, stats.ntk_mean())
        )
        return 2.0 / lam if lam > 0 else float("inf")

    def check(self, stats, train) -> None:
        limit = self.stability_limit(stats, train)
        if not self.learning_rate < limit:
            raise ParameterError(
                f"The 'learning_rate' parameter of GradientDescent must be < 2/λ_max(Θ̃) = {limit:.6g} for these "
                f"training inputs (gradient descent diverges above it). Got {self.learning_rate!r} instead."
            )

    def trained_distribution(self, stats, train, y_train, test, *, corrections=True) -> TrainedDistribution:
        y = validate_labels(y_train, len(train), stats.width, "y_train", "GradientDescent")
        eta = float(self.learning_rate)
        self.check(stats, train)
        terms_fn = lambda h: algorithm_tensors(h, eta)  # noqa: E731
        notes = list(self._notes(stats)) if corrections else []
        if self.steps is not None:
            T = int(self.steps)
            eng = self._engine(stats, train, y, test, terms_fn, corrections)
            mean, cov = _finite_steps(eng, eta, T)
            mc = cc = None
            if corrections:
                n = float(stats.fan_in)
                mc = finite_steps_mean_correction(eng, eta, T) / n
                cc = finite_steps_cov_correction(eng, eta, T) / n
                cc = 0.5 * (cc + cc.transpose(2, 3, 0, 1))
                self._finite(mc, cc)
            return TrainedDistribution(
                algorithm=self, width=stats.fan_in, mean_infinite=mean, covariance_infinite=expand_outputs(cov, y.shape[1]),
                mean_correction=mc, covariance_correction=cc, condition_number=eng.cond, notes=tuple(notes),
            )
        eng = self._engine(stats, train, y, test, terms_fn, corrections)
        return self._full_distribution(eng, stats, y.shape[1], corrections, tuple(notes))


def _finite_steps(eng: _GradientEngine, eta: float, T: int):
    """Frozen-NTK GD after T steps: g_T(Θ̃) = Θ̃⁻¹(1 − (1 − ηΘ̃)^T) (book §10.2.2)."""
    h, O = eng.h, eng.O
    u = 1.0 - eta * h
    g = (O * ((1.0 - u**T) / h)) @ O.T
    Th = np.asarray(eng.stats.Theta)
    M = Th[np.ix_(eng.E, eng.A)] @ g
    mean = M @ eng.y
    P = np.hstack([np.eye(len(eng.E)), -M])
    cov = P @ eng.K_RR @ P.T
    return mean, cov


@attrs.frozen(kw_only=True)
class NewtonStep(_GradientBase):
    """One Newton step ("giant leap") on the MSE loss, book §10.2.1.

    Every parameter moves by Δθ_μ = −λ_μ Σ_{a,b∈A} ∂_μ z_a (H̃⁻¹)_{ab} ε_b with the sample-space
    learning-rate matrix H̃⁻¹, H = Θ + H1/n the mean NTK: at infinite width this lands exactly on
    the minimiser, z(1) = z − Θ_{·A}Θ̃⁻¹(z_A − y) (training.md §2), i.e. the fully trained
    distribution m^∞, Σ^∞.

    Notes
    -----
    O(1/n): expanding the single step to third order in Δθ (training.md §4.2 with η → H̃⁻¹),
    z(1) = z − Ĥ M ε + ½ dĤ (Mε)(Mε) − (1/6) ddĤ^I (Mε)³, M = H̃⁻¹, and averaging as in §4.5 and
    trained-cov.md §2 gives the §4.5 / trained-cov.md formulas with the algorithm tensors of
    :func:`newton_tensors` and *without* the projection of the NTK/dNTK slots: training points are
    not fitted exactly at finite width (their mean misses y by O(1/n); the variance is O(1/n)).
    The ddNTK-II and the NTK's second-order terms do not enter.
    """

    name: ClassVar[str] = "newton_step"

    def trained_distribution(self, stats, train, y_train, test, *, corrections=True) -> TrainedDistribution:
        y = validate_labels(y_train, len(train), stats.width, "y_train", "NewtonStep")
        eng = self._engine(stats, train, y, test, newton_tensors, corrections)
        return self._full_distribution(eng, stats, y.shape[1], corrections, self._notes(stats) if corrections else ())


def _small_steps(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ParameterError(
            f"The 'steps' parameter of GiantLeapSmallStep must be an integer >= 0. Got {value!r} instead."
        )


@attrs.frozen(kw_only=True)
class GiantLeapSmallStep(_GradientBase):
    """"A small step following a giant leap" (book §∞.2.1): one Newton step, then ``steps`` GD steps.

    The giant leap is :class:`NewtonStep` (learning-rate matrix (H̃)⁻¹ in sample space, H = Θ + H1/n
    the mean NTK on the training set): it fully trains an infinite-width network, but at finite width
    it leaves an O(1/√n) residual on the training set (the network's own NTK differs from H, and the
    dNTK/ddNTKs bend the step).  The small steps are ordinary full-batch GD steps on the MSE loss
    with the global rate ``learning_rate`` (same convention as :class:`GradientDescent`), which act
    only on that residual.

    Parameters
    ----------
    learning_rate : float
        η of the small steps, 0 < η < 2/λ_max(Θ̃) (checked by :func:`pdlt.solve`).
    steps : int
        Number of small steps after the leap (default 1; 0 is :class:`NewtonStep`).
    include_dntk : bool
        As for :class:`GradientDescent`.

    Notes
    -----
    Infinite width: m^∞, Σ^∞ (the leap lands on the minimiser; the small steps see zero residual).
    O(1/n): the finite-T first-order dynamics of :class:`GradientDescent` (training.md §4.2 with
    η → a learning-rate matrix) with the schedule M_0 = H̃⁻¹, M_1 = … = M_steps = η, all diagonal in
    the eigenbasis of H̃ (:func:`rate_schedule`), averaged exactly as for finite-T gradient descent
    (mean: training.md §4.5 structure; covariance: trained-cov.md §2 with the finite-T pieces,
    docs/learning.md).  The training residual after the leap is first order, so each small step
    multiplies it by 1 − ηH̃ (in the mean) while the dNTK moves the prediction once more; as
    ``steps`` → ∞ the frozen-NTK part tends to that of GD to convergence, the dNTK/ddNTK part does not
    (algorithm dependence, book §∞.2.3).
    """

    name: ClassVar[str] = "giant_leap_small_step"

    learning_rate: float = attrs.field(validator=_positive_float("GiantLeapSmallStep", "learning_rate"))
    steps: int = attrs.field(default=1, validator=_small_steps)

    def check(self, stats, train) -> None:
        limit = GradientDescent(learning_rate=1.0).stability_limit(stats, train)
        if not self.learning_rate < limit:
            raise ParameterError(
                f"The 'learning_rate' parameter of GiantLeapSmallStep must be < 2/λ_max(Θ̃) = {limit:.6g} for these "
                f"training inputs (the small gradient steps diverge above it). Got {self.learning_rate!r} instead."
            )

    def schedule(self, h: np.ndarray) -> Schedule:
        """The per-step eigen-rates: 1/h (the leap), then η for each small step."""
        h = np.asarray(h, dtype=float)
        rates = np.vstack([1.0 / h[None, :], np.full((int(self.steps), h.size), float(self.learning_rate))])
        # after the leap the mean-NTK solution is exactly H̃⁻¹ whatever H̃ is: its H1-derivative is −1/h_rh_s
        return rate_schedule(h, rates, h1_g1=-1.0 / np.multiply.outer(h, h))

    def trained_distribution(self, stats, train, y_train, test, *, corrections=True) -> TrainedDistribution:
        y = validate_labels(y_train, len(train), stats.width, "y_train", "GiantLeapSmallStep")
        self.check(stats, train)
        eng = self._engine(stats, train, y, test, newton_tensors, corrections)
        mean = eng.mean_infinite()
        cov = expand_outputs(eng.cov_infinite(), y.shape[1])
        mc = cc = None
        if corrections:
            sched = self.schedule(eng.h)
            n = float(stats.fan_in)
            mc = finite_steps_mean_correction(eng, None, None, schedule=sched) / n
            cc = finite_steps_cov_correction(eng, None, None, schedule=sched) / n
            cc = 0.5 * (cc + cc.transpose(2, 3, 0, 1))
            self._finite(mc, cc)
        return TrainedDistribution(
            algorithm=self, width=stats.fan_in, mean_infinite=mean, covariance_infinite=cov, mean_correction=mc,
            covariance_correction=cc, condition_number=eng.cond, notes=self._notes(stats) if corrections else (),
        )


# ---------------------------------------------------------------------------------------------
# Bayesian inference


def _three_point_posterior(Om: np.ndarray, Pr: np.ndarray, R: np.ndarray, A: np.ndarray, Ki: np.ndarray, yh: np.ndarray):
    """n × the third-cumulant parts of the O(1/n) posterior mean and covariance (docs/learning.md).

    The output's third cumulant n κ_{(i,1)(k,2)(m,3)} = δ_ik Ω_(12)3 + δ_im Ω_(13)2 + δ_km Ω_(23)1
    (residual output layer, σ not odd; :class:`pdlt_plugins.residual.ResidualStatistics`) enters the
    first Edgeworth term of the prior.  With w = z_B − K_BA K̃⁻¹ y (slot projection ⋄ = ``Pr`` over
    ``R`` = test + train samples), ŷ = K̃⁻¹y, s = Σ_k ŷ_k and Ŷ = Σ_k ŷ_kŷ_kᵀ:

        E[w_{i;β} | y] = ½ Σ κ3(w, a, b)(ŷ_a ŷ_b − K̃^{ab})
                       = Σ Ω⋄_{(βα)α'}(ŷ_{i;α}s_{α'} − K̃^{αα'}) + ½ Σ Ω_{(αα')β⋄}(Ŷ − n_L K̃⁻¹)_{αα'},
        Cov[w_{i;β}, w_{j;β'} | y] − Gaussian = Σ κ3(w, w', a) ŷ_a
                       = δ_ij Σ Ω_{(β⋄β'⋄)α}s_α + Σ Ω_{(β⋄α)β'⋄}ŷ_{i;α} + Σ Ω_{(β'⋄α)β⋄}ŷ_{j;α}.

    Returns ``(mean (N_B, n_L), covariance (N_B, n_L, N_B, n_L))``.
    """
    s = yh.sum(axis=1)
    nL = yh.shape[1]
    Oa = np.tensordot(Pr, Om[np.ix_(R, A, A)], axes=([1], [0]))  # Ω⋄_{(βα)α'}
    Ob = np.einsum("abr,er->abe", Om[np.ix_(A, A, R)], Pr)  # Ω_{(αα')β⋄}
    mean = (np.einsum("eab,ai,b->ei", Oa, yh, s) - np.einsum("eab,ab->e", Oa, Ki)[:, None]
            + 0.5 * np.einsum("abe,ab->e", Ob, yh @ yh.T - nL * Ki)[:, None])
    O2 = np.einsum("ex,xya,fy->efa", Pr, Om[np.ix_(R, R, A)], Pr)  # Ω_{(β⋄β'⋄)α}
    O3 = np.einsum("ex,xay,fy->eaf", Pr, Om[np.ix_(R, A, R)], Pr)  # Ω_{(β⋄α)β'⋄}
    cov = expand_outputs(O2 @ s, nL) + np.einsum("eaf,ai->eif", O3, yh)[:, :, :, None] + np.einsum(
        "fae,aj->efj", O3, yh)[:, None, :, :]
    return mean, cov


@attrs.frozen(kw_only=True)
class Bayesian(LearningAlgorithm):
    """Bayesian inference with the network's output distribution as prior (book ch. 6).

    Parameters
    ----------
    noise_variance : float
        σ_ε² >= 0 of Gaussian observation noise on the labels (0: exact conditioning, which needs
        distinct training inputs).

    Notes
    -----
    Infinite width (book §6.3; training.md §1.1): GP regression with K̃ → K̃ + σ_ε²,
    m = K_{BA}K̃⁻¹y, Σ = K_BB − K_BA K̃⁻¹ K_AB.  O(1/n) (book §6.4; training.md §1.2): with
    ŷ = K̃⁻¹y, V⋄ the vertex with its test slot projected through K K̃⁻¹ (G = K + G1/n linearised):

    * mean: (1/n)[G1⋄ K̃⁻¹ y + ½ Σ V⋄_{(β̇1)(23)} (ŷ_{i;1}(Σ_k ŷ_{k;2}ŷ_{k;3} − n_L K̃^{23}) − 2 K̃^{12}ŷ_{i;3})];
    * covariance: (1/n)[δ_ij G1⋄⋄ + ½ Σ {δ_ij V⋄⋄_{(β̇1β̇2)(12)}(Ŷ − n_L K̃⁻¹)^{12}
      + V⋄⋄_{(β̇1 1)(β̇2 2)}(ŷ_{i;1}ŷ_{j;2} − δ_ij K̃^{12}) + V⋄⋄_{(β̇1 2)(β̇2 1)}(ŷ_{j;1}ŷ_{i;2} − δ_ij K̃^{12})}].

    The distribution is that of the noiseless network output z (add σ_ε² to the variance for a
    noisy observation).
    """

    name: ClassVar[str] = "bayesian"
    order: ClassVar[str] = "full"

    noise_variance: float = attrs.field(default=0.0, validator=_positive_float("Bayesian", "noise_variance", strict=False))

    def allows_duplicate_inputs(self) -> bool:
        return self.noise_variance > 0

    def _prior(self, stats, train):
        A = np.asarray(train, dtype=int)
        K = np.asarray(stats.K)
        Kt = K[np.ix_(A, A)] + self.noise_variance * np.eye(len(A))
        h, O, cond = psd_eigh(Kt, "kernel K (+ noise)", "Bayesian")
        return A, K, (O / h) @ O.T, cond

    def trained_distribution(self, stats, train, y_train, test, *, corrections=True) -> TrainedDistribution:
        y = validate_labels(y_train, len(train), stats.width, "y_train", "Bayesian")
        A, K, Ki, cond = self._prior(stats, train)
        E = np.asarray(test, dtype=int)
        R = np.concatenate([E, A])
        nL = y.shape[1]
        Pk = K[np.ix_(E, A)] @ Ki
        Pr = np.hstack([np.eye(len(E)), -Pk])
        mean = Pk @ y
        # K_EE − K_EA (K̃ + σ_ε²)⁻¹ K_AE (not Pr K Prᵀ, which would count the noise block twice)
        sigma = K[np.ix_(E, E)] - Pk @ K[np.ix_(A, E)]
        cov = expand_outputs(sigma, nL)
        mc = cc = None
        if corrections:
            _need(stats, ("V",), "Bayesian", "Use pdlt.flow(net, X, order='full') or order='leading'.")
            n = float(stats.fan_in)
            V = np.asarray(stats.V)
            G1 = _g1(stats)
            yh = Ki @ y
            Yh = yh @ yh.T
            Vd = np.tensordot(Pr, V[np.ix_(R, A, A, A)], axes=([1], [0]))  # V⋄_{(β̇1)(23)}
            m = np.einsum("xabc,ai,bc->xi", Vd, yh, Yh - nL * Ki) - 2.0 * np.einsum("xabc,ab,ci->xi", Vd, Ki, yh)
            g1 = Pr @ G1[np.ix_(R, A)] @ yh
            mc = (g1 + 0.5 * m) / n
            # covariance
            G1dd = Pr @ G1[np.ix_(R, R)] @ Pr.T
            V01 = np.einsum("ex,xyab,fy->efab", Pr, V[np.ix_(R, R, A, A)], Pr)  # V⋄⋄_{(β̇1β̇2)(12)}
            V02 = np.einsum("ex,xayb,fy->eafb", Pr, V[np.ix_(R, A, R, A)], Pr)  # V⋄⋄_{(β̇1 1)(β̇2 2)}
            d = np.einsum("efab,ab->ef", V01, Yh - nL * Ki) - np.einsum("eafb,ab->ef", V02, Ki) - np.einsum(
                "ebfa,ab->ef", V02, Ki
            )
            lab = np.einsum("eafb,ai,bj->eifj", V02, yh, yh) + np.einsum("ebfa,aj,bi->eifj", V02, yh, yh)
            cc = (expand_outputs(G1dd + 0.5 * d, nL) + 0.5 * lab) / n
            Om = getattr(stats, "Omega", None)
            if Om is not None and np.any(Om):  # third cumulant of a residual output layer (σ not odd)
                m3, c3 = _three_point_posterior(np.asarray(Om), Pr, R, A, Ki, yh)
                mc = mc + m3 / n
                cc = cc + c3 / n
            cc = 0.5 * (cc + cc.transpose(2, 3, 0, 1))
        return TrainedDistribution(
            algorithm=self, width=stats.fan_in, mean_infinite=mean, covariance_infinite=cov,
            mean_correction=mc, covariance_correction=cc, condition_number=cond,
        )

    def log_evidence(self, stats, y_train, train=None, *, corrections: bool = False) -> float:
        """log p(y_A | hyperparameters), the Bayesian model evidence (book §6.2.2, §6.3).

        Parameters
        ----------
        stats : Statistics or Flow
            Output-layer statistics on the training inputs (``train`` selects them otherwise).
        y_train : ndarray (N_A, n_L)
        train : sequence of int, optional
            Indices of the training samples in ``stats`` (default: all).
        corrections : bool
            Add the O(1/n) term (needs V; G1 if available).

        Notes
        -----
        Infinite width: −½ Σ_i y_iᵀ K̃⁻¹ y_i − (n_L/2) log det(2π K̃), K̃ = K_AA + σ_ε².  O(1/n), from
        the Edgeworth expansion of the nearly-Gaussian prior (our derivation; verified exactly
        against Gaussian mixtures in tests/unit/test_learning.py):
        (1/n){½ tr[G1 (Ŷ − n_L K̃⁻¹)] + ⅛ Σ V_{(12)(34)}[(Ŷ − n_L K̃⁻¹)_{12}(Ŷ − n_L K̃⁻¹)_{34}
        − 4 K̃^{13}Ŷ_{24} + 2 n_L K̃^{13}K̃^{24}]}, Ŷ = Σ_k ŷ_kŷ_kᵀ, ŷ = K̃⁻¹y.
        """
        stats = stats[-1] if hasattr(stats, "layers") else stats
        train = np.arange(stats.K.shape[0]) if train is None else np.asarray(train, dtype=int)
        y = validate_labels(y_train, len(train), stats.width, "y_train", "Bayesian.log_evidence")
        A, K, Ki, cond = self._prior(stats, train)
        Kt = K[np.ix_(A, A)] + self.noise_variance * np.eye(len(A))
        nL = y.shape[1]
        _, logdet = np.linalg.slogdet(2 * np.pi * Kt)
        out = -0.5 * float(np.sum(y * (Ki @ y))) - 0.5 * nL * logdet
        if corrections:
            _need(stats, ("V",), "Bayesian.log_evidence", "Use pdlt.flow(net, X, order='full').")
            V = np.asarray(stats.V)[np.ix_(A, A, A, A)]
            G1 = _g1(stats)[np.ix_(A, A)]
            yh = Ki @ y
            Yh = yh @ yh.T
            Z = Yh - nL * Ki
            c = 0.5 * float(np.sum(G1 * Z))
            c += 0.125 * (
                np.einsum("abcd,ab,cd->", V, Z, Z)
                - 4.0 * np.einsum("abcd,ac,bd->", V, Ki, Yh)
                + 2.0 * nL * np.einsum("abcd,ac,bd->", V, Ki, Ki)
            )
            Om = getattr(stats, "Omega", None)
            if Om is not None and np.any(Om):
                Om = np.asarray(Om)[np.ix_(A, A, A)]
                s = yh.sum(axis=1)
                c += 0.5 * (np.einsum("abc,ab,c->", Om, Z, s) - 2.0 * np.einsum("abc,a,bc->", Om, s, Ki))
            out += c / float(stats.fan_in)
        return float(out)

    def log_bayes_factor(self, stats_1, stats_2, y_train, train=None, *, corrections: bool = False) -> float:
        """log[p(y|H1)/p(y|H2)] for two hyperparameter settings (their statistics), book §6.2.2."""
        return self.log_evidence(stats_1, y_train, train, corrections=corrections) - self.log_evidence(
            stats_2, y_train, train, corrections=corrections
        )


@hookimpl
def pdlt_register_learning_algorithms():
    return [Bayesian, GradientDescent, NewtonStep, GiantLeapSmallStep]
