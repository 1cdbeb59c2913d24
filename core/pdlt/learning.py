"""Learning algorithms and the distribution of trained networks they produce.

A :class:`LearningAlgorithm` (Bayesian inference, gradient descent, a Newton step, …) maps the
output-layer :class:`~pdlt.flow.Statistics` of a network on the inputs D = A ∪ B (training set A,
test set B) and the training labels to a :class:`TrainedDistribution`: the mean and covariance of
the trained outputs on B, each split into its infinite-width part and its O(1/n) correction at the
network's width n = n_{L−1} (book ch. 6, 10, ∞; shared/theory/training.md, trained-cov.md).
Concrete algorithms are plugins (``pdlt_plugins.learning``); this module holds the interface, the
result object, its observables (test error with its bias–variance split, train fit, samples) and the
regime diagnostics that say when the 1/n expansion is not to be trusted.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import attrs
import numpy as np

from .errors import NumericalError, ParameterError, RegimeWarning, warn

__all__ = [
    "LearningAlgorithm",
    "TrainedDistribution",
    "ErrorDecomposition",
    "Regime",
    "REGIME_THRESHOLDS",
    "expand_outputs",
    "psd_eigh",
    "validate_labels",
]

#: Thresholds of :class:`Regime`: ``condition`` bounds the condition number of the training-set
#: kernel (NTK for gradient descent, K + σ_ε² for Bayesian inference), ``mean_ratio`` and
#: ``covariance_ratio`` bound ‖correction‖/‖infinite-width part‖ (Frobenius norms).
REGIME_THRESHOLDS = {"condition": 1e8, "mean_ratio": 0.3, "covariance_ratio": 0.3}

#: Condition number beyond which a training-set kernel is treated as singular.
SINGULAR_CONDITION = 1e13


def _readonly(x):
    if x is None:
        return None
    a = np.array(x, dtype=float, copy=True)
    a.setflags(write=False)
    return a


def _eq(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


_arr = dict(converter=_readonly, eq=attrs.cmp_using(eq=_eq))
_opt = dict(converter=_readonly, eq=attrs.cmp_using(eq=_eq), default=None)


def expand_outputs(C: np.ndarray, n_outputs: int) -> np.ndarray:
    """δ_ij ⊗ C: a per-output covariance C (N, N) as the full (N, n_L, N, n_L) array."""
    C = np.asarray(C, dtype=float)
    return C[:, None, :, None] * np.eye(n_outputs)[None, :, None, :]


def psd_eigh(M: np.ndarray, name: str, owner: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigen-decomposition M = O diag(h) Oᵀ of a training-set kernel that must be invertible.

    Returns
    -------
    h : ndarray (N,)
        Eigenvalues, ascending.
    O : ndarray (N, N)
        Orthonormal eigenvectors (columns).
    condition : float
        h_max/h_min.

    Raises
    ------
    NumericalError
        M is not finite, has a non-positive eigenvalue, or its condition number exceeds
        :data:`SINGULAR_CONDITION` (duplicate or collinear training inputs, vanishing kernel).
    """
    M = np.asarray(M, dtype=float)
    if not np.all(np.isfinite(M)):
        raise NumericalError(f"{owner}: the {name} has non-finite entries.")
    h, O = np.linalg.eigh(0.5 * (M + M.T))
    cond = float(h[-1] / h[0]) if h[0] > 0 else float("inf")
    if not (h[0] > 0) or cond > SINGULAR_CONDITION:
        raise NumericalError(
            f"{owner}: the {name} on the training inputs is singular or nearly so (eigenvalues "
            f"{h[0]:.3g} … {h[-1]:.3g}, condition number {cond:.3g} > {SINGULAR_CONDITION:.0e}). "
            "Remove duplicate or nearly collinear training inputs, add a bias (c_b, lambda_b > 0) if an input "
            "is zero, or use Bayesian(noise_variance > 0)."
        )
    return h, O, cond


# ---------------------------------------------------------------------------------------------
# observables


