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
}
_RUN_SIZE = 2000
_COMPARE_SIZE = 10_000
_CONFIG_KEYS = {
    "flow": ("activation", "params", "depth", "width", "widths", "output_dim", "c_b", "c_w", "lambda_b",
             "lambda_w", "critical", "inputs", "leading", "save", "plot", "json"),
    "compare": ("activation", "params", "depth", "width", "widths", "output_dim", "c_b", "c_w", "lambda_b",
                "lambda_w", "critical", "inputs", "size", "seed", "save", "plot", "json", "progress"),
    "run": ("activation", "params", "depth", "width", "widths", "output_dim", "c_b", "c_w", "lambda_b",
            "lambda_w", "critical", "inputs", "size", "seed", "json", "progress"),
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
def _network_options(p: argparse.ArgumentParser, *, leading: bool) -> None:
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
            "the RG flow of K and V/(nK²) over depth, and theory vs a small ensemble of real networks."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pdlt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="the default job on built-in data (what `pdlt` alone runs)",
                       description="Criticality report, RG flow and a theory-vs-ensemble check at the output layer. "
                                   "The network is tuned to criticality unless --c-b or --c-w is given.")
    _network_options(p, leading=False)
    _ensemble_options(p, _RUN_SIZE)
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
    if isinstance(merged.get("inputs"), str):  # paths are relative to the config file
        merged["inputs"] = str((Path(path).parent / merged["inputs"]).expanduser())
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
    }
    try:
        return converters[norm](value)
    except argparse.ArgumentTypeError as exc:
        raise ParameterError(f"The option {key!r} in config file {path!r} is invalid: {exc}.") from None


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
    try:
        return net.at_criticality()
    except NotImplementedError:
        from .errors import NoCriticalityError

        report = _criticality_function()(net.activation)
        if report.c_w is None:
            raise NoCriticalityError(f"{net.activation.name!r} admits no critical initialization: {report.reason}") from None
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

    if opts.json:
        _print_json({
            "command": "run",
            "criticality": report.to_dict() if report is not None else None,
            **_flow_dict(fl, net, X),
            "comparison": _comparison_dict(comps, ens),
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
