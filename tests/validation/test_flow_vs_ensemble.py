"""The RG flow (:func:`pdlt.flow`) against ensembles of real finite-width networks.

Every O(1) and O(1/n) statistic that the flow predicts is compared with Monte Carlo estimates from
:func:`pdlt.ensemble.sample` (theory/init.md §3, §5 and ntk-nlo.md §1; conventions of init.md §5):

* K and Θ directly: E[z z] against the metric K + G1/n_{ℓ−1} and E[Ĥ] against Θ + H1/n_{ℓ−1}, at
  the largest width of the run (there the O(1/n²) remainder is smallest).
* V, A, B, D, F and the one-neuron combinations V_(12)(34) + V_(13)(24) + V_(14)(23),
  A + B + B, D + F + F: these are estimated at fixed fan-in, so they carry an O(1/n) bias.  Each
  component is measured at two or more base widths n (at fixed width ratios, where the theory
  tensors do not depend on n), fitted as a + b/n by weighted least squares and the intercept a
  compared with the flow (``Run.degree = 2`` adds c/n² where ℓ/n is too large for a line).
* G1 and H1: n_{ℓ−1}(E[zz] − K) and n_{ℓ−1}(E[Ĥ] − Θ), extrapolated the same way.

Tolerance (style rule 8): |a − theory| ≤ 4 standard errors of a for every symmetry-distinct
component, plus the summary χ²/dof = mean z² < 2 (for the four-point tensors of the fast runs and
for everything in the slow runs).  Everything is seeded.  Widths are
(n_0, n, 2n, n, n_L), so both r_ℓ = 2 and r_ℓ = ½ occur, with layer-dependent C_b, C_W, λ_b, λ_W.
A "wrong variant" check shows the comparison can tell: dropping the width ratio r_ℓ from the
inherited terms, or dropping G1 from the metric, is rejected by the same data.

``pytest -s`` prints the comparison tables; ``-m slow`` adds larger runs at three widths: the
configurations of the init.md §7 runs R2 (ReLU) and T3 (tanh, three inputs), and a depth-5 tanh
run T5.  Measured numbers: docs/verification.md.
"""

from __future__ import annotations

import functools
import itertools
import time

import attrs
import numpy as np
import pytest

import pdlt
from pdlt.ensemble import sample

K_SIGMA = 4.0
CHUNK = 256  # networks per chunk: keeps the per-chunk NTK arrays in cache (faster, less memory)

FOUR_POINT = ("V", "V_one_neuron", "A", "A_one_neuron", "B", "D", "D_one_neuron", "F")


# ---------------------------------------------------------------------------------------------
# configurations


def _inputs(n_inputs: int, scale: float = 1.0, dim: int = 2) -> np.ndarray:
    """Fixed seeded inputs; rows are the samples α (pairwise cosines ≈ −0.36, −0.88, −0.12 for dim 2)."""
    return scale * np.random.default_rng(11).normal(size=(3, dim))[:n_inputs]


@attrs.frozen(kw_only=True)
class Run:
    """A Monte Carlo run: one architecture family at several base widths n (fixed ratios)."""

    name: str
    activation: str
    hidden: tuple[int, ...]  # hidden widths in units of n
    output_dim: int
    input_dim: int
    hyper: dict = attrs.field(eq=False)
    X: np.ndarray = attrs.field(eq=False)
    ns: tuple[int, ...]
    sizes: tuple[int, ...]
    seed: int
    degree: int = 1  # polynomial degree in 1/n of the extrapolation

    def net(self, n: int):
        return pdlt.MLP(
            input_dim=self.input_dim,
            hidden_widths=[m * n for m in self.hidden],
            output_dim=self.output_dim,
            activation=pdlt.activation(self.activation),
            **self.hyper,
        )


_LAMBDAS = dict(lambda_b=(1.0, 0.5, 2.0, 1.0), lambda_w=(1.0, 2.0, 0.5, 1.0))
GELU_CRITICAL = dict(c_w=1.98306, c_b=0.172922)  # init.md §4 table (K* = 3.56155)

