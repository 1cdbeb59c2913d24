"""Figures of pdlt results: RG flows, phase diagrams, theory vs real networks, trained outputs.

Plotting is optional: matplotlib is the ``plot`` extra (``pip install 'pdlt[plot]'``) and is
imported only inside these functions, so ``import pdlt`` never needs it; without it every
function raises :class:`MissingDependencyError` saying what to install.  Figures are built as
:class:`matplotlib.figure.Figure` objects on the non-interactive Agg canvas, never through
``pyplot``: no display is needed and no global matplotlib state (backend, current figure) is
touched.  Every function returns the Figure; :func:`savefig` writes it to a file (the format
follows the file extension: .png, .pdf, .svg, …).

Symbols and normalisations follow the book and docs/notation.md: n = n_{ℓ−1} (the fan-in of
layer ℓ) normalises every O(1/n) tensor, α labels inputs, layers are numbered ℓ = 1..L.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

from .errors import MissingDependencyError, ParameterError, PdltError

__all__ = [
    "MissingDependencyError",
    "plot_flow",
    "plot_ntk_flow",
    "plot_phase_diagram",
    "plot_comparison",
    "plot_trained",
    "savefig",
    "phase_diagram_data",
    "require_matplotlib",
    "FLOW_QUANTITIES",
]


def _matplotlib():
    """(Figure, FigureCanvasAgg), or a :class:`MissingDependencyError` naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "Plotting needs matplotlib, which is not installed: install pdlt[plot] "
            "(pip install 'pdlt[plot]', or pip install matplotlib)."
        ) from exc
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Raise :class:`MissingDependencyError` now (before a long computation) if matplotlib is absent."""
    _matplotlib()


def _figure(nrows: int = 1, ncols: int = 1, *, figsize, **subplot_kw):
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def savefig(fig, path, *, dpi: int = 150, **kwargs) -> None:
    """Write ``fig`` to ``path`` (format from the extension), tightly cropped.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        A figure returned by one of the ``plot_*`` functions (or any Figure).
    path : str or os.PathLike
    dpi : int
        Resolution of raster formats.
    **kwargs
        Passed to :meth:`matplotlib.figure.Figure.savefig`.
    """
    _matplotlib()
    if fig.canvas is None or type(fig.canvas).__name__ == "FigureCanvasBase":
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    kwargs.setdefault("bbox_inches", "tight")
    fig.savefig(path, dpi=dpi, **kwargs)


# =============================================================================== helpers
def _integer_layers(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(r"layer $\ell$")


def _auto_log(ax, values, ratio: float = 30.0) -> None:
    """Log y-scale when the values are positive and span more than ``ratio``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and np.all(v > 0) and v.max() / v.min() > ratio:
        ax.set_yscale("log")


def _layers(flow) -> list:
    layers = list(flow)
    if not layers or not all(hasattr(s, "K") and hasattr(s, "fan_in") for s in layers):
        raise ParameterError(
            f"The 'flow' parameter must be a pdlt.Flow (from pdlt.flow(net, X)) with at least one layer. Got {flow!r} instead."
        )
    return layers


def _inputs(N: int, inputs, owner: str) -> list[int]:
    if inputs is None:
        return list(range(min(N, 4)))
    idx = [inputs] if isinstance(inputs, numbers.Integral) else list(inputs)
    if not idx or not all(isinstance(i, numbers.Integral) and 0 <= i < N for i in idx):
        raise ParameterError(f"The 'inputs' parameter of {owner} must be input indices in 0..{N - 1}. Got {inputs!r} instead.")
    return [int(i) for i in idx]


def _diag4(T: np.ndarray) -> np.ndarray:
    """T_αααα for every α."""
    i = np.arange(T.shape[0])
    return T[i, i, i, i]


def _ratio(num, den):
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


# Per-layer diagonal quantities: key -> (tensors needed, mathtext label, f(stats) -> (N,) values).
def _kd(s):
    return np.diag(s.K)


def _td(s):
    return np.diag(s.Theta)


