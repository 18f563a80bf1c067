"""Fixtures every test package may use: a real ``kvtier serve`` subprocess on free
loopback ports, in a temp folder.

``serve_factory(**settings)`` starts one (settings as ``kvtier serve`` flags with ``_``,
e.g. ``dram_gb=0.001``) and returns a ``Served`` with its URLs; ``served.stop()`` sends
SIGTERM and waits (the exit status is kept), ``served.restart()`` starts it again on the
same ports and folder. Every server still running is stopped at the end of the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cacheserver.process import ServiceProcess


@dataclass
class Served(ServiceProcess):
    """A test's service: small tiers (10 MiB DRAM, 50 MiB flash) and a Unix socket too."""

    def __post_init__(self) -> None:
        self.settings = {"unix_socket": self.unix_path, "dram_gb": 0.01, "flash_gb": 0.05, **self.settings}

    @property
    def unix_path(self) -> str:
        return str(Path(self.folder) / "kvtier.sock")

    @property
    def unix_url(self) -> str:
        return f"unix://{self.unix_path}"

    def stats(self) -> dict:
        """The service's ``GET /v1/stats``."""
        return httpx.get(self.rest_url + "/v1/stats").json()


def _servers(base: Path):
    started: list[Served] = []

    def start(**settings) -> Served:
        folder = base / f"server{len(started)}"
        folder.mkdir()
        served = Served(folder, settings).start()
        started.append(served)
        return served

    return start, started


@pytest.fixture
def serve_factory(tmp_path):
    start, started = _servers(tmp_path)
    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One server shared by a test module (10 MiB DRAM, 50 MiB flash, admin token
    ``secret``): tests that use it must not depend on what the others stored."""
    start, started = _servers(tmp_path_factory.mktemp("served"))
    yield start(admin_token="secret")
    for s in started:
        s.stop()


@pytest.fixture
def served(serve_factory) -> Served:
    """One server of its own for a test (10 MiB DRAM, 50 MiB flash, no admin token)."""
    return serve_factory()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster on loopback for a test module: 3 primaries, 3 replicas."""
    from benchmarks.redis_servers import RedisCluster

    c = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped where PyTorch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
