"""Hook specifications: the whole surface through which plugins extend pdlt.

Registration hooks return *classes* keyed by their ``name`` class attribute (the hatch pattern);
the plugin manager collects them and refuses duplicates.  One behaviour hook,
:func:`pdlt_gaussian_expectation`, lets closed forms compete with numerical quadrature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

PROJECT_NAME = "pdlt"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def pdlt_register_activations() -> Sequence[type]:
    """Return activation classes (subclasses of :class:`pdlt.Activation`) provided by this plugin.

    Each class must define a unique ``name`` class attribute; a name registered twice is an
    error naming both providers.
    """


@hookspec
def pdlt_register_architectures() -> Sequence[type]:
    """Return architecture classes (subclasses of :class:`pdlt.Architecture`), keyed by ``name``."""


@hookspec
def pdlt_register_learning_algorithms() -> Sequence[type]:
    """Return learning-algorithm classes (subclasses of :class:`pdlt.LearningAlgorithm`), keyed by ``name``."""


@hookspec
def pdlt_register_observables() -> Sequence[type]:
    """Return observable classes (subclasses of :class:`pdlt.Observable`), keyed by ``name``."""


@hookspec(firstresult=True)
def pdlt_gaussian_expectation(activation: Any, orders: tuple[int, ...], K: "np.ndarray") -> Any:
    """Closed form of the Gaussian expectation ⟨Π_s σ^(d_s)(z_s)⟩_K.

    Parameters
    ----------
    activation : Activation
        The activation σ (the same in every slot).
    orders : tuple of int
        Derivative order d_s of σ in each of the k slots (k = 1..4).
    K : ndarray, shape (B, k, k)
        Batch of positive semi-definite covariance blocks of the slot variables; blocks may be
        singular (coinciding inputs).

    Returns
    -------
    tuple of (values, errors) arrays of shape (B,), or None
        ``None`` when this implementation has no closed form for the request.
        Stops at first non-None result.
    """


@hookspec(firstresult=True)
def pdlt_gaussian_pair_matrices(activation: Any, orders: tuple[tuple[int, int], ...], K: "np.ndarray") -> Any:
    """Closed forms of ⟨σ^(d1)(z_a) σ^(d2)(z_b)⟩_K for every pair (a, b) of one N×N kernel.

    The leading-order layer map (K and Θ, book §4.3, §8.3.1) needs these matrices over all
    N² pairs of inputs; answering them from the kernel directly (each pair's 2×2 block is
    implicit, and shared intermediates such as the arc-cosine angle serve every requested
    pattern) avoids gathering N² blocks for :func:`pdlt_gaussian_expectation`.

    Parameters
    ----------
    activation : Activation
        The activation σ (the same in both slots).
    orders : tuple of (int, int)
        The derivative orders (d1, d2) of each requested matrix.
    K : ndarray, shape (N, N)
        Symmetric positive semi-definite kernel over N inputs (validated by the caller); inputs
        a, b with K_aa + K_bb − 2K_ab = 0 coincide (z_a = z_b).

    Returns
    -------
    list of ndarray, shape (N, N), or None
        One matrix per entry of ``orders``, exact up to rounding (no error estimate); ``None``
        when this implementation lacks a closed form for any requested pattern.
        Stops at first non-None result.
    """
