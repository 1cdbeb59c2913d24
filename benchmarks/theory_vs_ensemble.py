"""What the theory saves: ensemble size and time to match the accuracy of the theory's V.

Network: tanh at criticality (C_b = 0, C_W = 1), N = 2 inputs, depth L = 4, every width n = 32
(output width 32, so that the cross-neuron estimator of V has many pairs).  The theory is
``pdlt.flow(net, X)`` (order "full"); the ensemble is :func:`pdlt.ensemble.sample` with
``ntk=False``.  Both are timed in this run; the ensemble's standard error falls as 1/√M, so a
pilot of M0 networks gives the size M needed for a target error, and its time scales as M.

"Equal accuracy" is measured two ways for the output-layer four-point vertex V:

(a) as a prediction for width-n networks: the theory's error is its O(1/n) truncation,
    estimated from the pilot as δ² = max over components of (V_ens − V_theory)² − stderr²
    when some component is off by more than 3 stderr (else δ = 2 stderr is an upper bound
    and M a lower bound);
(b) as the 1/n coefficient itself: the theory's error is its numerical (quadrature) error;
    an ensemble at one width also carries an O(1/n) bias, so the M printed is a lower bound.

Run: python benchmarks/theory_vs_ensemble.py [--pilot 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import pdlt
from pdlt.ensemble import sample


def machine_header() -> None:
    import scipy

    print(f"# date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"# versions: python {platform.python_version()}, pdlt {pdlt.__version__}, numpy {np.__version__}, scipy {scipy.__version__}")


def best_time(fn, repeats: int = 3):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pilot", type=int, default=100_000, help="networks in the pilot ensemble")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args(argv)
    machine_header()
    n, L = args.width, args.depth
    net = pdlt.MLP(input_dim=2, hidden_widths=[n] * (L - 1), output_dim=n, activation=pdlt.activation("tanh"), c_b=0.0, c_w=1.0)
    X = np.array([[1.0, 0.3], [-0.4, 0.9]])
    print(f"# tanh, C_b = 0, C_W = 1, N = 2 inputs, L = {L}, widths {n}; pilot ensemble of {args.pilot} networks (ntk=False)")

    pdlt.flow(net, X)  # warm-up: imports, plugin discovery
    t_theory, flow = best_time(lambda: pdlt.flow(net, X))
    V_th = flow[-1].V
    t0 = time.perf_counter()
    stats = sample(net, X, args.pilot, seed=0, ntk=False)
    t_pilot = time.perf_counter() - t0
    V = stats[-1].V
    # symmetry-distinct components of V_(12)(34) for two inputs
    comps = sorted({tuple(sorted([tuple(sorted(p[:2])), tuple(sorted(p[2:]))])) for p in np.ndindex(2, 2, 2, 2)})
    idx = tuple(np.array([[*a, *b] for a, b in comps]).T)
    diff, se, th = V.mean[idx] - V_th[idx], V.stderr[idx], V_th[idx]
    print("| component | theory V | ensemble V | stderr | z |")
    print("|---|---|---|---|---|")
    for (a, b), t, e, s in zip(comps, th, V.mean[idx], se):
        print(f"| ({a[0]}{a[1]})({b[0]}{b[1]}) | {t:.5f} | {e:.5f} | {s:.5f} | {(e - t) / s:+.1f} |")

    scale = float(np.max(np.abs(th)))
    # the theory's truncation error is resolved when some component is off by more than 3 stderr;
    # subtracting stderr² removes the pilot's own noise from the squared difference
    resolved = bool(np.any(np.abs(diff) > 3 * se))
    delta_a = float(np.sqrt(np.max(diff**2 - se**2))) if resolved else 2 * float(se.max())
    delta_b = max(float(flow[-1].quadrature_error), 1e-16) * scale
    print()
    print(f"theory time (best of 3): {t_theory:.3f} s;  pilot ensemble: {args.pilot} networks in {t_pilot:.2f} s, max stderr {se.max():.2e}")
    print("| accuracy to match | target abs. error of V | networks needed | ensemble time s | ensemble / theory time |")
    print("|---|---|---|---|---|")
    for label, delta, bound in (
        ("(a) width-n prediction (1/n truncation)", delta_a, "" if resolved else " (≥, unresolved)"),
        ("(b) 1/n coefficient (quadrature error)", delta_b, " (≥)"),
    ):
        M = args.pilot * (se.max() / delta) ** 2
        t_M = t_pilot * M / args.pilot
        print(f"| {label} | {delta:.2e} ({delta / scale:.1e} rel.) | {M:.3g}{bound} | {t_M:.3g} | {t_M / t_theory:.3g} |")


if __name__ == "__main__":
    sys.exit(main())
