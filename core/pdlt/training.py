"""Training ensembles of real finite-width networks by full-batch gradient descent.

:func:`train_ensemble` is the experimental counterpart of ``pdlt.solve(net,
pdlt.GradientDescent(...), ...)``: it samples networks with :func:`pdlt.networks.sample_parameters`,
trains each of them on the MSE loss ½ Σ_{i,α̃∈A} (z_{i;α̃} − y_{i;α̃})² with exactly the update of
theory/training.md §0 (θ_μ ← θ_μ − η λ_μ ∂L/∂θ_μ; λ_b^(ℓ) for biases, λ_W^(ℓ)/n_{ℓ−1} for weights;
gradients by backpropagation in numpy, batched over the ensemble), and estimates the mean and the
covariance of the trained test outputs with standard errors.

Variance reduction (trained-cov.md §4): *antithetic* pairs (a network and its copy with the last
layer's weights and biases negated — equally likely, z → −z) and a *control variate*: the
network's own initial output mapped by the infinite-width solution,
z_lin = z(0) − Θ_{·A} g_T(Θ̃)(z_A(0) − y) with g_T = Θ̃⁻¹(1 − (1 − ηΘ̃)^T) (g_∞ = Θ̃⁻¹), whose mean
m^∞ is exact and whose covariance P G Pᵀ is exact up to O(1/n²) (G = K + G1/n; exact at depth 2).
The differences z_T − z_lin have O(1/n) variance, so n·(E[z_T] − m^∞) and n·(Cov z_T − Σ^∞) are
estimated with O(1) instead of O(n) error.

Reproducibility and chunking follow :mod:`pdlt.ensemble`: chunk c draws from
``default_rng(SeedSequence(seed).spawn(n_chunks)[c])``; the chunks are the batches of a delete-one
jackknife for the standard errors (pairs stay in one chunk).
"""

from __future__ import annotations

import math
import numbers

import attrs
import numpy as np

from .errors import AccuracyWarning, NumericalError, ParameterError, warn
from .ensemble import Estimate
from .flow import validate_inputs
from .learning import validate_labels
from .networks import NetworkParameters, sample_parameters
from .progress import Progress

__all__ = ["TrainedEnsemble", "train_ensemble", "gradient_descent", "output_ntk", "bayesian_posterior_ensemble"]

MIN_BATCHES = 20


@attrs.frozen(kw_only=True)
class TrainedEnsemble:
    """Monte Carlo estimates for an ensemble of networks trained by gradient descent.

    Attributes
    ----------
    mean : Estimate, shape (N_test, n_L)
        E[z_{i;β̇}(T)] (with the control variate: Ê[z_T − z_lin] + the exact E[z_lin]).
    covariance : Estimate, shape (N_test, n_L, N_test, n_L)
        Cov[z_{i;β̇1}(T), z_{j;β̇2}(T)], indexed [β̇1, i, β̇2, j] (with the control variate:
        Ĉov(z_T) − Ĉov(z_lin) + the exact Cov(z_lin)).
    mean_minus_control, covariance_minus_control : Estimate or None
        Ê[z_T − z_lin] and Ĉov(z_T) − Ĉov(z_lin) (control variate only): at depth 2 these are
        exactly the deviations from the infinite-width mean m^∞ and covariance Σ^∞.
    control_mean, control_covariance : ndarray or None
        The exact moments of z_lin that were added back.
    linearized_mean, linearized_covariance : Estimate or None
        The same estimates for the linear model with each network's own initial NTK ("frozen
        random NTK", trained-cov.md §4), when requested; with the control variate they are also
        differences from z_lin (``*_minus_control`` semantics) plus the exact control moments.
    nonlinear_mean, nonlinear_covariance : Estimate or None
        Ê[z_T − z_rl] and Ĉov(z_T) − Ĉov(z_rl) (with ``linearized``): the effect of the dNTK and
        ddNTKs alone (training.md §4.5 "nonlinear"), estimated with small variance because each
        network is compared with its own linear model.
    steps : int
        Steps taken (the largest over chunks when training to tolerance).
    max_residual : float
        max |z_{i;α̃}(T) − y_{i;α̃}| over all networks at the end.
    size, seed, n_batches : int
    learning_rate : float
    widths : tuple of int
    """

    mean: Estimate
    covariance: Estimate
    mean_minus_control: Estimate | None = None
    covariance_minus_control: Estimate | None = None
    control_mean: np.ndarray | None = None
    control_covariance: np.ndarray | None = None
    linearized_mean: Estimate | None = None
    linearized_covariance: Estimate | None = None
    nonlinear_mean: Estimate | None = None
    nonlinear_covariance: Estimate | None = None
    steps: int
    max_residual: float
    size: int
    seed: int
    n_batches: int
    learning_rate: float
    widths: tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# gradient descent on explicit networks


