"""Real finite-width networks: ensembles of explicit random MLPs and their exact NTK.

This module is the ground truth that every theory prediction is judged against.  It samples
``size`` independent MLPs at once (all arrays carry a leading ensemble axis), runs them on a
batch of inputs and returns, for every layer ℓ = 1..L, the preactivations z^(ℓ) and the full
neural tangent kernel Ĥ^(ℓ), the latter computed *exactly* by the NTK forward equation
(theory/init.md §5) rather than by differentiating the network.  Everything is float64 and
vectorised over the ensemble with ``matmul``/``einsum``; callers bound memory by choosing
``size`` (see :func:`pdlt.ensemble.sample`, which chunks).

Array layout (public): z has shape ``(size, n_ℓ, N)`` and Ĥ has shape
``(size, n_ℓ, n_ℓ, N, N)`` indexed ``[s, i1, i2, α1, α2]``.
"""

from __future__ import annotations


import attrs
import numpy as np

from .errors import ParameterError

__all__ = [
    "LayerSample",
    "NetworkParameters",
    "as_inputs",
    "sample_parameters",
    "mlp_apply",
    "mlp_forward",
]


@attrs.frozen(eq=False)
class LayerSample:
    """Preactivations and NTK of one layer for an ensemble of networks.

    Attributes
    ----------
    z : ndarray, shape (size, n_ℓ, N)
        z^(ℓ)_{i;α} of every network.
    H : ndarray, shape (size, n_ℓ, n_ℓ, N, N), or None
        Ĥ^(ℓ)_{i1 i2; α1 α2} (None when the NTK was not requested).  May be a non-contiguous
        or read-only view (layer 1 is a broadcast of a deterministic kernel).

    Notes
    -----
    Large sample containers: compared by identity, arrays are not copied.
    """

    z: np.ndarray
    H: np.ndarray | None = None


@attrs.frozen(kw_only=True, eq=False)
class NetworkParameters:
    """Parameters of an ensemble of MLPs.

    Attributes
    ----------
    weights : tuple of ndarray
        ``weights[ℓ-1]`` has shape (size, n_ℓ, n_{ℓ−1}): W^(ℓ)_{ij} of every network.
    biases : tuple of ndarray
        ``biases[ℓ-1]`` has shape (size, n_ℓ): b^(ℓ)_i of every network.
    """

    weights: tuple[np.ndarray, ...] = attrs.field(converter=tuple)
    biases: tuple[np.ndarray, ...] = attrs.field(converter=tuple)

    @property
    def size(self) -> int:
        """Number of networks in the ensemble."""
        return int(self.weights[0].shape[0])

    @property
    def depth(self) -> int:
        """L, the number of layers."""
        return len(self.weights)


