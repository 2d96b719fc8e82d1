"""Which machine a run happened on, for model cards and baselines (standard library only, so the separate
Ultralytics environment of tools/yolo_baseline.py can import it too)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """E.g. "AMD EPYC 7B13": /proc/cpuinfo's model name where there is one, else the platform's word."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """E.g. "AMD EPYC 7B13, 2 cores (Linux x86_64)", for the training time in model cards."""
    return f"{cpu_name()}, {os.cpu_count()} cores ({platform.system()} {platform.machine()})"
