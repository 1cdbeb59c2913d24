"""Infinite-width kernel K and NTK Θ: pdlt against neural-tangents, side by side in one run.

For depths L = 5, 20 and N = 100, 1000 random inputs of dimension 10, each activation at its
critical (C_b, C_W) from :func:`pdlt.criticality` with λ_b = C_b, λ_W = C_W (then Θ is the NTK of
neural-tangents' "ntk" parameterisation and both libraries compute the same K and Θ): ReLU and
erf through closed forms, GELU and tanh through pdlt's Mehler expansion (neural-tangents: its
closed-form ``stax.Gelu`` and, for tanh, ``stax.ElementwiseNumerical(jnp.tanh, deg=25)``, its
Gauss–Hermite fallback).

pdlt times are for ``pdlt.flow(net, X, order="leading")``; neural-tangents times are for a
jitted ``kernel_fn`` after a first (compiling) call on the same shapes, i.e. its best case; the
compile time is printed separately.  Each side is timed ``--repeats`` times, alternating, and the
best run is kept: wall clock, and the CPU time of the process (all threads: XLA and OpenBLAS use
several), which is the fairer measure on a machine shared with other jobs.  neural-tangents' tanh kernel (Gauss–Hermite,
cost ∝ N² deg²) is timed on 200 inputs and scaled by (N/200)² unless ``--nt-full``.  Both
sides run in float64 (``jax_enable_x64``).  Peak memory is the tracemalloc peak of one extra
pdlt call (numpy arrays; tracemalloc is off while timing) and the process's peak RSS after each
neural-tangents case.

neural-tangents is optional and pins an old jax: install it in a side virtual environment,
e.g. ``pip install neural-tangents==0.6.5 jax[cpu]==0.4.23 "numpy<2" "scipy<1.13" pluggy attrs`` and
run this script there with ``PYTHONPATH=core:plugins``.

Run: python benchmarks/kernel_speed.py [--quick] [--nt-deg 25] [--repeats 5] [--activations relu erf]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import sys
import time
import tracemalloc

import numpy as np

import pdlt

ACTIVATIONS = ("relu", "erf", "gelu", "tanh")
NT_SUBSET = 200  # inputs on which neural-tangents' numerical tanh kernel is timed by default


def machine_header() -> None:
    import scipy

    print(f"# date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    versions = f"python {platform.python_version()}, pdlt {pdlt.__version__}, numpy {np.__version__}, scipy {scipy.__version__}"
    try:
        import jax
        import neural_tangents

        versions += f", jax {jax.__version__}, neural-tangents {neural_tangents.__version__}"
    except ImportError:
        pass
    print(f"# versions: {versions}")


def hyperparameters(name: str) -> tuple[float, float]:
    report = pdlt.criticality(pdlt.activation(name))
    return float(report.c_b), float(report.c_w)


def pdlt_network(name: str, depth: int, input_dim: int = 10):
    c_b, c_w = hyperparameters(name)
    return pdlt.MLP(
        input_dim=input_dim,
        hidden_widths=[512] * (depth - 1),
        activation=pdlt.activation(name),
        c_b=c_b,
        c_w=c_w,
        lambda_b=c_b,
        lambda_w=c_w,
    )


def nt_kernel_fn(name: str, depth: int, deg: int):
    import jax
    import jax.numpy as jnp
    from neural_tangents import stax

    c_b, c_w = hyperparameters(name)
    act = {
        "relu": stax.Relu,
        "erf": stax.Erf,
        "gelu": lambda: stax.Gelu(approximate=False),
        "tanh": lambda: stax.ElementwiseNumerical(jnp.tanh, deg=deg),
    }[name]
    dense = dict(W_std=math.sqrt(c_w), b_std=math.sqrt(c_b) if c_b else None, parameterization="ntk")
    layers = [stax.Dense(512, **dense)]
    for _ in range(depth - 1):
        layers += [act(), stax.Dense(512, **dense)]
    _, _, kernel_fn = stax.serial(*layers)
    return jax.jit(kernel_fn, static_argnames="get")


def timed(fn):
    """(wall s, process CPU s, result) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