def as_inputs(X, input_dim: int, owner: str = "mlp_forward") -> np.ndarray:
    """Validate inputs and return them as a float64 array of shape (N, n_0).

    A 1-D array of length n_0 is taken as a single input.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim == 1 and X.shape[0] == input_dim:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != input_dim or X.shape[0] < 1:
        raise ParameterError(
            f"The 'X' parameter of {owner} must have shape (N, n_0) with n_0 = {input_dim}. "
            f"Got shape {X.shape} instead."
        )
    if not np.all(np.isfinite(X)):
        raise ParameterError(f"The 'X' parameter of {owner} must be finite. Got non-finite entries instead.")
    return X


def _check_size(size, owner: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ParameterError(f"The 'size' parameter of {owner} must be a positive integer. Got {size!r} instead.")
    return int(size)


def sample_parameters(net, size: int, rng: np.random.Generator) -> NetworkParameters:
    """Draw the parameters of ``size`` independent networks (book §2.3, init.md §0).

    Parameters
    ----------
    net : Architecture
        Supplies ``widths`` (n_0..n_L) and the per-layer ``C_b``, ``C_W``.
    size : int
        Number of networks.
    rng : numpy.random.Generator
        Source of randomness.  Draw order, fixed for reproducibility: for ℓ = 1..L, first
        W^(ℓ) (shape (size, n_ℓ, n_{ℓ−1})), then b^(ℓ) (shape (size, n_ℓ)); biases are drawn
        even when C_b = 0 so the stream does not depend on the hyperparameter values.

    Returns
    -------
    NetworkParameters
        W^(ℓ) ~ N(0, C_W^(ℓ)/n_{ℓ−1}), b^(ℓ) ~ N(0, C_b^(ℓ)), all independent, float64.
    """
    size = _check_size(size, "sample_parameters")
    widths = net.widths
    c_b, c_w = net.C_b, net.C_W
    weights, biases = [], []
    for ell in range(1, len(widths)):
        fan_in, fan_out = widths[ell - 1], widths[ell]
        W = rng.standard_normal((size, fan_out, fan_in))
        W *= np.sqrt(c_w[ell - 1] / fan_in)
        b = rng.standard_normal((size, fan_out))
        b *= np.sqrt(c_b[ell - 1])
        weights.append(W)
        biases.append(b)
    return NetworkParameters(weights=weights, biases=biases)


def _public(Ht: np.ndarray) -> np.ndarray:
    # internal layout (size, N, N, n, n) keeps the neuron axes last so that the forward
    # equation is a stacked matmul; the public layout is a free view of it.
    return np.moveaxis(Ht, (1, 2), (3, 4))


def mlp_apply(net, params: NetworkParameters, X, *, ntk: bool = True) -> list[LayerSample]:
    """Run an ensemble of MLPs with given parameters; optionally compute the exact NTK.

    Parameters
    ----------
    net : Architecture
        Supplies ``widths``, ``activation`` and the per-layer ``lambda_B``, ``lambda_W``.
    params : NetworkParameters
        As returned by :func:`sample_parameters` (shapes must match ``net.widths``).
    X : array_like, shape (N, n_0)
        Inputs x_{j;α} (rows are samples α).
    ntk : bool
        Also compute Ĥ^(ℓ) for every layer.

    Returns
    -------
    list of LayerSample
        Entry ℓ−1 holds layer ℓ: z of shape (size, n_ℓ, N) and Ĥ of shape
        (size, n_ℓ, n_ℓ, N, N) (or None).

    Notes
    -----
    NTK forward equation (init.md §5, book §8.0), exact, with the learning-rate tensor
    λ_b^(ℓ) for biases and λ_W^(ℓ)/n_{ℓ−1} for weights:

        Ĥ^(1)_{i1i2;α1α2} = δ_{i1i2}[λ_b^(1) + λ_W^(1) (1/n_0) Σ_j x_{j;α1} x_{j;α2}],
        Ĥ^(ℓ+1)_{i1i2;α1α2} = δ_{i1i2}[λ_b^(ℓ+1) + (λ_W^(ℓ+1)/n_ℓ) Σ_j σ_{j;α1} σ_{j;α2}]
                              + Σ_{j1,j2} W_{i1j1} W_{i2j2} σ'_{j1;α1} σ'_{j2;α2} Ĥ^(ℓ)_{j1j2;α1α2}.

    Layer 1's Ĥ is deterministic and returned as a read-only broadcast view.
    """
    widths = net.widths
    X = as_inputs(X, widths[0], "mlp_apply")
    L = len(widths) - 1
    if params.depth != L or any(
        params.weights[ell].shape[1:] != (widths[ell + 1], widths[ell]) for ell in range(L)
    ):
        raise ParameterError(
            "The 'params' parameter of mlp_apply must match the architecture's widths "
            f"{widths}. Got weight shapes {[w.shape[1:] for w in params.weights]} instead."
        )
    act = net.activation
    lam_b, lam_w = net.lambda_B, net.lambda_W
    S, N = params.size, X.shape[0]

    z = params.weights[0] @ X.T + params.biases[0][:, :, None]
    Ht = None
    if ntk:
        n1 = widths[1]
        theta1 = lam_b[0] + lam_w[0] * (X @ X.T) / widths[0]
        Ht = np.broadcast_to(theta1[:, :, None, None] * np.eye(n1), (S, N, N, n1, n1))
    out = [LayerSample(z=z, H=None if Ht is None else _public(Ht))]

    for ell in range(1, L):
        W, b = params.weights[ell], params.biases[ell]
        n_prev, n_next = widths[ell], widths[ell + 1]
        s = np.asarray(act(z), dtype=float)
        z_next = W @ s + b[:, :, None]
        if ntk:
            # only the blocks α1 <= α2 are propagated: Ĥ_{i1i2;α1α2} = Ĥ_{i2i1;α2α1}
            a1, a2 = np.triu_indices(N)
            d = np.asarray(act.derivative(z, 1), dtype=float)  # (S, n_prev, N)
            Wd = W[:, None, :, :] * d.transpose(0, 2, 1)[:, :, None, :]  # (S, N, n_next, n_prev): W diag(σ'_α)
            # Σ_{j1j2} W_{i1j1}σ'_{j1;α1} Ĥ_{j1j2;α1α2} σ'_{j2;α2} W_{i2j2}
            # (a contiguous copy of the transposed operand: stacked matmul on the strided view is ~100× slower)
            right = np.ascontiguousarray(np.swapaxes(Wd[:, a2], -1, -2))
            upper = (Wd[:, a1] @ Ht[:, a1, a2]) @ right  # (S, P, n_next, n_next)
            Ht = np.empty((S, N, N, n_next, n_next))
            Ht[:, a1, a2] = upper
            Ht[:, a2, a1] = np.swapaxes(upper, -1, -2)
            metric = lam_b[ell] + (lam_w[ell] / n_prev) * np.einsum("sja,sjb->sab", s, s)
            idx = np.arange(n_next)
            Ht[..., idx, idx] += metric[..., None]
        z = z_next
        out.append(LayerSample(z=z, H=None if Ht is None else _public(Ht)))
    return out


def mlp_forward(net, X, size: int, rng: np.random.Generator, *, ntk: bool = True, return_params: bool = False):
    """Sample ``size`` independent MLPs and run them on inputs X.

    Parameters
    ----------
    net : Architecture
        Widths n_0..n_L, activation, per-layer C_b, C_W (initialization) and λ_b, λ_W (NTK).
    X : array_like, shape (N, n_0)
        Inputs (rows are samples α).
    size : int
        Number of independent networks.
    rng : numpy.random.Generator
        Randomness; see :func:`sample_parameters` for the draw order.
    ntk : bool
        Also compute the exact NTK Ĥ^(ℓ) of every layer (init.md §5 forward equation).
    return_params : bool
        Also return the sampled :class:`NetworkParameters` (e.g. to train the networks).

    Returns
    -------
    layers : list of LayerSample
        ``layers[ℓ-1]`` = layer ℓ, z of shape (size, n_ℓ, N), Ĥ of shape (size, n_ℓ, n_ℓ, N, N).
    params : NetworkParameters
        Only when ``return_params`` is true; returned as ``(layers, params)``.

    Notes
    -----
    Memory: the NTK of layer ℓ holds size·n_ℓ²·N² floats and all layers are returned; use
    :func:`pdlt.ensemble.sample` for large ensembles (it chunks).

    Examples
    --------
    >>> import numpy as np
    >>> from pdlt_plugins.activations import Tanh
    >>> from pdlt_plugins.architectures import MLP
    >>> net = MLP(input_dim=3, hidden_widths=(4,), output_dim=2, activation=Tanh())
    >>> layers = mlp_forward(net, np.ones((5, 3)), 10, np.random.default_rng(0))
    >>> layers[-1].z.shape, layers[-1].H.shape
    ((10, 2, 5), (10, 2, 2, 5, 5))
    """
    size = _check_size(size, "mlp_forward")
    params = sample_parameters(net, size, rng)
    layers = mlp_apply(net, params, X, ntk=ntk)
    return (layers, params) if return_params else layers