def _residual(net):
    """(γ^(ℓ), ξ^(ℓ)) arrays of a residual MLP (``net.gammas``, ``net.xis``), or None for a plain MLP.

    Residual layers z^(ℓ+1) = ξ[b + W σ(z^(ℓ))] + γ z^(ℓ) (pdlt.residual_networks) are trained with
    the same update; ∂z/∂b = ξ, ∂z/∂W = ξσ and the backward pass gains the shortcut γ.
    """
    g, x = getattr(net, "gammas", None), getattr(net, "xis", None)
    if g is None or x is None or (not np.any(np.asarray(g)) and np.all(np.asarray(x) == 1.0)):
        return None
    return np.asarray(g, dtype=float), np.asarray(x, dtype=float)


def _forward(net, params: NetworkParameters, X: np.ndarray):
    """Preactivations z^(ℓ) (S, n_ℓ, N) and activations σ(z^(ℓ)) of every layer."""
    act = net.activation
    res = _residual(net)
    zs, ss = [], []
    if X.shape[1] == 1:  # n_0 = 1: an outer product, cheaper than a batched matmul
        z = params.weights[0] * X[:, 0] + params.biases[0][:, :, None]
    else:
        z = params.weights[0] @ X.T + params.biases[0][:, :, None]
    if res is not None:
        z = res[1][0] * z
    zs.append(z)
    for ell in range(1, params.depth):
        s = np.asarray(act(z), dtype=float)
        ss.append(s)
        u = params.weights[ell] @ s + params.biases[ell][:, :, None]
        z = u if res is None else res[1][ell] * u + (res[0][ell] * z if res[0][ell] != 0.0 else 0.0)
        zs.append(z)
    return zs, ss


def _output(net, params, X) -> np.ndarray:
    return _forward(net, params, X)[0][-1]


def output_ntk(net, params: NetworkParameters, X) -> tuple[np.ndarray, np.ndarray]:
    """Outputs and exact output-layer NTK of an ensemble, by backpropagated Jacobians.

    Returns
    -------
    z : ndarray (S, n_L, N)
    H : ndarray (S, n_L, n_L, N, N)
        Ĥ_{ij;αβ} = Σ_ℓ Σ_k J^ℓ_{ik;α} J^ℓ_{jk;β} [λ_b^(ℓ) + (λ_W^(ℓ)/n_{ℓ−1}) Σ_m a^(ℓ−1)_{m;α} a^(ℓ−1)_{m;β}]
        with J^ℓ = ∂z^(L)/∂z^(ℓ) (per sample) and a^(0) = x, a^(ℓ) = σ(z^(ℓ)) — the same NTK as
        :func:`pdlt.networks.mlp_apply`'s forward equation, at cost O(S n_L² Σ n_ℓ N²) instead of
        O(S Σ n_ℓ³ N²).
    """
    X = np.asarray(X, dtype=float)
    zs, ss = _forward(net, params, X)
    act = net.activation
    widths = net.widths
    lam_b, lam_w = net.lambda_B, net.lambda_W
    S, nL, N = zs[-1].shape
    res = _residual(net)
    J = np.broadcast_to(np.eye(nL)[None, :, :, None], (S, nL, nL, N))  # [s, i, k, α]
    H = np.zeros((S, nL, nL, N, N))
    for ell in range(params.depth - 1, -1, -1):
        a = X.T[None] if ell == 0 else ss[ell - 1]  # (S or 1, n_{ℓ−1}, N)
        Gm = np.einsum("sma,smb->sab", a, a) if ell > 0 else (X @ X.T)[None]
        JJ = np.einsum("sika,sjkb->sijab", J, J)
        x2 = 1.0 if res is None else res[1][ell] ** 2
        H += x2 * JJ * (lam_b[ell] + (lam_w[ell] / widths[ell]) * Gm)[:, None, None]
        if ell > 0:
            d = np.asarray(act.derivative(zs[ell - 1], 1), dtype=float)  # (S, n_{ℓ−1}, N)
            Jb = np.einsum("sika,skm->sima", J, params.weights[ell]) * d[:, None]
            J = Jb if res is None else res[1][ell] * Jb + (res[0][ell] * J if res[0][ell] != 0.0 else 0.0)
    return zs[-1], H


