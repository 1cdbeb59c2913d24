"""Monte Carlo statistics of ensembles of real finite-width networks, with standard errors.

:func:`sample` draws many independent networks (through the architecture's
``sample_forward``, e.g. :func:`pdlt.networks.mlp_forward`) in memory-bounded, independently
seeded chunks and estimates, for every layer ℓ = 1..L, the quantities the effective theory
predicts — the kernel K, the four-point vertex V, the NTK mean Θ and the NTK fluctuation
tensors A, B, D, F — each as an :class:`Estimate` (mean and standard error) in exactly the
normalisation of theory/init.md §3 and §5 (every O(1/n) tensor multiplied by the fan-in
n_{ℓ−1}).  :func:`output_moments` gives the single-input even moments needed by the
all-orders deep-linear laws of :mod:`pdlt.exact`.

Reproducibility: chunk c draws from ``default_rng(SeedSequence(seed).spawn(n_chunks)[c])``, so
the result is a deterministic function of (seed, size, chunk plan) and does not depend on the
order or parallel scheduling of chunks: :func:`sample` can hand the chunks to any
``concurrent.futures.Executor`` (processes, a Dask cluster) and, merging their sums in chunk
order, returns bit-identical statistics.  The chunk plan depends on ``size``, ``chunk_size``,
``max_memory_mb`` and the network shape only (never on the machine), so equal arguments give
bit-identical statistics; changing ``chunk_size`` or ``max_memory_mb`` changes the random draws
(not their distribution).
"""

from __future__ import annotations

import functools
import json
import math
import os
from concurrent.futures import Executor
from typing import Iterator, Sequence

import attrs
import numpy as np

from .errors import ParameterError
from .networks import LayerSample, as_inputs
from .progress import Progress

__all__ = [
    "MIN_BATCHES",
    "Estimate",
    "LayerStatistics",
    "EnsembleStatistics",
    "LayerMoments",
    "MomentStatistics",
    "sample",
    "sample_chunks",
    "output_moments",
]

#: The ensemble is always split into at least this many chunks (fewer only if there are fewer
#: networks); the chunks double as the batches of the batch-means standard error.
MIN_BATCHES = 50

_FORMAT = "pdlt.EnsembleStatistics"
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# value objects


def _readonly(value) -> np.ndarray:
    arr = np.array(value, dtype=float, copy=True)
    arr.setflags(write=False)
    return arr


