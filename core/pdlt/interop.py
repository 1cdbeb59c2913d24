"""Bridges from pdlt to other libraries: a network's infinite-width kernels as scikit-learn kernels.

:func:`sklearn_kernel` wraps the output-layer kernel K^(L) (or the frozen NTK Θ^(L)) of any
:class:`~pdlt.architecture.Architecture` as a ``sklearn.gaussian_process.kernels.Kernel``, so that
``GaussianProcessRegressor`` performs exact Bayesian inference with the infinite-width network
as prior (book §6.3), ``KernelRidge``-style NTK regression reproduces the gradient-descent
solution at infinite width (book §10.2), and the kernel composes with scikit-learn's own
kernels (``+ WhiteKernel()``, ``* ConstantKernel()``).  scikit-learn stays optional: it is
imported only when a kernel is made, and the kernel class is built on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .architecture import Architecture
from .errors import ParameterError
from .plotting import MissingDependencyError

__all__ = ["sklearn_kernel", "MissingDependencyError"]

_KINDS = ("kernel", "ntk")
_ORDERS = ("leading", "full")
_FIELDS = {("kernel", "leading"): "K", ("ntk", "leading"): "Theta"}
_CLASS: type | None = None


def _kernel_base() -> type:
    try:
        from sklearn.gaussian_process.kernels import Kernel
    except ImportError as exc:
        raise MissingDependencyError(
            "pdlt.interop.sklearn_kernel needs scikit-learn, which is not installed: pip install scikit-learn."
        ) from exc
    return Kernel


def _kernel_class() -> type:
    """The scikit-learn kernel class, created once; importable as ``pdlt.interop.PdltKernel``
    (so that fitted estimators holding it can be pickled)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    Kernel = _kernel_base()

    class PdltKernel(Kernel):
        """The infinite-width kernel K^(L) or NTK Θ^(L) of a pdlt network (no hyperparameters).

        Parameters
        ----------
        net : Architecture
            The network; its activation, depth and (C_b, C_W, λ_b, λ_W) define the kernel.
        order : {"leading", "full"}
            "leading": the infinite-width kernel.  "full": the finite-width two-point function
            to order 1/n, K + G1/n_{L−1} (or Θ + H1/n_{L−1}); costs O(N⁴) memory and time in the
            number N of inputs of one call.
        kind : {"kernel", "ntk"}
            K^(L) (the covariance of the network's outputs at initialization) or Θ^(L).
        quadrature : optional
            Passed to :func:`pdlt.flow`.
        """

        def __init__(self, net: Any = None, order: str = "leading", kind: str = "kernel", quadrature: Any = None):
            # scikit-learn stores constructor arguments verbatim (clone/get_params rely on it)
            self.net = net
            self.order = order
            self.kind = kind
            self.quadrature = quadrature

        def _gram(self, X: np.ndarray) -> np.ndarray:
            from .flow import flow

            fl = flow(self.net, X, order=self.order, quadrature=self.quadrature)
            s = fl[-1]
            if self.order == "leading":
                return np.array(s.K if self.kind == "kernel" else s.Theta)
            return np.array(s.metric() if self.kind == "kernel" else s.ntk_mean())

        def __call__(self, X, Y=None, eval_gradient: bool = False):
            """Kernel matrix k(X, Y), shape (n_X, n_Y) (k(X, X) when Y is None).

            With ``eval_gradient`` (only for Y = None) also returns the gradient with respect
            to the (absent) hyperparameters, shape (n_X, n_X, 0).
            """
            _check(self)
            X = _as_inputs(X, self.net, "X")
            if Y is None:
                G = self._gram(X)
                if eval_gradient:
                    return G, np.empty((X.shape[0], X.shape[0], 0))
                return G
            if eval_gradient:
                raise ValueError("Gradient can only be evaluated when Y is None.")
            Y = _as_inputs(Y, self.net, "Y")
            # one flow over X ∪ Y: the cross block of the joint kernel is k(X, Y)
            G = self._gram(np.concatenate([X, Y], axis=0))
            return G[: X.shape[0], X.shape[0]:]

        def diag(self, X) -> np.ndarray:
            """k(x, x) for every row of X, shape (n_X,); each depends on its own input only."""
            _check(self)
            X = _as_inputs(X, self.net, "X")
            # k(x, x) of the joint flow equals that of x alone: N one-input flows cost O(N L)
            # Gaussian integrals instead of the O(N² L) of the joint flow
            return np.array([self._gram(X[i : i + 1])[0, 0] for i in range(X.shape[0])])

        def is_stationary(self) -> bool:
            return False

        @property
        def requires_vector_input(self) -> bool:
            return True

        def __repr__(self) -> str:
            net = self.net
            what = "K" if self.kind == "kernel" else "Θ"
            try:
                desc = f"{net.activation.name}, depth {net.depth}"
            except AttributeError:
                desc = repr(net)
            return f"PdltKernel({what}^(L), {desc}, order={self.order!r})"

    PdltKernel.__module__ = __name__
    PdltKernel.__qualname__ = "PdltKernel"
    _CLASS = PdltKernel
    return PdltKernel