@attrs.frozen(kw_only=True)
class ErrorDecomposition:
    """Expected squared error per point and output: ``total = bias_squared + variance``.

    Attributes
    ----------
    bias_squared, variance : ndarray, shape (N, n_L)
        (E[z] − y)² and Var[z] for every point and output component (book §10.3).
    """

    bias_squared: np.ndarray = attrs.field(**_arr)
    variance: np.ndarray = attrs.field(**_arr)

    @property
    def total(self) -> np.ndarray:
        """E[(z − y)²] per point and output, shape (N, n_L)."""
        return self.bias_squared + self.variance

    @property
    def mse(self) -> float:
        """½ Σ_i E[(z_i − y_i)²] averaged over the points (the MSE loss per sample)."""
        return float(0.5 * self.total.sum(axis=1).mean())


@attrs.frozen(kw_only=True)
class Regime:
    """Diagnostics of the 1/n expansion for one :class:`TrainedDistribution`.

    Attributes
    ----------
    condition_number : float
        λ_max/λ_min of the training-set kernel the algorithm inverts (Θ̃ for gradient descent and
        the Newton step, K̃ + σ_ε² for Bayesian inference).  Small eigenvalues amplify every 1/n
        term (training.md §4.5 "Caveat", §8 "Regime of validity").
    mean_ratio, covariance_ratio : float or None
        ‖correction‖/‖infinite-width part‖ (Frobenius) of the mean and covariance at the
        network's width (None when the correction was not computed).
    min_variance_eigenvalue : float or None
        Smallest eigenvalue of the corrected covariance (negative: the truncated series is not a
        covariance — the width is too small for these inputs).
    messages : tuple of str
        One sentence per violated threshold (:data:`REGIME_THRESHOLDS`), with the numbers.
    """

    condition_number: float
    mean_ratio: float | None = None
    covariance_ratio: float | None = None
    min_variance_eigenvalue: float | None = None
    messages: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no threshold is violated."""
        return not self.messages


def _ratio(corr, inf) -> float | None:
    if corr is None:
        return None
    a = float(np.linalg.norm(corr))
    b = float(np.linalg.norm(inf))
    if a == 0.0:
        return 0.0
    return a / b if b > 0 else float("inf")


def _regime(condition, mean_inf, mean_corr, cov_inf, cov_corr, width) -> Regime:
    th = REGIME_THRESHOLDS
    msgs = []
    if condition > th["condition"]:
        msgs.append(
            f"the training-set kernel is ill-conditioned (condition number {condition:.3g} > {th['condition']:.0e}); "
            "1/n corrections are amplified by its small eigenvalues"
        )
    mr = _ratio(mean_corr, mean_inf)
    cr = _ratio(cov_corr, cov_inf)
    if mr is not None and mr > th["mean_ratio"]:
        msgs.append(f"|mean_correction| = {mr:.3g} |mean_infinite| > {th['mean_ratio']} at width n = {width}")
    if cr is not None and cr > th["covariance_ratio"]:
        msgs.append(
            f"|covariance_correction| = {cr:.3g} |covariance_infinite| > {th['covariance_ratio']} at width n = {width}"
        )
    mineig = None
    if cov_corr is not None:
        N, m = cov_inf.shape[:2]
        C = (cov_inf + cov_corr).reshape(N * m, N * m)
        mineig = float(np.linalg.eigvalsh(0.5 * (C + C.T))[0])
        scale = float(np.abs(np.diagonal(cov_inf.reshape(N * m, N * m))).max(initial=0.0))
        if mineig < -1e-10 * max(scale, 1e-300):
            msgs.append(
                f"the corrected covariance has a negative eigenvalue {mineig:.3g} at width n = {width}: "
                "the truncated 1/n series is not a covariance here"
            )
    return Regime(
        condition_number=float(condition),
        mean_ratio=mr,
        covariance_ratio=cr,
        min_variance_eigenvalue=mineig,
        messages=tuple(msgs),
    )


# ---------------------------------------------------------------------------------------------
# the trained distribution


@attrs.frozen(kw_only=True)
class TrainedDistribution:
    """Mean and covariance of trained network outputs at test inputs, to order 1/n.

    ``mean = mean_infinite + mean_correction`` and ``covariance = covariance_infinite +
    covariance_correction``, the corrections being the O(1/n) terms evaluated at ``width``
    n = n_{L−1} (exactly linear in 1/n: :meth:`at_width` rescales them).

    Attributes
    ----------
    algorithm : LearningAlgorithm
        The algorithm that produced it.
    width : int
        n = n_{L−1}, the width at which the corrections are evaluated.
    mean_infinite : ndarray, shape (N_test, n_L)
        Infinite-width mean m^∞_{i;β̇} (indexed [β̇, i]).
    mean_correction : ndarray, shape (N_test, n_L), or None
        The O(1/n) part of the mean at ``width`` (None: not computed, e.g. ``order="leading"``).
    covariance_infinite : ndarray, shape (N_test, n_L, N_test, n_L)
        Cov[z_{i;β̇1}, z_{j;β̇2}] at infinite width, indexed [β̇1, i, β̇2, j]; it is δ_ij Σ^∞.
    covariance_correction : ndarray, same shape, or None
        The O(1/n) part at ``width``.  It is δ_ij × (…) plus terms bilinear in the labels of
        outputs i and j (trained-cov.md §1 "Structure"; training.md §1.2).
    condition_number : float
        Of the training-set kernel (see :class:`Regime`).
    notes : tuple of str
        What was approximated or left out (e.g. P..U set to zero, finite-step covariance).
    train_fit : TrainedDistribution or None
        The same distribution evaluated on the training inputs (its :meth:`test_error` with the
        training labels is the expected training loss).
    """

    algorithm: Any = attrs.field(eq=False)
    width: int
    mean_infinite: np.ndarray = attrs.field(**_arr)
    covariance_infinite: np.ndarray = attrs.field(**_arr)
    mean_correction: np.ndarray | None = attrs.field(**_opt)
    covariance_correction: np.ndarray | None = attrs.field(**_opt)
    condition_number: float = 1.0
    notes: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    train_fit: "TrainedDistribution | None" = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        m = self.mean_infinite
        if m.ndim != 2:
            raise ParameterError(f"The 'mean_infinite' parameter of TrainedDistribution must have shape (N, n_L). Got {m.shape} instead.")
        N, nL = m.shape
        if self.covariance_infinite.shape != (N, nL, N, nL):
            raise ParameterError(
                f"The 'covariance_infinite' parameter of TrainedDistribution must have shape {(N, nL, N, nL)}. "
                f"Got {self.covariance_infinite.shape} instead."
            )
        for name, shape in (("mean_correction", m.shape), ("covariance_correction", (N, nL, N, nL))):
            x = getattr(self, name)
            if x is not None and x.shape != shape:
                raise ParameterError(
                    f"The {name!r} parameter of TrainedDistribution must have shape {shape}. Got {x.shape} instead."
                )
        for name in ("mean_infinite", "covariance_infinite", "mean_correction", "covariance_correction"):
            x = getattr(self, name)
            if x is not None and not np.all(np.isfinite(x)):
                raise NumericalError(
                    f"TrainedDistribution.{name} has non-finite entries: the training-set kernel is singular "
                    "or the inputs are outside the range of the expansion."
                )

    # -------------------------------------------------------------- shape
    @property
    def n_test(self) -> int:
        return int(self.mean_infinite.shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.mean_infinite.shape[1])

    @property
    def has_corrections(self) -> bool:
        """True when both O(1/n) parts were computed."""
        return self.mean_correction is not None and self.covariance_correction is not None

    # -------------------------------------------------------------- totals
    @property
    def mean(self) -> np.ndarray:
        """mean_infinite + mean_correction (the infinite-width mean if no correction), (N_test, n_L)."""
        if self.mean_correction is None:
            return self.mean_infinite
        return _readonly(self.mean_infinite + self.mean_correction)

    @property
    def covariance(self) -> np.ndarray:
        """covariance_infinite + covariance_correction, (N_test, n_L, N_test, n_L)."""
        if self.covariance_correction is None:
            return self.covariance_infinite
        return _readonly(self.covariance_infinite + self.covariance_correction)

    @property
    def variance(self) -> np.ndarray:
        """Var[z_{i;β̇}] with the correction, shape (N_test, n_L)."""
        return np.einsum("aiai->ai", self.covariance).copy()

    def covariance_matrix(self, output: int = 0) -> np.ndarray:
        """The (N_test, N_test) covariance block of one output component."""
        return np.array(self.covariance[:, output, :, output])

    # -------------------------------------------------------------- width
    def at_width(self, width: float) -> "TrainedDistribution":
        """The same distribution with the corrections rescaled to width n' (``inf``: none).

        Valid because every correction is exactly (1/n) × a width-independent coefficient (the
        statistics K, Θ, V, A, …, U of the output layer do not depend on n_{L−1} at fixed aspect
        ratios n_ℓ/n_{ℓ−1}; theory/init.md §6).
        """
        if not (isinstance(width, (int, float, np.integer, np.floating)) and width > 0):
            raise ParameterError(f"The 'width' parameter of TrainedDistribution.at_width must be > 0. Got {width!r} instead.")
        f = 0.0 if np.isinf(width) else self.width / float(width)
        mc = None if self.mean_correction is None else self.mean_correction * f
        cc = None if self.covariance_correction is None else self.covariance_correction * f
        tf = None if self.train_fit is None else self.train_fit.at_width(width)
        new_width = int(width) if np.isfinite(width) else 0
        return attrs.evolve(self, width=new_width, mean_correction=mc, covariance_correction=cc, train_fit=tf)

    # -------------------------------------------------------------- observables
    @property
    def regime(self) -> Regime:
        """Diagnostics of the expansion (see :class:`Regime`)."""
        return _regime(
            self.condition_number,
            self.mean_infinite,
            self.mean_correction,
            self.covariance_infinite,
            self.covariance_correction,
            self.width,
        )

    def check_regime(self, stacklevel: int = 3) -> Regime:
        """Compute :attr:`regime` and emit one :class:`~pdlt.errors.RegimeWarning` if it is not ok."""
        r = self.regime
        if not r.ok:
            warn(
                f"{getattr(self.algorithm, 'name', 'learning')}: outside the regime of the 1/n expansion: "
                + "; ".join(r.messages)
                + ". Use a wider network, better-conditioned training inputs, or order='leading'.",
                RegimeWarning,
                stacklevel=stacklevel,
            )
        return r

    def test_error(self, y_test, *, corrected: bool = True) -> ErrorDecomposition:
        """Expected squared error at the test points, split into bias² and variance (book §10.3).

        Parameters
        ----------
        y_test : array_like, shape (N_test, n_L) (or (N_test,) when n_L = 1)
            True test labels.
        corrected : bool
            Include the O(1/n) corrections (default) or use the infinite-width parts only.

        Returns
        -------
        ErrorDecomposition
            ``bias_squared = (E[z] − y)²`` and ``variance = Var[z]`` per point and output.
        """
        y = validate_labels(y_test, self.n_test, self.n_outputs, "y_test", "TrainedDistribution.test_error")
        mean = self.mean if corrected else self.mean_infinite
        cov = self.covariance if corrected else self.covariance_infinite
        var = np.einsum("aiai->ai", cov)
        return ErrorDecomposition(bias_squared=(mean - y) ** 2, variance=var.copy())

    def sample(self, size: int, seed=None, *, corrected: bool = True) -> np.ndarray:
        """Draw outputs from the Gaussian with this mean and covariance.

        The trained distribution has O(1/n) non-Gaussian cumulants as well; this sampler keeps only
        the first two cumulants.  Negative eigenvalues of the truncated covariance (a sign of being
        outside the regime, :attr:`regime`) are clipped to zero.

        Parameters
        ----------
        size : int
            Number of draws.
        seed : int, numpy.random.Generator or None

        Returns
        -------
        ndarray, shape (size, N_test, n_L)
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ParameterError(f"The 'size' parameter of TrainedDistribution.sample must be a positive integer. Got {size!r} instead.")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        N, m = self.mean_infinite.shape
        mean = (self.mean if corrected else self.mean_infinite).reshape(N * m)
        C = (self.covariance if corrected else self.covariance_infinite).reshape(N * m, N * m)
        w, V = np.linalg.eigh(0.5 * (C + C.T))
        root = V * np.sqrt(np.clip(w, 0.0, None))
        draws = mean + rng.standard_normal((int(size), N * m)) @ root.T
        return draws.reshape(int(size), N, m)