def _array_eq(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


@attrs.frozen(kw_only=True)
class Estimate:
    """A Monte Carlo estimate: ``mean`` and its standard error ``stderr`` (same shape).

    Arrays are copied and read-only.  NaN marks a statistic that the ensemble cannot estimate
    (e.g. a cross-neuron average in a layer of width 1).
    """

    mean: np.ndarray = attrs.field(converter=_readonly, eq=attrs.cmp_using(eq=_array_eq))
    stderr: np.ndarray = attrs.field(converter=_readonly, eq=attrs.cmp_using(eq=_array_eq))

    @stderr.validator
    def _check_shape(self, attribute, value) -> None:
        if value.shape != self.mean.shape:
            raise ParameterError(
                f"The 'stderr' parameter of Estimate must have the shape of 'mean' {self.mean.shape}. "
                f"Got {value.shape} instead."
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mean.shape

    def __getitem__(self, index) -> "Estimate":
        return Estimate(mean=self.mean[index], stderr=self.stderr[index])

    def z_score(self, value) -> np.ndarray:
        """(mean − value)/stderr elementwise; 0 where both difference and error vanish, ±inf
        where only the error does, NaN where either is NaN."""
        diff = self.mean - np.asarray(value, dtype=float)
        se = np.broadcast_to(self.stderr, diff.shape)
        safe = np.where(se > 0, se, 1.0)
        z = np.where(se > 0, diff / safe, np.where(diff == 0, 0.0, np.copysign(np.inf, diff)))
        return np.where(np.isnan(diff) | np.isnan(se), np.nan, z)

    def agrees(self, value, k: float = 4.0) -> bool:
        """True when every component is within ``k`` standard errors of ``value``."""
        return bool(np.all(np.abs(self.z_score(value)) <= k))


_LINEAR_FIELDS = ("K", "Theta")
_ZFIELDS = ("K", "V", "V_one_neuron")
_NTK_FIELDS = ("Theta", "A", "A_one_neuron", "B", "D", "D_one_neuron", "F")
FIELDS = _ZFIELDS + _NTK_FIELDS


@attrs.frozen(kw_only=True)
class LayerStatistics:
    """Estimates for one layer ℓ (book numbering), in the normalisation of init.md §3, §5.

    With the fan-in n ≡ n_{ℓ−1} and i ≠ k two different neurons of layer ℓ:

    * ``K``: E[z_{i;α1} z_{i;α2}], shape (N, N).
    * ``V``: n Cov(z_{i;α1} z_{i;α2}, z_{k;α3} z_{k;α4}) = V_{(α1α2)(α3α4)}, shape (N,)*4.
    * ``V_one_neuron``: n E[z_{i;α1} z_{i;α2} z_{i;α3} z_{i;α4}]_connected
      = V_{(12)(34)} + V_{(13)(24)} + V_{(14)(23)}.
    * ``Theta``: E[Ĥ_{ii;α1α2}], shape (N, N).
    * ``A``: n Cov(Ĥ_{ii;α1α2}, Ĥ_{kk;α3α4}) = A_{(α1α2)(α3α4)}.
    * ``A_one_neuron``: n Cov(Ĥ_{ii;α1α2}, Ĥ_{ii;α3α4}) = A_{(12)(34)} + B_{1324} + B_{1423}.
    * ``B``: B_{pqrs} = n E[Ĥ_{ik;pr} Ĥ_{ik;qs}].
    * ``D``: D_{α1α2α3α4} = n Cov(Ĥ_{ii;α1α2}, z_{k;α3} z_{k;α4}) (NTK pair first).
    * ``D_one_neuron``: n Cov(Ĥ_{ii;α1α2}, z_{i;α3} z_{i;α4}) = D_{1234} + F_{1324} + F_{1423}.
    * ``F``: F_{pqrs} = n E[Ĥ_{ik;pr} z_{i;q} z_{k;s}].

    The NTK fields are None when the ensemble was sampled with ``ntk=False``; cross-neuron
    fields are NaN when n_ℓ = 1.
    """

    ell: int
    width: int
    fan_in: int
    K: Estimate
    V: Estimate
    V_one_neuron: Estimate
    Theta: Estimate | None = None
    A: Estimate | None = None
    A_one_neuron: Estimate | None = None
    B: Estimate | None = None
    D: Estimate | None = None
    D_one_neuron: Estimate | None = None
    F: Estimate | None = None


class _LayerSequence:
    """Mixin: per-layer access with book numbering (``.layer(ell)``, 1..L) and as a sequence."""

    def layer(self, ell: int):
        """Statistics of layer ``ell`` (book numbering, 1..L)."""
        L = len(self.layers)
        if isinstance(ell, bool) or not isinstance(ell, (int, np.integer)) or not 1 <= ell <= L:
            raise ParameterError(f"The 'ell' parameter must be an integer in 1..{L}. Got {ell!r} instead.")
        return self.layers[int(ell) - 1]

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)


@attrs.frozen(kw_only=True)
class EnsembleStatistics(_LayerSequence):
    """Per-layer Monte Carlo estimates from :func:`sample`.

    ``stats.layer(ell)`` (ℓ = 1..L) or ``stats[ell - 1]`` gives a :class:`LayerStatistics`.

    Attributes
    ----------
    widths : tuple of int
        (n_0, …, n_L).
    size, seed : int
        Number of networks and the root seed.
    X : ndarray, shape (N, n_0)
        The inputs.
    n_batches : int
        Number of chunks (= batches of the batch-means standard errors).
    ntk : bool
        Whether NTK statistics were computed.
    layers : tuple of LayerStatistics
    """

    widths: tuple[int, ...] = attrs.field(converter=lambda w: tuple(int(v) for v in w))
    size: int
    seed: int
    X: np.ndarray = attrs.field(converter=_readonly, eq=attrs.cmp_using(eq=_array_eq))
    n_batches: int
    ntk: bool
    layers: tuple[LayerStatistics, ...] = attrs.field(converter=tuple)

    def to_npz(self, path) -> None:
        """Write to a ``.npz`` file: float arrays plus a JSON metadata string (no pickle)."""
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "widths": list(self.widths),
            "size": self.size,
            "seed": self.seed,
            "n_batches": self.n_batches,
            "ntk": self.ntk,
            "layers": [],
        }
        arrays = {"X": np.asarray(self.X)}
        for st in self.layers:
            present = []
            for name in FIELDS:
                est = getattr(st, name)
                if est is None:
                    continue
                present.append(name)
                arrays[f"layer{st.ell}.{name}.mean"] = np.asarray(est.mean)
                arrays[f"layer{st.ell}.{name}.stderr"] = np.asarray(est.stderr)
            meta["layers"].append({"ell": st.ell, "width": st.width, "fan_in": st.fan_in, "fields": present})
        arrays["metadata"] = np.array(json.dumps(meta))
        with open(os.fspath(path), "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def from_npz(cls, path) -> "EnsembleStatistics":
        """Read a file written by :meth:`to_npz` (``allow_pickle=False``)."""
        with np.load(os.fspath(path), allow_pickle=False) as data:
            meta = json.loads(str(data["metadata"]))
            if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
                raise ParameterError(
                    f"The 'path' parameter of EnsembleStatistics.from_npz must name a {_FORMAT} file "
                    f"(version {_FORMAT_VERSION}). Got format {meta.get('format')!r} version {meta.get('version')!r} instead."
                )
            layers = []
            for lm in meta["layers"]:
                ell = lm["ell"]
                ests = {
                    name: Estimate(mean=data[f"layer{ell}.{name}.mean"], stderr=data[f"layer{ell}.{name}.stderr"])
                    for name in lm["fields"]
                }
                layers.append(LayerStatistics(ell=ell, width=lm["width"], fan_in=lm["fan_in"], **ests))
            return cls(
                widths=meta["widths"],
                size=meta["size"],
                seed=meta["seed"],
                X=data["X"],
                n_batches=meta["n_batches"],
                ntk=meta["ntk"],
                layers=layers,
            )


@attrs.frozen(kw_only=True)
class LayerMoments:
    """Single-input even moments of layer ℓ, from :func:`output_moments`.

    * ``even``: shape (M, N); row m−1 is E[z_{i;α}^{2m}] (one neuron, averaged over neurons).
    * ``distinct``: shape (M, N); row m−1 is E[z_{i1;α}² ⋯ z_{im;α}²] over m *distinct*
      neurons (averaged over all m-subsets; NaN when n_ℓ < m).  Row 0 equals row 0 of ``even``.

    For deep linear networks E[z_{i1}⋯z_{i2m}] = (Σ_pairings δ⋯δ) G_{2m} (init.md §2), so
    ``distinct[m-1]`` = G_{2m} and ``even[m-1]`` = (2m−1)!! G_{2m}.
    """

    ell: int
    width: int
    even: Estimate
    distinct: Estimate


@attrs.frozen(kw_only=True)
class MomentStatistics(_LayerSequence):
    """Per-layer :class:`LayerMoments` (``.layer(ell)``, ℓ = 1..L, or ``[ell - 1]``)."""

    widths: tuple[int, ...] = attrs.field(converter=lambda w: tuple(int(v) for v in w))
    size: int
    seed: int
    X: np.ndarray = attrs.field(converter=_readonly, eq=attrs.cmp_using(eq=_array_eq))
    max_order: int
    layers: tuple[LayerMoments, ...] = attrs.field(converter=tuple)


# ---------------------------------------------------------------------------------------------
# chunking


def _bytes_per_network(widths: Sequence[int], N: int, ntk: bool) -> int:
    n = np.asarray(widths[1:], dtype=np.int64)
    fan = np.asarray(widths[:-1], dtype=np.int64)
    floats = int((n * fan + n).sum() + 6 * (n * N).sum() + 3 * (n * N * N).max() + 4 * N * N)
    if ntk:
        # stored Ĥ of every layer, plus temporaries of the forward equation and of the
        # estimators (a few copies of the largest layer's Ĥ and an n·N³ contraction)
        floats += int((n**2 * N**2).sum() + 5 * (n**2 * N**2).max() + 2 * (n * N**3).max())
    return 8 * floats


def _chunk_plan(size: int, per_network: int, chunk_size: int | None, max_memory_mb: float) -> list[int]:
    cap = max(1, int(max_memory_mb * 2**20 // max(per_network, 1)))
    if chunk_size is not None:
        cap = min(cap, chunk_size)
    n_chunks = max(math.ceil(size / cap), min(MIN_BATCHES, size))
    base, extra = divmod(size, n_chunks)
    return [base + (1 if c < extra else 0) for c in range(n_chunks)]


def _check_common(net, X, size, seed, chunk_size, max_memory_mb, owner):
    widths = net.widths
    X = as_inputs(X, widths[0], owner)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ParameterError(
            f"The 'size' parameter of {owner} must be an integer >= 2 (standard errors need two networks). "
            f"Got {size!r} instead."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"The 'seed' parameter of {owner} must be a non-negative integer. Got {seed!r} instead.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ParameterError(
            f"The 'chunk_size' parameter of {owner} must be None or a positive integer. Got {chunk_size!r} instead."
        )
    if not (isinstance(max_memory_mb, (int, float, np.integer, np.floating)) and max_memory_mb > 0):
        raise ParameterError(f"The 'max_memory_mb' parameter of {owner} must be > 0. Got {max_memory_mb!r} instead.")
    return X, int(size), int(seed)


def _seeded_plan(net, X, size, seed, chunk_size, ntk, max_memory_mb) -> list[tuple[int, np.random.SeedSequence]]:
    """(networks, seed sequence) of every chunk, in order."""
    plan = _chunk_plan(size, _bytes_per_network(net.widths, X.shape[0], ntk), chunk_size, max_memory_mb)
    return list(zip(plan, np.random.SeedSequence(seed).spawn(len(plan))))


def _draw_chunk(net, X, m: int, child: np.random.SeedSequence, ntk: bool) -> list[LayerSample]:
    layers = net.sample_forward(X, m, np.random.default_rng(child), ntk=ntk)
    L = len(net.widths) - 1
    if len(layers) != L:
        raise ParameterError(f"{type(net).__name__}.sample_forward returned {len(layers)} layers; expected L = {L}.")
    return list(layers)


def _iter_chunks(net, X, size, seed, chunk_size, ntk, max_memory_mb) -> Iterator[tuple[int, list[LayerSample]]]:
    for m, child in _seeded_plan(net, X, size, seed, chunk_size, ntk, max_memory_mb):
        yield m, _draw_chunk(net, X, m, child, ntk)


def _chunk_task(net, X, ntk: bool, job: tuple[int, np.random.SeedSequence]) -> tuple[int, list[dict[str, np.ndarray]]]:
    """Draw one chunk and reduce it to per-layer sums (:func:`_chunk_sums`).

    A pure function of its arguments, run wherever the executor puts it; only the small sums
    travel back, never the networks.
    """
    m, child = job
    layers = _draw_chunk(net, X, m, child, ntk)
    return m, [_chunk_sums(np.asarray(layer.z, dtype=float), layer.H if ntk else None) for layer in layers]


def sample_chunks(
    net, X, size: int, seed: int = 0, *, chunk_size: int | None = None, ntk: bool = True, max_memory_mb: float = 512
) -> Iterator[list[LayerSample]]:
    """Yield, chunk by chunk, exactly the networks that :func:`sample` with the same arguments
    uses (a list of :class:`~pdlt.networks.LayerSample` per chunk, one per layer).

    Useful for custom estimators and for checking the built-in ones.
    """
    X, size, seed = _check_common(net, X, size, seed, chunk_size, max_memory_mb, "sample_chunks")
    for _, layers in _iter_chunks(net, X, size, seed, chunk_size, ntk, max_memory_mb):
        yield layers


# ---------------------------------------------------------------------------------------------
# estimators


def _pr_qs_to_pqrs(M: np.ndarray, N: int) -> np.ndarray:
    """A (N², N²) matrix indexed [(p,r),(q,s)] as the tensor [p,q,r,s]."""
    return M.reshape(N, N, N, N).transpose(0, 2, 1, 3)


def _chunk_sums(z: np.ndarray, H: np.ndarray | None) -> dict[str, np.ndarray]:
    """Sums over the networks of one chunk of every per-network quantity the estimators need.

    Per network the quantities are averages over neurons (one-neuron) or over the n(n−1)
    ordered pairs i ≠ k (cross-neuron).  Pair sums use Σ_{i≠k} a_i b_k = (Σa)(Σb) − Σ a_i b_i;
    sums over (network, neuron) are single GEMMs.
    """
    S, n, N = z.shape
    out: dict[str, np.ndarray] = {}
    pairs = n * (n - 1)
    nan4 = np.full((N, N, N, N), np.nan)

    P = np.einsum("sia,sib->sab", z, z)  # Σ_i z_iα z_iβ per network
    out["K_net"] = P / n
    out["K"] = out["K_net"].sum(0)
    Pr = P.reshape(S, N * N)
    Z2 = (z[:, :, :, None] * z[:, :, None, :]).reshape(S * n, N * N)
    q4 = Z2.T @ Z2  # Σ_{s,i} z1 z2 z3 z4
    out["zz_one"] = (q4 / n).reshape(N, N, N, N)
    out["zz_cross"] = ((Pr.T @ Pr - q4) / pairs).reshape(N, N, N, N) if n > 1 else nan4
    if H is None:
        return out

    Ht = H.transpose(0, 3, 4, 1, 2)  # (S, N, N, n, n): [s, α1, α2, i1, i2]
    Hd = np.diagonal(Ht, axis1=3, axis2=4)  # (S, N, N, n): Ĥ_{ii}
    out["Theta_net"] = Hd.mean(-1)
    out["Theta"] = out["Theta_net"].sum(0)
    HdT = Hd.transpose(0, 3, 1, 2).reshape(S * n, N * N)  # rows (s,i), columns (α1,α2)
    sumHd = Hd.sum(-1).reshape(S, N * N)
    hh_diag = HdT.T @ HdT  # Σ_{s,i} Ĥ_ii;12 Ĥ_ii;34
    hz_diag = HdT.T @ Z2  # Σ_{s,i} Ĥ_ii;12 z_i3 z_i4
    out["HH_one"] = (hh_diag / n).reshape(N, N, N, N)
    out["Hz_one"] = (hz_diag / n).reshape(N, N, N, N)
    if n == 1:
        out["HH_cross"] = out["Hz_cross"] = out["B"] = out["F"] = nan4
        return out
    out["HH_cross"] = ((sumHd.T @ sumHd - hh_diag) / pairs).reshape(N, N, N, N)
    out["Hz_cross"] = ((sumHd.T @ Pr - hz_diag) / pairs).reshape(N, N, N, N)

    # B: Σ_{i≠k} Ĥ_ik;pr Ĥ_ik;qs = Σ_{all i,k} − Σ_{i=k}
    Hm = Ht.reshape(S, N * N, n * n).transpose(1, 0, 2).reshape(N * N, S * n * n)
    out["B"] = _pr_qs_to_pqrs(Hm @ Hm.T - hh_diag, N) / pairs

    # F: Σ_{i≠k} Ĥ_ik;pr z_iq z_ks, first contracting k (Y = Ĥ z), then (s, i)
    Y = Ht.reshape(S, N * N, n, n) @ z[:, None]  # [s, (p,r), i, t] = Σ_k Ĥ_ik;pr z_kt
    Yr = Y.transpose(1, 3, 0, 2).reshape(N * N * N, S * n)  # [(p,r,t), (s,i)]
    f_full = (Yr @ z.reshape(S * n, N)).reshape(N, N, N, N).transpose(0, 3, 1, 2)  # [p,q,r,t]
    out["F"] = (f_full - _pr_qs_to_pqrs(hz_diag, N)) / pairs
    return out


def _outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[:, :, None, None] * b[None, None, :, :]


def _wick(K: np.ndarray) -> np.ndarray:
    return _outer(K, K) + np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)


def _nonlinear_estimates(sums: dict[str, np.ndarray], count: int, fan_in: int) -> dict[str, np.ndarray]:
    """Covariance-type estimates E[XY] − E[X]E[Y] (expectations over networks and neurons)."""
    K = sums["K"] / count
    est = {
        "V": fan_in * (sums["zz_cross"] / count - _outer(K, K)),
        "V_one_neuron": fan_in * (sums["zz_one"] / count - _wick(K)),
    }
    if "Theta" in sums:
        T = sums["Theta"] / count
        TT, TK = _outer(T, T), _outer(T, K)
        est["A"] = fan_in * (sums["HH_cross"] / count - TT)
        est["A_one_neuron"] = fan_in * (sums["HH_one"] / count - TT)
        # E[Ĥ_ik] = 0 exactly for i ≠ k, so B and F need no mean subtraction
        est["B"] = fan_in * sums["B"] / count
        est["D"] = fan_in * (sums["Hz_cross"] / count - TK)
        est["D_one_neuron"] = fan_in * (sums["Hz_one"] / count - TK)
        est["F"] = fan_in * sums["F"] / count
    return est


class _Welford:
    """Running mean and sum of squared deviations of a stream of equally shaped arrays."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = np.array(x, dtype=float)
            self.m2 = np.zeros_like(self.mean)
            return
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def stderr(self) -> np.ndarray:
        if self.count < 2:
            return np.full_like(self.mean, np.nan)
        return np.sqrt(self.m2 / ((self.count - 1) * self.count))


class _PooledMoments:
    """Mean and variance of per-network values, merged chunk by chunk (Chan et al.).

    Centring within each chunk avoids the cancellation of Σx² − (Σx)²/n, so a deterministic
    quantity (the layer-1 NTK) gets a standard error at round-off level, not 1e-10.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        m = values.shape[0]
        mean_c = values.mean(axis=0)
        m2_c = ((values - mean_c) ** 2).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = m, mean_c, m2_c
            return
        total = self.count + m
        delta = mean_c - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + m2_c + delta**2 * (self.count * m / total)
        self.count = total

    def estimate(self) -> Estimate:
        return Estimate(mean=self.mean, stderr=np.sqrt(self.m2 / ((self.count - 1) * self.count)))


class _LayerAccumulator:
    def __init__(self, fan_in: int) -> None:
        self.fan_in = fan_in
        self.count = 0
        self.totals: dict[str, np.ndarray] = {}
        self.batches: dict[str, _Welford] = {}
        self.linear: dict[str, _PooledMoments] = {}

    def add(self, sums: dict[str, np.ndarray], S: int) -> None:
        """Merge one chunk of S networks, given its :func:`_chunk_sums` (consumed)."""
        self.count += S
        for key in _LINEAR_FIELDS:
            if key in sums:
                self.linear.setdefault(key, _PooledMoments()).add(sums.pop(key + "_net"))
        for key, val in sums.items():
            if key in self.totals:
                self.totals[key] += val
            else:
                self.totals[key] = np.array(val, dtype=float)
        for key, val in _nonlinear_estimates(sums, S, self.fan_in).items():
            self.batches.setdefault(key, _Welford()).add(val)

    def result(self, ell: int, width: int) -> LayerStatistics:
        c = self.count
        fields = {key: acc.estimate() for key, acc in self.linear.items()}
        for key, val in _nonlinear_estimates(self.totals, c, self.fan_in).items():
            fields[key] = Estimate(mean=val, stderr=self.batches[key].stderr())
        return LayerStatistics(ell=ell, width=width, fan_in=self.fan_in, **fields)


def sample(
    net,
    X,
    size: int,
    seed: int = 0,
    *,
    chunk_size: int | None = None,
    progress: bool | None = None,
    max_memory_mb: float = 512,
    ntk: bool = True,
    executor: Executor | None = None,
) -> EnsembleStatistics:
    """Estimate K, V, Θ, A, B, D, F of every layer from ``size`` real random networks.

    Parameters
    ----------
    net : Architecture
        Any architecture whose ``sample_forward(X, size, rng, ntk=...)`` returns a list of
        per-layer :class:`~pdlt.networks.LayerSample` (e.g. the MLP plugin).
    X : array_like, shape (N, n_0)
        Inputs.  Memory and time scale as N⁴ (four-index tensors) and the NTK as N².
    size : int
        Number of networks (>= 2).
    seed : int
        Root seed; chunk c uses ``default_rng(SeedSequence(seed).spawn(n_chunks)[c])``.
    chunk_size : int, optional
        Upper bound on networks per chunk.  The ensemble is always split into at least
        ``min(MIN_BATCHES, size)`` equal chunks, and into more if ``max_memory_mb`` requires.
    progress : bool or None
        Progress line on stderr: True always, False never, None only if stderr is a TTY.
    max_memory_mb : float
        Approximate bound on the working memory of one chunk (the NTK alone is
        size·Σ_ℓ n_ℓ²·N² floats).
    ntk : bool
        Compute the NTK statistics (Θ, A, B, D, F); False leaves them None and is much faster.
    executor : concurrent.futures.Executor, optional
        Draw the chunks with ``executor.map`` (e.g. a ``ProcessPoolExecutor`` or a Dask
        ``Client.get_executor()``); each task returns only its chunk's sums, which are merged
        here in chunk order, so the result is bit-identical to the serial run (None) with the
        same arguments.  ``net`` and ``X`` must be picklable.

    Returns
    -------
    EnsembleStatistics
        One :class:`LayerStatistics` per layer, normalised as in init.md §3 (V) and §5
        (A, B, D, F): every O(1/n) tensor of layer ℓ is multiplied by n_{ℓ−1}.

    Notes
    -----
    Each network contributes neuron-averaged values: one-neuron quantities averaged over its
    n_ℓ neurons, cross-neuron ones over its n_ℓ(n_ℓ−1) ordered pairs i ≠ k.  Covariances are
    Cov = E[XY] − E[X]E[Y] with expectations over networks *and* neurons.

    Standard errors.  K and Θ are plain means of per-network values: standard deviation of the
    per-network values / sqrt(size).  Covariance-type estimates (V, A, B, D, F and the one-neuron
    combinations) use batch means: the same estimator is applied to each chunk separately and
    the standard error is the standard deviation of the chunk estimates / sqrt(#chunks), with at
    least MIN_BATCHES chunks.  (Each chunk estimate has an O(1/chunk) bias in E[X]E[Y]; the
    reported mean uses all networks, whose bias is O(1/size), far below the error.)

    Layer 1 is exactly Gaussian with a deterministic NTK, so its V, A, B, D, F vanish in
    theory; they are still estimated (with n_0 as the fan-in).

    Examples
    --------
    >>> import numpy as np
    >>> from pdlt_plugins.activations import ReLU
    >>> from pdlt_plugins.architectures import MLP
    >>> net = MLP(input_dim=2, hidden_widths=(8, 8), output_dim=4, activation=ReLU(), c_w=2.0)
    >>> stats = sample(net, np.array([[1.0, 0.0], [0.6, 0.8]]), 1000, seed=0)
    >>> st = stats.layer(3)
    >>> st.V.mean.shape, st.B.mean.shape, st.fan_in
    ((2, 2, 2, 2), (2, 2, 2, 2), 8)
    """
    X, size, seed = _check_common(net, X, size, seed, chunk_size, max_memory_mb, "sample")
    if executor is not None and not callable(getattr(executor, "map", None)):
        raise ParameterError(
            f"The 'executor' parameter of sample must be None or a concurrent.futures.Executor (with a .map method). "
            f"Got {executor!r} instead."
        )
    widths = net.widths
    L = len(widths) - 1
    accs = [_LayerAccumulator(widths[ell - 1]) for ell in range(1, L + 1)]
    n_batches = 0
    task = functools.partial(_chunk_task, net, X, bool(ntk))
    jobs = _seeded_plan(net, X, size, seed, chunk_size, ntk, max_memory_mb)
    results = map(task, jobs) if executor is None else executor.map(task, jobs)
    with Progress(size, label="ensemble", unit="networks", enabled=progress) as bar:
        for m, sums in results:
            for acc, layer_sums in zip(accs, sums):
                acc.add(layer_sums, m)
            n_batches += 1
            bar.update(m)
    return EnsembleStatistics(
        widths=widths,
        size=size,
        seed=seed,
        X=X,
        n_batches=n_batches,
        ntk=bool(ntk),
        layers=[acc.result(ell, widths[ell]) for ell, acc in enumerate(accs, start=1)],
    )


def _elementary_symmetric(p: np.ndarray) -> np.ndarray:
    """e_1..e_M from power sums p_1..p_M (axis 1) by Newton's identities."""
    M = p.shape[1]
    e = [np.ones_like(p[:, 0])]
    for k in range(1, M + 1):
        acc = np.zeros_like(p[:, 0])
        for j in range(1, k + 1):
            acc = acc + (-1) ** (j - 1) * e[k - j] * p[:, j - 1]
        e.append(acc / k)
    return np.stack(e[1:], axis=1)


def output_moments(
    net,
    X,
    size: int,
    seed: int = 0,
    *,
    max_order: int = 3,
    chunk_size: int | None = None,
    progress: bool | None = None,
    max_memory_mb: float = 512,
) -> MomentStatistics:
    """Single-input even moments of every layer, one-neuron and over distinct neurons.

    Parameters
    ----------
    net, X, size, seed, chunk_size, progress, max_memory_mb
        As in :func:`sample` (the NTK is not computed).  Each input α is treated separately.
    max_order : int
        M: moments up to E[z^{2M}] and products of up to M distinct neurons.

    Returns
    -------
    MomentStatistics
        Per layer, ``even`` (E[z^{2m}_{i;α}]) and ``distinct`` (E[z²_{i1;α}⋯z²_{im;α}], i's
        distinct), each an :class:`Estimate` of shape (M, N), m = 1..M.

    Notes
    -----
    Per network, averages over all neurons and over all m-subsets of distinct neurons (the
    latter through Newton's identities on the power sums Σ_i z_i^{2k}, no loops over neurons).
    These are plain means, so the standard error is the per-network standard deviation /
    sqrt(size).  Deep linear networks: ``distinct[m-1]`` = G_{2m}, ``even[m-1]`` =
    (2m−1)!! G_{2m} (init.md §2, book (3.44)–(3.47); see :func:`pdlt.exact.deep_linear_even_moment`).
    """
    X, size, seed = _check_common(net, X, size, seed, chunk_size, max_memory_mb, "output_moments")
    if isinstance(max_order, bool) or not isinstance(max_order, (int, np.integer)) or max_order < 1:
        raise ParameterError(
            f"The 'max_order' parameter of output_moments must be a positive integer. Got {max_order!r} instead."
        )
    M = int(max_order)
    widths = net.widths
    L = len(widths) - 1
    accs = [(_PooledMoments(), _PooledMoments()) for _ in range(L)]
    with Progress(size, label="moments", unit="networks", enabled=progress) as bar:
        for m, layers in _iter_chunks(net, X, size, seed, chunk_size, False, max_memory_mb):
            for ell, layer in enumerate(layers):
                z2 = np.asarray(layer.z, dtype=float) ** 2  # (S, n, N)
                n = z2.shape[1]
                p = np.stack([np.sum(z2**k, axis=1) for k in range(1, M + 1)], axis=1)  # (S, M, N)
                even = p / n
                subsets = np.array([math.comb(n, k) for k in range(1, M + 1)], dtype=float)
                with np.errstate(invalid="ignore", divide="ignore"):
                    dist = _elementary_symmetric(p) / np.where(subsets > 0, subsets, np.nan)[None, :, None]
                accs[ell][0].add(even)
                accs[ell][1].add(dist)
            bar.update(m)
    layers_out = []
    for ell in range(1, L + 1):
        even, dist = accs[ell - 1]
        layers_out.append(LayerMoments(ell=ell, width=widths[ell], even=even.estimate(), distinct=dist.estimate()))
    return MomentStatistics(widths=widths, size=size, seed=seed, X=X, max_order=M, layers=layers_out)
