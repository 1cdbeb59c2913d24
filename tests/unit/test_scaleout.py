"""Scale-out of the ensemble: :func:`pdlt.ensemble.sample` over a ``concurrent.futures.Executor``.

Chunk c always draws from ``SeedSequence(seed).spawn(n_chunks)[c]`` and the chunk sums are
merged in chunk order, so any executor — local processes, a Dask cluster — must give statistics
that are bit-identical to the serial run with the same arguments (compared with ``==``, which
uses ``np.array_equal`` on every mean and standard error).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from pdlt.errors import ParameterError
from pdlt.ensemble import sample
from pdlt_plugins.activations import Tanh
from pdlt_plugins.architectures import MLP

NET = MLP(input_dim=2, hidden_widths=(6, 5), output_dim=3, activation=Tanh(), c_w=1.2, c_b=0.1)
X = np.array([[1.0, 0.2], [-0.3, 0.8], [0.5, -0.5]])
ARGS = dict(size=120, seed=7)


@pytest.fixture(scope="module")
def serial():
    return sample(NET, X, **ARGS)


def test_thread_pool_matches_serial(serial):
    with ThreadPoolExecutor(max_workers=2) as ex:
        assert sample(NET, X, executor=ex, **ARGS) == serial


def test_process_pool_matches_serial(serial):
    # spawn: workers import pdlt afresh and receive the network by pickling, as on a cluster
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as ex:
        parallel = sample(NET, X, executor=ex, **ARGS)
    assert parallel == serial
    assert parallel.n_batches == serial.n_batches


def test_process_pool_without_ntk_matches_serial():
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as ex:
        assert sample(NET, X, ntk=False, executor=ex, **ARGS) == sample(NET, X, ntk=False, **ARGS)


def test_dask_local_cluster_matches_serial(serial):
    distributed = pytest.importorskip(
        "dask.distributed", reason="dask.distributed is not installed (pip install 'pdlt[dask]'): Dask scale-out not tested"
    )
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster, distributed.Client(cluster) as client:
        parallel = sample(NET, X, executor=client.get_executor(), **ARGS)
    assert parallel == serial


def test_executor_must_have_map():
    with pytest.raises(ParameterError, match="executor"):
        sample(NET, X, executor=object(), **ARGS)
