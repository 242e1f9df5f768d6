"""Shared pytest set-up: the versions a run used go into its header, so a CI log shows them."""

from __future__ import annotations

import platform

import numpy
import torch
import torchvision


def pytest_report_header() -> list[str]:
    return [
        f"torch {torch.__version__} (CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads), torchvision {torchvision.__version__}, numpy {numpy.__version__}, "
        f"{platform.machine()}"
    ]