FLOW_QUANTITIES: dict[str, tuple[tuple[str, ...], str, Any]] = {
    "K": (("K",), r"$K^{(\ell)}_{\alpha\alpha}$", _kd),
    "Theta": (("Theta",), r"$\Theta^{(\ell)}_{\alpha\alpha}$", _td),
    "V/(nK^2)": (
        ("V",),
        r"$V^{(\ell)}_{(\alpha\alpha)(\alpha\alpha)}\,/\,(n_{\ell-1} K_{\alpha\alpha}^{2})$",
        lambda s: _ratio(_diag4(s.V), s.fan_in * _kd(s) ** 2),
    ),
    "G1/(nK)": (
        ("G1",),
        r"$G^{\{1\}(\ell)}_{\alpha\alpha}\,/\,(n_{\ell-1} K_{\alpha\alpha})$",
        lambda s: _ratio(np.diag(s.G1), s.fan_in * _kd(s)),
    ),
    "H1/(nTheta)": (
        ("H1",),
        r"$H^{\{1\}(\ell)}_{\alpha\alpha}\,/\,(n_{\ell-1} \Theta_{\alpha\alpha})$",
        lambda s: _ratio(np.diag(s.H1), s.fan_in * _td(s)),
    ),
    "A/(nTheta^2)": (
        ("A",),
        r"$A^{(\ell)}_{(\alpha\alpha)(\alpha\alpha)}\,/\,(n_{\ell-1} \Theta_{\alpha\alpha}^{2})$",
        lambda s: _ratio(_diag4(s.A), s.fan_in * _td(s) ** 2),
    ),
    "B/(nTheta^2)": (
        ("B",),
        r"$B^{(\ell)}_{\alpha\alpha\alpha\alpha}\,/\,(n_{\ell-1} \Theta_{\alpha\alpha}^{2})$",
        lambda s: _ratio(_diag4(s.B), s.fan_in * _td(s) ** 2),
    ),
    "D/(nKTheta)": (
        ("D",),
        r"$D^{(\ell)}_{\alpha\alpha\alpha\alpha}\,/\,(n_{\ell-1} K_{\alpha\alpha}\Theta_{\alpha\alpha})$",
        lambda s: _ratio(_diag4(s.D), s.fan_in * _kd(s) * _td(s)),
    ),
    "F/(nKTheta)": (
        ("F",),
        r"$F^{(\ell)}_{\alpha\alpha\alpha\alpha}\,/\,(n_{\ell-1} K_{\alpha\alpha}\Theta_{\alpha\alpha})$",
        lambda s: _ratio(_diag4(s.F), s.fan_in * _kd(s) * _td(s)),
    ),
}
#: Short legend labels of the NTK ratios (plot_ntk_flow draws them on one axes).
_NTK_RATIO_LABELS = {
    "A/(nTheta^2)": r"$A_{(\alpha\alpha)(\alpha\alpha)}/(n\Theta^2)$",
    "B/(nTheta^2)": r"$B_{\alpha\alpha\alpha\alpha}/(n\Theta^2)$",
    "D/(nKTheta)": r"$D_{\alpha\alpha\alpha\alpha}/(nK\Theta)$",
    "F/(nKTheta)": r"$F_{\alpha\alpha\alpha\alpha}/(nK\Theta)$",
}


def _canonical(name: str) -> str:
    return (
        str(name).replace(" ", "").replace("Θ", "Theta").replace("²", "^2").replace("**2", "^2")
        .replace("n*K", "nK").replace("K*Theta", "KTheta")
    )


def _flow_quantity(name: str, owner: str) -> str:
    key = _canonical(name)
    if key not in FLOW_QUANTITIES:
        raise ParameterError(
            f"The quantity {name!r} of {owner} is not known. Choose from: {', '.join(FLOW_QUANTITIES)} "
            "(Θ and ² are accepted for Theta and ^2)."
        )
    return key


def _need(layers, names: Sequence[str], what: str, owner: str) -> None:
    for name in names:
        if getattr(layers[0], name, None) is None:
            raise ParameterError(
                f"{owner} needs {name} for {what}, which this flow does not have; compute it with "
                f"pdlt.flow(net, X, order='full')."
            )


def _series(layers, key: str) -> np.ndarray:
    """(L, N) values of a FLOW_QUANTITIES entry."""
    fn = FLOW_QUANTITIES[key][2]
    return np.stack([np.asarray(fn(s), dtype=float) for s in layers])


def _groups(values: np.ndarray, idx: Sequence[int]) -> list[list[int]]:
    """Inputs whose curves coincide (e.g. inputs of equal norm for K_αα), drawn once."""
    groups: list[list[int]] = []
    for i in idx:
        for g in groups:
            if np.allclose(values[:, i], values[:, g[0]], rtol=1e-9, atol=1e-14, equal_nan=True):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _plot_inputs(ax, ell, values, idx) -> int:
    """One curve per group of coinciding inputs; returns the number of curves."""
    groups = _groups(values, idx)
    for g in groups:
        ax.plot(ell, values[:, g[0]], label=rf"$\alpha = {', '.join(map(str, g))}$", **_markers(len(ell)))
    return len(groups)


def _network_title(net) -> str | None:
    """'tanh MLP, widths 2-32-32-1, C_b = 0, C_W = 1' (None when the flow does not know its network)."""
    if net is None:
        return None
    try:
        def fmt(v):
            if isinstance(v, (tuple, list, np.ndarray)):
                v = list(v)
                return f"{v[0]:g}" if all(x == v[0] for x in v) else "(" + ", ".join(f"{x:g}" for x in v) + ")"
            return f"{v:g}"

        w = list(net.widths)
        hidden = w[1:-1]
        if len(hidden) > 2 and all(x == hidden[0] for x in hidden):
            widths = f"$L = {len(w) - 1}$, $n_0 = {w[0]}$, hidden width {hidden[0]}, $n_L = {w[-1]}$"
        else:
            widths = "widths " + "-".join(map(str, w))
        return (f"{_describe(net.activation)} {type(net).__name__}, {widths}, "
                f"$C_b = {fmt(net.c_b)}$, $C_W = {fmt(net.c_w)}$")
    except (AttributeError, TypeError, ValueError):
        return None


