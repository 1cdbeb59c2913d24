"""Small deterministic data sets shipped in code, and a validated loader for user inputs.

The command line (``pdlt`` with no arguments) and the examples need inputs that exist on every
installation and never change between runs: :func:`default_inputs` (a few points on a circle,
for the RG flow of kernels) and :func:`regression_1d` / :func:`regression_2d` (a fixed smooth
target sampled with a fixed seed, for learning algorithms).  :func:`load` reads user inputs
from ``.csv``/``.txt``, ``.npy`` or ``.npz`` files and checks them at the boundary (2-D,
finite, non-empty) so that errors name the file and say what to fix.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

from .errors import MissingDependencyError, ParameterError

__all__ = ["default_inputs", "regression_1d", "regression_2d", "diabetes", "load", "DEFAULT_SEED"]

#: Seed of the built-in regression data sets (they are functions of their arguments only).
DEFAULT_SEED = 20210610


def _count(value, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ParameterError(
            f"The {name!r} parameter of {owner} must be an integer >= {minimum}. Got {value!r} instead."
        )
    return int(value)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=float)
    a.setflags(write=False)
    return a


def default_inputs(n_points: int = 3, input_dim: int = 2) -> np.ndarray:
    """A few inputs on a quarter circle, the default data of the command line.

    Parameters
    ----------
    n_points : int, >= 1
        Number of inputs N.
    input_dim : int, >= 2
        n_0.  The points lie in the plane of the first two coordinates.

    Returns
    -------
    ndarray, shape (n_points, input_dim), read-only
        x_α = √n_0 (cos θ_α, sin θ_α, 0, …) with θ_α equally spaced in [0, π/2].

    Notes
    -----
    The radius √n_0 gives |x|²/n_0 = 1, so the first-layer kernel is
    K^(1)_αα = C_b + C_W (book (4.23)) and K^(1)_αβ = C_b + C_W cos(θ_α − θ_β).  With three
    points the angles are 0, π/4, π/2: one pair at 45° and one orthogonal pair.

    Examples
    --------
    >>> X = default_inputs()
    >>> X.shape, bool(np.allclose((X**2).sum(axis=1) / 2, 1.0))
    ((3, 2), True)
    """
    n = _count(n_points, "n_points", "default_inputs")
    d = _count(input_dim, "input_dim", "default_inputs", minimum=2)
    theta = np.linspace(0.0, math.pi / 2, n) if n > 1 else np.zeros(1)
    X = np.zeros((n, d))
    X[:, 0] = np.cos(theta)
    X[:, 1] = np.sin(theta)
    return _readonly(math.sqrt(d) * X)


def _target_1d(x: np.ndarray) -> np.ndarray:
    return np.sin(math.pi * x[:, 0])


def _target_2d(x: np.ndarray) -> np.ndarray:
    return np.sin(math.pi * x[:, 0]) * np.cos(0.5 * math.pi * x[:, 1])


def _regression(owner, target, dim, n_train, n_test, noise, seed, design="random"):
    if design not in ("random", "grid"):
        raise ParameterError(f"The 'design' parameter of {owner} must be 'random' or 'grid'. Got {design!r} instead.")
    n_train = _count(n_train, "n_train", owner)
    n_test = _count(n_test, "n_test", owner)
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (math.isfinite(noise) and noise >= 0):
        raise ParameterError(f"The 'noise' parameter of {owner} must be a finite number >= 0. Got {noise!r} instead.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ParameterError(f"The 'seed' parameter of {owner} must be a non-negative integer. Got {seed!r} instead.")
    rng = np.random.default_rng(int(seed))
    if design == "grid":  # midpoints of n_train equal cells of [-1, 1]: well separated, never on the zeros ±1
        X_train = (-1.0 + (2.0 * np.arange(n_train) + 1.0) / n_train)[:, None]
    else:
        X_train = rng.uniform(-1.0, 1.0, size=(n_train, dim))
    y_train = target(X_train) + float(noise) * rng.standard_normal(n_train)
    # test inputs on a grid: deterministic and evenly covering the domain
    if dim == 1:
        X_test = np.linspace(-1.0, 1.0, n_test)[:, None]
    else:
        X_test = rng.uniform(-1.0, 1.0, size=(n_test, dim))
    y_test = target(X_test)
    return (_readonly(X_train), _readonly(y_train[:, None]), _readonly(X_test), _readonly(y_test[:, None]))


def regression_1d(n_train: int = 10, n_test: int = 50, *, noise: float = 0.0, seed: int = DEFAULT_SEED,
                  design: str = "random"):
    """Samples of y = sin(πx) on [−1, 1].

    Parameters
    ----------
    n_train, n_test : int, >= 1
        Numbers of training and test points.
    noise : float, >= 0
        Standard deviation of Gaussian noise added to the training targets (test targets are
        noiseless).
    seed : int, >= 0
        Seed of the training inputs and the noise; the default makes the set fixed.
    design : {"random", "grid"}
        Training inputs uniform at random in [−1, 1], or at the midpoints −1 + (2k + 1)/n_train
        of equal cells (well separated, so the training-set kernels are well conditioned even
        for a handful of points — the ``pdlt`` main job uses ``n_train=2, design="grid"``:
        x = ∓0.5, y = ∓1).

    Returns
    -------
    X_train : ndarray (n_train, 1)
        Uniform in [−1, 1] (or the grid).
    y_train : ndarray (n_train, 1)
    X_test : ndarray (n_test, 1)
        Equally spaced on [−1, 1].
    y_test : ndarray (n_test, 1)

    All arrays are float64 and read-only.

    Examples
    --------
    >>> X, y, Xt, yt = regression_1d(4, 3)
    >>> X.shape, y.shape, Xt[:, 0].tolist()
    ((4, 1), (4, 1), [-1.0, 0.0, 1.0])
    """
    return _regression("regression_1d", _target_1d, 1, n_train, n_test, noise, seed, design)


def regression_2d(n_train: int = 20, n_test: int = 50, *, noise: float = 0.0, seed: int = DEFAULT_SEED):
    """Samples of y = sin(πx₁) cos(πx₂/2) on [−1, 1]².

    Parameters and returns as :func:`regression_1d`, with inputs of shape (n, 2); the test
    inputs are uniform in the square (drawn after the training data from the same seed).
    """
    return _regression("regression_2d", _target_2d, 2, n_train, n_test, noise, seed)


def diabetes(n_train: int = 20, n_test: int = 20, *, features: int | None = None, seed: int = DEFAULT_SEED):
    """A tiny real data set: disease progression of diabetes patients (scikit-learn's ``load_diabetes``).

    442 patients, 10 baseline variables (age, sex, body-mass index, blood pressure, six blood
    serum measurements) and a quantitative measure of disease progression one year later (Efron,
    Hastie, Johnstone and Tibshirani, *Least Angle Regression*, Ann. Statist. 32 (2004)).  The
    data ship with scikit-learn (an optional dependency: ``pip install scikit-learn`` or
    ``pdlt[sklearn]``), so pdlt does not redistribute them.

    Parameters
    ----------
    n_train, n_test : int, >= 1, n_train + n_test <= 442
        Sizes of the training and test sets, drawn without replacement.
    features : int or None
        Keep the first ``features`` of the 10 input variables (None: all).
    seed : int, >= 0
        Seed of the split; the default makes it fixed.

    Returns
    -------
    X_train : ndarray (n_train, features)
    y_train : ndarray (n_train, 1)
    X_test : ndarray (n_test, features)
    y_test : ndarray (n_test, 1)

    Every input column is standardised to mean 0 and variance 1 over all 442 patients, so that
    |x|²/n_0 ≈ 1 (the scale the first-layer kernel C_b + C_W x·x/n_0 expects); the target is
    standardised the same way.  All arrays are float64 and read-only.

    Raises
    ------
    MissingDependencyError
        scikit-learn is not installed.
    """
    owner = "diabetes"
    n_train = _count(n_train, "n_train", owner)
    n_test = _count(n_test, "n_test", owner)
    if features is not None:
        features = _count(features, "features", owner)
        if features > 10:
            raise ParameterError(f"The 'features' parameter of diabetes must be at most 10. Got {features!r} instead.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ParameterError(f"The 'seed' parameter of diabetes must be a non-negative integer. Got {seed!r} instead.")
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        raise MissingDependencyError(
            "pdlt.data.diabetes needs scikit-learn, which ships the data set: pip install scikit-learn "
            "(or pip install 'pdlt[sklearn]')."
        ) from None
    X, y = load_diabetes(return_X_y=True)
    if n_train + n_test > X.shape[0]:
        raise ParameterError(
            f"The 'n_train' and 'n_test' parameters of diabetes must add up to at most {X.shape[0]} patients. "
            f"Got {n_train} + {n_test} instead."
        )
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y = (y - y.mean()) / y.std()
    if features is not None:
        X = X[:, :features]
    idx = np.random.default_rng(int(seed)).permutation(X.shape[0])
    a, b = idx[:n_train], idx[n_train:n_train + n_test]
    return _readonly(X[a]), _readonly(y[a, None]), _readonly(X[b]), _readonly(y[b, None])


def _load_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ParameterError(f"The inputs file {str(path)!r} contains no data rows.")
    delimiter = "," if "," in lines[0] else None

    def parse(line: str, lineno: int) -> list[float]:
        cells = line.split(delimiter)
        try:
            return [float(c) for c in cells]
        except ValueError:
            raise ParameterError(
                f"The inputs file {str(path)!r} has a non-numeric entry on data row {lineno}: {line.strip()!r}. "
                "Write one input per row, numbers separated by commas (a single header row is allowed)."
            ) from None

    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(parse(line, i + 1))
        except ParameterError:
            if i == 0:  # a header row
                continue
            raise
    if not rows:
        raise ParameterError(f"The inputs file {str(path)!r} contains no numeric rows.")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ParameterError(
            f"The inputs file {str(path)!r} has rows of different lengths {sorted(lengths)}; every input needs "
            "the same number of coordinates."
        )
    return np.array(rows, dtype=float)


def _load_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        names = list(data.files)
        if "X" in names:
            return np.asarray(data["X"])
        if len(names) == 1:
            return np.asarray(data[names[0]])
    raise ParameterError(
        f"The inputs file {str(path)!r} holds arrays {names}; name the inputs 'X' or store a single array."
    )


def load(path) -> np.ndarray:
    """Read inputs X of shape (N, n_0) from a ``.csv``/``.txt``, ``.npy`` or ``.npz`` file.

    Parameters
    ----------
    path : str or os.PathLike
        CSV/text: one input per row, numbers separated by commas or whitespace; lines starting
        with ``#`` and one header row are skipped; a single column is read as N inputs of
        dimension 1.  NPY: a 2-D float array (1-D is read as one column).  NPZ: the array
        named ``X``, or the only array.  Pickled objects are refused.

    Returns
    -------
    ndarray, shape (N, n_0), float64, read-only

    Raises
    ------
    ParameterError
        The file is missing or unreadable, has an unknown extension, or its data are not a
        non-empty 2-D array of finite numbers.  The message names the file.
    """
    try:
        p = Path(os.fspath(path))
    except TypeError:
        raise ParameterError(f"The 'path' parameter of load must be a file path. Got {path!r} instead.") from None
    if not p.is_file():
        raise ParameterError(f"The inputs file {str(p)!r} does not exist (or is not a file).")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".txt", ".tsv", ".dat"):
            X = _load_csv(p)
        elif suffix == ".npy":
            X = np.load(p, allow_pickle=False)
        elif suffix == ".npz":
            X = _load_npz(p)
        else:
            raise ParameterError(
                f"The inputs file {str(p)!r} has an unsupported extension {p.suffix!r}; use .csv, .txt, .npy or .npz."
            )
    except ParameterError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ParameterError(f"The inputs file {str(p)!r} could not be read: {type(exc).__name__}: {exc}") from exc
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ParameterError(f"The inputs file {str(p)!r} must hold real numbers. Got dtype {X.dtype} instead.")
    X = X.astype(float)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ParameterError(
            f"The inputs file {str(p)!r} must hold a 2-D array of shape (N, input_dim) with N >= 1. "
            f"Got shape {X.shape} instead."
        )
    if not np.all(np.isfinite(X)):
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ParameterError(
            f"The inputs file {str(p)!r} must hold finite numbers. Got {float(X[tuple(bad)])!r} at row {int(bad[0])}, "
            f"column {int(bad[1])} (0-based) instead."
        )
    return _readonly(X)
