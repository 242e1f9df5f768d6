"""Shared pytest set-up: the versions a run used go into its header, so a CI log shows them."""

from __future__ import annotations

import platform
import signal
from collections.abc import Iterator

import numpy
import pytest
import torch
import torchvision


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
