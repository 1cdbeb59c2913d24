"""Real finite-width residual MLPs: ensembles of explicit random networks and their exact NTK.

The residual MLP of book Appendix B (theory/training.md §7) adds a shortcut of strength γ^(ℓ)
to a branch of strength ξ^(ℓ),

    z^(ℓ+1)_{i;α} = ξ^(ℓ+1) [ b^(ℓ+1)_i + Σ_j W^(ℓ+1)_{ij} σ(z^(ℓ)_{j;α}) ] + γ^(ℓ+1) z^(ℓ)_{i;α},

with b ~ N(0, C_b), W ~ N(0, C_W/n_ℓ) drawn exactly as for the MLP
(:func:`pdlt.networks.sample_parameters`) and the first layer plain (γ^(1) = 0,
z^(1) = ξ^(1)[b + W x]).  A shortcut needs n_{ℓ+1} = n_ℓ; γ = 0, ξ = 1 is an MLP layer.  This
module is the ground truth for the residual recursions of ``pdlt_plugins.residual``; the
array layout is that of :mod:`pdlt.networks` (z: ``(size, n_ℓ, N)``, Ĥ: ``(size, n_ℓ, n_ℓ, N, N)``).
"""

from __future__ import annotations

import numpy as np

from .errors import ParameterError
from .networks import LayerSample, NetworkParameters, _check_size, _public, as_inputs, sample_parameters

__all__ = ["residual_apply", "residual_forward"]