def _suptitle(fig, flow) -> None:
    title = _network_title(getattr(flow, "network", None))
    if title:
        fig.suptitle(title, fontsize="medium")


def _markers(L: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 4} if L <= 40 else {}


# =============================================================================== flows
def plot_flow(flow, quantities: Sequence[str] | str = ("K", "V/(nK^2)"), ax=None, *, inputs=None):
    """The RG flow of per-layer quantities over depth, one panel per quantity.

    Parameters
    ----------
    flow : Flow
        From :func:`pdlt.flow`; quantities other than K and Θ need ``order="full"``.
    quantities : str or sequence of str
        Keys of :data:`FLOW_QUANTITIES`: "K", "Theta", "V/(nK^2)", "G1/(nK)", "H1/(nTheta)",
        "A/(nTheta^2)", "B/(nTheta^2)", "D/(nKTheta)", "F/(nKTheta)" (Θ and ² are accepted).
        Each is the diagonal (single-input) component of input α, e.g. V_(αα)(αα)/(n_{ℓ−1}K_αα²),
        the book's measure of non-Gaussianity (§4.3).
    ax : matplotlib Axes or sequence of Axes, optional
        Where to draw, one per quantity; default: a new figure.
    inputs : int or sequence of int, optional
        Input indices α to draw (default: the first four).

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    n = n_{ℓ−1} normalises every O(1/n) tensor (docs/notation.md).  K and Θ switch to a
    logarithmic axis when they span more than a factor 30 (e.g. K^(ℓ) ~ 1/ℓ in the K* = 0 class).
    """
    layers = _layers(flow)
    names = [quantities] if isinstance(quantities, str) else list(quantities)
    if not names:
        raise ParameterError("The 'quantities' parameter of plot_flow must name at least one quantity. Got none instead.")
    keys = [_flow_quantity(q, "plot_flow") for q in names]
    for key in keys:
        _need(layers, FLOW_QUANTITIES[key][0], key, "plot_flow")
    idx = _inputs(layers[0].n_inputs if hasattr(layers[0], "n_inputs") else layers[0].K.shape[0], inputs, "plot_flow")
    if ax is None:
        fig, axes = _figure(1, len(keys), figsize=(4.6 * len(keys), 3.8))
        axes = list(axes[0])
        _suptitle(fig, flow)
    else:
        axes = [ax] if hasattr(ax, "plot") else list(ax)
        if len(axes) != len(keys):
            raise ParameterError(
                f"The 'ax' parameter of plot_flow must hold one Axes per quantity ({len(keys)}). Got {len(axes)} instead."
            )
        fig = axes[0].figure
    ell = np.array([s.layer for s in layers])
    for a, key in zip(axes, keys):
        values = _series(layers, key)
        curves = _plot_inputs(a, ell, values, idx)
        a.set_ylabel(FLOW_QUANTITIES[key][1])
        _integer_layers(a)
        if key in ("K", "Theta"):
            _auto_log(a, values[:, idx])
        a.grid(alpha=0.3)
        if len(idx) > 1 or curves > 1:
            a.legend(fontsize="small")
    return fig


def plot_ntk_flow(flow, *, alpha: int = 0, inputs=None):
    """The NTK over depth: Θ_αα, and its normalised fluctuations A, B, D, F at one input.

    Parameters
    ----------
    flow : Flow
        From ``pdlt.flow(net, X, order="full")``.
    alpha : int
        Input index of the right panel.
    inputs : int or sequence of int, optional
        Inputs drawn in the Θ panel (default: the first four).

    Returns
    -------
    matplotlib.figure.Figure
        Left: Θ^(ℓ)_αα.  Right: A_(αα)(αα)/(nΘ²), B_αααα/(nΘ²), D_αααα/(nKΘ), F_αααα/(nKΘ) with
        n = n_{ℓ−1} — each grows linearly in ℓ/n at criticality (book §9.2–9.3).
    """
    layers = _layers(flow)
    _need(layers, ("Theta", "A", "B", "D", "F"), "the NTK fluctuations", "plot_ntk_flow")
    N = layers[0].K.shape[0]
    (alpha,) = _inputs(N, alpha, "plot_ntk_flow (alpha)")
    idx = _inputs(N, inputs, "plot_ntk_flow")
    fig, axes = _figure(1, 2, figsize=(9.6, 3.8))
    a0, a1 = axes[0]
    ell = np.array([s.layer for s in layers])
    theta = _series(layers, "Theta")
    _plot_inputs(a0, ell, theta, idx)
    a0.set_ylabel(FLOW_QUANTITIES["Theta"][1])
    _auto_log(a0, theta[:, idx])
    if len(idx) > 1:
        a0.legend(fontsize="small")
    _suptitle(fig, flow)
    for key, label in _NTK_RATIO_LABELS.items():
        a1.plot(ell, _series(layers, key)[:, alpha], label=label, **_markers(len(ell)))
    a1.axhline(0.0, color="0.5", lw=0.8)
    a1.set_ylabel(rf"normalised NTK fluctuations ($\alpha = {alpha}$, $n = n_{{\ell-1}}$)")
    a1.legend(fontsize="small")
    for a in (a0, a1):
        _integer_layers(a)
        a.grid(alpha=0.3)
    return fig