FAST = {
    "relu": Run(
        name="relu", activation="relu", hidden=(1, 2, 1), output_dim=8, input_dim=2,
        hyper=dict(c_b=(0.0, 0.1, 0.0, 0.2), c_w=(2.0, 1.8, 2.2, 2.0), **_LAMBDAS),
        X=_inputs(2), ns=(12, 24), sizes=(200_000, 60_000), seed=1000,
    ),
    "tanh": Run(
        name="tanh", activation="tanh", hidden=(1, 2, 1), output_dim=8, input_dim=2,
        hyper=dict(c_b=(0.0, 0.1, 0.0, 0.2), c_w=(1.0, 1.1, 0.9, 1.0), **_LAMBDAS),
        X=_inputs(2), ns=(12, 24), sizes=(200_000, 60_000), seed=2000,
    ),
    "gelu": Run(
        # inputs scaled so that K^(1) ≈ 4, just above K* (GELU's fixed point is approached from above)
        name="gelu", activation="gelu", hidden=(1, 2, 1), output_dim=8, input_dim=2,
        hyper=dict(c_b=(GELU_CRITICAL["c_b"],) * 4, c_w=(GELU_CRITICAL["c_w"],) * 4, **_LAMBDAS),
        X=_inputs(2, scale=1.5), ns=(12, 24), sizes=(200_000, 60_000), seed=3000,
    ),
}

SLOW = {
    # init.md §7 R2: ReLU, 2 inputs, widths (4, n, 2n, n, 16), per-layer C_b, C_W, λ_b, λ_W
    "R2": Run(
        name="R2", activation="relu", hidden=(1, 2, 1), output_dim=16, input_dim=4,
        hyper=dict(c_b=(0.0, 0.1, 0.0, 0.2), c_w=(2.0, 1.8, 2.2, 2.0), **_LAMBDAS),
        X=_inputs(2, dim=4), ns=(12, 24, 48), sizes=(600_000, 240_000, 60_000), seed=4000,
    ),
    # init.md §7 T3: tanh, 3 inputs, same widths, C_b = (.1, .05, .1, .1), C_W = (2, 2.5, 1.5, 2)
    "T3": Run(
        name="T3", activation="tanh", hidden=(1, 2, 1), output_dim=16, input_dim=4,
        hyper=dict(c_b=(0.1, 0.05, 0.1, 0.1), c_w=(2.0, 2.5, 1.5, 2.0), **_LAMBDAS),
        X=_inputs(3, dim=4), ns=(12, 24, 48), sizes=(300_000, 120_000, 30_000), seed=5000,
    ),
    # depth 5, tanh, widths (2, n, 2n, n, 2n, 8): r_ℓ = 2, ½, 2, ½ along the way
    "T5": Run(
        name="T5", activation="tanh", hidden=(1, 2, 1, 2), output_dim=8, input_dim=2,
        hyper=dict(c_b=(0.1, 0.05, 0.1, 0.0, 0.1), c_w=(1.5, 1.2, 0.8, 1.0, 1.1),
                   lambda_b=(1.0, 0.5, 2.0, 1.0, 0.5), lambda_w=(1.0, 2.0, 0.5, 1.0, 1.5)),
        X=_inputs(2), ns=(12, 24, 48), sizes=(300_000, 120_000, 30_000), seed=6000,
    ),
}


# ---------------------------------------------------------------------------------------------
# theory side


def _pair_sum(T, U=None):
    """T_(12)(34) + U_(13)(24) + U_(14)(23) (U defaults to T), as (a, b, c, d) arrays."""
    U = T if U is None else U
    return T + U.transpose(0, 2, 1, 3) + U.transpose(0, 2, 3, 1)


def theory_fields(s: pdlt.Statistics) -> dict[str, np.ndarray]:
    """The ensemble's fields (pdlt.ensemble.LayerStatistics) predicted from one layer's Statistics."""
    return {
        "K": s.K, "Theta": s.Theta, "G1": s.G1, "H1": s.H1,
        "metric": s.metric(), "ntk_mean": s.ntk_mean(),
        "V": s.V, "V_one_neuron": _pair_sum(s.V),
        "A": s.A, "A_one_neuron": _pair_sum(s.A, s.B), "B": s.B,
        "D": s.D, "D_one_neuron": _pair_sum(s.D, s.F), "F": s.F,
    }  # fmt: skip


