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
