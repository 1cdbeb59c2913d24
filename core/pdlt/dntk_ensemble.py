"""Exact dNTK and ddNTK of real random MLPs, and Monte Carlo estimates of P, Q, R, S, T, U.

The effective theory's dNTK/ddNTK statistics (book ch. 11, ∞; theory/training.md §0) are checked
against ensembles of explicit networks.  This module computes, per network and batched over the
ensemble, the exact differentials of the output layer along the *tangent vectors*
v_J = λ ∇_θ z_J (theory/dntk.md §3, J = (i, δ) an output index):

* Ĥ_{IJ} = Dz_I[v_J], dĤ_{I0I1I2} = D²z_{I0}[v_{I1}, v_{I2}], ddĤ^I_{I0I1I2I3} = D³z_{I0}[v_{I1}, v_{I2}, v_{I3}]
  by forward-mode Taylor ("jet") arithmetic through the network, with the parameters moved
  along the v's.  Every weight tangent is rank one, (λ_W/n) g ⊗ σ, so no n×n matrix per
  direction is ever formed.
* ddĤ^II_{I1I2I3I4} = (Hess z_{I1} v_{I3})ᵀ λ (Hess z_{I2} v_{I4}) by forward-over-reverse:
  the tangent of the backward pass along v_J gives ∂_θ(Dz_I[v_J]) layer by layer, and its
  λ-weighted inner products factorise into O(n) dot products (the weight gradient of a layer is a
  sum of two outer products).  The same route gives dĤ a second time (a consistency check).

No finite differences are used (tests cross-check against them on tiny networks).

:func:`sample_dntk` turns these into estimates, with standard errors, of the output layer's
P, Q, R, S, T, U in the normalisation of training.md §0 (multiplied by the fan-in n_{L−1}),
each averaged over the ordered pairs a ≠ b of output neurons (theory/dntk.md §4.1).
"""

from __future__ import annotations

import itertools

import attrs
import numpy as np

from .ensemble import Estimate, _array_eq, _check_common, _chunk_plan, _PooledMoments, _readonly
from .errors import NumericalError, ParameterError
from .networks import NetworkParameters, as_inputs, sample_parameters
from .progress import Progress

__all__ = [
    "OutputDifferentials",
    "output_differentials",
    "per_network_estimates",
    "DntkStatistics",
    "sample_dntk",
    "DNTK_FIELDS",
    "gd_step_ntk_change",
    "GDStepStatistics",
    "sample_gd_step",
    "ntk_step_change_theory",
]

DNTK_FIELDS = ("P", "Q", "R", "S", "T", "U")


@attrs.frozen(kw_only=True, eq=False)
class OutputDifferentials:
    """Exact differentials of the output z^(L) of an ensemble of networks (arrays not copied).

    Flattened output indices I = (i, δ) ↦ i·N + δ (i over n_L outputs, δ over N inputs), M = n_L N.

    Attributes
    ----------
    z : ndarray (size, n_L, N)
        Outputs z_{i;δ}.
    H : ndarray (size, M, M)
        NTK Ĥ_{IJ}.
    dH : ndarray (size, M, M, M)
        dNTK dĤ_{I0 I1 I2} (symmetric in I1 ↔ I2).
    ddH1 : ndarray (size, M, T) or None
        ddNTK-I D³z_{I0}[v_{J1}, v_{J2}, v_{J3}] for the direction triples ``triples`` (T, 3).
    triples : ndarray (T, 3) of int or None
    ddH2 : ndarray (size, M, M, M, M) or None
        ddNTK-II ddĤ^II_{I1 I2 I3 I4}.
    dH_reverse : ndarray (size, M, M, M) or None
        dĤ again, by forward-over-reverse (only when requested; equals ``dH`` to round-off).
    """

    z: np.ndarray
    H: np.ndarray
    dH: np.ndarray
    ddH1: np.ndarray | None = None
    triples: np.ndarray | None = None
    ddH2: np.ndarray | None = None
    dH_reverse: np.ndarray | None = None


#: OpenBLAS runs a GEMM with m·n·k below this single-threaded (SMP_THRESHOLD_MIN × the default
#: GEMM_MULTITHREAD_THRESHOLD).  The per-network products here are small and come in long
#: stacks separated by elementwise work; waking BLAS threads for each of them was measured to
#: cost 10–100× the arithmetic on a 2-core machine (n = 64: 36 vs 490 networks/s), so the
#: stacks are cut into column blocks that stay below the threshold.
_GEMM_SINGLE_THREAD = 262_144