def __getattr__(name: str):
    if name == "PdltKernel":
        return _kernel_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check(kernel) -> None:
    if not isinstance(kernel.net, Architecture):
        raise ParameterError(
            f"The 'net' parameter of sklearn_kernel must be an Architecture (e.g. pdlt.MLP). Got {kernel.net!r} instead."
        )
    if kernel.kind not in _KINDS:
        raise ParameterError(f"The 'kind' parameter of sklearn_kernel must be 'kernel' or 'ntk'. Got {kernel.kind!r} instead.")
    if kernel.order not in _ORDERS:
        raise ParameterError(
            f"The 'order' parameter of sklearn_kernel must be 'leading' or 'full'. Got {kernel.order!r} instead."
        )


def _as_inputs(X, net: Architecture, name: str) -> np.ndarray:
    from .flow import validate_inputs

    return validate_inputs(X, net.input_dim, name=name, owner="PdltKernel")


def sklearn_kernel(net: Architecture, order: str = "leading", kind: str = "kernel", *, quadrature=None):
    """The output-layer kernel of ``net`` as a scikit-learn Gaussian-process kernel.

    Parameters
    ----------
    net : Architecture
        Any architecture, e.g. ``pdlt.MLP(...).at_criticality()``; widths do not matter at
        leading order.
    order : {"leading", "full"}
        "leading" (default): the infinite-width kernel K^(L) (or Θ^(L)).  "full": the
        finite-width two-point function to order 1/n, K + G1/n_{L−1} (or Θ + H1/n_{L−1}); each
        call then costs O(N⁴) in its number of inputs N.
    kind : {"kernel", "ntk"}
        "kernel": K^(L), the covariance of the outputs at initialization — with it,
        ``GaussianProcessRegressor(kernel, alpha=σ_ε²)`` is Bayesian inference with the
        infinite-width prior (book §6.3).  "ntk": the frozen NTK Θ^(L) — regression with it
        (alpha → 0) gives the mean of infinitely wide networks trained by gradient descent to
        convergence, Θ_{BA}Θ̃⁻¹y (book §10.2).
    quadrature : optional
        Passed to :func:`pdlt.flow`.

    Returns
    -------
    PdltKernel
        A ``sklearn.gaussian_process.kernels.Kernel`` without hyperparameters:
        ``k(X, Y)`` runs :func:`pdlt.flow` on the rows of X and Y together (shape (n_X, n_Y));
        ``k.diag(X)``; ``k.is_stationary()`` is False.  It composes with scikit-learn kernels,
        e.g. ``k + WhiteKernel()`` to fit the noise level.

    Raises
    ------
    MissingDependencyError
        scikit-learn is not installed.
    ParameterError
        ``net``, ``order`` or ``kind`` is invalid.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from sklearn.gaussian_process import GaussianProcessRegressor  # doctest: +SKIP
    >>> net = pdlt.MLP(input_dim=1, hidden_widths=[64] * 2, activation=pdlt.activation("relu"), c_w=2.0)
    >>> gp = GaussianProcessRegressor(sklearn_kernel(net), alpha=1e-2)  # doctest: +SKIP
    >>> gp.fit(np.array([[-1.0], [0.5]]), np.array([0.3, -0.2])).predict(np.array([[0.0]]))  # doctest: +SKIP
    """
    kernel = _kernel_class()(net=net, order=order, kind=kind, quadrature=quadrature)
    _check(kernel)
    return kernel
