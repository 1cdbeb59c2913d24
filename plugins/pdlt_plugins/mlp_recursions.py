"""Layer maps of the MLP: the recursions of theory/init.md §3, §5 and ntk-nlo.md §1.

All Gaussian expectations ⟨·⟩ are at K^(ℓ); C_b, C = C_W, λ_b, λ_W are those of layer ℓ+1 and
r = n_ℓ/n_{ℓ−1} multiplies every inherited (cross-neuron) term (theory/init.md §6, pitfall 1).
Derivative insertions ⟨∂β1∂β2 ·⟩ are in *slot* form (pair operators, :mod:`pdlt.contractions`),
valid at coinciding inputs and, through the engine's integration by parts, for kinked σ.
"""

from __future__ import annotations

import numpy as np

from pdlt.contractions import LayerExpectations, PairOp, apply_pair_op, first_derivative_terms, fourth_contract
from pdlt.flow import Statistics

__all__ = ["first_layer", "next_layer", "kernel_step", "ntk_step"]


def first_layer(net, X: np.ndarray, order: str) -> Statistics:
    """Layer 1 is exactly Gaussian: K^(1) = C_b + C_W x·x/n_0, Θ^(1) = λ_b + λ_W x·x/n_0 (book (4.8), §8.3)."""
    n0 = net.widths[0]
    h = net.hyperparameters(1)
    G0 = X @ X.T  # one BLAS syrk: exactly symmetric
    G0 /= n0
    # in place, same operations as C_b + C_W G0 and λ_b + λ_W G0; frozen arrays are not copied
    # by Statistics (each fresh N×N array costs as much as the arithmetic at large N)
    K = G0 * h["c_w"]
    K += h["c_b"]
    Theta = G0
    Theta *= h["lambda_w"]
    Theta += h["lambda_b"]
    for x in (K, Theta):
        x.setflags(write=False)
    fields = dict(K=K, Theta=Theta)
    if order != "leading":
        N = X.shape[0]
        z2, z4 = np.zeros((N, N)), np.zeros((N,) * 4)
        fields.update(V=z4, G1=z2, H1=z2, A=z4, B=z4, D=z4, F=z4)
    if order == "dntk":
        from .dntk_recursions import first_layer_dntk

        fields.update(first_layer_dntk(X.shape[0]))
    return Statistics(layer=1, width=net.widths[1], fan_in=n0, **fields)


def kernel_step(E: LayerExpectations, c_b: float, c_w: float) -> np.ndarray:
    """K^(ℓ+1) = C_b + C_W ⟨σσ⟩_{K^(ℓ)} (book §4.3)."""
    return c_b + c_w * E.pair(0, 0)


def ntk_step(E: LayerExpectations, Theta: np.ndarray, c_w: float, lambda_b: float, lambda_w: float) -> np.ndarray:
    """Θ^(ℓ+1) = λ_b + λ_W ⟨σσ⟩ + C_W ⟨σ'σ'⟩ Θ^(ℓ), elementwise (book §8.3.1)."""
    return lambda_b + lambda_w * E.pair(0, 0) + c_w * E.pair(1, 1) * Theta


