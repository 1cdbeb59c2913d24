"""``pdlt.solve``: the distribution of trained networks, from architecture, algorithm and data.

The solver is the boundary where user data enter the learning part of the library: it validates
shapes, finiteness and the training set (duplicate inputs make every training-set kernel singular),
runs the RG flow on the concatenated inputs D = A ∪ B (training inputs first, then test inputs),
lets the algorithm check its hyperparameters against the statistics (e.g. the gradient-descent
stability limit η < 2/λ_max(Θ̃)), and hands the output-layer statistics to the algorithm.  The
result is a :class:`~pdlt.learning.TrainedDistribution` for the test inputs, with the same object for
the training inputs attached as ``train_fit``.  A :class:`~pdlt.errors.RegimeWarning` is emitted when
the 1/n expansion is not reliable for these data and this width.
"""

from __future__ import annotations

import attrs
import numpy as np

from .architecture import Architecture
from .errors import ParameterError
from .flow import Flow, Statistics, validate_inputs
from .learning import LearningAlgorithm, TrainedDistribution, validate_labels

__all__ = ["solve", "duplicate_rows"]

_ORDERS = (None, "leading", "full", "dntk")


def duplicate_rows(X: np.ndarray, rtol: float = 1e-12) -> list[tuple[int, int]]:
    """Pairs (a, b), a < b, of rows of X that coincide to relative tolerance ``rtol``."""
    X = np.asarray(X, dtype=float)
    scale = max(float(np.abs(X).max(initial=0.0)), 1.0)
    d = np.abs(X[:, None, :] - X[None, :, :]).max(axis=-1)
    a, b = np.nonzero(np.triu(d <= rtol * scale, k=1))
    return list(zip(a.tolist(), b.tolist()))


