"""The RG flow driver: per-layer statistics of a network's preactivations and NTK.

:func:`flow` asks the architecture for layer 1 and then applies its layer map L−1 times; it does
not know which architecture it drives.  The result is a :class:`Flow`, a sequence of frozen
:class:`Statistics` (book numbering: ``flow.layer(1)`` … ``flow.layer(L)``, ``flow[-1]`` is the
output layer).

Normalisations (theory/init.md §3, §5, §6; book §4.3, §8.3): for layer ℓ with fan-in n_{ℓ−1},

* E[z_{i;α1} z_{j;α2}] = δ_ij [K_α1α2 + G1_α1α2 / n_{ℓ−1}] + O(1/n²)
* E[zzzz]_connected = (1/n_{ℓ−1}) [δ12δ34 V_(α1α2)(α3α4) + δ13δ24 V_(α1α3)(α2α4) + δ14δ23 V_(α1α4)(α2α3)]
* E[Ĥ_{ij;α1α2}] = δ_ij [Θ_α1α2 + H1_α1α2 / n_{ℓ−1}]
* E[ΔĤ_{i1i2;α1α2} ΔĤ_{i3i4;α3α4}] = (1/n_{ℓ−1}) [δ12δ34 A_(α1α2)(α3α4) + δ13δ24 B_α1α3α2α4 + δ14δ23 B_α1α4α2α3]
* E[ΔĤ_{i1i2;α1α2} z_{i3;α3} z_{i4;α4}] = (1/n_{ℓ−1}) [δ12δ34 D_α1α2α3α4 + δ13δ24 F_α1α3α2α4 + δ14δ23 F_α1α4α2α3]
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import attrs
import numpy as np

from .architecture import Architecture
from .errors import AccuracyWarning, ParameterError, warn

#: pdlt.flow warns (AccuracyWarning) when a layer's estimated relative quadrature error exceeds this.
QUADRATURE_WARN = 0.1

__all__ = ["Statistics", "Flow", "flow", "validate_inputs", "TENSOR_FIELDS"]

TENSOR_FIELDS = ("K", "Theta", "V", "G1", "H1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")


def _readonly(x):
    if x is None:
        return None
    if isinstance(x, np.ndarray) and x.dtype == np.float64 and x.flags.owndata and not x.flags.writeable:
        # already frozen and owning its data (the layer maps hand over fresh arrays like this):
        # shared rather than copied, which saves an N×N or N⁴ copy per field and layer
        return x
    a = np.array(x, dtype=float)
    a.setflags(write=False)
    return a


_arr = dict(converter=_readonly, eq=attrs.cmp_using(eq=lambda a, b: (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))), default=None)


@attrs.frozen(kw_only=True)
class Statistics:
    """Statistics of one layer ℓ over N inputs, to order 1/n.

    Attributes
    ----------
    layer : int
        ℓ (book numbering, 1..L).
    width : int
        n_ℓ, the number of neurons of this layer.
    fan_in : int
        n_{ℓ−1}; every O(1/n) tensor below is normalised by 1/fan_in.
    K : ndarray (N, N)
        Infinite-width kernel K^(ℓ) (book §4.3).
    Theta : ndarray (N, N)
        Infinite-width (frozen) NTK Θ^(ℓ) (book §8.3.1).
    V : ndarray (N, N, N, N) or None
        Four-point vertex V_(α1α2)(α3α4) (book §4.3); symmetric within and between pairs.
    G1 : ndarray (N, N) or None
        NLO kernel correction (the book's K^{1} / G^{1}, §4.5).
    H1 : ndarray (N, N) or None
        NLO NTK-mean correction (shared/theory/ntk-nlo.md).
    A, B, D, F : ndarray (N, N, N, N) or None
        NTK fluctuation (A, B) and NTK–preactivation cross-correlation (D, F) tensors
        (book §8.3); index conventions in the module docstring.
    P, Q, R, S, T, U : ndarray (N, N, N, N) or None
        dNTK–preactivation correlators and ddNTK means (book ch. 11, ∞), computed with
        ``order="dntk"``.  Each array is indexed in the order of its subscripts in
        shared/theory/training.md §0: E[dĤ_{i0i1i2;012} z_{i3;3}] = (1/n)[δ03δ12 P_0123 + δ01δ23 Q_0123
        + δ02δ13 Q_0213]; E[ddĤ^I_{0123}] = (1/n)[δ01δ23 R_0123 + δ02δ31 R_0231 + δ03δ12 R_0312];
        E[ddĤ^II_{1234}] = (1/n)[δ12δ34 S_1234 + δ13δ42 T_1342 + δ14δ23 U_1423] — so ``T[a, b, c, d]``
        is T_{abcd} with (a, b, c, d) = (α1, α3, α4, α2).  NaN marks components undefined for kinked σ.
    """

    layer: int
    width: int
    fan_in: int
    K: np.ndarray = attrs.field(**_arr)
    Theta: np.ndarray = attrs.field(**_arr)
    V: np.ndarray | None = attrs.field(**_arr)
    G1: np.ndarray | None = attrs.field(**_arr)
    H1: np.ndarray | None = attrs.field(**_arr)
    A: np.ndarray | None = attrs.field(**_arr)
    B: np.ndarray | None = attrs.field(**_arr)
    D: np.ndarray | None = attrs.field(**_arr)
    F: np.ndarray | None = attrs.field(**_arr)
    P: np.ndarray | None = attrs.field(**_arr)
    Q: np.ndarray | None = attrs.field(**_arr)
    R: np.ndarray | None = attrs.field(**_arr)
    S: np.ndarray | None = attrs.field(**_arr)
    T: np.ndarray | None = attrs.field(**_arr)
    U: np.ndarray | None = attrs.field(**_arr)
    quadrature_error: float = 0.0

    @property
    def n_inputs(self) -> int:
        return self.K.shape[0]

    @property
    def has_corrections(self) -> bool:
        """True when the O(1/n) tensors (V, G1, H1, A, B, D, F) were computed."""
        return self.V is not None

    def metric(self) -> np.ndarray:
        """K + G1/n_{ℓ−1}: the finite-width two-point function to order 1/n."""
        return self.K if self.G1 is None else self.K + self.G1 / self.fan_in

    def ntk_mean(self) -> np.ndarray:
        """Θ + H1/n_{ℓ−1}: the finite-width NTK mean to order 1/n."""
        return self.Theta if self.H1 is None else self.Theta + self.H1 / self.fan_in

    def restrict(self, idx: Sequence[int]) -> "Statistics":
        """The statistics of a subset of the inputs (marginalisation over samples, book §4.4)."""
        idx = np.asarray(idx, dtype=int)
        changes = {}
        for name in TENSOR_FIELDS:
            x = getattr(self, name)
            if x is not None:
                changes[name] = x[np.ix_(*([idx] * x.ndim))]
        return attrs.evolve(self, **changes)


@attrs.frozen
class Flow(Sequence):
    """The sequence of per-layer :class:`Statistics` for ℓ = 1..L, with the network and inputs."""

    layers: tuple[Statistics, ...]
    network: Architecture | None = attrs.field(default=None, eq=False)
    X: np.ndarray | None = attrs.field(default=None, eq=False)

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Statistics]:
        return iter(self.layers)

    def layer(self, ell: int) -> Statistics:
        """Statistics of layer ℓ in book numbering (1..L)."""
        if not 1 <= ell <= len(self.layers):
            raise ParameterError(f"The 'ell' parameter of Flow.layer must be in 1..{len(self.layers)}. Got {ell!r} instead.")
        return self.layers[ell - 1]

    @property
    def output(self) -> Statistics:
        return self.layers[-1]

    def series(self, name: str) -> np.ndarray:
        """Stack one field over depth, shape (L, ...)."""
        return np.stack([getattr(s, name) for s in self.layers])

    def to_npz(self, path) -> None:
        """Save without pickle: arrays in an .npz, metadata as a JSON string.

        Every array field of each layer's statistics is stored, including those of
        :class:`Statistics` subclasses (e.g. the residual three-point tensors Ω, Π, Φ); the
        class is recorded by module and qualified name so that :meth:`from_npz` rebuilds it.
        """
        arrays = {}
        meta = {"layers": []}
        for s in self.layers:
            cls = type(s)
            entry = {"layer": s.layer, "width": s.width, "fan_in": s.fan_in, "quadrature_error": s.quadrature_error}
            if cls is not Statistics:
                entry["class"] = f"{cls.__module__}:{cls.__qualname__}"
            meta["layers"].append(entry)
            for name in _array_fields(cls):
                x = getattr(s, name)
                if x is not None:
                    arrays[f"{s.layer}/{name}"] = x
        if self.X is not None:
            arrays["X"] = self.X
        np.savez_compressed(path, __meta__=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def from_npz(cls, path) -> "Flow":
        """Load a flow written by :meth:`to_npz` (network not stored: ``network`` is None).

        Raises
        ------
        ParameterError
            The file records a Statistics subclass that cannot be found (import its module first).
        """
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            layers = []
            for m in meta["layers"]:
                m = dict(m)
                scls = _statistics_class(m.pop("class", None), path)
                fields = {name: data[f"{m['layer']}/{name}"] for name in _array_fields(scls) if f"{m['layer']}/{name}" in data}
                layers.append(scls(**m, **fields))
            X = data["X"] if "X" in data else None
        return cls(tuple(layers), None, X)


def _array_fields(cls) -> tuple[str, ...]:
    """The array-valued fields of a Statistics class: TENSOR_FIELDS plus those a subclass adds."""
    base = {"layer", "width", "fan_in", "quadrature_error"}
    extra = tuple(f.name for f in attrs.fields(cls) if f.name not in base and f.name not in TENSOR_FIELDS)
    return TENSOR_FIELDS + extra


def _statistics_class(spec, path) -> type:
    """Resolve a ``module:qualname`` recorded by :meth:`Flow.to_npz` to a Statistics subclass."""
    if spec is None:
        return Statistics
    module, _, qualname = str(spec).partition(":")

    def find():
        todo = [Statistics]
        while todo:
            c = todo.pop()
            if c.__module__ == module and c.__qualname__ == qualname:
                return c
            todo.extend(c.__subclasses__())
        return None

    found = find()
    if found is None:
        # the class may live in a plugin that is not imported yet: loading the registered plugins
        # (never an arbitrary module named by the file) defines their Statistics subclasses
        from .plugins import default_manager

        default_manager()
        found = find()
    if found is None:
        raise ParameterError(
            f"The 'path' parameter of Flow.from_npz names a file whose statistics class {spec!r} is not a loaded "
            f"subclass of pdlt.Statistics defined by a registered plugin. Import the module that defines it first. Got path {str(path)!r}."
        )
    return found


def validate_inputs(X, input_dim: int | None = None, name: str = "X", owner: str = "flow") -> np.ndarray:
    """Inputs as a float64 (N, n_0) array, checked for shape and finiteness."""
    X = np.asarray(X, dtype=float)
    if X.ndim == 1 and input_dim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] < 1:
        raise ParameterError(f"The {name!r} parameter of {owner} must have shape (N, input_dim). Got shape {X.shape} instead.")
    if input_dim is not None and X.shape[1] != input_dim:
        raise ParameterError(
            f"The {name!r} parameter of {owner} must have input_dim = {input_dim} columns. Got {X.shape[1]} instead."
        )
    if not np.all(np.isfinite(X)):
        raise ParameterError(f"The {name!r} parameter of {owner} must be finite. Got non-finite entries instead.")
    return X


def flow(net: Architecture, X, *, order: str = "full", quadrature=None) -> Flow:
    """Per-layer statistics of ``net`` on inputs ``X`` (book ch. 4, 8, 11, ∞).

    Parameters
    ----------
    net : Architecture
        e.g. ``pdlt.MLP(...)``.
    X : array_like, shape (N, input_dim)
    order : {"full", "leading", "dntk"}
        "leading": K and Θ only (infinite width; cheap, O(L N²)).  "full": also V, G1, H1, A, B,
        D, F (O(L N⁴)).  "dntk": also the dNTK/ddNTK statistics P, Q, R, S, T, U (book ch. 11, ∞;
        components undefined for kinked σ at coinciding inputs are NaN, see docs/dntk.md).
    quadrature : QuadratureRule or {"accurate", "fast"}, optional
        Node counts of the Gaussian engine's quadrature fallback (default "accurate", see
        docs/gaussian-engine.md); "fast" trades 3–4-dimensional accuracy (~1e-2 relative, measured) for speed.

    Returns
    -------
    Flow
        ``flow.layer(ℓ)`` for ℓ = 1..L; ``flow[-1]`` is the output layer.

    Examples
    --------
    >>> import pdlt, numpy as np
    >>> net = pdlt.MLP(input_dim=1, hidden_widths=[64] * 2, activation=pdlt.activation("relu"), c_w=2.0)
    >>> f = pdlt.flow(net, np.array([[1.0]]), order="leading")
    >>> float(f[-1].K[0, 0])  # C_W = 2 is critical for ReLU: K^(ℓ) = K^(1) = C_W x²/n_0
    2.0
    """
    if not isinstance(net, Architecture):
        raise ParameterError(f"The 'net' parameter of flow must be an Architecture (e.g. pdlt.MLP). Got {net!r} instead.")
    if order not in ("full", "leading", "dntk"):
        raise ParameterError(f"The 'order' parameter of flow must be 'full', 'leading' or 'dntk'. Got {order!r} instead.")
    X = validate_inputs(X, net.input_dim)
    act = getattr(net, "activation", None)
    if net.depth >= 2 and act is not None and getattr(act, "max_derivative", 1) < 1:
        raise ParameterError(
            f"pdlt.flow needs an activation whose first derivative is an ordinary function (max_derivative >= 1): "
            f"every layer's NTK Θ contains ⟨σ'σ'⟩. Activation {act.describe()!r} has max_derivative = "
            f"{act.max_derivative} (σ' is a δ-function, e.g. the perceptron), so ⟨σ'σ'⟩ = δ(0)·… diverges at "
            "coinciding inputs and Θ, A, B, D, F are undefined. Its kernel can still be studied with "
            "pdlt.expect (Gaussian expectations) and pdlt.criticality; for the flow use a smooth or ReLU-like activation."
        )
    rule = _rule(quadrature)
    stats = net.first_layer(X, order=order)
    layers = [stats]
    for ell in range(1, net.depth):
        stats = net.next_layer(stats, ell, order=order, rule=rule)
        layers.append(stats)
    worst = max(layers, key=lambda s: s.quadrature_error)
    if worst.quadrature_error > QUADRATURE_WARN:
        warn(
            f"pdlt.flow: the Gaussian expectations of layer {worst.layer} have an estimated relative error of "
            f"{worst.quadrature_error:.2g} (> {QUADRATURE_WARN:g}; Statistics.quadrature_error), so its O(1/n) "
            "tensors may be inaccurate (the estimate, fine vs coarse rule, is conservative). It comes from "
            "ill-conditioned covariance blocks: nearly linearly dependent inputs (almost proportional "
            "preactivations; with a kinked activation such as ReLU, integration by parts then loses accuracy) or "
            "an input of nearly zero variance. Move such inputs apart, make them exactly proportional (e.g. C_b = 0 "
            "with one-dimensional inputs) or exactly zero, or use a smooth activation; with quadrature='fast', use "
            "the default 'accurate' rule.",
            AccuracyWarning,
        )
    return Flow(tuple(layers), net, X)


def _rule(quadrature):
    from .gaussian import QuadratureRule

    if quadrature is None or quadrature == "accurate":
        return None
    if quadrature == "fast":
        return QuadratureRule.fast()
    if isinstance(quadrature, QuadratureRule):
        return quadrature
    raise ParameterError(
        f"The 'quadrature' parameter of flow must be a QuadratureRule, 'accurate' or 'fast'. Got {quadrature!r} instead."
    )