def _strengths(values, L: int, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.shape != (L,) or not np.all(np.isfinite(arr)):
        raise ParameterError(
            f"The {name!r} parameter of residual_apply must be {L} finite values (one per layer). Got {values!r} instead."
        )
    return arr


def residual_apply(net, params: NetworkParameters, X, *, gamma, xi, ntk: bool = True) -> list[LayerSample]:
    """Run an ensemble of residual MLPs with given parameters; optionally the exact NTK.

    Parameters
    ----------
    net : Architecture
        Supplies ``widths``, ``activation`` and the per-layer ``lambda_B``, ``lambda_W``.
    params : NetworkParameters
        Weights W^(ℓ) ~ N(0, C_W/n_{ℓ−1}) and biases b^(ℓ) ~ N(0, C_b) *without* the branch
        factor (as drawn by :func:`pdlt.networks.sample_parameters`).
    X : array_like, shape (N, n_0)
    gamma, xi : sequence of L floats
        Shortcut γ^(ℓ) and branch ξ^(ℓ) strengths; γ^(1) must be 0 and γ^(ℓ) ≠ 0 needs
        n_ℓ = n_{ℓ−1}.
    ntk : bool
        Also compute Ĥ^(ℓ) of every layer.

    Returns
    -------
    list of LayerSample
        Layer ℓ at index ℓ−1: z (size, n_ℓ, N), Ĥ (size, n_ℓ, n_ℓ, N, N) or None.

    Notes
    -----
    Learning-rate tensor as for the MLP (λ_b for biases, λ_W/n_{ℓ−1} for weights).  Since
    ∂z^(ℓ+1)/∂b = ξ, ∂z^(ℓ+1)/∂W = ξσ and ∂z^(ℓ+1)_i/∂θ_lower = ξ Σ_j W_ij σ'_j ∂z_j + γ ∂z_i, the
    NTK obeys the exact forward equation (with W ≡ W^(ℓ+1), σ ≡ σ(z^(ℓ)), ξ, γ of layer ℓ+1)

        Ĥ^(ℓ+1)_{i1i2;α1α2} = ξ² { δ_{i1i2}[λ_b + (λ_W/n_ℓ) Σ_j σ_{j;α1}σ_{j;α2}]
                                   + Σ_{j1j2} W_{i1j1}σ'_{j1;α1} Ĥ^(ℓ)_{j1j2;α1α2} σ'_{j2;α2} W_{i2j2} }
                            + ξγ { Σ_j W_{i1j}σ'_{j;α1} Ĥ^(ℓ)_{j i2;α1α2} + Σ_j Ĥ^(ℓ)_{i1 j;α1α2} σ'_{j;α2} W_{i2j} }
                            + γ² Ĥ^(ℓ)_{i1i2;α1α2},

    and Ĥ^(1) = ξ^(1)² δ_{i1i2}[λ_b + λ_W x·x/n_0].
    """
    widths = net.widths
    X = as_inputs(X, widths[0], "residual_apply")
    L = len(widths) - 1
    g = _strengths(gamma, L, "gamma")
    x = _strengths(xi, L, "xi")
    if g[0] != 0.0:
        raise ParameterError(f"The 'gamma' parameter of residual_apply must have gamma^(1) = 0 (the first layer is plain). Got {g[0]!r} instead.")
    for ell in range(1, L):
        if g[ell] != 0.0 and widths[ell + 1] != widths[ell]:
            raise ParameterError(
                f"The 'gamma' parameter of residual_apply must be 0 at layer {ell + 1}, where the widths differ "
                f"({widths[ell]} → {widths[ell + 1]}). Got {g[ell]!r} instead."
            )
    if params.depth != L or any(params.weights[ell].shape[1:] != (widths[ell + 1], widths[ell]) for ell in range(L)):
        raise ParameterError(
            "The 'params' parameter of residual_apply must match the architecture's widths "
            f"{widths}. Got weight shapes {[w.shape[1:] for w in params.weights]} instead."
        )
    act = net.activation
    lam_b, lam_w = net.lambda_B, net.lambda_W
    S, N = params.size, X.shape[0]

    z = x[0] * (params.weights[0] @ X.T + params.biases[0][:, :, None])
    Ht = None
    if ntk:
        n1 = widths[1]
        theta1 = x[0] ** 2 * (lam_b[0] + lam_w[0] * (X @ X.T) / widths[0])
        Ht = np.broadcast_to(theta1[:, :, None, None] * np.eye(n1), (S, N, N, n1, n1))
    out = [LayerSample(z=z, H=None if Ht is None else _public(Ht))]

    a1, a2 = np.triu_indices(N)
    for ell in range(1, L):
        W, b = params.weights[ell], params.biases[ell]
        n_prev, n_next = widths[ell], widths[ell + 1]
        xe, ge = x[ell], g[ell]
        s = np.asarray(act(z), dtype=float)
        z_next = xe * (W @ s + b[:, :, None])
        if ge != 0.0:
            z_next = z_next + ge * z
        if ntk:
            d = np.asarray(act.derivative(z, 1), dtype=float)  # (S, n_prev, N)
            Wd = W[:, None, :, :] * d.transpose(0, 2, 1)[:, :, None, :]  # (S, N, n_next, n_prev)
            Hu = Ht[:, a1, a2]  # (S, P, n_prev, n_prev), blocks α1 <= α2 only (Ĥ_{α2α1} = Ĥ_{α1α2}ᵀ)
            left = Wd[:, a1] @ Hu  # Σ_j W_{i1j}σ'_{j;α1} Ĥ_{j·;α1α2}
            upper = xe**2 * (left @ np.swapaxes(Wd[:, a2], -1, -2))
            if ge != 0.0:
                upper += xe * ge * (left + Hu @ np.swapaxes(Wd[:, a2], -1, -2)) + ge**2 * Hu
            Ht = np.empty((S, N, N, n_next, n_next))
            Ht[:, a1, a2] = upper
            Ht[:, a2, a1] = np.swapaxes(upper, -1, -2)
            metric = xe**2 * (lam_b[ell] + (lam_w[ell] / n_prev) * np.einsum("sja,sjb->sab", s, s))
            idx = np.arange(n_next)
            Ht[..., idx, idx] += metric[..., None]
        z = z_next
        out.append(LayerSample(z=z, H=None if Ht is None else _public(Ht)))
    return out


def residual_forward(net, X, size: int, rng: np.random.Generator, *, ntk: bool = True, return_params: bool = False):
    """Sample ``size`` independent residual MLPs and run them on inputs X.

    Parameters
    ----------
    net : Architecture
        A residual architecture: ``widths``, ``activation``, per-layer ``C_b``, ``C_W``,
        ``lambda_B``, ``lambda_W`` and the resolved per-layer strengths ``gammas`` (γ^(ℓ)) and
        ``xis`` (ξ^(ℓ)), ℓ = 1..L (e.g. ``pdlt_plugins.residual.ResidualMLP``).
    X : array_like, shape (N, n_0)
    size : int
        Number of networks.
    rng : numpy.random.Generator
        Draw order as in :func:`pdlt.networks.sample_parameters` (so a residual net with γ = 0,
        ξ = 1 reproduces the MLP ensemble draw for draw).
    ntk : bool
        Also compute the exact NTK by the residual forward equation (:func:`residual_apply`).
    return_params : bool
        Also return the :class:`~pdlt.networks.NetworkParameters`.

    Returns
    -------
    list of LayerSample, or (list, NetworkParameters)
    """
    size = _check_size(size, "residual_forward")
    params = sample_parameters(net, size, rng)
    layers = residual_apply(net, params, X, gamma=net.gammas, xi=net.xis, ntk=ntk)
    return (layers, params) if return_params else layers
