"""Model complexity from the macroscopic perspective (the book's epilogue ε).

Book epilogue ε; shared/theory/training.md §5; docs/information.md, "Model complexity (epilogue ε)".

The relevant complexity of the *ensemble* of trained networks is not the parameter count P but
the size of its deviation from the infinite-width (kernel) description.  At width n and depth L
that deviation is carried by the O(1/n) tensors of the output layer (V; the NTK fluctuations A,
B and cross-correlations D, F; the dNTK/ddNTK statistics P, Q, R, S, T, U), each of which, made
dimensionless with the kernel K and the NTK Θ, grows like L/n at criticality.  The description is
*macroscopic*: for N_D inputs it consists of a fixed number of data-dependent numbers (K, Θ:
N_D(N_D+1)/2 each; the 1/n tensors: O(N_D⁴) each), whatever P is.

:func:`model_complexity` reports, for a concrete network and data set,

* ``n_parameters`` P and ``n_macroscopic``, the distinct entries of every tensor of the
  macroscopic description (orbits of its index symmetries, :data:`SYMMETRIES`);
* ``measures``: the dimensionless finite-width measures of the output layer (signed, averaged over
  the inputs α; n ≡ n_{L−1}, the 1/n normalisation of the flow's tensors)

      V_αααα/(n K_αα²),   A, B, P, Q: X_αααα/(n Θ_αα²),   D, F: X_αααα/(n K_αα Θ_αα),
      R, S, T, U: X_αααα K_αα/(n Θ_αα³),

  each invariant under rescaling the outputs (z → cz) and the learning rates (λ → cλ);
* ``coefficients``: every measure divided by the aspect ratio r = L/n (r = L·mean_ℓ 1/n_ℓ over the
  hidden layers for unequal widths), i.e. the measure per unit r;
* optionally the relative size of the O(1/n) parts of a trained distribution
  (:func:`pdlt.solve`): ‖mean_correction‖/‖mean_infinite‖ and
  ‖covariance_correction‖/‖covariance_infinite‖ (Frobenius norms), again with their coefficient
  per unit r.
"""

from __future__ import annotations

from typing import Mapping

import attrs
import numpy as np

from .architecture import Architecture
from .errors import NumericalError, ParameterError
from .flow import flow as _flow
from .flow import validate_inputs

__all__ = ["ModelComplexity", "model_complexity", "SYMMETRIES", "count_independent", "parameter_count"]

