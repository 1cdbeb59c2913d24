"""Cost of all init-time 1/n tensors (``order="full"``: K, Θ, V, G1, H1, A, B, D, F) in N and L.

For each number of inputs N and quadrature rule the MLP is stepped layer by layer
(``first_layer`` / ``next_layer``, exactly what :func:`pdlt.flow` does) and the cumulative time
and tracemalloc peak are read at L = 5, 10, 20, so one pass per N gives every depth.  The cost
exponents are then fitted by least squares on log t = c + p log N + q log L, per rule, and the
time of the N = 32, L = 10 target is predicted from the fit when it was not measured.

Default (well under 5 minutes on 2 cores): tanh at criticality, N = 2, 4, 8; the "fast" rule at
every depth, the accurate (default) rule at L = 5 only (a layer's cost does not depend on the
depth, so the L exponent comes from the fast rule).  ``--large`` adds N = 16 (fast, all depths)
and N = 32 (fast, L = 5): about an hour.

Run: python benchmarks/tensor_scaling.py [--large] [--activation tanh] [--accurate-n 2 4 8 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

import pdlt
from pdlt.gaussian import QuadratureRule

DEPTHS = (5, 10, 20)


def machine_header() -> None:
    import scipy

    print(f"# date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"# versions: python {platform.python_version()}, pdlt {pdlt.__version__}, numpy {np.__version__}, scipy {scipy.__version__}")


def measure(activation: str, N: int, max_depth: int, quadrature: str):
    """Cumulative (wall s, CPU s, peak MiB, quadrature error) at each depth in DEPTHS ≤ max_depth."""
    report = pdlt.criticality(pdlt.activation(activation))
    net = pdlt.MLP(
        input_dim=10,
        hidden_widths=[64] * (max_depth - 1),
        activation=pdlt.activation(activation),
        c_b=report.c_b,
        c_w=report.c_w,
    )
    X = np.random.default_rng(N).normal(size=(N, 10))
    rule = None if quadrature == "accurate" else QuadratureRule.fast()
    out = {}
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    stats = net.first_layer(X, order="full")
    qerr = 0.0
    for ell in range(1, max_depth):
        stats = net.next_layer(stats, ell, order="full", rule=rule)
        qerr = max(qerr, stats.quadrature_error)
        if ell + 1 in DEPTHS:
            out[ell + 1] = (time.perf_counter() - wall, time.process_time() - cpu, tracemalloc.get_traced_memory()[1] / 2**20, qerr)
    tracemalloc.stop()
    return out


def fit_exponents(rows):
    """Least squares of log t = c + p log N + q log L over (N, L, t) rows: (c, p, q).

    With a single depth only (c, p) are fitted and q is None; None if fewer than two N.
    """
    Ns = sorted({r[0] for r in rows})
    Ls = sorted({r[1] for r in rows})
    if len(Ns) < 2:
        return None
    y = np.log([t for _, _, t in rows])
    if len(Ls) < 2:
        c, p = np.linalg.lstsq(np.array([[1.0, np.log(N)] for N, _, _ in rows]), y, rcond=None)[0]
        return c, p, None
    A = np.array([[1.0, np.log(N), np.log(L)] for N, L, _ in rows])
    return tuple(np.linalg.lstsq(A, y, rcond=None)[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="add N = 16 and N = 32 (about an hour)")
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--accurate-n", type=int, nargs="+", default=[2, 4, 8], help="N measured with the accurate rule (at L = 5)")
    args = parser.parse_args(argv)
    machine_header()
    plan = [(N, "fast", 20) for N in (2, 4, 8)] + [(N, "accurate", 5) for N in args.accurate_n]
    if args.large:
        plan += [(16, "fast", 20), (32, "fast", 5)]
    print(f"# {args.activation} at criticality, order='full', widths 64; CPU time is the process's (BLAS threads included)")
    print("| rule | N | L | wall s | CPU s | peak MiB | max quadrature error |")
    print("|---|---|---|---|---|---|---|")
    results: dict[str, list] = {"fast": [], "accurate": []}
    for N, rule, depth in sorted(plan, key=lambda p: (p[1] != "accurate", p[0])):
        for L, (wall, cpu, peak, qerr) in measure(args.activation, N, depth, rule).items():
            results[rule].append((N, L, cpu))
            print(f"| {rule} | {N} | {L} | {wall:.2f} | {cpu:.2f} | {peak:.0f} | {qerr:.1e} |", flush=True)
    print()
    print(
        "| rule | exponent in N (least squares, all N) | local exponent in N (two largest N) | exponent in L "
        "| predicted CPU s at N = 32, L = 10 (local exponent; N⁴) |"
    )
    print("|---|---|---|---|---|")
    q_fast = None
    for rule in ("fast", "accurate"):
        rows = results[rule]
        coef = fit_exponents(rows)
        if coef is None:
            continue
        _, p, q = coef
        q = q_fast if q is None else q  # measured at one depth only: a layer's cost does not depend on L
        q_fast = q if rule == "fast" else q_fast
        # small N are not yet in the N⁴ regime (pairs and lower-dimensional blocks dominate), so
        # extrapolate from the largest N measured at L = 5, with the local exponent between the
        # two largest N and with the asymptotic 4 (the number of four-input blocks grows as N⁴/24)
        at5 = sorted((N, t) for N, L, t in rows if L == 5)
        (n1, t1), (n2, t2) = at5[-2:]
        local = np.log(t2 / t1) / np.log(n2 / n1)
        low, high = (t2 * (32 / n2) ** e * (10 / 5) ** q for e in (local, 4.0))
        print(f"| {rule} | {p:.2f} | {local:.2f} (N = {n1} → {n2}) | {q:.2f} | {low:.3g}; {high:.3g} |")

if __name__ == "__main__":
    sys.exit(main())
