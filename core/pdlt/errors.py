"""Exceptions raised by pdlt.

Every error derives from :class:`PdltError` and also from the matching built-in exception, so
callers can catch either.  Messages name the parameter, the constraint and the value received,
and say what to change (scikit-learn style: "The 'c_w' parameter of MLP must be > 0. Got -1.0
instead.").
"""

from __future__ import annotations

import warnings

__all__ = [
    "PdltError",
    "ParameterError",
    "PluginError",
    "UnknownNameError",
    "NumericalError",
    "NoCriticalityError",
    "MissingDependencyError",
    "PdltWarning",
    "AccuracyWarning",
    "RegimeWarning",
    "check_parameter",
]


class PdltError(Exception):
    """Root of every exception raised by pdlt."""


class ParameterError(PdltError, ValueError):
    """A parameter has an invalid value, type or shape."""


class PluginError(PdltError, TypeError):
    """A plugin is malformed, clashes with another one, or failed to load."""


class UnknownNameError(PdltError, LookupError):
    """A name was looked up that no registered plugin provides."""


class NumericalError(PdltError, ArithmeticError):
    """A computation could not be carried out to the required accuracy (singular kernel,
    ill-defined distributional product, non-convergence)."""


class NoCriticalityError(PdltError, ValueError):
    """The activation admits no critical initialization."""


class MissingDependencyError(PdltError, ImportError):
    """An optional dependency (an extra such as ``pdlt[plot]``) is not installed."""


class PdltWarning(UserWarning):
    """Root of pdlt's warnings."""


class AccuracyWarning(PdltWarning):
    """A numerical result is less accurate than requested."""


class RegimeWarning(PdltWarning):
    """The network or data are outside the regime where the 1/n expansion is reliable."""


def check_parameter(ok: bool, name: str, owner: str, constraint: str, value, hint: str = "") -> None:
    """Raise :class:`ParameterError` with the project's message format unless ``ok``.

    Examples
    --------
    >>> check_parameter(-1.0 > 0, "c_w", "MLP", "> 0", -1.0)
    Traceback (most recent call last):
    ...
    pdlt.errors.ParameterError: The 'c_w' parameter of MLP must be > 0. Got -1.0 instead.
    """
    if not ok:
        msg = f"The {name!r} parameter of {owner} must be {constraint}. Got {value!r} instead."
        if hint:
            msg += " " + hint
        raise ParameterError(msg)


def warn(message: str, category: type[Warning] = PdltWarning, stacklevel: int = 3) -> None:
    warnings.warn(message, category, stacklevel=stacklevel)