def validate_labels(y, N: int, n_outputs: int | None, name: str, owner: str) -> np.ndarray:
    """Labels as a float64 (N, n_L) array ((N,) is read as one output), checked for shape and finiteness."""
    y = np.asarray(y, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != N or (n_outputs is not None and y.shape[1] != n_outputs):
        want = f"({N}, {n_outputs})" if n_outputs is not None else f"({N}, n_L)"
        raise ParameterError(f"The {name!r} parameter of {owner} must have shape {want}. Got shape {y.shape} instead.")
    if not np.all(np.isfinite(y)):
        raise ParameterError(f"The {name!r} parameter of {owner} must be finite. Got non-finite entries instead.")
    return y


# ---------------------------------------------------------------------------------------------
# the interface


@attrs.frozen(kw_only=True)
class LearningAlgorithm:
    """Base class of learning algorithms (book ch. 6, 7, 10, ∞).

    A subclass sets the class attribute ``name`` (its registry key) and implements
    :meth:`trained_distribution`.  Hyperparameters are constructor keywords stored verbatim.

    Class attributes
    ----------------
    name : str
        Registry key, e.g. ``"gradient_descent"``.
    order : str
        The :func:`pdlt.flow` order its O(1/n) result needs: ``"full"`` (K, Θ, V, G1, H1, A, B, D,
        F) or ``"dntk"`` (also the dNTK/ddNTK statistics P, Q, R, S, T, U).
    """

    name: ClassVar[str] = ""
    order: ClassVar[str] = "full"

    def output_statistics(self, net, X: np.ndarray, *, order: str, quadrature=None):
        """Statistics of the output layer of ``net`` on ``X`` to the requested ``order``.

        ``order`` is "leading", "full" or "dntk".  The default asks :func:`pdlt.flow`; when it does
        not (yet) support ``"dntk"`` it falls back to ``"full"`` (P..U are then None and the
        algorithm decides what to do).  Plugins may override this to supply the statistics they need.
        """
        from .flow import flow

        if order == "dntk":
            try:
                return flow(net, X, order="dntk", quadrature=quadrature)[-1]
            except ParameterError as exc:
                if "'order' parameter" not in str(exc):  # only an architecture without order="dntk"
                    raise
                order = "full"
        return flow(net, X, order=order, quadrature=quadrature)[-1]

    def allows_duplicate_inputs(self) -> bool:
        """Whether coinciding training inputs are admissible (only with observation noise)."""
        return False

    def check(self, stats, train: np.ndarray) -> None:
        """Validate the algorithm's hyperparameters against the data (e.g. a learning-rate
        stability limit); raise :class:`~pdlt.errors.ParameterError`.  Default: nothing."""

    def trained_distribution(
        self,
        stats,
        train: Sequence[int],
        y_train,
        test: Sequence[int],
        *,
        corrections: bool = True,
    ) -> TrainedDistribution:  # pragma: no cover - interface
        """The distribution of trained outputs at the ``test`` samples.

        Parameters
        ----------
        stats : Statistics
            Output-layer statistics on all samples D (``flow[-1]``); tensors normalised by
            1/n_{L−1} = 1/``stats.fan_in``.
        train, test : sequence of int
            Indices into D of the training set A and of the evaluation points.
        y_train : ndarray, shape (N_A, n_L)
            Labels y_{i;α̃}.
        corrections : bool
            Compute the O(1/n) parts (needs the 1/n tensors in ``stats``).

        Returns
        -------
        TrainedDistribution
        """
        raise NotImplementedError