def _leading_step(E: LayerExpectations, Theta: np.ndarray, c_b: float, c_w: float, lambda_b: float, lambda_w: float):
    """:func:`kernel_step` and :func:`ntk_step` in place, in the buffers of ⟨σσ⟩ and ⟨σ'σ'⟩.

    At leading order nothing else needs those matrices, so they become K and Θ without fresh
    N×N arrays (whose first touch costs as much as the arithmetic), one cache-sized block of
    rows at a time.  The operations and their order are those of the two functions, so the
    results are identical.
    """
    S00 = E.release_pair(0, 0)
    S11 = E.release_pair(1, 1)
    N = S00.shape[0]
    rows = max(1, (1 << 14) // N)
    buf = np.empty((rows, N))
    for i0 in range(0, N, rows):
        sl = slice(i0, min(N, i0 + rows))
        s00, th = S00[sl], S11[sl]
        th *= c_w
        th *= Theta[sl]  # (C_W ⟨σ'σ'⟩) Θ
        t = np.multiply(s00, lambda_w, out=buf[: th.shape[0]])
        t += lambda_b
        th += t  # + (λ_b + λ_W ⟨σσ⟩)
        s00 *= c_w
        s00 += c_b
    return S00, S11


def next_layer(net, s: Statistics, ell: int, order: str, rule=None) -> Statistics:
    """Statistics of layer ℓ+1 from those of layer ℓ (``s``)."""
    h = net.hyperparameters(ell + 1)
    c_b, C, lb, lw = h["c_b"], h["c_w"], h["lambda_b"], h["lambda_w"]
    E = LayerExpectations(net.activation, s.K, rule)
    if order == "leading":
        K, Theta = _leading_step(E, s.Theta, c_b, C, lb, lw)
        for x in (K, Theta):
            x.setflags(write=False)  # handed to Statistics as is (no copy)
        return Statistics(layer=ell + 1, width=net.widths[ell + 1], fan_in=s.width, quadrature_error=E.max_error, K=K, Theta=Theta)
    K = kernel_step(E, c_b, C)
    Theta0 = s.Theta
    Theta = ntk_step(E, Theta0, C, lb, lw)
    fields = dict(K=K, Theta=Theta)
    if order != "leading":
        fields.update(_corrections(E, s, C, lw))
    if order == "dntk":
        from .dntk_recursions import dntk_step

        # components that are undefined for kinked σ (δ·δ at coinciding inputs) are NaN there,
        # see docs/dntk.md; consumers check before use
        fields.update(dntk_step(E, s, C, lw, F_next=fields["F"], undefined="nan"))
    return Statistics(layer=ell + 1, width=net.widths[ell + 1], fan_in=s.width, quadrature_error=E.max_error, **fields)


def _corrections(E: LayerExpectations, s: Statistics, C: float, lw: float) -> dict:
    r = s.width / s.fan_in
    Th = s.Theta
    S00, S11 = E.pair(0, 0), E.pair(1, 1)
    T0000 = E.quad((0, 0, 0, 0))
    T1100 = E.quad((1, 1, 0, 0))
    T0011 = T1100.transpose(2, 3, 0, 1)
    T1111 = E.quad((1, 1, 1, 1))
    T1010 = E.quad((1, 0, 1, 0))
    Th12 = Th[:, :, None, None]
    Th34 = Th[None, None, :, :]
    Qm = lw * S00 + C * Th * S11  # ⟨q⟩, q_ab = λ_W σ_aσ_b + C Θ_ab σ'_aσ'_b
    Sm = C * S00  # ⟨s⟩, s_ab = C σ_aσ_b

    cov_ss = C**2 * (T0000 - S00[:, :, None, None] * S00[None, None])
    qq = lw**2 * T0000 + lw * C * (Th34 * T0011 + Th12 * T1100) + C**2 * Th12 * Th34 * T1111
    cov_qq = qq - Qm[:, :, None, None] * Qm[None, None]
    cov_qs = C * (lw * T0000 + C * Th12 * T1100) - Qm[:, :, None, None] * Sm[None, None]

    op_ss = E.pair_op(0, 0)
    op_11 = E.pair_op(1, 1)
    op_s = op_ss.scaled(C)  # ⟨∂∂ s_ab⟩
    op_q = op_ss.scaled(lw) + op_11.scaled(C * Th)  # ⟨∂∂ q_ab⟩

    V, G1, H1, A, B, D, F = s.V, s.G1, s.H1, s.A, s.B, s.D, s.F
    Vs = apply_pair_op(V, op_s, 0)
    Vq = apply_pair_op(V, op_q, 0)
    V_new = cov_ss + 0.25 * r * apply_pair_op(Vs, op_s, 2)

    # G1' = r C [½ Σ G1 ⟨∂∂σσ⟩ + ⅛ Σ V ⟨∂⁴σσ⟩]  (book §4.5)
    G1_new = r * C * (0.5 * apply_pair_op(G1, op_ss, 0) + 0.125 * fourth_contract(V, E.fourth(0, 0)))

    Dq = apply_pair_op(D, op_q, 2)  # Σ_β D_{12β1β2} ⟨∂β1∂β2 q_34⟩
    Ds = apply_pair_op(D, op_s, 2)
    S11_12 = S11[:, :, None, None]
    S11_34 = S11[None, None, :, :]
    half_C_Dq = 0.5 * C * S11_12 * Dq
    A_new = cov_qq + r * (
        0.25 * apply_pair_op(Vq, op_q, 2) + half_C_Dq + half_C_Dq.transpose(2, 3, 0, 1) + C**2 * S11_12 * S11_34 * A
    )
    D_new = cov_qs + r * (0.25 * apply_pair_op(Vq, op_s, 2) + 0.5 * C * S11_12 * Ds)
    # B'_pqrs = C² [Θ_pr Θ_qs ⟨σ'σ'σ'σ'⟩ + r ⟨σ'_pσ'_q⟩⟨σ'_rσ'_s⟩ B_pqrs]
    Th_pr_qs = Th[:, None, :, None] * Th[None, :, None, :]
    B_new = C**2 * (Th_pr_qs * T1111 + r * S11[:, :, None, None] * S11[None, None] * B)
    # F'_pqrs = C² [Θ_pr ⟨σ'_pσ_qσ'_rσ_s⟩ + r Σ F_{perg} ⟨∂_e(σ'_pσ_q)⟩⟨∂_g(σ'_rσ_s)⟩]
    F_new = C**2 * (Th[:, None, :, None] * T1010 + r * first_derivative_terms(F, *E.first(1, 0)))

    # H1' (ntk-nlo.md §1)
    F4s, F4p = E.fourth(0, 0), E.fourth(1, 1)
    Eq = {n: lw * F4s[n] + C * Th * F4p[n] for n in range(5)}

    Y = 0.5 * D + F.transpose(0, 2, 1, 3)  # Y_{ab β1β2} = ½ D_{abβ1β2} + F_{aβ1bβ2}
    N = Y.shape[0]
    a = np.arange(N)[:, None]
    b = np.arange(N)[None, :]
    DF = op_11.aa * Y[a, b, a, a] + op_11.ab * (Y[a, b, a, b] + Y[a, b, b, a]) + op_11.bb * Y[a, b, b, b]
    H1_new = r * (0.5 * apply_pair_op(G1, op_q, 0) + 0.125 * fourth_contract(V, Eq) + C * S11 * H1 + C * DF)
    return dict(V=V_new, G1=G1_new, H1=H1_new, A=A_new, B=B_new, D=D_new, F=F_new)