def flow_without_width_ratio(net, X) -> pdlt.Flow:
    """Wrong variant: the recursions with r_ℓ = 1 (inherited terms not rescaled by n_ℓ/n_{ℓ−1}).

    Feeding the layer map statistics whose fan-in is set to their own width makes the map see
    r = 1; everything else is the library's own recursion.
    """
    s = net.first_layer(X, order="full")
    layers = [s]
    for ell in range(1, net.depth):
        s = net.next_layer(attrs.evolve(s, fan_in=s.width), ell, order="full")
        layers.append(s)
    return pdlt.Flow(tuple(layers), net, X)


# ---------------------------------------------------------------------------------------------
# symmetry-distinct components


_SYMMETRIES = {
    # generators, as permutations of index positions
    2: {"sym": [(1, 0)]},
    4: {
        # V, A (and the one-neuron A + 2B): within each pair and pair exchange
        "pairs_exchange": [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)],
        # D, D + 2F: within each pair only (NTK pair ≠ preactivation pair)
        "pairs": [(1, 0, 2, 3), (0, 1, 3, 2)],
        # F_pqrs = F_rspq (swap the two neurons)
        "F": [(2, 3, 0, 1)],
        # B_pqrs = B_rspq = B_qpsr
        "B": [(2, 3, 0, 1), (1, 0, 3, 2)],
        # one-neuron connected four-point: fully symmetric
        "full": [(1, 0, 2, 3), (0, 2, 1, 3), (0, 1, 3, 2)],
    },
}
_KIND = {
    "V": "pairs_exchange", "A": "pairs_exchange", "A_one_neuron": "pairs_exchange",
    "D": "pairs", "D_one_neuron": "pairs", "F": "F", "B": "B", "V_one_neuron": "full",
}  # fmt: skip


@functools.cache
def distinct_components(name: str, N: int) -> tuple[tuple[int, ...], ...]:
    """One representative (the lexicographically smallest) per symmetry orbit of index tuples."""
    rank = 4 if name in _KIND else 2
    gens = _SYMMETRIES[rank]["sym"] if rank == 2 else _SYMMETRIES[4][_KIND[name]]
    reps = []
    for idx in itertools.product(range(N), repeat=rank):
        orbit, frontier = {idx}, [idx]
        while frontier:
            cur = frontier.pop()
            for g in gens:
                nxt = tuple(cur[p] for p in g)
                if nxt not in orbit:
                    orbit.add(nxt)
                    frontier.append(nxt)
        if idx == min(orbit):
            reps.append(idx)
    return tuple(reps)


# ---------------------------------------------------------------------------------------------
# Monte Carlo side


@functools.cache
def measure(run: Run):
    """(flows, ensembles) at every base width of ``run`` (cached for the session)."""
    flows, ensembles = [], []
    for n, size in zip(run.ns, run.sizes):
        net = run.net(n)
        flows.append(pdlt.flow(net, run.X))
        ensembles.append(sample(net, run.X, size, seed=run.seed + n, chunk_size=CHUNK, progress=False))
    return tuple(flows), tuple(ensembles)


def extrapolate(x: np.ndarray, y: np.ndarray, se: np.ndarray, degree: int = 1):
    """Weighted least squares y = a + b x (+ c x² for ``degree`` 2), per component.

    Axis 0 of ``y`` and ``se`` runs over the widths, x = 1/n.  Returns the intercept a, its
    standard error and the χ² of the fit (len(x) − degree − 1 dof), each of the component shape.
    Widths are independent ensembles, so the covariance of the points is diagonal.
    """
    x = np.asarray(x, dtype=float)
    X = np.vander(x, degree + 1, increasing=True)  # (m, d)
    shape = y.shape[1:]
    yf, wf = y.reshape(len(x), -1), (1.0 / se**2).reshape(len(x), -1)  # (m, c)
    M = np.einsum("mc,md,me->cde", wf, X, X)
    rhs = np.einsum("mc,md,mc->cd", wf, X, yf)
    cov = np.linalg.inv(M)
    beta = np.einsum("cde,ce->cd", cov, rhs)
    chi2 = np.sum(wf * (yf - X @ beta.T) ** 2, axis=0)
    return beta[:, 0].reshape(shape), np.sqrt(cov[:, 0, 0]).reshape(shape), chi2.reshape(shape)