def _stacked_matmul(W: np.ndarray, A: np.ndarray) -> np.ndarray:
    """W @ A for stacks W (S, m, n), A (S, n, c), in column blocks below the BLAS threading size."""
    m, n = W.shape[-2:]
    c = A.shape[-1]
    block = max(1, _GEMM_SINGLE_THREAD // max(m * n, 1) - 1)
    if c <= block:
        return W @ A
    out = np.empty(W.shape[:-1] + (c,))
    for start in range(0, c, block):
        out[..., start : start + block] = W @ A[..., start : start + block]
    return out


def _derivatives(act, z: np.ndarray, top: int) -> list[np.ndarray]:
    """[σ, σ', …, σ^(top)] at z; kinked activations are refused (see :func:`output_differentials`)."""
    if act.max_derivative < top:
        raise NumericalError(
            f"The 'activation' {act.name!r} has distributional derivatives of order > {act.max_derivative}; "
            "the derivatives of a single network are then almost-everywhere derivatives that miss the kink's δ "
            "terms, so their ensemble averages do not estimate the effective P, Q, R, S, T, U. Use a smooth "
            "activation (e.g. a smoothed kink, σ_ε → σ) and extrapolate in ε (docs/dntk.md)."
        )
    return [np.asarray(act.derivative(z, d), dtype=float) for d in range(top + 1)]


def _output_selection(outputs, n_out: int):
    if outputs is None:
        return None
    sel = np.asarray(outputs).reshape(-1)
    if (sel.size < 1 or not np.issubdtype(sel.dtype, np.integer) or np.any(sel < 0) or np.any(sel >= n_out)
            or len(np.unique(sel)) != sel.size):
        raise ParameterError(
            f"The 'outputs' parameter must be distinct integers in [0, n_L = {n_out}). Got {outputs!r} instead."
        )
    return sel.astype(int)


def _residual_strengths(net, params: NetworkParameters, L: int):
    """(γ, ξ) of a residual architecture (attributes ``gammas``, ``xis``), or None for a plain MLP
    (absent, or γ = 0 and ξ = 1 everywhere: then the MLP code path runs unchanged, bit for bit)."""
    gam, xis = getattr(net, "gammas", None), getattr(net, "xis", None)
    if gam is None and xis is None:
        return None
    gam = np.zeros(L) if gam is None else np.asarray(gam, dtype=float).reshape(-1)
    xis = np.ones(L) if xis is None else np.asarray(xis, dtype=float).reshape(-1)
    if gam.shape != (L,) or xis.shape != (L,):
        raise ParameterError(f"The 'net' parameter must give one gamma and one xi per layer (L = {L}). Got {gam!r}, {xis!r} instead.")
    if np.all(gam == 0.0) and np.all(xis == 1.0):
        return None
    if gam[0] != 0.0:
        raise ParameterError(f"The 'net' parameter must have gamma^(1) = 0 (the first layer is plain). Got {gam[0]!r} instead.")
    return gam, xis


def _scaled_parameters(params: NetworkParameters, xis: np.ndarray) -> NetworkParameters:
    """W^(ℓ), b^(ℓ) multiplied by ξ^(ℓ): ξ[b + Wσ] + γz is then an MLP layer plus the shortcut, and
    moving (W, b) along λ∇ equals moving (ξW, ξb) along ξ²λ∇ (same tangent vectors of z)."""
    return attrs.evolve(
        params,
        weights=tuple(x * W for x, W in zip(xis, params.weights)),
        biases=tuple(x * b for x, b in zip(xis, params.biases)),
    )


def _all_triples(n_out: int, N: int) -> np.ndarray:
    """Direction triples ((a, δ1), (b, δ2), (b, δ3)) for every ordered pair a ≠ b: what R needs."""
    rows = []
    for a, b in itertools.permutations(range(n_out), 2):
        for d1, d2, d3 in itertools.product(range(N), repeat=3):
            rows.append((a * N + d1, b * N + d2, b * N + d3))
    return np.asarray(rows, dtype=int).reshape(-1, 3)


def output_differentials(
    net,
    params: NetworkParameters,
    X,
    *,
    ddntk1: bool = True,
    ddntk2: bool = True,
    triples=None,
    check_reverse: bool = False,
    outputs=None,
) -> OutputDifferentials:
    """Exact Ĥ, dĤ, ddĤ^I, ddĤ^II of the output layer of every network in ``params``.

    Parameters
    ----------
    net : Architecture (MLP)
        Widths, activation (needs σ', σ'', σ''' as ordinary functions) and per-layer λ_b, λ_W.
    params : NetworkParameters
        The ensemble (see :func:`pdlt.networks.sample_parameters`).
    X : ndarray (N, n_0)
        Inputs.
    ddntk1, ddntk2 : bool
        Compute ddĤ^I (third-order jets) and ddĤ^II (forward-over-reverse).
    triples : array_like (T, 3) of int, optional
        Direction triples (J1, J2, J3) for ddĤ^I; default: those R needs (all ((a,·),(b,·),(b,·)),
        a ≠ b).
    check_reverse : bool
        Also compute dĤ by forward-over-reverse (``dH_reverse``).
    outputs : sequence of int, optional
        Output neurons to keep (distinct, in [0, n_L)); default all.  The differentials of the kept
        neurons are exact and unchanged; this makes wide output layers affordable (cost ∝ kept⁴),
        e.g. a residual output layer with n_L = n_{L−1}.

    Returns
    -------
    OutputDifferentials
        With ``outputs``, the output index i runs over the kept neurons in the given order.

    Notes
    -----
    Conventions of training.md §0: learning-rate tensor λ_b^(ℓ) for biases and λ_W^(ℓ)/n_{ℓ−1}
    for weights; v_J = λ∇_θ z_J.  Jet rules for a = σ(z) with z = z0 + Σ t_J Z1_J + … :
    A1 = σ'Z1, A2 = σ'Z2 + σ''Z1Z1, A3 = σ'Z3 + σ''(Z1Z2 + Z1Z2 + Z1Z2) + σ'''Z1Z1Z1, and
    through z' = b + W a with the parameters moved along the v's (tangents λ_b g, (λ_W/n) g ⊗ a).

    Raises
    ------
    NumericalError
        For kinked activations (σ'' a distribution): per-network a.e. derivatives do not
        estimate the effective statistics.
    """
    widths = net.widths
    X = as_inputs(X, widths[0], "output_differentials")
    L = len(widths) - 1
    act = net.activation
    lam_b, lam_w = net.lambda_B, net.lambda_W
    gam = _residual_strengths(net, params, L)
    if gam is not None:  # residual net: the branch factor ξ folds into W, b and λ (exact rescaling)
        gam, xis = gam
        params = _scaled_parameters(params, xis)
        lam_b = np.asarray(lam_b, dtype=float) * xis**2
        lam_w = np.asarray(lam_w, dtype=float) * xis**2
    N = X.shape[0]
    sel = _output_selection(outputs, widths[-1])
    nL = widths[-1] if sel is None else len(sel)
    M = nL * N
    Kd = M  # number of directions
    S = params.size
    dJ = np.tile(np.arange(N), nL)  # input of direction J = i·N + δ
    iJ = np.repeat(np.arange(nL), N)
    top = 3 if ddntk1 else 2
    if L < 2:
        raise ParameterError(f"The 'net' parameter of output_differentials must have depth L >= 2. Got L = {L} instead.")

    # ---- forward pass: z^(ℓ), σ^(d)(z^(ℓ)) -----------------------------------------------------
    Ws, bs = params.weights, params.biases
    zs = [Ws[0] @ X.T + bs[0][:, :, None]]
    ders = []
    for ell in range(1, L):
        d = _derivatives(act, zs[-1], top)
        ders.append(d)
        zs.append(_stacked_matmul(Ws[ell], d[0]) + bs[ell][:, :, None])
        if gam is not None and gam[ell] != 0.0:
            zs[-1] = zs[-1] + gam[ell] * zs[-2]
    # ders[ℓ-1] = derivatives at layer ℓ (ℓ = 1..L−1); activations a^(ℓ) = ders[ℓ-1][0], a^(0) = x

    # ---- backward pass: g^(ℓ)[s, k, δ, i] = ∂z^(L)_{i;δ}/∂z^(ℓ)_{k;δ} ---------------------------
    g = [None] * (L + 1)
    h = [None] * (L + 1)  # h^(ℓ) = W^(ℓ+1)ᵀ g^(ℓ+1), so g^(ℓ) = σ'(z^(ℓ)) h^(ℓ)
    eye_out = np.eye(nL) if sel is None else np.eye(widths[-1])[:, sel]
    g[L] = np.broadcast_to(eye_out[None, :, None, :], (S, widths[-1], N, nL))
    for ell in range(L - 1, 0, -1):
        n_next = widths[ell + 1]
        WT = np.swapaxes(Ws[ell], 1, 2)  # (S, n_ℓ, n_{ℓ+1})
        h[ell] = _stacked_matmul(WT, np.ascontiguousarray(g[ell + 1]).reshape(S, n_next, N * nL)).reshape(S, widths[ell], N, nL)
        g[ell] = ders[ell - 1][1][:, :, :, None] * h[ell]
        if gam is not None and gam[ell] != 0.0:  # shortcut z^(ℓ+1) ∋ γ z^(ℓ)
            g[ell] = g[ell] + gam[ell] * g[ell + 1]
    # G^(ℓ)[s, k, J] = g^(ℓ)[s, k, δ_J, i_J]; A^(ℓ)[s, k, J] = a^(ℓ)[s, k, δ_J]
    G = [None] + [g[ell][:, :, dJ, iJ] for ell in range(1, L + 1)]

    # ---- forward jets along the v's --------------------------------------------------------
    if triples is None:
        triples = _all_triples(nL, N) if ddntk1 else np.zeros((0, 3), dtype=int)
    triples = np.asarray(triples, dtype=int).reshape(-1, 3)
    t1, t2, t3 = triples.T
    T = len(triples)
    theta1 = lam_b[0] + lam_w[0] * (X @ X.T) / widths[0]  # (N, N)
    Z1 = G[1][:, :, None, :] * theta1[:, dJ][None, None]  # (S, n1, N, K)
    Z2 = None
    Z3 = None
    A1s = [None]  # A1s[ℓ] = σ'(z^(ℓ)) Z1^(ℓ): the tangent of a^(ℓ), needed by ddĤ^II
    Z1s = [None, Z1]
    for ell in range(1, L):
        a, s1 = ders[ell - 1][0], ders[ell - 1][1]
        s2 = ders[ell - 1][2]
        n, m = widths[ell], widths[ell + 1]
        W = Ws[ell]
        Gn = G[ell + 1]  # (S, m, K)
        Aell = a[:, :, dJ]  # (S, n, K)
        c = lam_w[ell] / n
        A1 = s1[..., None] * Z1
        A2 = s2[..., None, None] * Z1[..., :, None] * Z1[..., None, :]
        if Z2 is not None:
            A2 = A2 + s1[..., None, None] * Z2
        A1s.append(A1)
        # Z1' = G'(λ_b + c a_{δ_J}·a_δ) + W A1
        ip1 = np.einsum("snK,snd->sdK", Aell, a)
        Z1n = Gn[:, :, None, :] * (lam_b[ell] + c * ip1)[:, None] + _stacked_matmul(W, A1.reshape(S, n, N * Kd)).reshape(S, m, N, Kd)
        # Z2' = W A2 + c (G'_{J1} a_{δ_J1}·A1_{δ,J2} + (J1 ↔ J2))
        ip2 = np.einsum("snJ,sndL->sdJL", Aell, A1)  # (S, N, K, K)
        Z2n = _stacked_matmul(W, A2.reshape(S, n, N * Kd * Kd)).reshape(S, m, N, Kd, Kd)
        cross = c * Gn[:, :, None, :, None] * ip2[:, None]
        Z2n = Z2n + cross + np.swapaxes(cross, -1, -2)
        ge = 0.0 if gam is None else gam[ell]
        if ge != 0.0:  # the shortcut carries the lower jets unchanged (it has no parameters)
            Z1n = Z1n + ge * Z1[:, :, :, :]
            if Z2 is not None:
                Z2n = Z2n + ge * Z2
        if T:
            s3 = ders[ell - 1][3]
            A3 = s3[..., None] * Z1[..., t1] * Z1[..., t2] * Z1[..., t3]
            if Z2 is not None:
                A3 = A3 + s2[..., None] * (Z1[..., t1] * Z2[..., t2, t3] + Z1[..., t2] * Z2[..., t1, t3] + Z1[..., t3] * Z2[..., t1, t2])
            if Z3 is not None:
                A3 = A3 + s1[..., None] * Z3
            Z3n = _stacked_matmul(W, A3.reshape(S, n, N * T)).reshape(S, m, N, T)
            # c Σ_{3 terms} G'_{J1} (a_{δ_J1} · A2_{δ, J2 J3})
            for p, q, u in ((t1, t2, t3), (t2, t1, t3), (t3, t1, t2)):
                ip3 = np.einsum("snT,sndT->sdT", Aell[:, :, p], A2[:, :, :, q, u])
                Z3n = Z3n + c * Gn[:, :, None, p] * ip3[:, None]
            if ge != 0.0 and Z3 is not None:
                Z3n = Z3n + ge * Z3
            Z3 = Z3n
        Z1, Z2 = Z1n, Z2n
        Z1s.append(Z1)

    z_out = zs[-1]
    if sel is not None:
        z_out, Z1, Z2 = z_out[:, sel], Z1[:, sel], Z2[:, sel]
        Z3 = Z3[:, sel] if T else None
    H = Z1.reshape(S, M, Kd)  # rows I = i·N + δ
    dH = Z2.reshape(S, M, Kd, Kd)
    ddH1 = Z3.reshape(S, M, T) if T else None

    ddH2 = None
    dH_rev = None
    if ddntk2 or check_reverse:
        ddH2, dH_rev = _forward_over_reverse(
            widths, Ws, X, ders, g, h, G, Z1s, A1s, lam_b, lam_w, dJ, N, nL, ddntk2, check_reverse, gam
        )
    return OutputDifferentials(z=z_out, H=H, dH=dH, ddH1=ddH1, triples=triples if T else None, ddH2=ddH2, dH_reverse=dH_rev)


def _forward_over_reverse(widths, Ws, X, ders, g, h, G, Z1s, A1s, lam_b, lam_w, dJ, N, nL, want_dd2, want_dh, gam=None):
    """ddĤ^II (and dĤ) from the tangent of the backward pass along every v_J.

    ∂_b f_{I,J} = ġ_{I,J}, ∂_{W_kj} f_{I,J} = ġ_{I,J}[k] a_I[j] + g_I[k] ȧ_{I,J}[j] for f_{I,J} = Dz_I[v_J],
    so Σ_μ λ_μ ∂_μ f ∂_μ f' is a sum of products of O(n) dot products (no parameter vectors).
    """
    L = len(widths) - 1
    S = Ws[0].shape[0]
    M = nL * N
    Kd = M
    # gdot^(ℓ)[s, k, δ, i, J]: tangent of g^(ℓ) along v_J
    gdot = [None] * (L + 1)
    gdot[L] = None  # g^(L) = identity does not depend on θ
    for ell in range(L - 1, 0, -1):
        n_next = widths[ell + 1]
        c = lam_w[ell] / widths[ell]
        s1, s2 = ders[ell - 1][1], ders[ell - 1][2]
        a = ders[ell - 1][0]
        # dW_Jᵀ g^(ℓ+1): c a_{δ_J}[k] (G^(ℓ+1)_J · g^(ℓ+1)_{δ,i})
        ipg = np.einsum("smJ,smdi->sdiJ", G[ell + 1], g[ell + 1])  # (S, N, nL, K)
        inner = c * a[:, :, dJ][:, :, None, None, :] * ipg[:, None]  # (S, n, N, nL, K)
        if gdot[ell + 1] is not None:
            WT = np.swapaxes(Ws[ell], 1, 2)
            inner = inner + _stacked_matmul(WT, gdot[ell + 1].reshape(S, n_next, N * nL * Kd)).reshape(S, widths[ell], N, nL, Kd)
        gdot[ell] = s2[:, :, :, None, None] * Z1s[ell][:, :, :, None, :] * h[ell][..., None] + s1[:, :, :, None, None] * inner
        if gam is not None and gam[ell] != 0.0 and gdot[ell + 1] is not None:  # g^(ℓ) ∋ γ g^(ℓ+1)
            gdot[ell] = gdot[ell] + gam[ell] * gdot[ell + 1]

    def flat_I(x):  # (S, n, N, nL, ...) → (S, n, M, ...) with I = i·N + δ
        sh = x.shape
        return np.swapaxes(x, 2, 3).reshape((sh[0], sh[1], M) + sh[4:])

    dd2 = np.zeros((S, M, M, Kd, Kd)) if want_dd2 else None
    dh = np.zeros((S, M, M, Kd)) if want_dh else None
    dI = np.tile(np.arange(N), nL)  # input of output index I
    for ell in range(1, L + 1):
        c = lam_w[ell - 1] / widths[ell - 1]
        lb = lam_b[ell - 1]
        gI = flat_I(np.asarray(g[ell]))  # (S, n, M)
        if ell == 1:
            aI = np.broadcast_to(X.T[None][:, :, dI], (S, widths[0], M))
            adI = None
        else:
            aI = ders[ell - 2][0][:, :, dI]  # a^(ℓ−1) at the input of I
            adI = A1s[ell - 1][:, :, dI, :]  # (S, n_{ℓ−1}, M, K)
        aa = np.einsum("sjM,sjH->sMH", aI, aI)
        gg = np.einsum("skM,skH->sMH", gI, gI)
        gd = None if gdot[ell] is None else flat_I(gdot[ell])  # (S, n, M, K)
        if want_dd2:
            if gd is not None:
                n = gd.shape[1]
                gdf = gd.reshape(S, n, M * Kd)
                gdgd = _stacked_matmul(np.swapaxes(gdf, 1, 2), gdf).reshape(S, M, Kd, M, Kd).transpose(0, 1, 3, 2, 4)  # [I1,I2,J3,J4]
                dd2 += (lb + c * aa[:, :, :, None, None]) * gdgd
                if adI is not None:
                    gdg = np.einsum("skMJ,skH->sMJH", gd, gI)  # ġ_{I1J3}·g_{I2}
                    a_ad = np.einsum("sjM,sjHL->sMHL", aI, adI)  # a_{I1}·ȧ_{I2J4}
                    dd2 += c * gdg.transpose(0, 1, 3, 2)[..., None] * a_ad[:, :, :, None, :]
                    gI_gd = np.einsum("skM,skHL->sMHL", gI, gd)  # g_{I1}·ġ_{I2J4}  [I1, I2, J4]
                    ad_a = np.einsum("sjMJ,sjH->sMHJ", adI, aI)  # ȧ_{I1J3}·a_{I2}  [I1, I2, J3]
                    dd2 += c * gI_gd[:, :, :, None, :] * ad_a[:, :, :, :, None]
            if adI is not None:
                adf = adI.reshape(S, adI.shape[1], M * Kd)
                adad = _stacked_matmul(np.swapaxes(adf, 1, 2), adf).reshape(S, M, Kd, M, Kd).transpose(0, 1, 3, 2, 4)
                dd2 += c * gg[:, :, :, None, None] * adad
        if want_dh:
            # dĤ_{I0 I1 I2} = Σ_μ λ_μ ∂_μ f_{I0,I1} ∂_μ z_{I2}
            if gd is not None:
                gd_g = np.einsum("skMJ,skH->sMJH", gd, gI)  # ġ_{I0,I1}·g_{I2}: [I0, J1, I2]
                dh += (lb + c * aa[:, :, None, :]) * gd_g
            if adI is not None:
                ad_a = np.einsum("sjMJ,sjH->sMJH", adI, aI)  # ȧ_{I0,J1}·a_{I2}
                dh += c * gg[:, :, None, :] * ad_a
    return dd2, dh


# ---------------------------------------------------------------------------------------------
# estimators


def _pairs_sum(Y: np.ndarray) -> np.ndarray:
    """Σ_{a≠b} Y[:, a, b, ...] for Y of shape (S, n, n, ...)."""
    n = Y.shape[1]
    ar = np.arange(n)
    return Y.sum(axis=(1, 2)) - Y[:, ar, ar].sum(axis=1)


def per_network_estimates(od: OutputDifferentials, fan_in: int) -> dict[str, np.ndarray]:
    """Per-network values whose ensemble means are P, Q, R, S, T, U (theory/dntk.md §4.1).

    Each is n_{L−1} × (average over the ordered pairs a ≠ b of output neurons) of

    * P_0123: dĤ_{(a,0)(b,1)(b,2)} z_{(a,3)};  Q_0123: dĤ_{(a,0)(a,1)(b,2)} z_{(b,3)};
    * R_0123: ddĤ^I_{(a,0)(a,1)(b,2)(b,3)};
    * S_1234: ddĤ^II_{(a,1)(a,2)(b,3)(b,4)};  T_1342: ddĤ^II_{(a,1)(b,2)(a,3)(b,4)};
      U_1423: ddĤ^II_{(a,1)(b,2)(b,3)(a,4)} —

    returned as arrays (size, N, N, N, N) in the storage order of pdlt (T[α1, α3, α4, α2],
    U[α1, α4, α2, α3]).  Requires ``od`` from :func:`output_differentials` with the default
    triples; n_L >= 2.
    """
    S, nL, N = od.z.shape
    if nL < 2:
        raise ParameterError(f"The output layer must have n_L >= 2 neurons for cross-neuron estimators. Got n_L = {nL} instead.")
    npairs = nL * (nL - 1)
    scale = fan_in / npairs
    z = od.z
    dH6 = od.dH.reshape(S, nL, N, nL, N, nL, N)
    out = {}
    Y = np.einsum("sadbebf->sabdef", dH6)
    out["P"] = scale * (np.einsum("sabdef,sag->sdefg", Y, z) - np.einsum("saadef,sag->sdefg", Y, z))
    Y = np.einsum("sadaebf->sabdef", dH6)
    out["Q"] = scale * (np.einsum("sabdef,sbg->sdefg", Y, z) - np.einsum("saadef,sag->sdefg", Y, z))
    if od.ddH1 is not None:
        expected = _all_triples(nL, N)
        if od.triples.shape != expected.shape or not np.array_equal(od.triples, expected):
            raise ParameterError("The R estimator needs ddĤ^I on the default direction triples (triples=None).")
        d1 = od.ddH1.reshape(S, nL, N, npairs, N, N, N)
        a_of_pair = np.array([a for a, b in itertools.permutations(range(nL), 2)])
        out["R"] = fan_in * d1[:, a_of_pair, :, np.arange(npairs)].mean(axis=0)  # (S, N, N, N, N)
    if od.ddH2 is not None:
        d2 = od.ddH2.reshape(S, nL, N, nL, N, nL, N, nL, N)
        out["S"] = scale * _pairs_sum(np.einsum("sawaxbybz->sabwxyz", d2))
        Tx = scale * _pairs_sum(np.einsum("sawbxaybz->sabwxyz", d2))  # [α1, α2, α3, α4]
        out["T"] = np.einsum("sabcd->sacdb", Tx)
        Ux = scale * _pairs_sum(np.einsum("sawbxbyaz->sabwxyz", d2))
        out["U"] = np.einsum("sabcd->sadbc", Ux)
    return out


def _bytes_per_network(widths, N: int, n_kept: int | None = None) -> int:
    n = np.asarray(widths[1:], dtype=np.int64)
    fan = np.asarray(widths[:-1], dtype=np.int64)
    nL = int(widths[-1]) if n_kept is None else int(n_kept)
    K = nL * N
    T = nL * (nL - 1) * N**3
    per_neuron = N * (8 + 4 * K + 4 * K * K + 4 * T + 4 * nL * K)
    floats = int((n * fan + n).sum() + (n * per_neuron).sum() + 6 * K**4 + 6 * 7 * N**4)
    return 8 * floats


@attrs.frozen(kw_only=True)
class DntkStatistics:
    """Monte Carlo estimates of the output layer's P, Q, R, S, T, U (from :func:`sample_dntk`).

    Attributes
    ----------
    widths : tuple of int
        n_0, …, n_L of the sampled networks.
    size, seed, n_batches : int
        Number of networks, root seed, number of independently seeded chunks.
    X : ndarray (N, n_0)
    fan_in : int
        n_{L−1}: the estimates are n_{L−1} × E[…] (training.md §0 normalisation).
    P, Q, R, S, T, U : Estimate
        Mean and standard error, shape (N,)*4, in pdlt's storage order (P_0123, Q_0123, R_0123,
        S_1234, T[α1, α3, α4, α2] = T_1342, U[α1, α4, α2, α3] = U_1423).
    """

    widths: tuple[int, ...] = attrs.field(converter=lambda w: tuple(int(v) for v in w))
    size: int
    seed: int
    n_batches: int
    X: np.ndarray = attrs.field(converter=_readonly, eq=attrs.cmp_using(eq=_array_eq))
    fan_in: int
    P: Estimate
    Q: Estimate
    R: Estimate
    S: Estimate
    T: Estimate
    U: Estimate

    def __getitem__(self, name: str) -> Estimate:
        if name not in DNTK_FIELDS:
            raise ParameterError(f"The 'name' parameter of DntkStatistics must be one of {DNTK_FIELDS}. Got {name!r} instead.")
        return getattr(self, name)


def sample_dntk(
    net,
    X,
    size: int,
    seed: int = 0,
    *,
    chunk_size: int | None = None,
    progress: bool | None = None,
    max_memory_mb: float = 256,
    outputs=None,
) -> DntkStatistics:
    """Estimate the output layer's P, Q, R, S, T, U from ``size`` real random MLPs.

    Parameters
    ----------
    net : Architecture (MLP)
        Depth L >= 2, n_L >= 2 outputs, a smooth activation (σ''' an ordinary function).
    X : array_like, shape (N, n_0)
        Inputs; cost grows like N⁴ (ddĤ^II) and N³ (ddĤ^I jets).
    size : int
        Number of networks (>= 2).
    seed : int
        Root seed; chunk c draws its parameters (in the order of
        :func:`pdlt.networks.sample_parameters`) from ``default_rng(SeedSequence(seed).spawn(n)[c])``.
    chunk_size : int, optional
        Upper bound on networks per chunk; at least ``min(MIN_BATCHES, size)`` chunks are used.
    progress : bool or None
        Progress line on stderr (None: only on a TTY).
    max_memory_mb : float
        Approximate working memory per chunk.
    outputs : sequence of int, optional
        Output neurons used by the estimators (at least 2; default all; see
        :func:`output_differentials`).  Neurons are exchangeable, so any two give unbiased
        estimates; a residual output layer (n_L = n_{L−1}) needs this to stay affordable.

    Returns
    -------
    DntkStatistics

    Notes
    -----
    Estimators of theory/dntk.md §4.1 (see :func:`per_network_estimates`).  Each network
    contributes one value per component (an average over its output-neuron pairs); networks are
    independent, so the standard error is the standard deviation over networks / sqrt(size)
    (merged chunk by chunk without cancellation).  No mean subtraction is needed: E[dĤ] = E[z] = 0
    and the ddNTK means are the statistics themselves.  The chunk plan depends only on the
    arguments and the network shape, so equal arguments give bit-identical results.

    Examples
    --------
    >>> import numpy as np
    >>> from pdlt_plugins.activations import Tanh
    >>> from pdlt_plugins.architectures import MLP
    >>> net = MLP(input_dim=2, hidden_widths=(8, 8), output_dim=2, activation=Tanh())
    >>> st = sample_dntk(net, np.array([[1.0, 0.0], [0.6, 0.8]]), 200, seed=0)
    >>> st.T.mean.shape, st.fan_in
    ((2, 2, 2, 2), 8)
    """
    X, size, seed = _check_common(net, X, size, seed, chunk_size, max_memory_mb, "sample_dntk")
    widths = net.widths
    if len(widths) < 3 or widths[-1] < 2:
        raise ParameterError(
            f"The 'net' parameter of sample_dntk must have depth L >= 2 and n_L >= 2 outputs. Got widths {widths} instead."
        )
    _derivatives(net.activation, np.zeros(1), 3)  # refuse kinked activations before sampling
    sel = _output_selection(outputs, widths[-1])
    if sel is not None and len(sel) < 2:
        raise ParameterError(f"The 'outputs' parameter of sample_dntk must select at least 2 output neurons. Got {outputs!r} instead.")
    plan = _chunk_plan(size, _bytes_per_network(widths, X.shape[0], None if sel is None else len(sel)), chunk_size, max_memory_mb)
    seeds = np.random.SeedSequence(seed).spawn(len(plan))
    acc = {name: _PooledMoments() for name in DNTK_FIELDS}
    fan_in = widths[-2]
    with Progress(size, label="dntk", unit="networks", enabled=progress) as bar:
        for m, ss in zip(plan, seeds):
            params = sample_parameters(net, m, np.random.default_rng(ss))
            od = output_differentials(net, params, X, outputs=sel)
            for name, vals in per_network_estimates(od, fan_in).items():
                acc[name].add(vals)
            bar.update(m)
    return DntkStatistics(
        widths=widths,
        size=size,
        seed=seed,
        n_batches=len(plan),
        X=X,
        fan_in=fan_in,
        **{name: a.estimate() for name, a in acc.items()},
    )


# ---------------------------------------------------------------------------------------------
# one gradient-descent step: the NTK moves by the dNTK (book §11.1; training.md §3.1, §4.2)


def _check_training(X, train, y, n_out: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate the training indices into X and the labels; return (train, y) with y (N_A, n_L)."""
    N = X.shape[0]
    train = np.arange(N) if train is None else np.asarray(train)
    if train.ndim != 1 or train.size < 1 or not np.issubdtype(train.dtype, np.integer):
        raise ParameterError(f"The 'train' parameter of {owner} must be a non-empty 1-D array of indices into X. Got {train!r} instead.")
    if train.min() < 0 or train.max() >= N or len(np.unique(train)) != train.size:
        raise ParameterError(
            f"The 'train' parameter of {owner} must hold distinct indices in [0, {N}). Got {train.tolist()} instead."
        )
    y = np.asarray(y, dtype=float)
    if y.ndim == 1 and n_out == 1:
        y = y[:, None]
    if y.shape != (train.size, n_out):
        raise ParameterError(
            f"The 'y' parameter of {owner} must have shape (N_A, n_L) = ({train.size}, {n_out}). Got shape {y.shape} instead."
        )
    if not np.all(np.isfinite(y)):
        raise ParameterError(f"The 'y' parameter of {owner} must be finite. Got non-finite entries instead.")
    return train.astype(int), y


def _loss_gradient(net, params: NetworkParameters, X: np.ndarray, train: np.ndarray, y: np.ndarray):
    """Outputs on X and the gradients ∂L/∂W^(ℓ), ∂L/∂b^(ℓ) of L = ½ Σ_{i, α∈A} (z_{i;α} − y_{i;α})²."""
    act = net.activation
    zs, acts = [], [X.T[None]]
    z = params.weights[0] @ X.T + params.biases[0][:, :, None]
    zs.append(z)
    for ell in range(1, params.depth):
        a = np.asarray(act(z), dtype=float)
        acts.append(a)
        z = params.weights[ell] @ a + params.biases[ell][:, :, None]
        zs.append(z)
    eps = zs[-1][:, :, train] - y.T[None]  # (S, n_L, N_A)
    delta = eps
    gW, gb = [None] * params.depth, [None] * params.depth
    for ell in range(params.depth - 1, -1, -1):
        gW[ell] = delta @ np.swapaxes(acts[ell][:, :, train], -1, -2)  # acts[0] = x: broadcast over the ensemble
        gb[ell] = delta.sum(axis=-1)
        if ell > 0:
            d = np.asarray(act.derivative(zs[ell - 1][:, :, train], 1), dtype=float)
            delta = (np.swapaxes(params.weights[ell], -1, -2) @ delta) * d
    return zs[-1], gW, gb


def _output_ntk(net, params: NetworkParameters, X: np.ndarray) -> np.ndarray:
    """Exact output NTK Ĥ (S, n_L, n_L, N, N) by backpropagated Jacobians, as stacked matmuls.

    Same quantity as :func:`pdlt.training.output_ntk` (tested); the Jacobians are laid out as
    (S, N·n_L, n_ℓ) so every contraction is a batched GEMM rather than an einsum.
    """
    act = net.activation
    widths = net.widths
    lam_b, lam_w = net.lambda_B, net.lambda_W
    L = params.depth
    N = X.shape[0]
    zs, acts = [], [np.broadcast_to(X.T[None], (params.size,) + X.T.shape)]
    z = params.weights[0] @ X.T + params.biases[0][:, :, None]
    zs.append(z)
    for ell in range(1, L):
        a = np.asarray(act(z), dtype=float)
        acts.append(a)
        z = params.weights[ell] @ a + params.biases[ell][:, :, None]
        zs.append(z)
    S, nL = params.size, widths[-1]
    J = np.broadcast_to(np.eye(nL)[None, None], (S, N, nL, nL)).reshape(S, N * nL, nL)  # rows (α, i)
    H = np.zeros((S, N, nL, N, nL))
    for ell in range(L - 1, -1, -1):
        a = acts[ell]
        metric = lam_b[ell] + (lam_w[ell] / widths[ell]) * (np.swapaxes(a, 1, 2) @ a)  # (S, N, N)
        JJ = (J @ np.swapaxes(J, 1, 2)).reshape(S, N, nL, N, nL)
        H += JJ * metric[:, :, None, :, None]
        if ell > 0:
            d = np.asarray(act.derivative(zs[ell - 1], 1), dtype=float)  # (S, n_{ℓ}, N)
            J = (_stacked_matmul(J, params.weights[ell]).reshape(S, N, nL, -1) * np.swapaxes(d, 1, 2)[:, :, None, :]).reshape(S, N * nL, -1)
    return H.transpose(0, 2, 4, 1, 3)


def gd_step_ntk_change(net, params: NetworkParameters, X, y, train=None, *, etas) -> tuple[np.ndarray, np.ndarray]:
    """Exact change of the output NTK after one full-batch gradient-descent step, per network.

    Parameters
    ----------
    net : Architecture (MLP)
        Widths, activation (σ' an ordinary function) and the per-layer λ_b, λ_W of the
        learning-rate tensor.
    params : NetworkParameters
        The ensemble at initialization (not modified).
    X : array_like (N, n_0)
        The samples D on which the NTK is evaluated.
    y : array_like (N_A, n_L)
        Labels of the training samples.
    train : array_like of int, optional
        Indices into X of the training set A (default: every sample).
    etas : sequence of float
        Global learning rates η (any sign; −η is used for symmetric differences).

    Returns
    -------
    H : ndarray (size, n_L, n_L, N, N)
        Ĥ_{i1i2;δ1δ2} at initialization.
    dH : ndarray (len(etas), size, n_L, n_L, N, N)
        Ĥ(θ + Δθ) − Ĥ(θ) with Δθ_μ = −η λ_μ ∂L/∂θ_μ, L = ½ Σ_{i, α∈A} (z_{i;α} − y_{i;α})².

    Notes
    -----
    The step is taken exactly (no linearisation): biases move by −η λ_b^(ℓ) ∂L/∂b, weights by
    −η (λ_W^(ℓ)/n_{ℓ−1}) ∂L/∂W (training.md §0), and the NTK is recomputed at the new
    parameters by backpropagated Jacobians (the quantity of :func:`pdlt.training.output_ntk`).  Since Δθ is
    linear in η, ΔĤ(η) = η c_1 + η² c_2 + … per network with
    c_1 = −Σ_a (dĤ_{IJa} + dĤ_{JIa}) ε_a (book §11.1) and
    c_2 = ½ Σ_{ab} (ddĤ^I_{IJab} + ddĤ^I_{JIab} + 2 ddĤ^II_{IJab}) ε_a ε_b (book §∞.1).
    """
    widths = net.widths
    X = as_inputs(X, widths[0], "gd_step_ntk_change")
    train, y = _check_training(X, train, y, widths[-1], "gd_step_ntk_change")
    etas = np.atleast_1d(np.asarray(etas, dtype=float))
    if etas.ndim != 1 or not np.all(np.isfinite(etas)):
        raise ParameterError(f"The 'etas' parameter of gd_step_ntk_change must be a 1-D sequence of finite floats. Got {etas!r} instead.")
    _, gW, gb = _loss_gradient(net, params, X, train, y)
    H0 = _output_ntk(net, params, X)
    lam_b, lam_w = net.lambda_B, net.lambda_W
    out = np.empty((etas.size,) + H0.shape)
    for k, eta in enumerate(etas):
        moved = NetworkParameters(
            weights=[W - (eta * lam_w[ell] / widths[ell]) * gW[ell] for ell, W in enumerate(params.weights)],
            biases=[b - (eta * lam_b[ell]) * gb[ell] for ell, b in enumerate(params.biases)],
        )
        out[k] = _output_ntk(net, moved, X) - H0
    return H0, out


@attrs.frozen(kw_only=True)
class GDStepStatistics:
    """Ensemble estimates of the NTK change after one GD step (from :func:`sample_gd_step`).

    All estimates are n_{L−1} × (ensemble mean), shape (n_L, n_L, N, N), indices [i1, i2, δ1, δ2].

    Attributes
    ----------
    first : Estimate
        Coefficient of η: n E[c_1], by the fourth-order symmetric difference
        [8(ΔĤ(η) − ΔĤ(−η)) − (ΔĤ(2η) − ΔĤ(−2η))]/(12η) (remainder O(η⁴)).
    second : Estimate
        Coefficient of η²: n E[c_2], by [4 E(η)/η² − E(2η)/(4η²)]/3 with E(h) = (ΔĤ(h) + ΔĤ(−h))/2
        (Richardson on the even part, remainder O(η⁴)).
    first_remainder, second_remainder : Estimate
        n E[·] of (plain symmetric-difference estimate − the fourth-order one): the O(η²) part that
        the plain estimates (ΔĤ(η) − ΔĤ(−η))/(2η) and E(η)/η² would carry.
    step : Estimate
        n E[ΔĤ(η)]/η: what a single forward step at η gives, = first + η·second + O(η²).
    eta : float
    widths, size, seed, fan_in, train, y, X
    """

    widths: tuple[int, ...] = attrs.field(converter=lambda w: tuple(int(v) for v in w))
    size: int
    seed: int
    eta: float
    fan_in: int
    X: np.ndarray = attrs.field(converter=_readonly, eq=attrs.cmp_using(eq=_array_eq))
    train: tuple[int, ...] = attrs.field(converter=lambda t: tuple(int(v) for v in t))
    y: np.ndarray = attrs.field(converter=_readonly, eq=attrs.cmp_using(eq=_array_eq))
    first: Estimate
    second: Estimate
    first_remainder: Estimate
    second_remainder: Estimate
    step: Estimate


def sample_gd_step(
    net,
    X,
    y,
    train=None,
    *,
    eta: float,
    size: int,
    seed: int = 0,
    antithetic: bool = True,
    chunk_size: int | None = None,
    progress: bool | None = None,
    max_memory_mb: float = 256,
) -> GDStepStatistics:
    """Mean change of the NTK of ``size`` real networks after one gradient-descent step.

    Parameters
    ----------
    net : Architecture (MLP)
    X : array_like (N, n_0)
        Samples D on which Ĥ is evaluated.
    y : array_like (N_A, n_L)
        Training labels.
    train : array_like of int, optional
        Indices into X of the training samples (default: all).
    eta : float > 0
        Global learning rate of the step; each network is also stepped at −η, ±2η to separate
        the orders in η.
    antithetic : bool
        Pair every network with its copy whose last layer (W^(L), b^(L)) is negated and average
        the pair (an equally likely network): the label terms Σ dĤ y and Σ ddĤ z y, whose mean is
        zero, then cancel exactly instead of adding variance.  Costs twice the NTK evaluations.
    size, seed, chunk_size, progress, max_memory_mb
        As in :func:`sample_dntk` (same chunk seeding).

    Returns
    -------
    GDStepStatistics

    Notes
    -----
    Book §11.1 and §∞.1; derivation in docs/dntk.md ("One gradient-descent step").  Per network
    ΔĤ(η) = η c_1 + η² c_2 + O(η³) exactly; c_1, c_2 are extracted by symmetric differences and
    Richardson extrapolation, so the estimates are those of the η-coefficients and can be compared
    with :func:`ntk_step_change_theory` without any small-η bias beyond O(η⁴).
    """
    X, size, seed = _check_common(net, X, size, seed, chunk_size, max_memory_mb, "sample_gd_step")
    widths = net.widths
    train, y = _check_training(X, train, y, widths[-1], "sample_gd_step")
    check = isinstance(eta, (int, float, np.floating)) and not isinstance(eta, bool) and np.isfinite(eta) and eta > 0
    if not check:
        raise ParameterError(f"The 'eta' parameter of sample_gd_step must be a finite float > 0. Got {eta!r} instead.")
    if len(widths) < 3:
        raise ParameterError(f"The 'net' parameter of sample_gd_step must have depth L >= 2. Got widths {widths} instead.")
    _derivatives(net.activation, np.zeros(1), 2)  # a.e. derivatives of kinked σ miss the δ terms
    eta = float(eta)
    N, nL = X.shape[0], widths[-1]
    per_net = 8 * (int(sum(a * b + a for a, b in zip(widths[1:], widths[:-1]))) * 3 + 12 * nL * nL * N * N
                   + 4 * int(sum(widths[1:])) * N * (nL + 2))
    plan = _chunk_plan(size, per_net, chunk_size, max_memory_mb)
    seeds = np.random.SeedSequence(seed).spawn(len(plan))
    acc = {k: _PooledMoments() for k in ("first", "second", "first_remainder", "second_remainder", "step")}
    fan_in = widths[-2]
    etas = np.array([eta, -eta, 2 * eta, -2 * eta])
    with Progress(size, label="gd step", unit="networks", enabled=progress) as bar:
        for m, ss in zip(plan, seeds):
            params = sample_parameters(net, m, np.random.default_rng(ss))
            _, d = gd_step_ntk_change(net, params, X, y, train, etas=etas)
            if antithetic:
                # the network with its last layer negated is equally likely (z → −z, dĤ → −dĤ,
                # ddĤ → ddĤ): averaging the pair cancels the zero-mean label cross terms exactly
                flipped = NetworkParameters(weights=params.weights[:-1] + (-params.weights[-1],),
                                            biases=params.biases[:-1] + (-params.biases[-1],))
                d = 0.5 * (d + gd_step_ntk_change(net, flipped, X, y, train, etas=etas)[1])
            odd1, odd2 = (d[0] - d[1]) / (2 * eta), (d[2] - d[3]) / (4 * eta)
            even1, even2 = (d[0] + d[1]) / (2 * eta**2), (d[2] + d[3]) / (8 * eta**2)
            first = (4 * odd1 - odd2) / 3
            second = (4 * even1 - even2) / 3
            acc["first"].add(fan_in * first)
            acc["second"].add(fan_in * second)
            acc["first_remainder"].add(fan_in * (odd1 - first))
            acc["second_remainder"].add(fan_in * (even1 - second))
            acc["step"].add(fan_in * d[0] / eta)
            bar.update(m)
    return GDStepStatistics(
        widths=widths, size=size, seed=seed, eta=eta, fan_in=fan_in, X=X, train=train, y=y,
        **{k: a.estimate() for k, a in acc.items()},
    )


def _contract_pair(X1: np.ndarray, X2: np.ndarray, X3: np.ndarray, A: np.ndarray, K: np.ndarray, y: np.ndarray) -> np.ndarray:
    """n E[Σ_{b,c∈A} D_{IJbc} ε_b ε_c] for a rank-4 object D whose mean has the Wick structure
    (1/n)[δ_{IJ}δ_{bc} X1[δ_I,δ_J,β,γ] + δ_{Ib}δ_{Jc} X2[δ_I,β,γ,δ_J] + δ_{Ic}δ_{Jb} X3[δ_I,γ,δ_J,β]]
    (neural δ's), with E[ε_{k;β} ε_{k';γ}] = δ_{kk'}K_{βγ} + y_{k;β}y_{k';γ}.  Returns [i1, i2, δ1, δ2]."""
    nL = y.shape[1]
    KA = K[np.ix_(A, A)]
    Y = y @ y.T  # Σ_k y_{k;β} y_{k;γ}
    X1A, X2A, X3A = X1[:, :, A][:, :, :, A], X2[:, A][:, :, A], X3[:, :, :, A][:, A]
    diag = (np.einsum("abcd,cd->ab", X1A, nL * KA + Y) + np.einsum("acdb,cd->ab", X2A, KA)
            + np.einsum("adbc,cd->ab", X3A, KA))
    out = np.eye(nL)[:, :, None, None] * diag[None, None]
    out = out + np.einsum("acdb,ci,dj->ijab", X2A, y, y) + np.einsum("adbc,cj,di->ijab", X3A, y, y)
    return out


def ntk_step_change_theory(stats, y, train=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted mean NTK change per GD step at leading order in 1/n: coefficients of η and η².

    Parameters
    ----------
    stats : Statistics
        Output-layer statistics on the samples D with the dNTK fields (``pdlt.flow(net, X,
        order="dntk")[-1]``): K, P, Q, R, S, T, U of shape (N, N, N, N).
    y : array_like (N_A, n_L)
        Training labels.
    train : array_like of int, optional
        Indices into D of the training samples (default: all).

    Returns
    -------
    first, second : ndarray (n_L, n_L, N, N)
        E[ΔĤ_{i1i2;δ1δ2}] = (η/n)·first + (η²/n)·second + O(η³) + O(1/n²), n = n_{L−1}.

    Notes
    -----
    One step Δθ_μ = −ηλ_μ Σ_a ε_a ∂_μz_a changes the NTK by (book §11.1, §∞.1; training.md §4.2)
    ΔĤ_{IJ} = −η Σ_a (dĤ_{IJa} + dĤ_{JIa}) ε_a + (η²/2) Σ_{ab} (ddĤ^I_{IJab} + ddĤ^I_{JIab} + 2ddĤ^II_{IJab}) ε_aε_b.
    E[dĤ] = E[ddĤ z] = 0 (last-layer sign flip), so the labels drop out of the first order and

        first_{i1i2;δ1δ2} = −δ_{i1i2} Σ_{α∈A} [P_{δ1δ2αα} + P_{δ2δ1αα} + n_L (Q_{δ1δ2αα} + Q_{δ2δ1αα})
                                              + Q_{δ1αδ2α} + Q_{δ2αδ1α}],

    while the second order uses E[ddĤ ε_a ε_b] = E[ddĤ](δ K_ab + y_a y_b) + O(1/n²), with the
    index structures of R (ddĤ^I) and S, T, U (ddĤ^II) from training.md §0:
    second = ½[𝒢_R(I,J) + 𝒢_R(J,I)] + ½[𝒢_STU(I,J) + 𝒢_STU(J,I)] (docs/dntk.md).
    """
    fields = ("K", "P", "Q", "R", "S", "T", "U")
    arrs = {}
    for name in fields:
        v = getattr(stats, name, None)
        if v is None:
            raise ParameterError(
                f"The 'stats' parameter of ntk_step_change_theory must carry {name}; use pdlt.flow(net, X, order='dntk'). "
                f"Got {name} = None instead."
            )
        arrs[name] = np.asarray(v, dtype=float)
    N = arrs["K"].shape[0]
    train, y = _check_training(np.zeros((N, 1)), train, y, np.asarray(y).shape[-1] if np.ndim(y) == 2 else 1, "ntk_step_change_theory")
    A = train
    nL = y.shape[1]
    P, Q = arrs["P"][:, :, A][..., A], arrs["Q"]
    Pd = np.einsum("abcc->ab", P)
    Qd = np.einsum("abcc->ab", Q[:, :, A][..., A])
    Qx = np.einsum("acbc->ab", Q[:, A][:, :, :, A])
    core = Pd + nL * Qd + Qx
    first = -np.eye(nL)[:, :, None, None] * (core + core.T)[None, None]
    K, R, S, T, U = arrs["K"], arrs["R"], arrs["S"], arrs["T"], arrs["U"]
    gR = _contract_pair(R, R, R, A, K, y)
    gS = _contract_pair(S, T, U, A, K, y)
    sym = lambda g: 0.5 * (g + g.transpose(1, 0, 3, 2))  # noqa: E731  (I ↔ J)
    second = sym(gR) + sym(gS)
    if not (np.all(np.isfinite(first)) and np.all(np.isfinite(second))):
        raise NumericalError(
            "ntk_step_change_theory met undefined (NaN) dNTK/ddNTK components (kinked activation at coinciding samples, "
            "docs/dntk.md); the prediction is defined only for smooth activations or non-coinciding samples."
        )
    return first, second
