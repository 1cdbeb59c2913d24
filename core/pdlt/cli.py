"""The ``pdlt`` command line (also ``python -m pdlt``).

``pdlt`` with no arguments runs the main job on built-in data: the criticality report of the
default activation, the RG flow of the kernel and four-point vertex over depth, and a short
comparison of the theory with a small seeded ensemble of real networks at the output layer.
Subcommands expose the pieces (``criticality``, ``flow``, ``compare``, ``plugins``); ``--json``
switches any of them to machine-readable output (arrays as nested lists, NaN as null), and
``--config FILE`` (TOML or JSON) supplies the same options as the command line, which wins.

The CLI is a thin shell over the public API: it builds objects with ``pdlt.activation``,
``pdlt.architecture``, :func:`pdlt.flow` and :func:`pdlt.ensemble.sample`, and turns every
:class:`pdlt.PdltError` into ``error: …`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from .errors import ParameterError, PdltError

__all__ = ["main", "build_parser", "ENSEMBLE_SIZE_ENV"]

#: Environment variable overriding the default ensemble size of ``pdlt`` / ``pdlt run`` and
#: ``pdlt compare`` (the explicit ``--size`` option still wins).
ENSEMBLE_SIZE_ENV = "PDLT_ENSEMBLE_SIZE"

_DEFAULTS: dict[str, Any] = {
    "activation": "tanh",
    "params": {},
    "depth": 4,
    "width": 32,
    "widths": None,
    # None: as wide as the last hidden layer.  A wide output layer lets the ensemble average the
    # cross-neuron statistics (V, A, B, D, F) over many neuron pairs; with one output they are
    # only reachable through one-neuron combinations, and B, F not at all.
    "output_dim": None,
    "c_b": None,
    "c_w": None,
    "lambda_b": None,
    "lambda_w": None,
    "critical": False,
    "inputs": None,
    "leading": False,
    "seed": 0,
    "save": None,
    "plot": None,
    "json": False,
    "progress": True,
    "train": True,
    "algorithm": "gradient_descent",
    "learning_rate": None,
    "steps": None,
    "noise_variance": 0.01,
    "data": "sin",
    "n_train": 2,
    "n_test": 2,
    "train_file": None,
    "test_file": None,
    "ensemble": None,
}
_RUN_SIZE = 2000
_COMPARE_SIZE = 10_000
_CONFIG_KEYS = {
    "flow": ("activation", "params", "depth", "width", "widths", "output_dim", "c_b", "c_w", "lambda_b",
             "lambda_w", "critical", "inputs", "leading", "save", "plot", "json"),
    "compare": ("activation", "params", "depth", "width", "widths", "output_dim", "c_b", "c_w", "lambda_b",
                "lambda_w", "critical", "inputs", "size", "seed", "save", "plot", "json", "progress"),
    "run": ("activation", "params", "depth", "width", "widths", "output_dim", "c_b", "c_w", "lambda_b",
            "lambda_w", "critical", "inputs", "size", "seed", "json", "progress", "train"),
    "train": ("activation", "params", "depth", "width", "widths", "output_dim", "c_b", "c_w", "lambda_b",
              "lambda_w", "critical", "algorithm", "learning_rate", "steps", "noise_variance", "data", "n_train",
              "n_test", "train_file", "test_file", "leading", "ensemble", "seed", "plot", "json", "progress"),
}


# =============================================================================== value parsing
def _positive_int(text) -> int:
    try:
        value = int(text)
        if isinstance(text, float) and value != text:
            raise ValueError
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if isinstance(text, bool) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if isinstance(text, bool) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _int_list(text) -> tuple[int, ...]:
    items = text.split(",") if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else [text]
    try:
        return tuple(_positive_int(str(t).strip()) for t in items)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 8,16,8, got {text!r}") from None


def _float_or_list(text) -> float | tuple[float, ...]:
    """A number, or one number per layer ("1.0" or "1,1,2")."""
    items = text.split(",") if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else [text]
    try:
        values = tuple(float(str(t).strip()) for t in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers (one per layer), got {text!r}") from None
    if isinstance(text, bool) or not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values[0] if len(values) == 1 and not isinstance(text, (list, tuple)) else values


def _key_value(text: str) -> tuple[str, Any]:
    if not isinstance(text, str) or "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. slope=0.1), got {text!r}")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a parameter name as KEY, got {text!r}")
    return key, _literal(raw.strip())


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        lowered = raw.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return raw


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# =============================================================================== argument parser
def _network_options(p: argparse.ArgumentParser, *, leading: bool, inputs: bool = True) -> None:
    g = p.add_argument_group("network (defaults: tanh MLP, depth 4, width 32 in every layer, C_b=0, C_W=1)")
    g.add_argument("--activation", "-a", metavar="NAME", help="registered activation name (see `pdlt plugins`)")
    g.add_argument("--param", "-p", metavar="KEY=VALUE", action="append", type=_key_value, dest="param",
                   help="activation parameter, repeatable (e.g. --param slope=0.1)")
    g.add_argument("--depth", "-L", type=_positive_int, metavar="L", help="number of layers L (hidden layers + output)")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--width", "-n", type=_positive_int, metavar="N", help="width of every hidden layer")
    w.add_argument("--widths", type=_int_list, metavar="N1,N2,...", help="hidden widths n_1..n_{L-1} (sets the depth)")
    g.add_argument("--output-dim", type=_positive_int, metavar="N", help="output width n_L (default: the last hidden width)")
    g.add_argument("--c-b", type=_float_or_list, metavar="X", help="bias variance C_b (one value or one per layer)")
    g.add_argument("--c-w", type=_float_or_list, metavar="X", help="weight variance C_W (one value or one per layer)")
    g.add_argument("--lambda-b", type=_float_or_list, metavar="X", help="bias learning rate λ_b (one value or one per layer)")
    g.add_argument("--lambda-w", type=_float_or_list, metavar="X", help="weight learning rate λ_W (one value or one per layer)")
    g.add_argument("--critical", action="store_true", default=None, help="tune (C_b, C_W) to criticality")
    if inputs:
        g.add_argument("--inputs", "-i", metavar="FILE", help="inputs X (N, n_0) from .csv/.txt/.npy/.npz (default: 3 points on a circle)")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML or JSON file with the same options (command line wins)")
    if leading:
        p.add_argument("--leading", action="store_true", default=None, help="infinite width only: K and Θ (cheap)")


def _ensemble_options(p: argparse.ArgumentParser, default_size: int) -> None:
    g = p.add_argument_group("ensemble of real networks")
    g.add_argument("--size", "-M", type=_positive_int, metavar="M",
                   help=f"number of networks (default {default_size}, or ${ENSEMBLE_SIZE_ENV})")
    g.add_argument("--seed", "-s", type=_nonneg_int, metavar="S", help="root seed (default 0)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default on)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pdlt`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="pdlt",
        description=(
            "The effective theory of deep learning as working software.\n\n"
            "Without a command, runs the default job (same as `pdlt run`): the criticality report,\n"
            "the RG flow of K and V/(nK²) over depth, theory vs a small ensemble of real networks, and\n"
            "the distribution of networks trained by gradient descent: theory vs real trained networks."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pdlt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the default job on built-in data (what `pdlt` alone runs)",
                       description="Criticality report, RG flow, a theory-vs-ensemble check at the output layer, and "
                                   "a depth-2 network of the same activation and width trained by gradient descent on "
                                   "built-in data (theory vs 2 × SIZE real trained networks). The network is tuned to "
                                   "criticality unless --c-b or --c-w is given.")
    _network_options(p, leading=False)
    _ensemble_options(p, _RUN_SIZE)
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=None,
                   help="also train a default network by gradient descent: theory vs 2 × SIZE real trained networks (default on)")
    p.add_argument("--json", action="store_true", default=None, help="machine-readable output")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("criticality", help="critical initialization and universality class of an activation",
                       description="Critical (C_b, C_W), fixed point K* and universality class of ACTIVATION.")
    p.add_argument("activation", metavar="ACTIVATION", help="registered activation name (see `pdlt plugins`)")
    p.add_argument("--param", "-p", metavar="KEY=VALUE", action="append", type=_key_value, dest="param",
                   help="activation parameter, repeatable")
    p.add_argument("--json", action="store_true", default=None, help="machine-readable output")
    p.add_argument("--plot", metavar="FILE", help="write the phase diagram (χ_∥, χ_⊥ and K* vs C_W) to FILE (.png, .pdf, .svg; needs pdlt[plot])")
    p.set_defaults(func=_cmd_criticality)

    p = sub.add_parser("flow", help="per-layer statistics K, Θ, V, … of a network (theory)",
                       description="RG flow over depth: K, Θ and, unless --leading, the 1/n tensors V, G1, H1, A, B, D, F.")
    _network_options(p, leading=True)
    p.add_argument("--json", action="store_true", default=None, help="machine-readable output (all tensors)")
    p.add_argument("--save", metavar="OUT.npz", help="save the flow (.npz with JSON metadata, no pickle)")
    p.add_argument("--plot", metavar="FILE", help="write a figure of the flow over depth to FILE (.png, .pdf, .svg; needs pdlt[plot])")
    p.set_defaults(func=_cmd_flow)

    p = sub.add_parser("compare", help="theory vs an ensemble of real networks at the output layer",
                       description="K, Θ, V, A, B, D, F of the output layer: theory, ensemble mean ± standard error, z-score.")
    _network_options(p, leading=False)
    _ensemble_options(p, _COMPARE_SIZE)
    p.add_argument("--json", action="store_true", default=None, help="machine-readable output (all components)")
    p.add_argument("--save", metavar="OUT.npz", help="save the ensemble statistics (.npz, no pickle)")
    p.add_argument("--plot", metavar="FILE", help="write a figure of theory vs ensemble over depth to FILE (needs pdlt[plot])")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "train", aliases=["predict"], help="distribution of trained networks at test points (Bayesian, GD, Newton)",
        description="Mean and variance of the trained outputs at the test inputs: infinite width and to order 1/n, "
                    "optionally against real networks trained by gradient descent (--ensemble M). Default: a tanh "
                    "MLP of depth 2 (one hidden layer of width 32, critical) on the built-in sin(πx) data "
                    "(2 training points at x = ∓0.5, test points x = ∓1). The 1/n part needs the dNTK statistics of "
                    "all N = n_train + n_test inputs, whose cost grows like N⁴: keep N small, or use --leading.")
    _network_options(p, leading=True, inputs=False)
    g = p.add_argument_group("learning")
    g.add_argument("--algorithm", "-A", metavar="NAME", help="gradient_descent (default), bayesian, newton_step, … (see `pdlt plugins`)")
    g.add_argument("--learning-rate", "--eta", type=float, dest="learning_rate", metavar="η",
                   help="gradient-descent step (default: half the stability limit 2/λ_max(Θ̃))")
    g.add_argument("--steps", "-T", type=_nonneg_int, metavar="T", help="gradient-descent steps (default: to convergence)")
    g.add_argument("--noise-variance", type=float, metavar="σ²", help="Bayesian observation noise σ_ε² (default 0.01)")
    g = p.add_argument_group("data")
    g.add_argument("--data", "-d", metavar="NAME", help="built-in data: sin (default, 1-D), sin2d, diabetes (needs scikit-learn)")
    g.add_argument("--n-train", type=_positive_int, metavar="N", help="training points (default 2)")
    g.add_argument("--n-test", type=_positive_int, metavar="N", help="test points (default 2)")
    g.add_argument("--train-file", metavar="FILE", help="training set (.csv/.npy/.npz): input columns, then the label as the last column")
    g.add_argument("--test-file", metavar="FILE", help="test inputs (.csv/.npy/.npz), one per row")
    g.add_argument("--ensemble", "-M", type=_positive_int, metavar="M",
                   help="also train M real networks by gradient descent and compare (z-scores)")
    g.add_argument("--seed", "-s", type=_nonneg_int, metavar="S", help="root seed of the ensemble (default 0)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress line on stderr (default on)")
    p.add_argument("--json", action="store_true", default=None, help="machine-readable output")
    p.add_argument("--plot", metavar="FILE", help="write the trained mean ± 2 standard deviations over a 1-D test input to FILE (needs pdlt[plot])")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("plugins", help="registered activations, architectures, learning algorithms, observables",
                       description="Everything registered through the plugin manager, with its provider.")
    p.add_argument("--json", action="store_true", default=None, help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)
    return parser


# =============================================================================== configuration
def _read_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"The config file {path!r} does not exist (or is not a file).")
    text_suffix = p.suffix.lower()
    try:
        raw = p.read_bytes()
        if text_suffix == ".json":
            data = json.loads(raw.decode("utf-8"))
        elif text_suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise ParameterError(
                        f"Reading the TOML config {path!r} needs Python >= 3.11 (or the tomli package); use a JSON config instead."
                    ) from None
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise ParameterError(f"The config file {path!r} must end in .toml or .json. Got {p.suffix!r} instead.")
    except PdltError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ParameterError(f"The config file {path!r} could not be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise ParameterError(f"The config file {path!r} must hold a table/object of options. Got {type(data).__name__} instead.")
    return data


def _config_options(path: str, command: str) -> dict[str, Any]:
    """Options for ``command`` from a config file: top-level keys, overridden by a ``[command]`` table."""
    data = _read_config(path)
    allowed = _CONFIG_KEYS[command]
    merged: dict[str, Any] = {}
    for scope in (data, data.get(command, {})):
        if not isinstance(scope, dict):
            raise ParameterError(f"The config file {path!r} must have a table for [{command}]. Got {scope!r} instead.")
        for key, value in scope.items():
            if isinstance(value, dict) and key in _CONFIG_KEYS:
                continue  # a section for some command
            norm = key.replace("-", "_")
            norm = {"param": "params"}.get(norm, norm)
            if norm not in allowed:
                choices = sorted(set(allowed) | set(_CONFIG_KEYS))
                close = difflib.get_close_matches(norm, choices, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ParameterError(
                    f"The config file {path!r} has an unknown option {key!r} for `pdlt {command}`.{hint} "
                    f"Allowed: {', '.join(allowed)}."
                )
            merged[norm] = _coerce_config_value(path, key, norm, value)
    for key in ("inputs", "train_file", "test_file"):
        if isinstance(merged.get(key), str):  # paths are relative to the config file
            merged[key] = str((Path(path).parent / merged[key]).expanduser())
    return merged


def _coerce_config_value(path: str, key: str, norm: str, value: Any) -> Any:
    converters: dict[str, Callable[[Any], Any]] = {
        "activation": lambda v: v if isinstance(v, str) else _fail("a string"),
        "depth": _positive_int,
        "width": _positive_int,
        "output_dim": _positive_int,
        "size": _positive_int,
        "seed": _nonneg_int,
        "widths": _int_list,
        "c_b": _float_or_list,
        "c_w": _float_or_list,
        "lambda_b": _float_or_list,
        "lambda_w": _float_or_list,
        "critical": _bool,
        "leading": _bool,
        "json": _bool,
        "progress": _bool,
        "save": lambda v: v if isinstance(v, str) else _fail("a file path"),
        "plot": lambda v: v if isinstance(v, str) else _fail("a file path"),
        "params": _params_value,
        "inputs": lambda v: v if isinstance(v, (str, list)) else _fail("a file path or a list of input rows"),
        "train": _bool,
        "algorithm": lambda v: v if isinstance(v, str) else _fail("a string"),
        "data": lambda v: v if isinstance(v, str) else _fail("a string"),
        "learning_rate": _positive_float,
        "noise_variance": _nonneg_float,
        "steps": _nonneg_int,
        "n_train": _positive_int,
        "n_test": _positive_int,
        "ensemble": _positive_int,
        "train_file": lambda v: v if isinstance(v, str) else _fail("a file path"),
        "test_file": lambda v: v if isinstance(v, str) else _fail("a file path"),
    }
    try:
        return converters[norm](value)
    except argparse.ArgumentTypeError as exc:
        raise ParameterError(f"The option {key!r} in config file {path!r} is invalid: {exc}.") from None


def _positive_float(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {v!r}")
    return float(v)


def _nonneg_float(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {v!r}")
    return float(v)


def _fail(what: str):
    raise argparse.ArgumentTypeError(f"expected {what}")


def _params_value(value) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return dict(_key_value(v) for v in value)
    raise argparse.ArgumentTypeError(f"expected a table of activation parameters, got {value!r}")


def _resolve(ns: argparse.Namespace, command: str) -> argparse.Namespace:
    """Merge command line > config file > built-in defaults into one namespace."""
    cli: dict[str, Any] = {}
    for name in _CONFIG_KEYS[command]:
        attr = "param" if name == "params" else name
        value = getattr(ns, attr, None)
        if value is not None:
            cli[name] = dict(value) if name == "params" else value
    config = _config_options(ns.config, command) if getattr(ns, "config", None) else {}
    # the network shape given on the command line replaces the config file's as a whole
    if "widths" in cli:
        config.pop("width", None)
        config.pop("depth", None)
    if "width" in cli or "depth" in cli:
        config.pop("widths", None)
    opts = dict(_DEFAULTS)
    opts["size"] = _default_size(command)
    opts.update(config)
    opts.update(cli)
    opts["_explicit"] = set(config) | set(cli)
    return argparse.Namespace(**opts)


def _default_size(command: str) -> int:
    env = os.environ.get(ENSEMBLE_SIZE_ENV)
    if env:
        try:
            return _positive_int(env)
        except argparse.ArgumentTypeError:
            raise ParameterError(
                f"The environment variable {ENSEMBLE_SIZE_ENV} must be a positive integer. Got {env!r} instead."
            ) from None
    return _RUN_SIZE if command == "run" else _COMPARE_SIZE


# =============================================================================== building objects
class _Unavailable(PdltError):
    """A part of pdlt that this installation does not have."""


def _criticality_function():
    try:
        module = importlib.import_module("pdlt.criticality")
    except ModuleNotFoundError as exc:
        raise _Unavailable("criticality analysis (pdlt.criticality) is not available in this installation.") from exc
    return module.criticality


def _make_activation(name: str, params: dict[str, Any]):
    import attrs

    from .plugins import lookup

    cls = lookup("activation", name)
    if attrs.has(cls):
        accepted = [a.name for a in attrs.fields(cls) if a.init]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no parameters"
            raise ParameterError(f"The activation {name!r} has no parameter(s) {', '.join(map(repr, unknown))}; {takes}.")
    try:
        return cls(**params)
    except TypeError as exc:  # a missing required parameter, or a non-attrs plugin class
        raise ParameterError(f"The activation {name!r} could not be built with {params!r}: {exc}") from exc


def _inputs(opts) -> tuple[np.ndarray, str]:
    from . import data

    if opts.inputs is None:
        return data.default_inputs(), "built-in default_inputs(): 3 points on the circle |x|² = n_0 at 0°, 45°, 90°"
    if isinstance(opts.inputs, list):
        from .flow import validate_inputs

        try:
            X = np.array(opts.inputs, dtype=float)
        except (TypeError, ValueError):
            raise ParameterError(
                "The 'inputs' option of the config file must be a file path or a list of equal-length rows of numbers."
            ) from None
        return validate_inputs(X, name="inputs", owner="the config file"), "inputs from the config file"
    X = data.load(opts.inputs)
    return X, f"inputs from {opts.inputs}"


def _at_criticality(net):
    from .errors import NoCriticalityError

    hint = " On the command line, pass --c-b and --c-w to choose the initialization yourself."
    try:
        return net.at_criticality()
    except NoCriticalityError as exc:
        raise NoCriticalityError(f"{exc}{hint}") from None
    except NotImplementedError:
        report = _criticality_function()(net.activation)
        if report.c_w is None:
            raise NoCriticalityError(f"{net.activation.name!r} admits no critical initialization: {report.reason}.{hint}") from None
        return net.evolve(c_b=report.c_b, c_w=report.c_w)


def _make_network(opts, X: np.ndarray):
    from .plugins import lookup

    act = _make_activation(opts.activation, opts.params)
    if opts.widths is not None:
        hidden = tuple(opts.widths)
        if "depth" in opts._explicit and opts.depth != len(hidden) + 1:
            raise ParameterError(
                f"--depth {opts.depth} disagrees with --widths {','.join(map(str, hidden))} "
                f"(which gives depth {len(hidden) + 1}); drop one of them."
            )
    else:
        hidden = (opts.width,) * (opts.depth - 1)
    hp = {k: getattr(opts, k) for k in ("c_b", "c_w", "lambda_b", "lambda_w") if getattr(opts, k) is not None}
    if opts.critical and ("c_b" in hp or "c_w" in hp):
        raise ParameterError("--critical sets C_b and C_W itself; drop --c-b/--c-w or --critical.")
    output_dim = opts.output_dim if opts.output_dim is not None else (hidden[-1] if hidden else opts.width)
    cls = lookup("architecture", "mlp")
    net = cls(input_dim=X.shape[1], hidden_widths=hidden, output_dim=output_dim, activation=act, **hp)
    if opts.critical:
        net = _at_criticality(net)
    return net


def _network_dict(net) -> dict[str, Any]:
    import attrs

    act = net.activation
    params = {a.name: getattr(act, a.name) for a in attrs.fields(type(act))} if attrs.has(type(act)) else {}
    return {
        "architecture": type(net).name or type(net).__name__,
        "activation": act.name,
        "activation_params": params,
        "widths": list(net.widths),
        "depth": net.depth,
        "c_b": net.c_b,
        "c_w": net.c_w,
        "lambda_b": net.lambda_b,
        "lambda_w": net.lambda_w,
    }


def _network_line(net) -> str:
    act = net.activation
    desc = act.describe() if hasattr(act, "describe") else act.name
    if desc.endswith("()"):
        desc = desc[:-2]

    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else "(" + ",".join(f"{x:g}" for x in v) + ")"

    return (
        f"network: {type(net).__name__}, σ = {desc}, widths {'-'.join(map(str, net.widths))} (depth L = {net.depth}), "
        f"C_b = {fmt(net.c_b)}, C_W = {fmt(net.c_w)}, λ_b = {fmt(net.lambda_b)}, λ_W = {fmt(net.lambda_w)}"
    )


# =============================================================================== output helpers
def _jsonable(obj: Any) -> Any:
    """Nested lists/dicts of plain numbers; NaN and ±inf become null (strict JSON)."""
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    return str(obj)


def _print_json(obj: Any, *, compact: bool = False) -> None:
    """Strict JSON on stdout; ``compact`` (one line) for outputs dominated by large arrays."""
    text = json.dumps(_jsonable(obj), allow_nan=False, **({"separators": (",", ":")} if compact else {"indent": 2}))
    print(text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ", left: int = 1) -> str:
    """Plain-text table; the first ``left`` columns (labels) are left-aligned, numbers right-aligned."""
    cols = list(zip(header, *rows))
    widths = [max(len(c) for c in col) for col in cols]

    def line(cells):
        return indent + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)]).rstrip()


def _num(x: float, digits: int = 6) -> str:
    x = float(x)
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return f"{x:.{digits}g}" if x != 0 else "0"


def _pm(mean: float, se: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{_num(mean)} ± {_num(se, 2)}"


# =============================================================================== flow
def _flow_rows(fl) -> tuple[list[str], list[list[str]]]:
    N = fl[0].n_inputs
    has_v = fl[0].V is not None
    header = ["ℓ", "n_ℓ", "K_00"] + (["K_01"] if N > 1 else []) + ["Θ_00"] + (["V_0000/(n K_00²)"] if has_v else [])
    rows = []
    for s in fl:
        row = [str(s.layer), str(s.width), _num(s.K[0, 0])]
        if N > 1:
            row.append(_num(s.K[0, 1]))
        row.append(_num(s.Theta[0, 0]))
        if has_v:
            row.append(_num(_normalised_vertex(s)))
        rows.append(row)
    return header, rows


def _normalised_vertex(s) -> float:
    """V_(00)(00)/(n K_00²) with n = n_{ℓ−1}, the normalisation of V: the connected four-point
    function over the square of the two-point function (book §4.3, the measure of non-Gaussianity)."""
    k = float(s.K[0, 0])
    return float(s.V[0, 0, 0, 0]) / (s.fan_in * k * k) if k != 0 else math.nan


def _flow_text(fl, net, source: str) -> str:
    header, rows = _flow_rows(fl)
    order = "full (to order 1/n); n = n_(ℓ-1) normalises V" if fl[0].V is not None else "leading (infinite width)"
    lines = [
        _network_line(net),
        f"inputs: {source}",
        f"RG flow over depth, order {order}",
        _table(header, rows),
    ]
    return "\n".join(lines)


def _flow_dict(fl, net, X) -> dict[str, Any]:
    from .flow import TENSOR_FIELDS

    layers = []
    for s in fl:
        entry = {"layer": s.layer, "width": s.width, "fan_in": s.fan_in, "quadrature_error": s.quadrature_error}
        for name in TENSOR_FIELDS:
            value = getattr(s, name)
            if value is not None:
                entry[name] = value
        if s.V is not None:
            entry["V_diag_over_nK2"] = [
                float(s.V[a, a, a, a]) / (s.fan_in * float(s.K[a, a]) ** 2) if s.K[a, a] != 0 else math.nan
                for a in range(s.n_inputs)
            ]
        layers.append(entry)
    return {
        "network": _network_dict(net),
        "inputs": X,
        "order": "full" if fl[0].V is not None else "leading",
        "layers": layers,
    }


def _cmd_flow(ns: argparse.Namespace) -> int:
    from .flow import flow

    opts = _resolve(ns, "flow")
    if opts.plot:
        _require_plotting()
    X, source = _inputs(opts)
    net = _make_network(opts, X)
    fl = flow(net, X, order="leading" if opts.leading else "full")
    if opts.save:
        _save(fl.to_npz, opts.save, "flow")
    if opts.plot:
        from .plotting import plot_flow

        _save_figure(plot_flow(fl, ("K", "Theta") if opts.leading else ("K", "V/(nK^2)")), opts.plot)
    if opts.json:
        _print_json({"command": "flow", **_flow_dict(fl, net, X)}, compact=True)
    else:
        print(_flow_text(fl, net, source))
    return 0


def _require_plotting() -> None:
    """Fail before a long computation when --plot cannot be honoured (matplotlib missing)."""
    from .plotting import require_matplotlib

    require_matplotlib()


def _save_figure(fig, path: str) -> None:
    from .plotting import savefig

    _save(lambda p: savefig(fig, p), path, "figure")


def _save(writer: Callable[[str], None], path: str, what: str) -> None:
    try:
        writer(path)
    except OSError as exc:
        raise ParameterError(f"Could not save the {what} to {path!r}: {exc.strerror or exc}.") from exc
    print(f"saved the {what} to {path}", file=sys.stderr)


# =============================================================================== comparison
def _one_neuron(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """first_{1234} + second_{1324} + second_{1423}: the one-neuron combination of a 1/n tensor."""
    return first + np.einsum("acbd->abcd", second) + np.einsum("adbc->abcd", second)


def _comparisons(th, mc) -> list[dict[str, Any]]:
    """Theory vs ensemble for each quantity at one layer.

    Each entry: name, theory (to order 1/n), infinite (leading value or None), estimate (Estimate),
    note.  With one neuron in the layer, V, A, D are compared through their one-neuron
    combinations and B, F (cross-neuron only) are skipped.
    """
    out = [
        {"name": "K", "theory": th.metric(), "infinite": th.K, "estimate": mc.K,
         "note": "K + G1/n_(L-1) (measured: E[z z])"},
        {"name": "Theta", "theory": th.ntk_mean(), "infinite": th.Theta, "estimate": mc.Theta,
         "note": "Θ + H1/n_(L-1) (measured: E[H])"},
    ]
    cross = mc.width >= 2
    for name, partner in (("V", "V"), ("A", "B"), ("B", None), ("D", "F"), ("F", None)):
        t = getattr(th, name)
        if t is None:
            continue
        if cross:
            est = getattr(mc, name)
            out.append({"name": name, "theory": t, "infinite": None, "estimate": est, "note": "n_(L-1) × cross-neuron moment"})
        elif partner is not None:
            combo = _one_neuron(t, getattr(th, partner))
            est = getattr(mc, f"{name}_one_neuron")
            label = {"V": "V_1234+V_1324+V_1423", "A": "A_1234+B_1324+B_1423", "D": "D_1234+F_1324+F_1423"}[name]
            out.append({"name": f"{name}_one_neuron", "theory": combo, "infinite": None, "estimate": est,
                        "note": f"{label} (output width 1: one-neuron combination)"})
    return [c for c in out if c["estimate"] is not None]


def _components(ndim: int, N: int) -> list[tuple[int, ...]]:
    if ndim == 2:
        return [(0, 0)] + ([(0, 1)] if N > 1 else [])
    return [(0, 0, 0, 0)] + ([(0, 0, 1, 1), (0, 1, 0, 1)] if N > 1 else [])


_SYMBOL = {"Theta": "Θ"}


def _comparison_rows(comps, N: int, names: Sequence[str] | None = None, components=None) -> list[list[str]]:
    rows = []
    for c in comps:
        if names is not None and c["name"] not in names:
            continue
        sel = components(c["name"], c["theory"].ndim) if components else _components(c["theory"].ndim, N)
        z = c["estimate"].z_score(c["theory"])
        for idx in sel:
            label = f"{_SYMBOL.get(c['name'], c['name'])}_{''.join(map(str, idx))}"
            inf = _num(c["infinite"][idx]) if c["infinite"] is not None else ""
            rows.append([label, inf, _num(c["theory"][idx]),
                         _pm(c["estimate"].mean[idx], c["estimate"].stderr[idx]), f"{z[idx]:+.2f}"])
    return rows


_COMPARE_HEADER = ["quantity", "∞ width", "theory (1/n)", "ensemble ± SE", "z"]


def _max_abs_z(c) -> float:
    z = np.abs(c["estimate"].z_score(c["theory"]))
    z = z[np.isfinite(z)]
    return float(z.max()) if z.size else math.nan


def _comparison_dict(comps, ens) -> dict[str, Any]:
    return {
        "layer": ens[-1].ell,
        "ensemble": {"size": ens.size, "seed": ens.seed, "n_batches": ens.n_batches},
        "quantities": {
            c["name"]: {
                "theory": c["theory"],
                "infinite_width": c["infinite"],
                "mean": c["estimate"].mean,
                "stderr": c["estimate"].stderr,
                "z": c["estimate"].z_score(c["theory"]),
                "max_abs_z": _max_abs_z(c),
                "note": c["note"],
            }
            for c in comps
        },
    }


def _run_ensemble(net, X, opts):
    from .ensemble import sample

    t0 = time.perf_counter()
    ens = sample(net, X, opts.size, opts.seed, progress=bool(opts.progress))
    return ens, time.perf_counter() - t0


def _cmd_compare(ns: argparse.Namespace) -> int:
    from .flow import flow

    opts = _resolve(ns, "compare")
    if opts.plot:
        _require_plotting()
    X, source = _inputs(opts)
    net = _make_network(opts, X)
    fl = flow(net, X, order="full")
    ens, _ = _run_ensemble(net, X, opts)
    comps = _comparisons(fl[-1], ens[-1])
    if opts.save:
        _save(ens.to_npz, opts.save, "ensemble statistics")
    if opts.plot:
        from .plotting import plot_comparison

        # cross-neuron V, A are undefined in a layer of width 1: compare one-neuron combinations there
        names = ("K", "Theta", "V", "A") if ens[-1].width >= 2 else ("K", "Theta", "V_one_neuron", "A_one_neuron")
        _save_figure(plot_comparison(fl, ens, names), opts.plot)
    if opts.json:
        _print_json({"command": "compare", "network": _network_dict(net), "inputs": X, **_comparison_dict(comps, ens)},
                    compact=True)
        return 0
    N = X.shape[0]
    lines = [
        _network_line(net),
        f"inputs: {source}",
        f"theory vs {ens.size} real networks (seed {ens.seed}) at the output layer ℓ = {net.depth}; "
        f"z = (ensemble − theory)/SE",
        _table(_COMPARE_HEADER, _comparison_rows(comps, N)),
        "max |z| over all components: " + ", ".join(f"{_SYMBOL.get(c['name'], c['name'])} {_max_abs_z(c):.2f}" for c in comps),
    ]
    if ens[-1].width < 2:
        lines.append("output width 1: V, A, D are compared through one-neuron combinations; B and F need --output-dim >= 2")
    print("\n".join(lines))
    return 0


# =============================================================================== criticality
def _cmd_criticality(ns: argparse.Namespace) -> int:
    if ns.plot:
        _require_plotting()
    act = _make_activation(ns.activation, dict(ns.param or []))
    report = _criticality_function()(act)
    if ns.json:
        _print_json({"command": "criticality", "activation": act.name, **report.to_dict()})
    else:
        print(report.summary())
    if ns.plot:
        from .plotting import plot_phase_diagram

        # around the critical C_W on the critical C_b line; without criticality, C_b = 0 and C_W in (0, 3]
        c_b = report.c_b if report.c_w is not None else 0.0
        c_w_range = (0.1 * report.c_w, 2.5 * report.c_w) if report.c_w is not None else (0.05, 3.0)
        _save_figure(plot_phase_diagram(act, c_w_range, c_b), ns.plot)
    return 0


# =============================================================================== default job
def _cmd_run(ns: argparse.Namespace) -> int:
    from .errors import NoCriticalityError
    from .flow import flow

    opts = _resolve(ns, "run")
    X, source = _inputs(opts)
    act = _make_activation(opts.activation, opts.params)
    explicit_init = opts.c_b is not None or opts.c_w is not None
    report, crit_text = None, ""
    try:
        report = _criticality_function()(act)
        crit_text = report.summary()
    except NoCriticalityError as exc:
        crit_text = f"{act.name}: no critical initialization ({exc})"
    except _Unavailable as exc:
        crit_text = f"criticality report unavailable: {exc}"
    if not explicit_init and report is not None and report.c_w is not None:
        opts.critical = True
    net = _make_network(opts, X)

    t0 = time.perf_counter()
    fl = flow(net, X, order="full")
    t_flow = time.perf_counter() - t0
    ens, t_ens = _run_ensemble(net, X, opts)
    comps = _comparisons(fl[-1], ens[-1])
    training, training_error = None, None
    if opts.train:
        try:
            training = _run_training(opts, net)
        except PdltError as exc:  # e.g. a kinked activation, whose dNTK statistics are undefined
            training_error = f"{type(exc).__name__}: {exc}"

    if opts.json:
        _print_json({
            "command": "run",
            "criticality": report.to_dict() if report is not None else None,
            **_flow_dict(fl, net, X),
            "comparison": _comparison_dict(comps, ens),
            "training": _training_dict(training) if training is not None else training_error,
            "timing_s": {"flow": t_flow, "ensemble": t_ens},
        }, compact=True)
        return 0

    N = X.shape[0]

    def pick(name, ndim):
        if name == "V" or name.startswith("V_"):
            return [(0, 0, 0, 0)]
        return _components(ndim, N)

    names = ("K", "Theta", "V", "V_one_neuron")
    print(f"pdlt {__version__} — default job (`pdlt --help` lists the commands)\n")
    print("== criticality ==")
    print(crit_text)
    print("\n== RG flow ==")
    print(_flow_text(fl, net, source))
    print("\n== theory vs real networks at the output layer ==")
    print(f"{ens.size} networks (seed {ens.seed}); theory to order 1/n; z = (ensemble − theory)/SE")
    print(_table(_COMPARE_HEADER, _comparison_rows(comps, N, names=names, components=pick)))
    print("max |z| over all components: "
          + ", ".join(f"{_SYMBOL.get(c['name'], c['name'])} {_max_abs_z(c):.2f}" for c in comps if c["name"] in names))
    print(f"(flow {t_flow:.2f} s, ensemble {t_ens:.2f} s; all of K, Θ, V, A, B, D, F: `pdlt compare`)")
    if opts.train:
        print("\n== trained network: theory vs real networks ==")
        if training is None:
            print(f"unavailable for this network: {training_error}")
        else:
            print(_training_text(training))
            t = training["timing_s"]
            print(f"(theory {t['theory']:.2f} s, training {t['ensemble']:.2f} s; more: `pdlt train --help`)")
    return 0


# =============================================================================== training
_TRAIN_HEADER = ["quantity", "∞ width", "theory (1/n)", "ensemble ± SE", "z (1/n)", "z (∞)"]


def _train_network(opts, activation, hidden: tuple[int, ...], input_dim: int, hp: dict[str, Any]):
    from .plugins import lookup

    cls = lookup("architecture", "mlp")
    net = cls(input_dim=input_dim, hidden_widths=hidden, output_dim=1, activation=activation, **hp)
    return _at_criticality(net) if opts.critical else net


def _half_stability_limit(stats, n_train: int) -> float:
    """η = 1/λ_max of the mean NTK on the training set: half the gradient-descent stability limit."""
    from .plugins import lookup

    limit = lookup("learning_algorithm", "gradient_descent")(learning_rate=1.0).stability_limit(stats, np.arange(n_train))
    return 0.5 * limit


def _trained_comparison(dist, ens) -> list[Any]:
    from .plugins import lookup

    return [lookup("observable", name)().compare(dist, ens) for name in ("trained_mean", "trained_variance")]


def _trained_rows(comps, X_test: np.ndarray) -> list[list[str]]:
    rows = []
    symbol = {"trained_mean": "E", "trained_variance": "Var"}
    for c in comps:
        z, zi = c.z, c.z_infinite
        for b in range(X_test.shape[0]):
            x = ",".join(f"{v:g}" for v in X_test[b])
            for i in range(c.theory.shape[1]):
                label = f"{symbol.get(c.name, c.name)}[z{'_' + str(i) if c.theory.shape[1] > 1 else ''}(x={x})]"
                inf = c.infinite[b, i] if c.infinite is not None else c.theory[b, i]
                rows.append([label, _num(inf), _num(c.theory[b, i]), _pm(c.estimate.mean[b, i], c.estimate.stderr[b, i]),
                             f"{z[b, i]:+.2f}", f"{zi[b, i]:+.2f}" if zi is not None else ""])
    return rows


def _trained_comparison_dict(comps, ens) -> dict[str, Any]:
    return {
        "ensemble": {"size": ens.size, "seed": ens.seed, "steps": ens.steps, "max_residual": ens.max_residual,
                     "learning_rate": ens.learning_rate, "n_batches": ens.n_batches},
        "observables": {
            c.name: {"theory": c.theory, "infinite_width": c.infinite, "mean": c.estimate.mean,
                     "stderr": c.estimate.stderr, "z": c.z, "z_infinite": c.z_infinite, "max_abs_z": c.max_abs_z}
            for c in comps
        },
    }


def _run_training(opts, init_net) -> dict[str, Any]:
    """The training section of the default job: a depth-2 network of the same activation, width and
    (last-layer) initialization, trained by gradient descent on 2 built-in points, theory vs ensemble."""
    from .data import regression_1d
    from .plugins import lookup
    from .solver import solve
    from .training import train_ensemble

    Xa, ya, Xb, yb = regression_1d(n_train=2, n_test=1, design="grid")
    width = init_net.widths[-2]
    hp = {"c_b": float(init_net.C_b[-1]), "c_w": float(init_net.C_W[-1]),
          "lambda_b": float(init_net.lambda_B[-1]), "lambda_w": float(init_net.lambda_W[-1])}
    net = lookup("architecture", "mlp")(input_dim=1, hidden_widths=(width,), output_dim=1, activation=init_net.activation, **hp)
    gd_cls = lookup("learning_algorithm", "gradient_descent")
    t0 = time.perf_counter()
    stats = gd_cls(learning_rate=1.0).output_statistics(net, np.vstack([Xa, Xb]), order="dntk")
    eta = _half_stability_limit(stats, Xa.shape[0])
    dist = solve(net, gd_cls(learning_rate=eta), Xa, ya, Xb, statistics=stats, warn_regime=False)
    t_theory = time.perf_counter() - t0
    t0 = time.perf_counter()
    size = max(4, 2 * int(opts.size))
    ens = train_ensemble(net, Xa, ya, Xb, learning_rate=eta, size=size, seed=opts.seed, control_variate=True,
                         progress=bool(opts.progress))
    t_ens = time.perf_counter() - t0
    return {"net": net, "X_train": Xa, "y_train": ya, "X_test": Xb, "y_test": yb, "eta": eta, "dist": dist, "ensemble": ens,
            "comparisons": _trained_comparison(dist, ens), "timing_s": {"theory": t_theory, "ensemble": t_ens}}


def _training_text(tr) -> str:
    ens, dist = tr["ensemble"], tr["dist"]
    xa = ", ".join(f"{v:g}" for v in tr["X_train"][:, 0])
    ya = ", ".join(f"{v:g}" for v in tr["y_train"][:, 0])
    xb = ", ".join(f"{v:g}" for v in tr["X_test"][:, 0])
    lines = [
        _network_line(tr["net"]),
        f"data: built-in regression_1d(n_train=2, n_test=1, design='grid'), y = sin(πx): train x = {xa} (y = {ya}); "
        f"test x = {xb} (an extrapolation)",
        f"gradient descent on the MSE loss, η = {tr['eta']:.4g} (half the stability limit), to convergence; "
        f"theory to order 1/n with n = {dist.width} (dNTK and ddNTKs included)",
        f"{ens.size} real networks trained (seed {ens.seed}, {ens.steps} steps, max |ε| = {ens.max_residual:.1g}); "
        "z = (ensemble − theory)/SE",
        _table(_TRAIN_HEADER, _trained_rows(tr["comparisons"], tr["X_test"])),
    ]
    if not dist.regime.ok:
        lines.append("regime warning: " + "; ".join(dist.regime.messages))
    return "\n".join(lines)


def _training_dict(tr) -> dict[str, Any]:
    dist = tr["dist"]
    return {
        "network": _network_dict(tr["net"]),
        "algorithm": {"name": "gradient_descent", "learning_rate": tr["eta"], "steps": None},
        "X_train": tr["X_train"], "y_train": tr["y_train"], "X_test": tr["X_test"], "y_test": tr["y_test"],
        "width": dist.width,
        **_trained_comparison_dict(tr["comparisons"], tr["ensemble"]),
        "regime": attrs_dict(dist.regime),
        "timing_s": tr["timing_s"],
    }


def attrs_dict(obj) -> dict[str, Any]:
    import attrs

    return attrs.asdict(obj)


_BUILTIN_DATA = ("sin", "sin2d", "diabetes")


def _training_data(opts):
    from . import data

    if opts.train_file is not None:
        table = data.load(opts.train_file)
        if table.shape[1] < 2:
            raise ParameterError(
                f"The training file {opts.train_file!r} must have input columns followed by the label column. "
                f"Got {table.shape[1]} column(s) instead."
            )
        Xa, ya = table[:, :-1], table[:, -1:]
        if opts.test_file is None:
            raise ParameterError("--train-file needs --test-file (the inputs at which to predict).")
        Xb = data.load(opts.test_file)
        if Xb.shape[1] != Xa.shape[1]:
            raise ParameterError(
                f"The test file {opts.test_file!r} has {Xb.shape[1]} columns but the training inputs have {Xa.shape[1]}."
            )
        return Xa, ya, Xb, None, f"{opts.train_file} (train), {opts.test_file} (test)"
    if opts.test_file is not None:
        raise ParameterError("--test-file needs --train-file (or drop it to use built-in data).")
    name = opts.data
    if name == "sin":
        Xa, ya, Xb, yb = data.regression_1d(opts.n_train, opts.n_test, design="grid")
        return Xa, ya, Xb, yb, f"built-in regression_1d(n_train={opts.n_train}, n_test={opts.n_test}, design='grid'), y = sin(πx)"
    if name == "sin2d":
        Xa, ya, Xb, yb = data.regression_2d(opts.n_train, opts.n_test)
        return Xa, ya, Xb, yb, f"built-in regression_2d(n_train={opts.n_train}, n_test={opts.n_test})"
    if name == "diabetes":
        Xa, ya, Xb, yb = data.diabetes(opts.n_train, opts.n_test)
        return Xa, ya, Xb, yb, f"built-in diabetes(n_train={opts.n_train}, n_test={opts.n_test}) (scikit-learn, standardised)"
    close = difflib.get_close_matches(str(name), _BUILTIN_DATA, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ParameterError(f"The 'data' option must name a built-in data set.{hint} Choose from {', '.join(_BUILTIN_DATA)}. Got {name!r} instead.")


def _cmd_train(ns: argparse.Namespace) -> int:
    from .plugins import lookup
    from .solver import solve

    opts = _resolve(ns, "train")
    if opts.plot:
        _require_plotting()
    Xa, ya, Xb, yb, source = _training_data(opts)
    if opts.widths is None and "depth" not in opts._explicit:
        opts.depth = 2
    if not (opts.c_b is not None or opts.c_w is not None):
        opts.critical = True
    net = _make_network(opts, Xa)
    if net.output_dim != ya.shape[1]:
        net = net.evolve(output_dim=ya.shape[1])
    alg_cls = lookup("learning_algorithm", opts.algorithm)
    order = "leading" if opts.leading else None
    stats = None
    params: dict[str, Any] = {}
    if opts.algorithm == "gradient_descent":
        if opts.learning_rate is None:
            probe = alg_cls(learning_rate=1.0)
            stats = probe.output_statistics(net, np.vstack([Xa, Xb]), order="leading" if opts.leading else probe.order)
            params["learning_rate"] = _half_stability_limit(stats, Xa.shape[0])
        else:
            params["learning_rate"] = opts.learning_rate
        if opts.steps is not None:
            params["steps"] = opts.steps
    elif opts.algorithm == "bayesian":
        params["noise_variance"] = opts.noise_variance
    elif opts.learning_rate is not None or opts.steps is not None:
        raise ParameterError(f"--learning-rate and --steps apply to gradient_descent only, not to {opts.algorithm!r}.")
    try:
        algorithm = alg_cls(**params)
    except TypeError as exc:
        raise ParameterError(f"The learning algorithm {opts.algorithm!r} could not be built with {params!r}: {exc}") from exc
    dist = solve(net, algorithm, Xa, ya, Xb, order=order, statistics=stats, warn_regime=False)
    comps = None
    ens = None
    if opts.ensemble is not None:
        if opts.algorithm != "gradient_descent":
            raise ParameterError("--ensemble trains real networks by gradient descent; use it with --algorithm gradient_descent.")
        from .training import train_ensemble

        ens = train_ensemble(net, Xa, ya, Xb, learning_rate=algorithm.learning_rate, size=max(4, opts.ensemble),
                             steps=algorithm.steps, seed=opts.seed, control_variate=True, progress=bool(opts.progress))
        comps = _trained_comparison(dist, ens)
    if opts.plot:
        if Xb.shape[1] != 1:
            raise ParameterError(f"--plot draws a one-dimensional test input; these test inputs have {Xb.shape[1]} columns.")
        from .plotting import plot_trained

        std = np.sqrt(np.clip(dist.variance[:, 0], 0.0, None))
        corrected = dist.mean_correction is not None
        fig = plot_trained(dist.mean[:, 0], std, Xb, Xa, ya[:, 0], n_std=2.0,
                           reference=dist.mean_infinite[:, 0] if corrected else None,
                           reference_label="infinite-width mean", label="mean to order 1/n" if corrected else "mean (infinite width)")
        _save_figure(fig, opts.plot)
    var_inf = np.einsum("aiai->ai", dist.covariance_infinite)
    if opts.json:
        out = {
            "command": "train", "network": _network_dict(net), "algorithm": {"name": algorithm.name, **attrs_dict(algorithm)},
            "data": source, "X_train": Xa, "y_train": ya, "X_test": Xb, "y_test": yb, "width": dist.width,
            "mean_infinite": dist.mean_infinite, "mean_correction": dist.mean_correction, "mean": dist.mean,
            "variance_infinite": var_inf, "variance": dist.variance, "covariance": dist.covariance,
            "regime": attrs_dict(dist.regime), "notes": list(dist.notes),
        }
        if yb is not None:
            out["test_error"] = {"mse": dist.test_error(yb).mse, "mse_infinite": dist.test_error(yb, corrected=False).mse}
        if comps is not None:
            out["comparison"] = _trained_comparison_dict(comps, ens)
        _print_json(out, compact=True)
        return 0
    lines = [_network_line(net), f"data: {source}",
             f"algorithm: {algorithm!r}" + ("" if dist.mean_correction is not None else "; infinite width only (--leading)")]
    header = ["x", "mean ∞", "mean (1/n)", "std ∞", "std (1/n)"] + (["target"] if yb is not None else [])
    rows = []
    has_corr = dist.mean_correction is not None
    has_cov = dist.covariance_correction is not None
    for b in range(Xb.shape[0]):
        for i in range(dist.n_outputs):
            x = ",".join(f"{v:.3g}" for v in Xb[b]) + (f" [{i}]" if dist.n_outputs > 1 else "")
            row = [x, _num(dist.mean_infinite[b, i]), _num(dist.mean[b, i]) if has_corr else "",
                   _num(math.sqrt(max(var_inf[b, i], 0.0))),
                   _num(math.sqrt(max(dist.variance[b, i], 0.0))) if has_cov else ""]
            if yb is not None:
                row.append(_num(yb[b, i]))
            rows.append(row)
    lines.append(_table(header, rows))
    if yb is not None:
        e_inf = dist.test_error(yb, corrected=False)
        e = dist.test_error(yb)
        lines.append(f"test loss ½E[(z − y)²] per point: infinite width {e_inf.mse:.6g}" + (f", to order 1/n {e.mse:.6g}" if has_corr else ""))
    for note in dist.notes:
        lines.append(f"note: {note}")
    if not dist.regime.ok:
        lines.append("regime warning: " + "; ".join(dist.regime.messages))
    if comps is not None:
        lines.append(f"{ens.size} real networks trained by gradient descent (seed {ens.seed}, {ens.steps} steps); "
                     "z = (ensemble − theory)/SE")
        lines.append(_table(_TRAIN_HEADER, _trained_rows(comps, Xb)))
    print("\n".join(lines))
    return 0


# =============================================================================== plugins
def _cmd_plugins(ns: argparse.Namespace) -> int:
    from .plugins import default_manager, registry

    pm = default_manager()
    kinds = ("activation", "architecture", "learning_algorithm", "observable")
    listing: dict[str, list[dict[str, str]]] = {}
    for kind in kinds:
        classes = registry(pm, kind)  # validates: duplicates and nameless classes raise PluginError
        providers: dict[str, str] = {}
        for impl in getattr(pm.hook, f"pdlt_register_{kind}s").get_hookimpls():
            pname = pm.get_name(impl.plugin) or repr(impl.plugin)
            for cls in impl.function() or []:
                providers[getattr(cls, "name", "")] = pname
        listing[kind] = [
            {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}", "provider": providers.get(name, "?")}
            for name, cls in sorted(classes.items())
        ]
    closed = [pm.get_name(i.plugin) or repr(i.plugin) for i in pm.hook.pdlt_gaussian_expectation.get_hookimpls()]
    loaded = [name for name, plugin in pm.list_name_plugin() if plugin is not None]
    if ns.json:
        _print_json({"command": "plugins", **{f"{k}s": v for k, v in listing.items()},
                     "gaussian_expectation": closed, "plugins": loaded})
        return 0
    titles = {"activation": "activations", "architecture": "architectures",
              "learning_algorithm": "learning algorithms", "observable": "observables"}
    for kind in kinds:
        entries = listing[kind]
        print(f"{titles[kind]} ({len(entries)}):")
        if entries:
            print(_table(["name", "class", "provider"], [[e["name"], e["class"], e["provider"]] for e in entries], left=3))
        else:
            print("  (none registered)")
        print()
    print("closed-form Gaussian expectations: " + (", ".join(closed) if closed else "(none; quadrature only)"))
    print("plugins loaded: " + ", ".join(loaded))
    return 0


# =============================================================================== entry point
def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pdlt`` command line; returns the exit status (0 ok, 2 usage or input error).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.  With no command (no
        arguments, or only options), runs the default job ``pdlt run``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "--version")):
        args = ["run", *args]
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # --help, --version and usage errors (argparse already printed)
        return _exit_code(exc.code)
    try:
        return int(ns.func(ns))
    except PdltError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `pdlt flow --json | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at interpreter exit
        except OSError:
            pass
        return 0