@attrs.frozen
class Row:
    layer: int
    field: str
    index: tuple[int, ...]
    theory: float
    mc: float
    se: float
    fit_chi2: float = float("nan")

    @property
    def z(self) -> float:
        return (self.mc - self.theory) / self.se


def extrapolated_rows(flows, ensembles, ns, *, fields=FOUR_POINT + ("G1", "H1"), layers=None, theory=None, degree=1):
    """n → ∞ comparison rows for layers ≥ 2 (layer 1 is exactly Gaussian; its fan-in n_0 is fixed).

    ``theory`` (default: the first flow) supplies the predicted tensors; they do not depend on n at
    fixed width ratios.
    """
    theory = flows[0] if theory is None else theory
    x = 1.0 / np.asarray(ns, dtype=float)
    L = len(flows[0])
    rows = []
    for ell in layers or range(2, L + 1):
        th = theory_fields(theory.layer(ell))
        ests = [e.layer(ell) for e in ensembles]
        lead = [theory_fields(f.layer(ell)) for f in flows]
        for name in fields:
            if name in ("G1", "H1"):
                ens_name, lead_name = {"G1": ("K", "K"), "H1": ("Theta", "Theta")}[name]
                y = np.stack([e.fan_in * (getattr(e, ens_name).mean - t[lead_name]) for e, t in zip(ests, lead)])
                se = np.stack([e.fan_in * getattr(e, ens_name).stderr for e in ests])
            else:
                y = np.stack([getattr(e, name).mean for e in ests])
                se = np.stack([getattr(e, name).stderr for e in ests])
            a, sa, chi2 = extrapolate(x, y, se, degree)
            for idx in distinct_components(name, y.shape[1]):
                rows.append(Row(ell, name, idx, float(th[name][idx]), float(a[idx]), float(sa[idx]), float(chi2[idx])))
    return rows


def direct_rows(flow, ens):
    """E[zz] vs K + G1/n and E[Ĥ] vs Θ + H1/n at one width, every layer."""
    rows = []
    for ell in range(1, len(flow) + 1):
        th, est = theory_fields(flow.layer(ell)), ens.layer(ell)
        for name, pred in (("K", "metric"), ("Theta", "ntk_mean")):
            e = getattr(est, name)
            for idx in distinct_components(name, e.mean.shape[0]):
                if e.stderr[idx] <= 1e-12 * max(1.0, abs(e.mean[idx])):
                    # layer 1's NTK is deterministic (its SE is round-off): equality to round-off
                    assert e.mean[idx] == pytest.approx(th[pred][idx], rel=1e-12, abs=1e-12)
                    continue
                rows.append(Row(ell, name, idx, float(th[pred][idx]), float(e.mean[idx]), float(e.stderr[idx])))
    return rows


def report(title: str, rows, *, k: float = K_SIGMA) -> tuple[float, float]:
    """Print a table, return (χ²/dof, max |z|) over the rows."""
    z = np.array([r.z for r in rows])
    chi2_dof, zmax = float(np.mean(z**2)), float(np.max(np.abs(z)))
    print(f"\n{title}: {len(rows)} components, chi2/dof = {chi2_dof:.2f}, max|z| = {zmax:.2f}")
    print(f"  {'layer':>5} {'field':<13} {'index':<13} {'theory':>11} {'MC (n->inf)':>12} {'± SE':>9} {'z':>6} {'fit chi2':>8}")
    for r in rows:
        flag = "  <--" if abs(r.z) > k else ""
        print(
            f"  {r.layer:>5} {r.field:<13} {str(r.index):<13} {r.theory:>11.5g} {r.mc:>12.5g} {r.se:>9.2g} {r.z:>6.2f} {r.fit_chi2:>8.2f}{flag}"
        )
    return chi2_dof, zmax


def assert_rows(rows, what: str, k: float = K_SIGMA) -> None:
    bad = [r for r in rows if not abs(r.z) <= k]
    assert not bad, f"{what}: {len(bad)} of {len(rows)} components beyond {k} SE, e.g. " + "; ".join(
        f"layer {r.layer} {r.field}{r.index}: MC {r.mc:.5g} ± {r.se:.2g} vs theory {r.theory:.5g} (z = {r.z:.1f})"
        for r in sorted(bad, key=lambda r: -abs(r.z))[:5]
    )


# ---------------------------------------------------------------------------------------------
# fast suite