_ID = (0, 1, 2, 3)
_PAIRS = (_ID, (0, 1, 3, 2), (1, 0, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (2, 3, 1, 0), (3, 2, 0, 1), (3, 2, 1, 0))

#: Index-permutation symmetry group of every rank-4 tensor of pdlt.Statistics (axis order as
#: stored), as realised by the flow on generic inputs (tests/unit/test_complexity.py checks that
#: each group holds and that no further permutation does).  K and Θ are symmetric matrices.
SYMMETRIES: dict[str, tuple[tuple[int, ...], ...]] = {
    "V": _PAIRS,
    "A": _PAIRS,
    "B": (_ID, (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)),
    "D": (_ID, (0, 1, 3, 2), (1, 0, 2, 3), (1, 0, 3, 2)),
    "F": (_ID, (2, 3, 0, 1)),
    "P": (_ID, (0, 2, 1, 3)),
    "Q": (_ID,),
    "R": (_ID, (0, 1, 3, 2)),
    "S": (_ID, (1, 0, 3, 2)),
    "T": (_ID, (3, 2, 1, 0)),
    "U": (_ID, (2, 3, 0, 1)),
}

#: Powers (a, b) of the normalisation n K_αα^a Θ_αα^b of each tensor's diagonal entry.
NORMALISATIONS: dict[str, tuple[int, int]] = {
    "V": (2, 0),
    "A": (0, 2), "B": (0, 2),
    "D": (1, 1), "F": (1, 1),
    "P": (0, 2), "Q": (0, 2),
    "R": (-1, 3), "S": (-1, 3), "T": (-1, 3), "U": (-1, 3),
}

_CORRECTIONS = ("V", "A", "B", "D", "F")
_DNTK = ("P", "Q", "R", "S", "T", "U")


def _cycles(perm: tuple[int, ...]) -> int:
    seen, c = set(), 0
    for i in range(len(perm)):
        if i not in seen:
            c += 1
            j = i
            while j not in seen:
                seen.add(j)
                j = perm[j]
    return c


def count_independent(name: str, n_inputs: int) -> int:
    """Number of distinct entries of a macroscopic tensor over ``n_inputs`` inputs.

    Parameters
    ----------
    name : str
        "K", "Theta" (symmetric N×N) or one of the rank-4 tensors in :data:`SYMMETRIES`.
    n_inputs : int ≥ 1
        N_D.

    Returns
    -------
    int
        The number of orbits of the index symmetry group G acting on the N_D^k entries
        (Burnside: (1/|G|) Σ_g N_D^{cycles(g)}); e.g. V: M(M+1)/2 with M = N_D(N_D+1)/2.
    """
    if not (isinstance(n_inputs, (int, np.integer)) and not isinstance(n_inputs, bool) and n_inputs >= 1):
        raise ParameterError(
            f"The 'n_inputs' parameter of count_independent must be an integer ≥ 1. Got {n_inputs!r} instead."
        )
    N = int(n_inputs)
    if name in ("K", "Theta"):
        return N * (N + 1) // 2
    if name not in SYMMETRIES:
        raise ParameterError(
            "The 'name' parameter of count_independent must be one of "
            f"{['K', 'Theta', *SYMMETRIES]}. Got {name!r} instead."
        )
    G = SYMMETRIES[name]
    total = sum(N ** _cycles(g) for g in G)
    return total // len(G)


def parameter_count(net: Architecture) -> int:
    """P = Σ_ℓ n_ℓ (n_{ℓ−1} + 1): weights and biases of the L layers (shortcuts have none)."""
    w = [int(x) for x in net.widths]
    return int(sum(w[i] * (w[i - 1] + 1) for i in range(1, len(w))))


@attrs.frozen(kw_only=True)
class ModelComplexity:
    """The macroscopic complexity of a network's ensemble on a data set (book epilogue ε).

    Attributes
    ----------
    depth : int
        L.
    widths : tuple of int
        (n_0, …, n_L).
    width : int
        n = n_{L−1}, the fan-in of the output layer: the 1/n of every measure.
    aspect_ratio : float
        r = L · mean_ℓ(1/n_ℓ) over the hidden layers (= L/n for equal widths).
    n_parameters : int
        P, the number of weights and biases.
    n_inputs : int
        N_D, the number of inputs of the description (training then test inputs).
    n_macroscopic : dict[str, int]
        Distinct data-dependent entries of K, Θ and of each 1/n tensor computed
        (:func:`count_independent`); independent of P.
    measures : dict[str, float or None]
        Dimensionless finite-width measures of the output layer (module docstring), signed and
        averaged over the inputs; None where the tensor is undefined (NaN: ddNTK of kinked σ).
        With an algorithm, also "mean_correction" and "covariance_correction" (relative
        Frobenius norms of the O(1/n) parts of the trained distribution at ``width``).
    coefficients : dict[str, float or None]
        ``measures[k] / aspect_ratio``: the size per unit r = L/n.  At criticality these tend to
        depth-independent constants (e.g. V: ν = 2/3 for tanh, 5 for ReLU).
    """

    depth: int
    widths: tuple[int, ...]
    width: int
    aspect_ratio: float
    n_parameters: int
    n_inputs: int
    n_macroscopic: Mapping[str, int]
    measures: Mapping[str, float | None]
    coefficients: Mapping[str, float | None]

    @property
    def n_macroscopic_total(self) -> int:
        """Σ of :attr:`n_macroscopic`: the size of the macroscopic description."""
        return int(sum(self.n_macroscopic.values()))

    def summary(self) -> str:
        """A few lines: P vs the macroscopic size, r, and each measure with its coefficient."""
        lines = [
            f"L = {self.depth}, widths = {self.widths}, r = L/n = {self.aspect_ratio:.4g}",
            f"parameters P = {self.n_parameters}; macroscopic numbers on N_D = {self.n_inputs} inputs: "
            f"{self.n_macroscopic_total}",
        ]
        for k, m in self.measures.items():
            c = self.coefficients[k]
            lines.append(f"  {k:>22}: {'undefined' if m is None else f'{m:+.4g}'}"
                         f"   per unit r: {'undefined' if c is None else f'{c:+.4g}'}")
        return "\n".join(lines)


def _diag_measure(t: np.ndarray, K: np.ndarray, Th: np.ndarray, powers: tuple[int, int], n: int) -> float | None:
    d = np.einsum("aaaa->a", t)
    if not np.all(np.isfinite(d)):
        return None
    k = np.diag(K) ** powers[0]
    th = np.diag(Th) ** powers[1]
    return float(np.mean(d / (n * k * th)))


def model_complexity(
    net: Architecture,
    X_train,
    y_train=None,
    X_test=None,
    algorithm=None,
    *,
    order: str = "full",
    quadrature=None,
    warn_regime: bool = True,
) -> ModelComplexity:
    """The effective model complexity of ``net``'s ensemble on the data (book epilogue ε).

    Parameters
    ----------
    net : Architecture
        e.g. ``pdlt.MLP(...).at_criticality()`` with at least one hidden layer.
    X_train : array_like, shape (N_A, input_dim)
        Training inputs.
    y_train : array_like, optional
        Training labels; needed only with ``algorithm``.
    X_test : array_like, shape (N_B, input_dim), optional
        Test inputs; the macroscopic description is over X_train then X_test (N_D = N_A + N_B).
        Needed with ``algorithm``.
    algorithm : LearningAlgorithm, optional
        If given, :func:`pdlt.solve` is run and the relative sizes of the trained distribution's
        O(1/n) mean and covariance corrections are added to ``measures``.
    order : {"full", "dntk"}
        "full": measures of V, A, B, D, F; "dntk": also of the dNTK/ddNTK statistics P..U
        (costlier flow).
    quadrature : optional
        Passed to :func:`pdlt.flow`.
    warn_regime : bool
        Passed to :func:`pdlt.solve`.

    Returns
    -------
    ModelComplexity

    Raises
    ------
    ParameterError
        Depth 1 (no hidden layer: the ensemble is exactly Gaussian and r = 0), an unknown
        ``order``, or an algorithm without labels / test inputs.
    NumericalError
        A trained-distribution reference (‖mean_infinite‖ or ‖covariance_infinite‖) is zero, so
        the relative correction is undefined.

    Notes
    -----
    Book epilogue ε (theory/training.md §5).  Each measure is exactly ∝ 1/n_{L−1} at fixed depth
    (the flow's tensors are width-independent up to width ratios), independent of P at fixed
    (L, n) (input dimension and output dimension enter only through K^(1) and the neuron count),
    and at criticality grows ∝ L: the coefficient per unit r converges to a constant as
    L → ∞ (tanh with O(log L / L) corrections; ReLU's V exactly ν(L−1)/L with ν = 5).
    """
    if not isinstance(net, Architecture):
        raise ParameterError(f"The 'net' parameter of model_complexity must be an Architecture. Got {net!r} instead.")
    if order not in ("full", "dntk"):
        raise ParameterError(
            f"The 'order' parameter of model_complexity must be 'full' or 'dntk'. Got {order!r} instead."
        )
    widths = tuple(int(w) for w in net.widths)
    L = int(net.depth)
    if L < 2:
        raise ParameterError(
            "The 'net' parameter of model_complexity must have at least one hidden layer (depth ≥ 2; at "
            f"depth 1 the ensemble is exactly Gaussian and r = 0). Got depth {L} instead."
        )
    Xa = validate_inputs(X_train, net.input_dim, "X_train", "model_complexity")
    Xb = None if X_test is None else validate_inputs(X_test, net.input_dim, "X_test", "model_complexity")
    X = Xa if Xb is None else np.vstack([Xa, Xb])
    s = _flow(net, X, order=order, quadrature=quadrature)[-1]
    n = int(s.fan_in)
    r = L * float(np.mean([1.0 / w for w in widths[1:-1]]))
    N = X.shape[0]
    names = _CORRECTIONS + (_DNTK if order == "dntk" else ())
    counts = {"K": count_independent("K", N), "Theta": count_independent("Theta", N)}
    counts.update({k: count_independent(k, N) for k in names})
    K, Th = np.asarray(s.K, dtype=float), np.asarray(s.Theta, dtype=float)
    measures: dict[str, float | None] = {}
    for k in names:
        t = getattr(s, k)
        if t is None:
            raise ParameterError(
                f"The flow of 'net' did not provide {k} (architecture {type(net).__name__}); "
                f"model_complexity needs it for order={order!r}."
            )
        measures[k] = _diag_measure(np.asarray(t, dtype=float), K, Th, NORMALISATIONS[k], n)
    if algorithm is not None:
        if y_train is None or Xb is None:
            raise ParameterError(
                "The 'algorithm' parameter of model_complexity needs y_train and X_test (the trained "
                f"distribution is evaluated at test inputs). Got y_train={'None' if y_train is None else 'given'}, "
                f"X_test={'None' if Xb is None else 'given'} instead."
            )
        from .solver import solve

        dist = solve(net, algorithm, Xa, y_train, Xb, quadrature=quadrature, warn_regime=warn_regime)
        for key, inf, corr in (
            ("mean_correction", dist.mean_infinite, dist.mean_correction),
            ("covariance_correction", dist.covariance_infinite, dist.covariance_correction),
        ):
            if corr is None:
                measures[key] = None
                continue
            ref = float(np.linalg.norm(np.ravel(inf)))
            if not ref > 0.0:
                raise NumericalError(
                    f"model_complexity: the infinite-width {key.split('_')[0]} of the trained distribution is "
                    f"zero (norm {ref!r}), so the relative size of its O(1/n) correction is undefined."
                )
            measures[key] = float(np.linalg.norm(np.ravel(corr))) / ref
    coefficients = {k: (None if m is None else m / r) for k, m in measures.items()}
    return ModelComplexity(
        depth=L,
        widths=widths,
        width=n,
        aspect_ratio=r,
        n_parameters=parameter_count(net),
        n_inputs=N,
        n_macroscopic=counts,
        measures=measures,
        coefficients=coefficients,
    )