# =============================================================================== phase diagram
_K_GRID = np.logspace(-6.0, 4.0, 201)  # 20 points per decade; K* outside it counts as 0 or ∞
_BISECTIONS = 45  # halves a grid cell (factor 10^0.05) to |Δ log K| < 1e-14


def _pointwise(fn, K: np.ndarray, fill: float):
    """fn(K) on the whole batch; where the engine refuses (a non-finite value, e.g. ⟨e^{2z}⟩ at
    large K), retry point by point and put ``fill`` at the failures.  ``fn`` returns an array
    of the shape of K or a tuple of such arrays."""
    from .errors import NumericalError

    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(K)
    except NumericalError:
        pass
    rows: list[np.ndarray | None] = []
    for k in K:
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                rows.append(np.asarray(fn(np.array([k])), dtype=float).reshape(-1))
        except NumericalError:
            rows.append(None)
    good = [r for r in rows if r is not None]
    if not good:
        return fn(K)  # fails again: let the engine's error explain why
    cols = np.array([np.full(good[0].shape, fill) if r is None else r for r in rows]).T
    return tuple(cols) if len(cols) > 1 else cols[0]


def _second_moment(act, K) -> np.ndarray:
    """g(K) = ⟨σ²⟩_K for an array of K (one single-input block each); inf where it overflows."""
    from .gaussian import expect

    K = np.asarray(K, dtype=float)
    # Quadrature of the merged single variable is accurate to ~1e-15 at coinciding inputs, where
    # arc-cosine closed forms lose digits.
    g = _pointwise(lambda k: expect(act, (0, 0), k[:, None, None] * np.ones((1, 2, 2)), method="quadrature")[0],
                   K, np.inf)
    return np.where(np.isfinite(g), g, np.inf)


def _fixed_points(act, c_w: np.ndarray, c_b: float, k0: float = 1.0) -> np.ndarray:
    """K* reached by iterating K ← C_b + C_W⟨σ²⟩_K from K = k0, for each C_W (0 and inf allowed).

    The map is monotone in K (⟨σ²⟩_K increases with K), so the iteration converges to the first
    zero of h(K) = C_b + C_W g(K) − K met in the direction of the sign of h(k0): that zero is
    bracketed on a logarithmic grid and refined by bisection, vectorised over C_W.
    """
    grid = _K_GRID
    i0 = int(np.argmin(np.abs(np.log(grid / k0))))
    with np.errstate(invalid="ignore"):
        h = c_b + c_w[:, None] * _second_moment(act, grid)[None, :] - grid[None, :]
    h = np.where(np.isnan(h), np.inf, h)
    M = len(c_w)
    kstar = np.full(M, np.nan)
    lo = np.full(M, np.nan)
    hi = np.full(M, np.nan)
    for m in range(M):
        hm = h[m]
        if hm[i0] == 0:
            kstar[m] = grid[i0]
        elif hm[i0] > 0:  # K grows until h changes sign
            j = np.nonzero(hm[i0:] <= 0)[0]
            if j.size:
                lo[m], hi[m] = grid[i0 + j[0] - 1], grid[i0 + j[0]]
            else:
                kstar[m] = np.inf
        else:  # K shrinks until h changes sign
            j = np.nonzero(hm[: i0 + 1] >= 0)[0]
            if j.size:
                lo[m], hi[m] = grid[j[-1]], grid[j[-1] + 1]
            else:
                kstar[m] = 0.0
    todo = np.isfinite(lo)
    if todo.any():
        a, b, cw = np.log(lo[todo]), np.log(hi[todo]), c_w[todo]
        ha = c_b + cw * _second_moment(act, np.exp(a)) - np.exp(a)
        for _ in range(_BISECTIONS):
            mid = 0.5 * (a + b)
            km = np.exp(mid)
            with np.errstate(invalid="ignore"):
                hm = c_b + cw * _second_moment(act, km) - km
            same = np.sign(hm) == np.sign(ha)
            a = np.where(same, mid, a)
            ha = np.where(same, hm, ha)
            b = np.where(same, b, mid)
        kstar[todo] = np.exp(0.5 * (a + b))
    return kstar