@pytest.mark.parametrize("name", sorted(FAST))
def test_flow_has_no_width_dependence_at_fixed_ratios(name):
    """The theory tensors of layer ℓ ≥ 2 depend only on the width ratios, not on n."""
    run = FAST[name]
    f1, f2 = (pdlt.flow(run.net(n), run.X) for n in run.ns)
    for a, b in zip(f1, f2):
        for field in ("K", "Theta", "V", "G1", "H1", "A", "B", "D", "F"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12, atol=1e-14, err_msg=field)


@pytest.mark.parametrize("name", sorted(FAST))
def test_metric_and_ntk_mean_agree_at_largest_width(name):
    run = FAST[name]
    flows, ensembles = measure(run)
    rows = direct_rows(flows[-1], ensembles[-1])
    report(f"{name}: E[zz] vs K + G1/n, E[H] vs Theta + H1/n at n = {run.ns[-1]}", rows)
    assert_rows(rows, f"{name} direct K/Theta")


@pytest.mark.parametrize("name", sorted(FAST))
def test_nlo_kernel_and_ntk_extrapolated(name):
    run = FAST[name]
    flows, ensembles = measure(run)
    rows = extrapolated_rows(flows, ensembles, run.ns, fields=("G1", "H1"))
    report(f"{name}: n(E[zz] - K) -> G1, n(E[H] - Theta) -> H1, widths {run.ns}", rows)
    assert_rows(rows, f"{name} G1/H1")


@pytest.mark.parametrize("name", sorted(FAST))
def test_four_point_and_ntk_fluctuations_extrapolated(name):
    run = FAST[name]
    flows, ensembles = measure(run)
    rows = extrapolated_rows(flows, ensembles, run.ns, fields=FOUR_POINT)
    chi2_dof, _ = report(f"{name}: V, A, B, D, F (+ one-neuron) extrapolated over widths {run.ns}", rows)
    assert_rows(rows, f"{name} four-point tensors")
    assert chi2_dof < 2.0, f"{name}: chi2/dof = {chi2_dof:.2f} over {len(rows)} components"


def test_dropping_width_ratio_is_rejected():
    """Discriminating power: the r_ℓ = 1 variant of the recursions fails the same comparison.

    With widths (n, 2n, n) the inherited terms at layer 3 (r = 2) and layer 4 (r = ½) change.
    """
    run = FAST["relu"]
    flows, ensembles = measure(run)
    wrong = flow_without_width_ratio(run.net(run.ns[0]), run.X)
    rows = extrapolated_rows(flows, ensembles, run.ns, fields=("V", "A", "B", "D", "F"), layers=(3, 4), theory=wrong)
    _, zmax = report("relu, WRONG variant r = 1: V, A, B, D, F", rows)
    assert zmax > 10.0, f"the r = 1 variant is not rejected (max |z| = {zmax:.1f})"
    # and the right recursion passes on exactly these components
    assert_rows(extrapolated_rows(flows, ensembles, run.ns, fields=("V", "A", "B", "D", "F"), layers=(3, 4)), "relu")


@pytest.mark.parametrize("name", ["relu", "gelu"])
def test_leading_order_metric_alone_is_rejected(name):
    """Discriminating power: E[zz] differs from K alone by many SE at n = 12 — G1/n is needed."""
    run = FAST[name]
    flows, ensembles = measure(run)
    f, e = flows[0], ensembles[0]
    z = max(float(np.max(np.abs(e.layer(ell).K.z_score(f.layer(ell).K)))) for ell in range(3, len(f) + 1))
    z_right = max(float(np.max(np.abs(e.layer(ell).K.z_score(f.layer(ell).metric())))) for ell in range(3, len(f) + 1))
    print(f"\n{name}, n = {run.ns[0]}: max|z| of E[zz] vs K alone = {z:.1f}, vs K + G1/n = {z_right:.1f}")
    assert z > 10.0, f"{name}: K alone is within {z:.1f} SE of E[zz]"