def _gd_step(net, params: NetworkParameters, X: np.ndarray, y: np.ndarray, eta: float, metric: np.ndarray | None = None) -> np.ndarray:
    """One full-batch GD step in place; returns the residual ε = z − y (S, n_L, N_A) *before* it.

    With ``metric`` M (N_A, N_A, symmetric) the step descends ½ Σ_i ε_iᵀ M ε_i, i.e. the parameters
    move by −η λ_μ Σ_{ab} ∂_μ z_a M_ab ε_b (M = H̃⁻¹, η = 1: the Newton step, book §10.2.1)."""
    zs, ss = _forward(net, params, X)
    eps = zs[-1] - y
    act = net.activation
    widths = net.widths
    lam_b, lam_w = net.lambda_B, net.lambda_W
    g = eps if metric is None else eps @ metric
    res = _residual(net)
    ones = np.ones(X.shape[0])
    grads = []
    for ell in range(params.depth - 1, -1, -1):
        gu = g if res is None else res[1][ell] * g  # ∂L/∂u of the branch u = b + W a
        gW = gu @ np.swapaxes(ss[ell - 1], -1, -2) if ell > 0 else gu @ X  # (S, n_ℓ, n_{ℓ−1})
        gb = gu @ ones  # Σ_α (a matmul: much faster than a reduction over a short last axis)
        grads.append((ell, gW, gb))
        if ell > 0:
            gl = (np.swapaxes(params.weights[ell], -1, -2) @ gu) * np.asarray(act.derivative(zs[ell - 1], 1), dtype=float)
            g = gl if res is None else gl + (res[0][ell] * g if res[0][ell] != 0.0 else 0.0)
    for ell, gW, gb in grads:
        W, b = params.weights[ell], params.biases[ell]  # updated in place
        W -= (eta * lam_w[ell] / widths[ell]) * gW
        b -= (eta * lam_b[ell]) * gb
    return eps


