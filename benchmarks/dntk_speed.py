"""Cost of ``pdlt.flow(net, X, order="dntk")`` (K … F plus P, Q, R, S, T, U) in N and L.

The flow is stepped layer by layer exactly as :func:`pdlt.flow` does (``first_layer`` /
``next_layer`` with ``order="dntk"``); the cumulative wall and CPU time are read after every layer
(L = 2 … 5) and the tracemalloc peak over the whole L = 5 flow.  Exponents are fitted by least
squares, log t = c + p log N at L = 5 (the three largest N) and log t = c' + q log(L − 1) per N (layer 1 is
free: its tensors vanish).  The N = 16, L = 5 time is measured where that is affordable and
otherwise predicted from the fit (marked "pred").

Activations: tanh (no closed forms beyond pairs, so the 3–4-variable expectations
⟨σ^(a)σ^(b)σ^(c)σ^(d)⟩ of the dNTK step go to the nested quadrature: the cost is quadrature-bound)
and the linear activation (every Gaussian expectation is a closed-form Wick moment).

Default (≈ 2 CPU-minutes): linear N = 2, 4, 8, 16, 24, 32; tanh N = 2, 3, 4 with the accurate rule and
N = 2, 3, 4, 6, 8 with the "fast" rule.  ``--large`` adds tanh N = 8 (accurate rule, ≈ 0.5 CPU-minutes)
and N = 16 (fast rule, ≈ 1 CPU-minute) (docs/performance.md, "dNTK order").

``--gd N_TRAIN …`` instead times the finite-width gradient-descent prediction
(``pdlt.solve(net, GradientDescent, X_train, y_train, X_test)`` at O(1/n), which runs the dNTK-order
flow on the N = N_train + N_test inputs), tanh at criticality, 1-D regression inputs, L = 5, with
N_test = N_train.

Run: python benchmarks/dntk_speed.py [--large] [--gd N_TRAIN ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc

import numpy as np

import pdlt
from pdlt.gaussian import QuadratureRule

DEPTH = 5


def machine_header() -> None:
    import scipy

    print(f"# date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"# versions: python {platform.python_version()}, pdlt {pdlt.__version__}, numpy {np.__version__}, scipy {scipy.__version__}")


def measure(activation: str, N: int, quadrature: str) -> dict:
    """Cumulative wall/CPU seconds after each layer ℓ = 1..DEPTH and the peak traced memory (MiB)."""
    act = pdlt.activation(activation)
    report = pdlt.criticality(act)
    net = pdlt.MLP(input_dim=10, hidden_widths=[64] * (DEPTH - 1), activation=act, c_b=report.c_b, c_w=report.c_w)
    X = np.random.default_rng(N).normal(size=(N, 10))
    rule = None if quadrature == "accurate" else QuadratureRule.fast()
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    stats = net.first_layer(X, order="dntk")
    walls, cpus = [time.perf_counter() - wall], [time.process_time() - cpu]
    for ell in range(1, DEPTH):
        stats = net.next_layer(stats, ell, order="dntk", rule=rule)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.all(np.isfinite(stats.T)), "a smooth activation must give finite dNTK statistics"
    return {"wall": walls, "cpu": cpus, "peak": peak / 2**20}


def measure_gd(n_train: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the O(1/n) gradient-descent prediction with N_train = N_test = n_train."""
    from pdlt.data import regression_1d
    from pdlt.plugins import lookup
    from pdlt.solver import solve

    act = pdlt.activation("tanh")
    report = pdlt.criticality(act)
    net = pdlt.MLP(input_dim=1, hidden_widths=[64] * (DEPTH - 1), activation=act, c_b=report.c_b, c_w=report.c_w)
    Xa, ya, Xb, _ = regression_1d(n_train=n_train, n_test=n_train, design="grid")
    gd = lookup("learning_algorithm", "gradient_descent")(learning_rate=0.01)  # < 2/λ_max(Θ̃) (0.093 at N_train = 6); the cost does not depend on it
    wall, cpu = time.perf_counter(), time.process_time()
    dist = solve(net, gd, Xa, ya, Xb, order="dntk", warn_regime=False)
    assert np.all(np.isfinite(dist.covariance))
    return time.perf_counter() - wall, time.process_time() - cpu


def fit_exponent(xs, ts) -> float:
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add tanh N = 8 (accurate) and N = 16 (fast rule): ≈ 2 CPU-minutes")
    parser.add_argument("--gd", type=int, nargs="+", metavar="N_TRAIN", help="time the O(1/n) GD prediction instead")
    args = parser.parse_args()
    machine_header()
    if args.gd:
        print(f"# O(1/n) gradient-descent prediction (pdlt.solve, order='dntk'), tanh at criticality, 1-D inputs, width 64, L = {DEPTH}")
        print(f"{'N_train':>7} {'N_test':>6} {'wall (s)':>9} {'CPU (s)':>8}")
        for n in args.gd:
            wall, cpu = measure_gd(n)
            print(f"{n:>7} {n:>6} {wall:>9.2f} {cpu:>8.2f}", flush=True)
        return
    plans = [("linear", "accurate", (2, 4, 8, 16, 24, 32)), ("tanh", "accurate", (2, 3, 4)), ("tanh", "fast", (2, 3, 4, 6, 8))]
    if args.large:
        plans = [plans[0], ("tanh", "accurate", (2, 3, 4, 8)), ("tanh", "fast", (2, 3, 4, 6, 8, 16))]
    print(f"# flow(order='dntk'), MLP n_0 = 10, hidden width 64, L = {DEPTH}, at criticality")
    print(f"{'activation':>10} {'rule':>9} {'N':>3} {'wall L=5 (s)':>13} {'CPU L=5 (s)':>12} {'peak (MiB)':>11} {'CPU per layer ℓ=2..5 (s)':>32}")
    for activation, quadrature, Ns in plans:
        results = {}
        for N in Ns:
            r = measure(activation, N, quadrature)
            results[N] = r
            per_layer = np.diff(r["cpu"])
            print(f"{activation:>10} {quadrature:>9} {N:>3} {r['wall'][-1]:>13.3f} {r['cpu'][-1]:>12.3f} {r['peak']:>11.1f} "
                  f"{' '.join(f'{t:7.3f}' for t in per_layer):>32}", flush=True)
        big = [N for N in Ns if N >= 3][-3:]  # the largest three: small N is overhead-dominated
        p = fit_exponent(big, [results[N]["cpu"][-1] for N in big]) if len(big) >= 2 else float("nan")
        Ls = np.arange(2, DEPTH + 1)
        q = np.mean([fit_exponent(Ls - 1, np.asarray(results[N]["cpu"][1:]) - results[N]["cpu"][0]) for N in big])
        line = f"  {activation} / {quadrature}: CPU ∝ N^{p:.2f} (N = {big[0]}…{big[-1]}), ∝ (L − 1)^{q:.2f}"
        if 16 not in results and big:
            # bracket: all work ∝ N⁴ (lower) or all work in the 4-variable quadratures, whose number of
            # distinct-sample tuples N(N−1)(N−2)(N−3) grows faster than N⁴ at small N (upper)
            ref = big[-1]
            t = results[ref]["cpu"][-1]
            c4 = lambda n: n * (n - 1) * (n - 2) * (n - 3)  # noqa: E731
            line += f"; N = 16, L = 5 pred from N = {ref}: {t * (16 / ref) ** 4:.0f}–{t * c4(16) / c4(ref):.0f} CPU-s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