def _c_w_values(c_w_range, num: int) -> np.ndarray:
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 2:
        raise ParameterError(f"The 'num' parameter of plot_phase_diagram must be an integer >= 2. Got {num!r} instead.")
    values = np.asarray(c_w_range, dtype=float).ravel()
    if values.size == 2:
        values = np.linspace(values[0], values[1], num)
    if values.size < 2 or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ParameterError(
            "The 'c_w_range' parameter of plot_phase_diagram must be (C_W min, C_W max) or an array of C_W values, "
            f"all finite and > 0. Got {c_w_range!r} instead."
        )
    return np.sort(values)


def phase_diagram_data(activation, c_w_range, c_b: float = 0.0, *, num: int = 121, k0: float = 1.0) -> dict[str, np.ndarray]:
    """The numbers behind :func:`plot_phase_diagram` (no matplotlib needed).

    Parameters are those of :func:`plot_phase_diagram`.

    Returns
    -------
    dict with arrays of shape (M,)
        ``c_w``; ``K_star`` (0: the kernel flows to 0, inf: it grows without bound, i.e. beyond
        1e4); ``K_eval`` (where χ is evaluated: K*, or 1e-6 / 1e4 in those limits);
        ``chi_parallel``, ``chi_perp`` (NaN where not finite).
    """
    from .activation import Activation
    from .criticality import susceptibilities
    from .errors import NumericalError

    activation = _as_activation(activation)
    if not isinstance(activation, Activation):
        raise ParameterError(
            f"The 'activation' parameter of plot_phase_diagram must be an Activation or a registered name. Got {activation!r} instead."
        )
    if not (isinstance(c_b, numbers.Real) and math.isfinite(c_b) and c_b >= 0):
        raise ParameterError(f"The 'c_b' parameter of plot_phase_diagram must be finite and >= 0. Got {c_b!r} instead.")
    if not (isinstance(k0, numbers.Real) and math.isfinite(k0) and k0 > 0):
        raise ParameterError(f"The 'k0' parameter of plot_phase_diagram must be finite and > 0. Got {k0!r} instead.")
    c_w = _c_w_values(c_w_range, num)
    kstar = _fixed_points(activation, c_w, float(c_b), float(k0))
    k_eval = np.clip(np.nan_to_num(kstar, nan=k0, posinf=_K_GRID[-1]), _K_GRID[0], _K_GRID[-1])
    # χ is linear in C_W: one batched call at C_W = 1
    try:
        par, perp = _pointwise(lambda k: susceptibilities(activation, k, 1.0), k_eval, np.nan)
    except NumericalError as exc:
        raise NumericalError(
            f"The susceptibilities of {activation.name!r} are not finite at any K on this C_W range, so it has "
            f"no phase diagram: {exc}"
        ) from exc
    par, perp = c_w * par, c_w * perp
    par = np.where(np.isfinite(par), par, np.nan)
    perp = np.where(np.isfinite(perp), perp, np.nan)
    return {"c_w": c_w, "K_star": kstar, "K_eval": k_eval, "chi_parallel": par, "chi_perp": perp}