def gradient_descent(net, params: NetworkParameters, X_train, y_train, *, learning_rate: float, steps: int | None = None,
                     tol: float = 1e-10, max_steps: int = 100_000) -> tuple[int, float]:
    """Train an ensemble of networks in place by full-batch GD on the MSE loss.

    Parameters
    ----------
    net : Architecture
    params : NetworkParameters
        Modified in place.
    X_train : ndarray (N_A, n_0)
    y_train : ndarray (N_A, n_L)
    learning_rate : float
        η; weights move by −η (λ_W/n_{ℓ−1}) ∂L/∂W, biases by −η λ_b ∂L/∂b.
    steps : int or None
        Exactly this many steps, or (None) until max |ε| < ``tol`` for every network.
    tol, max_steps : float, int

    Returns
    -------
    steps_taken : int
    max_residual : float
        max |ε| after training.

    Raises
    ------
    NumericalError
        A network diverged (non-finite or exploding outputs): the learning rate is above the
        stability limit of some networks' NTK.
    """
    y = np.ascontiguousarray(y_train.T)[None]  # (1, n_L, N_A)
    t = 0
    target = steps if steps is not None else max_steps
    res = np.inf
    while t < target:
        eps = _gd_step(net, params, X_train, y, learning_rate)
        res = float(np.abs(eps).max())
        if not np.isfinite(res) or res > 1e8:
            raise NumericalError(
                f"gradient descent diverged after {t} steps (max residual {res:.3g}) at learning_rate = "
                f"{learning_rate!r}: some networks' NTK exceeds the stability limit 2/λ_max. Use a smaller learning rate."
            )
        if steps is None and res < tol:
            return t, res
        t += 1
    res = float(np.abs(_output(net, params, X_train) - y).max())
    return t, res


# ---------------------------------------------------------------------------------------------
# the ensemble


def _bytes_per_network(widths, N: int, linearized: bool) -> int:
    n = np.asarray(widths[1:], dtype=np.int64)
    fan = np.asarray(widths[:-1], dtype=np.int64)
    # parameters (+ gradients and a temporary), activations and backward signals of every layer
    floats = int(3 * (n * fan + n).sum() + 8 * (n * N).sum())
    if linearized:  # output NTK by Jacobians (output_ntk): J^ℓ and the n_L²N² products
        floats += int(3 * (n[-1] * n * N).sum() + 4 * n[-1] ** 2 * N * N)
    return 8 * floats


