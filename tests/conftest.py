"""Shared pytest set-up: the versions a run used go into its header, so a CI log shows them."""

from __future__ import annotations

import ctypes
import os
import platform
import signal
from collections.abc import Iterator

import numpy
import pytest
import torch
import torchvision


def _keep_freed_memory() -> None:
    """glibc's malloc hands every block over 32 MB (a batch of 128² feature maps) back to the kernel
    when it is freed, so the next one is page-faulted in again, zeroed page by page; two test workers
    doing that at once slow each other several times over (docs/reference.md). Here every block comes
    from the heap, which keeps up to 1 GiB of freed memory; the processes a test starts get the same
    through the environment. Elsewhere than glibc this does nothing."""
    if platform.system() != "Linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**30)
    os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(2**30))


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (``make test``), each worker process gets its share of the CPUs for torch
    (and for the processes a test starts): N workers with all the CPUs' threads each would fight for
    them, and OpenMP's waiting threads slow such a run many times over."""
    _keep_freed_memory()
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cpus // int(workers))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


LONGEST_FILES = (
    "test_inversion.py", "test_readme.py", "test_batch.py", "test_direction_fit.py", "test_benchmarks.py",
    "test_callbacks.py", "test_cli.py", "test_edit.py", "test_generator_parity.py", "test_generator.py",
)  # fmt: skip
"""The test files that take longest (40–110 s each on one core), longest first."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the longest files first. ``make test`` hands whole files to its workers in collection order
    (``--no-loadscope-reorder``), so a long file handed out last would leave one worker running it alone at
    the end; longest first, the short files fill the gaps. The order within a file stays."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_report_header() -> list[str]:
    return [
        f"torch {torch.__version__} (CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads), torchvision {torchvision.__version__}, numpy {numpy.__version__}, "
        f"{platform.machine()}"
    ]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): MTCNN's
    and the pose fits' thousands of tiny ops gain nothing from threads, and on a busy CPU OpenMP's
    waiting threads slow them ~10×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in this test, as in a terminal, even when the suite runs in a
    background job (whose shell starts Python with SIGINT ignored, and Python keeps it so)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same global torch random state, so a test's draws (``torch.rand``
    without a generator) are the same whatever ran before it and whichever tests were selected."""
    torch.manual_seed(0)