def plot_phase_diagram(activation, c_w_range, c_b: float = 0.0, *, num: int = 121, k0: float = 1.0):
    """Susceptibilities χ_∥, χ_⊥ at the kernel's fixed point K* as functions of C_W, at fixed C_b.

    Parameters
    ----------
    activation : Activation or str
        σ (a registered name is looked up).
    c_w_range : (float, float) or array_like of float > 0
        (C_W min, C_W max), sampled at ``num`` points, or the C_W values themselves.
    c_b : float ≥ 0
        Bias variance C_b.
    num : int
        Number of C_W values when a range is given.
    k0 : float > 0
        Kernel K^(1) of the first layer, where the iteration to K* starts.

    Returns
    -------
    matplotlib.figure.Figure
        Top: χ_∥(K*) and χ_⊥(K*), the ordered (χ_⊥ < 1) and chaotic (χ_⊥ > 1) phases shaded and
        the critical C_W marked when (C_b, C_W) of :func:`pdlt.criticality` lies on this line.
        Bottom: K* (log scale), with the regions where the kernel flows to 0 or to ∞ shaded.

    Notes
    -----
    Book §5.1: χ_∥ = C_W⟨σ'² + σσ''⟩_{K*}, χ_⊥ = C_W⟨σ'²⟩_{K*}
    (:func:`pdlt.criticality.susceptibilities`).  K* is the fixed point of K' = C_b + C_W⟨σ²⟩_K
    reached from ``k0``; where it is 0 (e.g. the K* = 0 class below criticality) χ is evaluated
    at K = 1e-6, its K → 0⁺ limit to that accuracy; where the kernel grows beyond 1e4, at 1e4.
    """
    data = phase_diagram_data(activation, c_w_range, c_b, num=num, k0=k0)
    act = _as_activation(activation)
    c_w, kstar = data["c_w"], data["K_star"]
    par, perp = data["chi_parallel"], data["chi_perp"]

    fig, axes = _figure(2, 1, figsize=(6.4, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top, bottom = axes[0, 0], axes[1, 0]
    _shade(top, c_w, np.isfinite(perp) & (perp < 1), "tab:blue", 0.08, r"ordered ($\chi_\perp < 1$)")
    _shade(top, c_w, np.isfinite(perp) & (perp > 1), "tab:red", 0.08, r"chaotic ($\chi_\perp > 1$)")
    top.plot(c_w, par, color="tab:blue", label=r"$\chi_\parallel(K^\star)$")
    top.plot(c_w, perp, color="tab:red", ls="--", label=r"$\chi_\perp(K^\star)$")
    top.axhline(1.0, color="0.3", lw=0.8, ls=":")
    report = _critical_point(act)
    # loose match: a C_b typed from the printed report (6 digits) still marks the critical point
    if report is not None and abs(report.c_b - c_b) <= 1e-5 * max(1.0, abs(c_b)) and c_w[0] <= report.c_w <= c_w[-1]:
        for a in (top, bottom):
            a.axvline(report.c_w, color="k", lw=1.0, ls="-.",
                      label=rf"critical $C_W = {report.c_w:.4g}$" if a is top else None)
    top.set_ylabel(r"susceptibility $\chi(K^\star)$")
    finite = np.concatenate([par[np.isfinite(par)], perp[np.isfinite(perp)]])
    if finite.size:
        top.set_ylim(min(0.0, finite.min()), max(1.5, min(finite.max(), 10.0)) * 1.05)
    top.set_xlim(c_w[0], c_w[-1])
    top.set_title(f"{_describe(act)}: $C_b = {c_b:g}$; kernel flow from $K^{{(1)}} = {k0:g}$", fontsize="medium")
    top.legend(fontsize="small", loc="best")
    top.grid(alpha=0.3)

    pos = np.isfinite(kstar) & (kstar > 0)
    _shade(bottom, c_w, kstar == 0, "0.5", 0.15, r"$K^{(\ell)} \to 0$")
    _shade(bottom, c_w, np.isinf(kstar), "tab:orange", 0.15, r"$K^{(\ell)} \to \infty$")
    if pos.any():
        bottom.plot(c_w[pos], kstar[pos], color="k", label=r"$K^\star$")
        _auto_log(bottom, kstar[pos], ratio=10.0)
    else:
        bottom.set_yticks([])
        bottom.text(0.5, 0.5, r"no fixed point $0 < K^\star < \infty$ on this range", transform=bottom.transAxes,
                    ha="center", va="center", fontsize="small", color="0.3",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.9}, zorder=5)
    bottom.set_ylabel(r"fixed point $K^\star$")
    bottom.set_xlabel(r"weight variance $C_W$")
    bottom.legend(fontsize="small", loc="best")
    bottom.grid(alpha=0.3)
    return fig


def _shade(ax, x: np.ndarray, mask: np.ndarray, color, alpha: float, label: str) -> None:
    """Shade the x-ranges where ``mask`` holds, splitting the cells at midpoints (no gaps)."""
    if not mask.any():
        return
    edges = np.concatenate([[x[0]], 0.5 * (x[1:] + x[:-1]), [x[-1]]])
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    starts = np.nonzero(np.diff(padded) == 1)[0]
    stops = np.nonzero(np.diff(padded) == -1)[0]
    for k, (a, b) in enumerate(zip(starts, stops)):
        ax.axvspan(edges[a], edges[b], color=color, alpha=alpha, lw=0, label=label if k == 0 else None)


def _as_activation(activation):
    if isinstance(activation, str):
        from .plugins import lookup

        return lookup("activation", activation)()
    return activation


def _critical_point(act):
    from .criticality import criticality

    try:
        report = criticality(act)
    except PdltError:
        return None
    return report if report.c_w is not None and report.c_b is not None else None


def _describe(act) -> str:
    desc = act.describe() if hasattr(act, "describe") else getattr(act, "name", type(act).__name__)
    return desc[:-2] if desc.endswith("()") else desc


# =============================================================================== theory vs ensemble
_PARTNER = {"V_one_neuron": ("V", "V"), "A_one_neuron": ("A", "B"), "D_one_neuron": ("D", "F")}
_COMPARABLE = ("K", "Theta", "V", "A", "B", "D", "F", *_PARTNER)
_SYMBOLS = {
    "K": "K", "Theta": r"\Theta", "V": "V", "A": "A", "B": "B", "D": "D", "F": "F",
}


def _one_neuron(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """first_{1234} + second_{1324} + second_{1423}: the one-neuron combination (docs/notation.md)."""
    return first + np.einsum("acbd->abcd", second) + np.einsum("adbc->abcd", second)


def _theory(s, name: str):
    """(theory to order 1/n, infinite-width value or None) of one layer."""
    if name == "K":
        return s.metric(), s.K
    if name == "Theta":
        return s.ntk_mean(), s.Theta
    if name in _PARTNER:
        first, second = _PARTNER[name]
        return _one_neuron(getattr(s, first), getattr(s, second)), None
    return getattr(s, name), None


def _component_label(name: str, comp: tuple[int, ...]) -> str:
    def sub(sym: str, c: Sequence[int], paired: bool) -> str:
        d = "".join(map(str, c))
        return f"{sym}_{{({d[:2]})({d[2:]})}}" if paired else f"{sym}_{{{d}}}"

    if name in _PARTNER:  # first_{abcd} + second_{acbd} + second_{adbc}
        first, second = _PARTNER[name]
        a, b, c, d = comp
        terms = [sub(first, (a, b, c, d), first in ("V", "A")), sub(second, (a, c, b, d), second == "V"),
                 sub(second, (a, d, b, c), second == "V")]
        return "$" + " + ".join(terms) + "$ (one neuron)"
    sym = _SYMBOLS[name] + r"^{(\ell)}"
    return "$" + sub(sym, comp, name in ("V", "A")) + "$" if len(comp) == 4 else f"${sym}_{{{''.join(map(str, comp))}}}$"


def plot_comparison(theory_flow, ensemble_stats, quantity: str | Sequence[str] = "K", *, component=None):
    """Theory vs an ensemble of real networks, layer by layer, with error bars and z-scores.

    Parameters
    ----------
    theory_flow : Flow
        ``pdlt.flow(net, X, order="full")`` (K and Θ alone need only ``order="leading"``).
    ensemble_stats : pdlt.ensemble.EnsembleStatistics
        ``pdlt.ensemble.sample(net, X, size, seed)`` for the same network and inputs.
    quantity : str or sequence of str
        "K", "Theta" (or "Θ"), "V", "A", "B", "D", "F", or a one-neuron combination
        "V_one_neuron", "A_one_neuron", "D_one_neuron"; one column per quantity.
    component : tuple of int, optional
        Input indices of the component drawn, e.g. (0, 1) for K_01; default: (0, 0) or (0, 0, 0, 0).

    Returns
    -------
    matplotlib.figure.Figure
        Top row: theory to order 1/n (K + G1/n and Θ + H1/n for K and Θ, with the infinite-width
        value dashed) and the ensemble mean ± one standard error per layer.  Bottom row:
        z = (ensemble − theory)/SE, with the band |z| ≤ 2 shaded.

    Notes
    -----
    Normalisation as in :func:`pdlt.ensemble.sample`: every O(1/n) tensor of layer ℓ is multiplied
    by n_{ℓ−1}.  Cross-neuron tensors (V, A, B, D, F) are NaN, and not drawn, in layers of width 1;
    compare the one-neuron combinations there.
    """
    layers = _layers(theory_flow)
    ens = list(getattr(ensemble_stats, "layers", ensemble_stats))
    if len(ens) != len(layers) or not all(hasattr(e, "K") and hasattr(e.K, "stderr") for e in ens):
        raise ParameterError(
            "The 'ensemble_stats' parameter of plot_comparison must be the EnsembleStatistics of the same network "
            f"({len(layers)} layers). Got {len(ens)} layers instead."
        )
    N = layers[0].K.shape[0]
    if ens[0].K.mean.shape != (N, N):
        raise ParameterError(
            f"The theory flow has {N} inputs but the ensemble statistics have {ens[0].K.mean.shape[0]}; "
            "sample the ensemble on the same inputs X."
        )
    names = [quantity] if isinstance(quantity, str) else list(quantity)
    keys = []
    for q in names:
        key = _canonical(q)
        if key not in _COMPARABLE:
            raise ParameterError(
                f"The 'quantity' parameter of plot_comparison must be one of {', '.join(_COMPARABLE)}. Got {q!r} instead."
            )
        needed = _PARTNER.get(key, (key,))
        if key not in ("K", "Theta"):
            _need(layers, needed, key, "plot_comparison")
        if getattr(ens[0], key, None) is None:
            raise ParameterError(
                f"The ensemble statistics have no {key}; sample them with ntk=True (the default) to compare NTK quantities."
            )
        keys.append(key)
    if not keys:
        raise ParameterError("The 'quantity' parameter of plot_comparison must name at least one quantity. Got none instead.")

    fig, axes = _figure(2, len(keys), figsize=(4.6 * len(keys), 5.4), sharex="col",
                        gridspec_kw={"height_ratios": [3, 1.3]})
    _suptitle(fig, theory_flow)
    ell = np.array([s.layer for s in layers])
    size = getattr(ensemble_stats, "size", None)
    for col, key in enumerate(keys):
        ndim = 2 if key in ("K", "Theta") else 4
        comp = tuple(component) if component is not None else (0,) * ndim
        if len(comp) != ndim or not all(isinstance(c, numbers.Integral) and 0 <= c < N for c in comp):
            raise ParameterError(
                f"The 'component' parameter of plot_comparison must be {ndim} input indices in 0..{N - 1} for {key}. "
                f"Got {component!r} instead."
            )
        th, inf = zip(*(_theory(s, key) for s in layers))
        th = np.array([np.asarray(t)[comp] for t in th], dtype=float)
        est = [getattr(e, key)[comp] for e in ens]
        mean = np.array([float(e.mean) for e in est])
        se = np.array([float(e.stderr) for e in est])
        z = np.array([float(e.z_score(t)) for e, t in zip(est, th)])

        top, bot = axes[0, col], axes[1, col]
        top.plot(ell, th, color="k", label=r"theory, to $O(1/n)$" if inf[0] is not None else "theory",
                 **_markers(len(ell)), zorder=3)
        if inf[0] is not None:
            top.plot(ell, [float(np.asarray(v)[comp]) for v in inf], color="0.45", ls="--", lw=1.0, label="infinite width")
        ens_label = f"ensemble ({size} networks) ± SE" if size else "ensemble ± SE"
        top.errorbar(ell, mean, yerr=se, fmt="s", ms=4, color="tab:red", capsize=3, lw=1.2, label=ens_label, zorder=4)
        top.set_ylabel(_component_label(key, comp))
        top.legend(fontsize="small")
        top.grid(alpha=0.3)

        bot.axhspan(-2, 2, color="tab:green", alpha=0.12, lw=0)
        bot.axhline(0, color="0.4", lw=0.8)
        zf = np.where(np.isfinite(z), z, np.nan)
        bot.plot(ell, zf, "o", color="tab:red", ms=4)
        zmax = np.nanmax(np.abs(zf)) if np.isfinite(zf).any() else 0.0
        bot.set_ylim(-max(3.0, 1.15 * zmax), max(3.0, 1.15 * zmax))
        bot.set_ylabel(r"$z$ = (ens. $-$ th.)/SE")
        _integer_layers(bot)
        bot.grid(alpha=0.3)
    return fig


# =============================================================================== trained outputs
def _vector(x, name: str, n: int | None) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = "(n_test,)" if n is None else f"({n},)"
        raise ParameterError(
            f"The {name!r} parameter of plot_trained must have shape {want} (or a single column). Got shape {np.shape(x)} instead."
        )
    return a


def plot_trained(mean, band, X_test, X_train=None, y_train=None, *, n_std: float = 1.0, reference=None,
                 reference_label: str = "infinite width", label: str = "mean", ax=None):
    """A one-dimensional prediction: mean ± ``n_std`` × band over the test inputs.

    Parameters
    ----------
    mean : array_like, shape (n_test,) or (n_test, 1)
        Predicted mean at ``X_test`` (e.g. ``dist.mean[:, 0]``).
    band : array_like, shape (n_test,) or (n_test, 1), ≥ 0, or None
        Standard deviation at ``X_test`` (e.g. the square root of the covariance diagonal).
    X_test : array_like, shape (n_test,) or (n_test, 1)
        One-dimensional test inputs (the x axis); need not be sorted.
    X_train, y_train : array_like, shape (n_train,) or (n_train, 1), optional
        Training points, drawn as dots.
    n_std : float > 0
        Half-width of the shaded band in units of ``band``.
    reference : array_like, shape (n_test,), optional
        A second curve (e.g. the infinite-width mean), drawn dashed.
    reference_label, label : str
        Legend entries of ``reference`` and ``mean``.
    ax : matplotlib Axes, optional
        Where to draw; default: a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x = _vector(X_test, "X_test", None)
    n = x.shape[0]
    m = _vector(mean, "mean", n)
    s = None if band is None else _vector(band, "band", n)
    if s is not None and not np.all(s[np.isfinite(s)] >= 0):
        raise ParameterError("The 'band' parameter of plot_trained must be >= 0 (a standard deviation). Got negative entries instead.")
    if not (isinstance(n_std, numbers.Real) and math.isfinite(n_std) and n_std > 0):
        raise ParameterError(f"The 'n_std' parameter of plot_trained must be finite and > 0. Got {n_std!r} instead.")
    if (X_train is None) != (y_train is None):
        raise ParameterError("plot_trained needs both X_train and y_train (or neither).")
    if ax is None:
        fig, axes = _figure(1, 1, figsize=(6.4, 4.0))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    order = np.argsort(x, kind="stable")
    line = ax.plot(x[order], m[order], lw=1.8, label=label, zorder=3)[0]
    if s is not None:
        k = f"{n_std:g}" if n_std != 1 else ""
        ax.fill_between(x[order], (m - n_std * s)[order], (m + n_std * s)[order], color=line.get_color(),
                        alpha=0.2, lw=0, label=rf"{label} $\pm$ {k}$\sigma$")
    if reference is not None:
        r = _vector(reference, "reference", n)
        ax.plot(x[order], r[order], ls="--", color="0.3", lw=1.2, label=reference_label, zorder=2)
    if X_train is not None:
        xt = _vector(X_train, "X_train", None)
        yt = _vector(y_train, "y_train", xt.shape[0])
        ax.plot(xt, yt, "o", color="k", ms=5, label="training data", zorder=4)
    ax.set_xlabel(r"input $x$")
    ax.set_ylabel(r"output $z^{(L)}(x)$")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig
