"""One local Ray cluster for the whole test session, with fake GPU resources, on loopback only.

conftest.py loads this module as a plugin. The cluster is started in the test
process, so `run_study` in a test uses it as it is (ray is initialised), and a
subprocess reaches it by the address the fixture yields. Ray's "GPUs" here are
only numbers in its scheduler: it still reserves them per task and sets
CUDA_VISIBLE_DEVICES, which is what the executor relies on; no CUDA is touched.

Loopback only: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (read when ray is
imported) the node address is 127.0.0.1 and every Ray server listens there;
the dashboard is off. Workers inherit this process's environment (PYTHONPATH
included), so they import the code under test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

FAKE_GPUS = 4
CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The GCS address (127.0.0.1:PORT) of a Ray cluster with 2 CPUs, 4 fake GPUs and one llem_node."""
    os.environ.pop("RAY_ADDRESS", None)  # never join a cluster that happens to be configured
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from llem_mlflow.sweep.execution import NODE_RESOURCE

    if ray.is_initialized():
        ray.shutdown()
    # A short temp dir: Ray's unix socket paths must stay under ~100 characters.
    temp_dir = tmp_path_factory.mktemp("ray", numbered=True)
    context = ray.init(
        address="local",
        num_cpus=CPUS,
        num_gpus=FAKE_GPUS,
        resources={NODE_RESOURCE: 1},
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp_dir),
        log_to_driver=False,
        logging_level="WARNING",
    )
    try:
        address = context.address_info["address"]
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()