# ---------------------------------------------------------------------------------------------
# slow suite


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_flow_vs_ensemble_large(name):
    """init.md §7 R2/T3-style runs at three widths; prints the full table (use -s)."""
    run = SLOW[name]
    t0 = time.perf_counter()
    flows, ensembles = measure(run)
    rows = extrapolated_rows(flows, ensembles, run.ns, degree=run.degree)
    direct = direct_rows(flows[-1], ensembles[-1])
    report(f"{name}: all tensors extrapolated (degree {run.degree} in 1/n) over widths {run.ns}, sizes {run.sizes}", rows)
    report(f"{name}: K, Theta directly at n = {run.ns[-1]}", direct)
    fit_chi2 = float(np.mean([r.fit_chi2 for r in rows]))
    dof = len(run.ns) - run.degree - 1
    z = np.array([r.z for r in rows + direct])
    chi2_dof, zmax = float(np.mean(z**2)), float(np.max(np.abs(z)))
    print(
        f"{name}: SUMMARY {len(z)} comparisons, chi2/dof = {chi2_dof:.2f}, max|z| = {zmax:.2f}; "
        f"mean fit chi2 ({dof} dof) = {fit_chi2:.2f}; wall time {time.perf_counter() - t0:.0f} s"
    )
    # components are correlated (layers share networks), so χ²/dof is a summary, not a χ² test
    assert chi2_dof < 2.0, f"{name}: chi2/dof = {chi2_dof:.2f} over {len(z)} comparisons"
    assert_rows(rows + direct, name)


# ---------------------------------------------------------------------------------------------
# exactly proportional inputs (kinked σ)

RELU_1D = Run(
    # one-dimensional inputs of both signs with C_b = 0: every pair of preactivations is exactly
    # proportional at layer 1 (same-sign pairs at every layer): the degenerate pairs of
    # LayerExpectations.degenerate
    name="relu_1d", activation="relu", hidden=(1, 2, 1), output_dim=8, input_dim=1,
    hyper=dict(c_b=0.0, c_w=(2.0, 1.8, 2.2, 2.0), **_LAMBDAS),
    X=np.array([[-1.0], [0.8], [0.3]]), ns=(12, 24), sizes=(120_000, 40_000), seed=7000,
)


def _nonzero_rows(rows):
    """Split off the rows that are exactly zero in theory and deterministic in the ensemble (e.g. NTK
    components of opposite-sign ReLU inputs: zero variance, so the fit has no finite estimate, or
    rounding-level values): (rows to compare, the others)."""
    zero = [r for r in rows if abs(r.theory) < 1e-10 and (abs(r.mc) < 1e-10 or not np.isfinite(r.mc))]
    return [r for r in rows if r not in zero], zero


def test_relu_exactly_proportional_inputs():
    """ReLU, 1-D inputs, C_b = 0 (proportional pairs): every tensor against real networks, and power.

    Measured (1.2·10⁵/4·10⁴ networks, ~30 s): 660 comparisons, χ²/dof 0.89, max |z| 3.19 (with
    2·10⁵/6·10⁴: 0.65, 2.44); the variant that ignores the proportionality factor c
    (d/du[σ(u)σ(cu)] with c → sign c) is rejected at 212σ.
    """
    import pdlt.contractions as contractions

    run = RELU_1D
    flows, ensembles = measure(run)
    with np.errstate(divide="ignore", invalid="ignore"):  # deterministic components have SE = 0
        rows, zero = _nonzero_rows(extrapolated_rows(flows, ensembles, run.ns) + direct_rows(flows[-1], ensembles[-1]))
    assert len(zero) < len(rows) / 5
    assert all(np.isfinite(r.z) for r in rows)
    chi2_dof, _ = report("relu 1-D, C_b = 0 (exactly proportional inputs): all tensors", rows)
    assert_rows(rows, "relu 1-D proportional")
    assert chi2_dof < 2.0
    # power: the proportionality factor matters
    orig = contractions._proportional_total
    contractions._proportional_total = lambda act, d1, d2, m, var, c: orig(act, d1, d2, m, var, np.sign(c))
    try:
        wrong = pdlt.flow(run.net(run.ns[0]), run.X)
    finally:
        contractions._proportional_total = orig
    with np.errstate(divide="ignore", invalid="ignore"):
        bad = [r for r in _nonzero_rows(extrapolated_rows(flows, ensembles, run.ns, theory=wrong))[0] if np.isfinite(r.z)]
    _, zmax = report("relu 1-D, WRONG variant c -> sign(c)", bad)
    assert zmax > 10.0