def solve(
    net: Architecture,
    algorithm: LearningAlgorithm,
    X_train,
    y_train,
    X_test,
    *,
    order: str | None = None,
    quadrature=None,
    statistics: Statistics | Flow | None = None,
    warn_regime: bool = True,
) -> TrainedDistribution:
    """Distribution of the outputs of ``net`` trained by ``algorithm`` on (X_train, y_train), at X_test.

    Parameters
    ----------
    net : Architecture
        e.g. ``pdlt.MLP(...)``; its width n_{L−1} sets the size of the 1/n corrections.
    algorithm : LearningAlgorithm
        e.g. ``pdlt.GradientDescent(learning_rate=0.1)``, ``pdlt.Bayesian(noise_variance=0.1)``,
        ``pdlt.NewtonStep()``.
    X_train : array_like, shape (N_A, input_dim)
        Training inputs; no two may coincide unless the algorithm models observation noise.
    y_train : array_like, shape (N_A, output_dim) (or (N_A,) when output_dim = 1)
        Training labels.
    X_test : array_like, shape (N_B, input_dim)
        Test inputs (may coincide with training inputs).
    order : {None, "leading", "full", "dntk"}
        Statistics to compute.  None: what the algorithm needs for its O(1/n) result
        (``algorithm.order``); "leading": infinite width only (K and Θ; the corrections are None).
    quadrature : optional
        Passed to :func:`pdlt.flow`.
    statistics : Statistics or Flow, optional
        Precomputed output-layer statistics on the concatenated inputs (X_train then X_test),
        e.g. to reuse an expensive flow; ``order`` and ``quadrature`` are then ignored.  If they were
        computed at another width n_{L−1} (same aspect ratios), the corrections are rescaled to
        ``net``'s width.
    warn_regime : bool
        Emit a :class:`~pdlt.errors.RegimeWarning` when the expansion is unreliable.

    Returns
    -------
    TrainedDistribution
        ``mean`` (N_B, output_dim), ``covariance`` (N_B, output_dim, N_B, output_dim), their
        infinite-width parts and 1/n corrections, ``train_fit`` on X_train, ``regime``.

    Raises
    ------
    ParameterError
        Bad shapes, non-finite data, duplicate training inputs, a learning rate above the
        stability limit (the message gives the limit).
    NumericalError
        A singular training-set kernel.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.solver import solve
    >>> net = pdlt.MLP(input_dim=1, hidden_widths=[64], activation=pdlt.activation("tanh"))
    >>> d = solve(net, pdlt.NewtonStep(), [[-1.0], [1.0]], [0.5, -0.5], [[0.0]], order="leading")
    >>> d.mean.shape, d.covariance.shape
    ((1, 1), (1, 1, 1, 1))
    """
    if not isinstance(net, Architecture):
        raise ParameterError(f"The 'net' parameter of solve must be an Architecture (e.g. pdlt.MLP). Got {net!r} instead.")
    if isinstance(algorithm, type) and issubclass(algorithm, LearningAlgorithm):
        raise ParameterError(
            f"The 'algorithm' parameter of solve must be a LearningAlgorithm instance. Got the class "
            f"{algorithm.__name__} instead; instantiate it, e.g. {algorithm.__name__}(...)."
        )
    if not isinstance(algorithm, LearningAlgorithm):
        raise ParameterError(
            "The 'algorithm' parameter of solve must be a LearningAlgorithm instance (e.g. "
            f"pdlt.GradientDescent(learning_rate=0.1)). Got {algorithm!r} instead."
        )
    if order not in _ORDERS:
        raise ParameterError(f"The 'order' parameter of solve must be one of {_ORDERS}. Got {order!r} instead.")
    Xa = validate_inputs(X_train, net.input_dim, "X_train", "solve")
    Xb = validate_inputs(X_test, net.input_dim, "X_test", "solve")
    N_A, N_B = Xa.shape[0], Xb.shape[0]
    y = validate_labels(y_train, N_A, net.output_dim, "y_train", "solve")
    dups = duplicate_rows(Xa)
    if dups and not algorithm.allows_duplicate_inputs():
        shown = ", ".join(f"{a} and {b}" for a, b in dups[:5])
        raise ParameterError(
            f"The 'X_train' parameter of solve must not contain duplicate inputs for {type(algorithm).__name__} "
            f"(they make the training-set kernel singular). Got coinciding rows {shown} instead. Merge them "
            "(average their labels) or use Bayesian(noise_variance > 0), which models label noise."
        )

    corrections = order != "leading"
    if statistics is not None:
        stats = statistics[-1] if isinstance(statistics, Flow) else statistics
        if not isinstance(stats, Statistics) or stats.K.shape[0] != N_A + N_B:
            raise ParameterError(
                "The 'statistics' parameter of solve must be the output-layer Statistics (or Flow) on the "
                f"{N_A + N_B} concatenated inputs (X_train then X_test). Got {statistics!r} instead."
            )
        if stats.width != net.output_dim:
            raise ParameterError(
                f"The 'statistics' parameter of solve must be for output_dim = {net.output_dim} outputs. "
                f"Got statistics of an output layer of width {stats.width} instead."
            )
        if corrections and order is None and not stats.has_corrections:
            corrections = False
    else:
        want = algorithm.order if order is None else order
        stats = algorithm.output_statistics(net, np.vstack([Xa, Xb]), order=want, quadrature=quadrature)

    train = np.arange(N_A)
    test = np.arange(N_A, N_A + N_B)
    algorithm.check(stats, train)
    both = np.concatenate([test, train])
    full = algorithm.trained_distribution(stats, train, y, both, corrections=corrections)
    dist = _split(full, N_B)
    width = net.widths[-2]
    if dist.width != width:
        # precomputed statistics of a network with another n_{L−1}: the output-layer tensors depend on
        # the widths only through the aspect ratios, so the corrections are rescaled to this network
        dist = dist.at_width(width)
    if warn_regime:
        dist.check_regime(stacklevel=3)
    return dist


def _take(dist: TrainedDistribution, idx: np.ndarray) -> TrainedDistribution:
    cov = lambda C: None if C is None else C[np.ix_(idx, np.arange(C.shape[1]), idx, np.arange(C.shape[3]))]  # noqa: E731
    mean = lambda m: None if m is None else m[idx]  # noqa: E731
    return attrs.evolve(
        dist,
        mean_infinite=mean(dist.mean_infinite),
        mean_correction=mean(dist.mean_correction),
        covariance_infinite=cov(dist.covariance_infinite),
        covariance_correction=cov(dist.covariance_correction),
        train_fit=None,
    )


def _split(full: TrainedDistribution, N_B: int) -> TrainedDistribution:
    N = full.n_test
    train_fit = _take(full, np.arange(N_B, N))
    test = _take(full, np.arange(N_B))
    return attrs.evolve(test, train_fit=train_fit)