class Best:
    """Best (smallest) wall and CPU time over repeated runs."""

    def __init__(self):
        self.wall = self.cpu = math.inf

    def add(self, wall, cpu):
        self.wall, self.cpu = min(self.wall, wall), min(self.cpu, cpu)


def pdlt_case(name, X, depth):
    """A timed call of pdlt's leading-order flow, and its peak numpy memory."""
    net = pdlt_network(name, depth)
    pdlt.flow(net, X[:2], order="leading")  # warm-up: plugin discovery, caches

    def run():
        out = pdlt.flow(net, X, order="leading")[-1]
        return out.K, out.Theta

    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return run, peak


def nt_case(name, X, depth, deg):
    """A timed call of neural-tangents' jitted kernel_fn (compiled here), and the compile time."""
    import jax

    fn = nt_kernel_fn(name, depth, deg)
    Xj = jax.numpy.asarray(X)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(Xj, None, ("nngp", "ntk")))
    compile_s = time.perf_counter() - t0

    def run():
        nngp, ntk = jax.block_until_ready(fn(Xj, None, ("nngp", "ntk")))
        return np.asarray(nngp), np.asarray(ntk)

    return run, compile_s


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 only")
    parser.add_argument("--nt-deg", type=int, default=25, help="Gauss–Hermite degree of neural-tangents' tanh kernel")
    parser.add_argument("--nt-full", action="store_true", help="time neural-tangents' tanh kernel at N = 1000 too (~20 min)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case and side (best kept)")
    parser.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=ACTIVATIONS, help="activations to run")
    args = parser.parse_args(argv)
    jax = _maybe_jax()
    if jax is not None:
        jax.config.update("jax_enable_x64", True)  # double precision on both sides
    have_nt = _have_nt()
    machine_header()
    if not have_nt:
        print("# neural-tangents not installed: skipped (it needs jax 0.4.23 etc. in a side venv)")
    sizes = (100,) if args.quick else (100, 1000)
    print(
        "| σ | L | N | pdlt s (wall) | pdlt s (CPU) | pdlt peak MiB | NT s (jit, warm; wall) | NT s (CPU) | NT compile s "
        "| NT peak RSS MiB | pdlt / NT (wall) | pdlt / NT (CPU) | max rel. diff K, Θ |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for N in sizes:
        X = rng.normal(size=(N, 10))
        for depth in (5, 20):
            for name in args.activations:
                p_run, peak = pdlt_case(name, X, depth)
                p_best = Best()
                if have_nt:
                    # neural-tangents' numerical (Gauss–Hermite) kernel costs N² deg² per layer:
                    # unless --nt-full, time it on a subset and scale by (N/n)² (its cost is ∝ N²)
                    sub = N if (name != "tanh" or args.nt_full or N <= NT_SUBSET) else NT_SUBSET
                    n_run, t_c = nt_case(name, X[:sub], depth, args.nt_deg)
                    n_best = Best()
                # alternate the two sides so that both see the same load of a shared machine
                for _ in range(max(1, args.repeats)):
                    wall, cpu, (K, Theta) = timed(p_run)
                    p_best.add(wall, cpu)
                    if have_nt:
                        wall, cpu, (nngp, ntk) = timed(n_run)
                        n_best.add(wall, cpu)
                row = [name, depth, N, f"{p_best.wall:.4f}", f"{p_best.cpu:.4f}", f"{peak / 2**20:.0f}"]
                if have_nt:
                    scale = (N / sub) ** 2
                    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                    diff = max(_rel(K[:sub, :sub], nngp), _rel(Theta[:sub, :sub], ntk))
                    mark = "" if sub == N else f" (N = {sub} × {scale:.0f})"
                    t_w, t_cpu = n_best.wall * scale, n_best.cpu * scale
                    row += [f"{t_w:.4f}{mark}", f"{t_cpu:.4f}", f"{t_c:.1f}", f"{rss / 2**20:.0f}",
                            f"{p_best.wall / t_w:.3g}", f"{p_best.cpu / t_cpu:.3g}", f"{diff:.1e}"]
                else:
                    row += ["–"] * 7
                print("| " + " | ".join(str(x) for x in row) + " |", flush=True)


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))


def _maybe_jax():
    try:
        import jax

        return jax
    except ImportError:
        return None


def _have_nt() -> bool:
    try:
        import neural_tangents  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