def _plan(size: int, per_network: int, chunk_size, max_memory_mb: float, pair: int) -> list[int]:
    cap = max(pair, int(max_memory_mb * 2**20 // max(per_network, 1)) // pair * pair)
    if chunk_size is not None:
        cap = max(pair, min(cap, chunk_size // pair * pair))
    units = size // pair
    n_chunks = max(math.ceil(size / cap), min(MIN_BATCHES, units))
    base, extra = divmod(units, n_chunks)
    return [pair * (base + (1 if c < extra else 0)) for c in range(n_chunks)]


def _jackknife(sums: list[dict], estimator) -> Estimate:
    """Delete-one-chunk jackknife of ``estimator(total sums)``."""
    total = {k: sum(s[k] for s in sums) for k in sums[0]}
    full = estimator(total)
    B = len(sums)
    reps = np.stack([estimator({k: total[k] - s[k] for k in total}) for s in sums])
    se = np.sqrt((B - 1) / B * ((reps - reps.mean(0)) ** 2).sum(0))
    return Estimate(mean=full, stderr=se)


def _moments(prefix):
    def mean(t):
        return t[prefix + "1"] / t["count"]

    def cov(t):
        m = t[prefix + "1"] / t["count"]
        return t[prefix + "2"] / t["count"] - np.einsum("ai,bj->aibj", m, m)

    return mean, cov


def _diff(prefix_a, prefix_b):
    ma, ca = _moments(prefix_a)
    mb, cb = _moments(prefix_b)
    return (lambda t: ma(t) - mb(t)), (lambda t: ca(t) - cb(t))


def bayesian_posterior_ensemble(net, X_train, y_train, X_test, *, noise_variance: float, size: int, seed=None,
                                batches: int = MIN_BATCHES, outputs: int | None = None) -> tuple[Estimate, Estimate]:
    """Posterior mean and covariance of real networks' outputs, exactly conditioned on the labels (book ch. 6).

    Given the last hidden layer, the outputs are Gaussian: neuron i has mean γ^(L) z^(L−1)_i (zero for a
    plain output layer) and covariance Ĝ, with Ĝ_αβ = ξ²[C_b^(L) + (C_W^(L)/n_{L−1}) Σ_j σ_{j;α}σ_{j;β}],
    independently over neurons.  The Bayesian posterior over real networks is therefore the mixture over
    sampled networks of the Gaussian conditionals, each weighted by p(y | Ĝ, mean) with observation noise
    σ_ε² (Rao–Blackwellised importance weights); the Gaussian part is integrated exactly.  Standard
    errors by delete-one-batch jackknife.

    Parameters
    ----------
    net : Architecture
        An MLP or a residual MLP (:class:`pdlt.ResidualMLP`; a shortcut in the output layer shifts
        the conditional mean).
    X_train, X_test : array_like, shape (N_A, n_0), (N_B, n_0)
    y_train : array_like, shape (N_A, m)
        Labels of the observed output neurons 0..m−1 (m = ``outputs``).
    noise_variance : float ≥ 0
        σ_ε², added to Ĝ on the training inputs.
    size : int
        Number of networks, split into ``batches`` equal batches.
    seed : int or Generator, optional
    outputs : int, optional
        Condition on the first ``outputs`` output neurons only (the others are marginalised);
        default all n_L.  The theory for m observed neurons is that of an m-output network
        (the cumulants of any m neurons have the same structure).

    Returns
    -------
    mean : Estimate, shape (N_B, m)
    covariance : Estimate, shape (N_B, m, N_B, m)
    """
    owner = "bayesian_posterior_ensemble"
    if net.depth < 2:
        raise ParameterError(f"The 'net' parameter of {owner} must have depth >= 2. Got depth {net.depth} instead.")
    if not (math.isfinite(noise_variance) and noise_variance >= 0):
        raise ParameterError(f"The 'noise_variance' parameter of {owner} must be finite and >= 0. Got {noise_variance!r} instead.")
    if int(batches) < 2 or int(size) < int(batches):
        raise ParameterError(f"The 'size' parameter of {owner} must be >= batches = {batches} >= 2. Got {size!r} instead.")
    n_L = net.widths[-1]
    if outputs is not None and not (isinstance(outputs, numbers.Integral) and 1 <= outputs <= n_L):
        raise ParameterError(f"The 'outputs' parameter of {owner} must be an integer in [1, n_L = {n_L}]. Got {outputs!r} instead.")
    n_out = n_L if outputs is None else int(outputs)
    XA = validate_inputs(X_train, net.input_dim, "X_train", owner)
    XB = validate_inputs(X_test, net.input_dim, "X_test", owner)
    y = validate_labels(y_train, XA.shape[0], n_out, "y_train", owner)
    X = np.vstack([XA, XB])
    A, B = slice(0, XA.shape[0]), slice(XA.shape[0], X.shape[0])
    hp = net.hyperparameters(net.depth)
    res = _residual(net)
    g_L, x_L = (0.0, 1.0) if res is None else (float(res[0][-1]), float(res[1][-1]))
    rng = np.random.default_rng(seed)
    chunks = []
    for _ in range(int(batches)):
        zs, ss = _forward(net, sample_parameters(net, int(size) // int(batches), rng), X)
        sig = ss[-1]
        G = x_L**2 * (hp["c_b"] + hp["c_w"] / net.widths[-2] * np.einsum("sja,sjb->sab", sig, sig))
        mu = g_L * zs[-2][:, :n_out, :] if g_L != 0.0 else np.zeros((sig.shape[0], n_out, X.shape[0]))  # (S, m, N)
        Gaa = G[:, A, A] + noise_variance * np.eye(XA.shape[0])
        Gi = np.linalg.inv(Gaa)
        r = y.T[None] - mu[:, :, A]  # (S, m, N_A)
        logw = -0.5 * np.einsum("sia,sab,sib->s", r, Gi, r) - 0.5 * n_out * np.linalg.slogdet(Gaa)[1]
        m = np.swapaxes(mu[:, :, B], 1, 2) + np.einsum("sba,sac,sic->sbi", G[:, B, A], Gi, r)
        C = G[:, B, B] - np.einsum("sba,sac,scd->sbd", G[:, B, A], Gi, G[:, A, B])
        chunks.append((logw, m, C))
    shift = max(c[0].max() for c in chunks)
    sums = []
    for logw, m, C in chunks:
        w = np.exp(logw - shift)
        second = (np.einsum("s,sbd->bd", w, C)[:, None, :, None] * np.eye(n_out)[None, :, None, :]
                  + np.einsum("s,sai,sbj->aibj", w, m, m))
        sums.append({"w": w.sum(), "m1": np.einsum("s,sbi->bi", w, m), "m2": second})
    mean = _jackknife(sums, lambda t: t["m1"] / t["w"])
    cov = _jackknife(sums, lambda t: t["m2"] / t["w"] - np.einsum("ai,bj->aibj", t["m1"] / t["w"], t["m1"] / t["w"]))
    return mean, cov


def train_ensemble(
    net,
    X_train,
    y_train,
    X_test,
    *,
    learning_rate: float,
    size: int,
    steps: int | None = None,
    tol: float = 1e-10,
    max_steps: int = 100_000,
    seed: int = 0,
    control_variate: bool = False,
    antithetic: bool = True,
    linearized: bool = False,
    newton_first: bool = False,
    chunk_size: int | None = None,
    max_memory_mb: float = 256,
    progress: bool | None = None,
) -> TrainedEnsemble:
    """Train ``size`` independent networks by full-batch GD and estimate their test-output statistics.

    Parameters
    ----------
    net : Architecture (MLP)
    X_train : array_like (N_A, n_0)
    y_train : array_like (N_A, n_L) (or (N_A,) for n_L = 1)
    X_test : array_like (N_B, n_0)
    learning_rate : float
        Global η (the same η as :class:`pdlt.GradientDescent`).
    size : int
        Number of networks (rounded down to an even number with ``antithetic``).
    steps : int or None
        Fixed number of steps, or None: train until max |ε| < ``tol`` (every network of a chunk).
    seed : int
        Root seed (see module docstring).
    control_variate : bool
        Use z_lin (module docstring); needs the infinite-width Θ and K (and G1 at depth ≥ 3) from
        :func:`pdlt.flow` on the training and test inputs.
    antithetic : bool
        Pair each network with its last-layer sign flip.
    linearized : bool
        Also train (exactly, in closed form) the linear model with each network's own initial NTK.
    newton_first : bool
        Start with one Newton step ("giant leap", book §10.2.1, §∞.2.1): the parameters move by
        −λ_μ Σ_{ab} ∂_μ z_a (H̃⁻¹)_{ab} ε_b with H = Θ + H1/n the mean NTK of :func:`pdlt.flow` on the
        training inputs at this width; then ``steps`` GD steps at ``learning_rate`` (compare with
        ``pdlt.GiantLeapSmallStep``).  Not combined with ``linearized``.
    chunk_size, max_memory_mb :
        Bound the networks held at once.
    progress : bool or None
        Progress line on stderr (None: only on a terminal).

    Returns
    -------
    TrainedEnsemble

    Notes
    -----
    Cost per step O(size · Σ_ℓ n_ℓ n_{ℓ−1} N_A).  Compare with ``pdlt.solve(net,
    pdlt.GradientDescent(learning_rate=η, steps=steps), X_train, y_train, X_test)``.
    """
    owner = "train_ensemble"
    Xa = validate_inputs(X_train, net.input_dim, "X_train", owner)
    Xb = validate_inputs(X_test, net.input_dim, "X_test", owner)
    y = validate_labels(y_train, Xa.shape[0], net.output_dim, "y_train", owner)
    if not (isinstance(learning_rate, (int, float, np.floating)) and np.isfinite(learning_rate) and learning_rate > 0):
        raise ParameterError(f"The 'learning_rate' parameter of {owner} must be finite and > 0. Got {learning_rate!r} instead.")
    pair = 2 if antithetic else 1
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2 * pair:
        raise ParameterError(f"The 'size' parameter of {owner} must be an integer >= {2 * pair}. Got {size!r} instead.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0):
        raise ParameterError(f"The 'steps' parameter of {owner} must be None or an integer >= 0. Got {steps!r} instead.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"The 'seed' parameter of {owner} must be a non-negative integer. Got {seed!r} instead.")
    if newton_first and (linearized or steps is None):
        raise ParameterError(
            f"The 'newton_first' option of {owner} needs a finite number of small steps and linearized=False. "
            f"Got steps={steps!r}, linearized={linearized!r} instead."
        )
    size = int(size) // pair * pair
    N_A, N_B = Xa.shape[0], Xb.shape[0]
    nL = net.output_dim
    eta = float(learning_rate)

    s = None
    if control_variate or newton_first:
        from .flow import flow

        order = "leading" if net.depth <= 2 else "full"
        s = flow(net, np.vstack([Xa, Xb]), order=order)[-1]
    leap = None
    if newton_first:
        Hm = np.asarray(s.ntk_mean())[:N_A, :N_A]
        hm, Om = np.linalg.eigh(0.5 * (Hm + Hm.T))
        if not hm[0] > 0:
            raise NumericalError(f"{owner}: the mean NTK on the training inputs is singular; no Newton step.")
        leap = (Om / hm) @ Om.T

    # the control variate's linear map z ↦ P z + c on D = A ∪ B (P: (N_B, N_A + N_B))
    ctrl = None
    if control_variate:
        Th = np.asarray(s.Theta)
        h, O = np.linalg.eigh(Th[:N_A, :N_A])
        if not h[0] > 0:
            raise NumericalError(f"{owner}: the infinite-width NTK on the training inputs is singular; no control variate.")
        # after a Newton step the infinite-width network is trained: g = Θ̃⁻¹ whatever follows
        gT = (O * (1.0 / h if steps is None or newton_first else (1.0 - (1.0 - eta * h) ** steps) / h)) @ O.T
        M = Th[N_A:, :N_A] @ gT
        P = np.hstack([-M, np.eye(N_B)])
        c = M @ y  # (N_B, n_L)
        G = np.asarray(s.metric())
        ctrl = dict(P=P, c=c, mean=c, cov=np.einsum("ab,ij->aibj", P @ G @ P.T, np.eye(nL)))

    plan = _plan(size, _bytes_per_network(net.widths, N_A + N_B, linearized), chunk_size, max_memory_mb, pair)
    children = np.random.SeedSequence(int(seed)).spawn(len(plan))
    sums: list[dict] = []
    steps_taken = 0
    max_res = 0.0
    with Progress(size, label="training", unit="networks", enabled=progress) as bar:
        for m, child in zip(plan, children):
            rng = np.random.default_rng(child)
            params = sample_parameters(net, m // pair, rng)
            if antithetic:
                W = [np.concatenate([w, w]) for w in params.weights]
                b = [np.concatenate([v, v]) for v in params.biases]
                W[-1][m // 2:] *= -1.0
                b[-1][m // 2:] *= -1.0
                params = NetworkParameters(weights=W, biases=b)
            D = np.vstack([Xa, Xb])
            z0 = None
            lin = None
            if linearized:
                z0, H0 = output_ntk(net, params, D)  # (S, n_L, N), (S, n_L, n_L, N, N)
                lin = _linearized(z0, H0, y, N_A, eta, steps)
            elif control_variate:
                z0 = _output(net, params, D)
            if leap is not None:
                _gd_step(net, params, Xa, np.ascontiguousarray(y.T)[None], 1.0, metric=leap)
            t, res = gradient_descent(net, params, Xa, y, learning_rate=eta, steps=steps, tol=tol, max_steps=max_steps)
            steps_taken = max(steps_taken, t)
            max_res = max(max_res, res)
            zT = _output(net, params, Xb).transpose(0, 2, 1)  # (S, N_B, n_L)
            chunk = {"count": float(m)}
            _acc(chunk, "z", zT)
            if ctrl is not None:
                zl = np.einsum("bd,sid->sbi", ctrl["P"], z0) + ctrl["c"][None]
                _acc(chunk, "l", zl)
            if lin is not None:
                _acc(chunk, "r", lin)
            sums.append(chunk)
            bar.update(m)
    if steps is None and max_res >= tol:
        warn(
            f"{owner}: not every network reached max |ε| < {tol:g} within max_steps = {max_steps} "
            f"(max residual {max_res:.3g}); the estimates are for partially trained networks.",
            AccuracyWarning,
        )

    mean_z, cov_z = _moments("z")
    out = {}
    if linearized:
        mn, cn = _diff("z", "r")
        out["nonlinear_mean"] = _jackknife(sums, mn)
        out["nonlinear_covariance"] = _jackknife(sums, cn)
    out.update(steps=steps_taken, max_residual=max_res, size=size, seed=int(seed), n_batches=len(plan),
               learning_rate=eta, widths=tuple(net.widths))
    if ctrl is None:
        out["mean"] = _jackknife(sums, mean_z)
        out["covariance"] = _jackknife(sums, cov_z)
        if linearized:
            mr, cr = _moments("r")
            out["linearized_mean"] = _jackknife(sums, mr)
            out["linearized_covariance"] = _jackknife(sums, cr)
    else:
        md, cd = _diff("z", "l")
        dm, dc = _jackknife(sums, md), _jackknife(sums, cd)
        out.update(
            mean_minus_control=dm,
            covariance_minus_control=dc,
            control_mean=ctrl["mean"],
            control_covariance=ctrl["cov"],
            mean=Estimate(mean=dm.mean + ctrl["mean"], stderr=dm.stderr),
            covariance=Estimate(mean=dc.mean + ctrl["cov"], stderr=dc.stderr),
        )
        if linearized:
            mr, cr = _diff("r", "l")
            er, ecr = _jackknife(sums, mr), _jackknife(sums, cr)
            out["linearized_mean"] = Estimate(mean=er.mean + ctrl["mean"], stderr=er.stderr)
            out["linearized_covariance"] = Estimate(mean=ecr.mean + ctrl["cov"], stderr=ecr.stderr)
    return TrainedEnsemble(**out)


def _acc(chunk: dict, key: str, z: np.ndarray) -> None:
    chunk[key + "1"] = z.sum(0)
    chunk[key + "2"] = np.einsum("sai,sbj->aibj", z, z)


def _linearized(z: np.ndarray, H: np.ndarray, y: np.ndarray, N_A: int, eta: float, steps: int | None) -> np.ndarray:
    """z_rl = z_B − Ĥ_{BA} g_T(Ĥ̃) (z_A − y) with each network's own initial NTK (flattened over
    (output, sample)), shape (S, N_B, n_L); z (S, n_L, N), H (S, n_L, n_L, N, N)."""
    S, nL, N = z.shape
    Hf = np.asarray(H).transpose(0, 1, 3, 2, 4)  # [s, i, α, j, β]
    HAA = Hf[:, :, :N_A, :, :N_A].reshape(S, nL * N_A, nL * N_A)
    HBA = Hf[:, :, N_A:, :, :N_A].reshape(S, nL * (N - N_A), nL * N_A)
    eps = (z[:, :, :N_A] - y.T[None]).reshape(S, nL * N_A)
    if steps is None:
        sol = np.linalg.solve(HAA, eps[..., None])[..., 0]
    else:
        h, O = np.linalg.eigh(HAA)
        g = (1.0 - (1.0 - eta * h) ** steps) / h
        sol = np.einsum("sab,sb,scb,sc->sa", O, g, O, eps)
    zB = z[:, :, N_A:].reshape(S, nL * (N - N_A)) - np.einsum("sab,sb->sa", HBA, sol)
    return zB.reshape(S, nL, N - N_A).transpose(0, 2, 1)
