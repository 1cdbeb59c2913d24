"""pdlt — the effective theory of deep learning (Roberts & Yaida) as working software.

Given an activation, an architecture, hyperparameters, a learning algorithm and data, pdlt
computes the distribution of a network's outputs at initialization and after training to order
1/width, and checks each prediction against ensembles of real finite-width networks.

Concrete activations, architectures and learning algorithms are plugins; the names ``MLP``,
``ResidualMLP``, ``GradientDescent``, ``Bayesian`` and ``NewtonStep`` are looked up in the plugin
registry on first access.
"""

from __future__ import annotations

from typing import Any

from . import ensemble, errors, generalization, information, interop, plotting, training, validity
from . import complexity  # book epilogue ε: model complexity
from .activation import Activation
from .architecture import Architecture
from .errors import (
    AccuracyWarning,
    MissingDependencyError,
    NoCriticalityError,
    NumericalError,
    ParameterError,
    PdltError,
    PluginError,
    RegimeWarning,
    UnknownNameError,
)
from .criticality import CriticalityReport, learning_rate_schedule, susceptibilities
from .criticality import criticality as criticality  # the function shadows the module name on purpose
from .flow import Flow, Statistics
from .flow import flow as flow  # the function shadows the module name on purpose (pdlt.flow(net, X))
from .gaussian import expect
from .learning import ErrorDecomposition, LearningAlgorithm, Regime, TrainedDistribution
from .observable import Comparison, Observable
from .solver import solve
from .plugins import get_plugin_manager, lookup

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "Architecture",
    "activation",
    "architecture",
    "flow",
    "Flow",
    "criticality",
    "CriticalityReport",
    "learning_rate_schedule",
    "susceptibilities",
    "ensemble",
    "solve",
    "LearningAlgorithm",
    "Observable",
    "Comparison",
    "observable",
    "TrainedDistribution",
    "ErrorDecomposition",
    "Regime",
    "training",
    "information",
    "complexity",
    "generalization",
    "validity",
    "interop",
    "plotting",
    "MissingDependencyError",
    "Statistics",
    "expect",
    "get_plugin_manager",
    "PdltError",
    "ParameterError",
    "PluginError",
    "UnknownNameError",
    "NumericalError",
    "NoCriticalityError",
    "AccuracyWarning",
    "RegimeWarning",
    "errors",
    "__version__",
]


def activation(name: str, **params: Any) -> Activation:
    """Instantiate the activation registered as ``name`` (e.g. ``pdlt.activation("tanh")``).

    Raises
    ------
    UnknownNameError
        Lists the registered names and the closest match.
    """
    return lookup("activation", name)(**params)


def observable(name: str, **params: Any) -> Observable:
    """Instantiate the observable registered as ``name`` (``pdlt plugins`` lists them), e.g.
    ``pdlt.observable("test_mse", y_test=y)``."""
    return lookup("observable", name)(**params)


def architecture(name: str, **params: Any) -> Architecture:
    """Instantiate the architecture registered as ``name`` ("mlp", "residual_mlp", …)."""
    return lookup("architecture", name)(**params)


_LAZY_PLUGIN_CLASSES = {
    "MLP": ("architecture", "mlp"),
    "ResidualMLP": ("architecture", "residual_mlp"),
    "GradientDescent": ("learning_algorithm", "gradient_descent"),
    "Bayesian": ("learning_algorithm", "bayesian"),
    "NewtonStep": ("learning_algorithm", "newton_step"),
    "GiantLeapSmallStep": ("learning_algorithm", "giant_leap_small_step"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_PLUGIN_CLASSES:
        kind, key = _LAZY_PLUGIN_CLASSES[name]
        return lookup(kind, key)
    raise AttributeError(f"module 'pdlt' has no attribute {name!r}")
