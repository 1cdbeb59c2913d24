"""Measure the Gaussian engine's accuracy against exact references and print a table.

References that hold in any dimension: products of sin (⟨cos wᵀz⟩ = exp(−½wᵀKw)), products of exp
(moment generating function), ReLU orthant probabilities (3-D), arc-cosine kernels (2-D).
Errors are relative to max(|value|, 0.05) (the integrands are O(1); smaller values come from
cancellation).  Run: python benchmarks/gaussian_accuracy.py
"""

import itertools
import math
import platform
import time

import numpy as np

import pdlt
from pdlt.gaussian import expect


def rand_cov(k, scale, rng):
    A = rng.normal(size=(k, k))
    C = A @ A.T + 0.3 * np.eye(k)
    d = np.sqrt(np.diag(C))
    s = scale * np.exp(rng.uniform(-0.5, 0.5, k))
    return C / np.outer(d, d) * np.outer(s, s)


def sin_ref(orders, K):
    k = len(orders)
    phi = np.array(orders) * np.pi / 2
    tot = 0j
    for eps in itertools.product((1, -1), repeat=k):
        e = np.array(eps)
        tot += np.prod(e) * np.exp(1j * e @ phi) * np.exp(-0.5 * e @ K @ e)
    return (tot / (2j) ** k).real


def main():
    rng = np.random.default_rng(0)
    print(f"# pdlt {pdlt.__version__}, numpy {np.__version__}, {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print("| σ | dims | scale of K | worst rel. error | median rel. error | blocks | time per block |")
    print("|---|---|---|---|---|---|---|")
    cases = []
    sin, ex, relu = pdlt.activation("sin"), pdlt.activation("exponential"), pdlt.activation("relu")
    for k in (1, 2, 3, 4):
        for scale in (0.5, 1.0, 2.0):
            errs, t0, nb = [], time.perf_counter(), 0
            for _ in range(6):
                K = rand_cov(k, scale, rng)
                for orders in [(0,) * k, (1,) * k, tuple(rng.integers(0, 4, k))]:
                    ref = sin_ref(orders, K)
                    v, _ = expect(sin, orders, K)
                    errs.append(abs(v - ref) / max(abs(ref), 0.05))
                    nb += 1
            cases.append(("sin (smooth)", k, scale, errs, (time.perf_counter() - t0) / nb, nb))
        errs, t0 = [], time.perf_counter()
        for _ in range(6):
            K = rand_cov(k, 0.7, rng)
            ref = math.exp(0.5 * K.sum())
            errs.append(abs(expect(ex, (0,) * k, K)[0] - ref) / ref)
        cases.append(("exp (smooth)", k, 0.7, errs, (time.perf_counter() - t0) / 6, 6))
    for label, orders, refun in [
        ("relu ⟨σσ⟩ quadrature", (0, 0), lambda s, c, p: s / (2 * math.pi) * (math.sin(p) + (math.pi - p) * c)),
        ("relu ⟨σ'σ'⟩ quadrature", (1, 1), lambda s, c, p: (math.pi - p) / (2 * math.pi)),
    ]:
        errs, t0 = [], time.perf_counter()
        for rho in np.linspace(-0.999, 1.0, 12):
            K = np.array([[1.7, rho * math.sqrt(1.02)], [rho * math.sqrt(1.02), 0.6]])
            p = math.acos(min(rho, 1.0))
            ref = refun(math.sqrt(1.02), rho, p)
            errs.append(abs(expect(relu, orders, K, method="quadrature")[0] - ref) / max(abs(ref), 0.05))
        cases.append((label + " (kinked)", 2, 1.0, errs, (time.perf_counter() - t0) / 12, 12))
    errs, t0 = [], time.perf_counter()
    for _ in range(8):
        K = rand_cov(3, 1.0, rng)
        d = np.sqrt(np.diag(K))
        R = K / np.outer(d, d)
        ref = 1 / 8 + (math.asin(R[0, 1]) + math.asin(R[0, 2]) + math.asin(R[1, 2])) / (4 * math.pi)
        errs.append(abs(expect(relu, (1, 1, 1), K)[0] - ref) / ref)
    cases.append(("relu ⟨σ'σ'σ'⟩ orthant (kinked)", 3, 1.0, errs, (time.perf_counter() - t0) / 8, 8))
    for label, k, scale, errs, tpb, nb in cases:
        print(f"| {label} | {k} | {scale} | {max(errs):.1e} | {np.median(errs):.1e} | {nb} | {tpb * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
