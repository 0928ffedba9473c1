"""What every benchmark prints about where it ran: the machine, the load, the peak memory.

The benchmarks are scripts (``python benchmarks/X.py``); Python puts the script's own folder on
``sys.path``, so each imports this module as ``_common``.  They import the project as the installed
package ``flamingo_corpus`` (``make setup``, which installs ``pipeline/`` into ``.venv``): run them
with ``.venv/bin/python``.
"""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout: manifests/, and the cwd of child runs


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(torch: bool = False) -> str:
    """CPU model, cores, memory and Python version; with ``torch``, also the GPU and torch's version."""
    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError):
        mem = "? GiB"
    python = f"Python {platform.python_version()}"
    if not torch:
        return f"{cpu_model()}, {os.cpu_count()} cores, {mem}, {python}"
    import torch as t

    gpu = t.cuda.get_device_name(0) if t.cuda.is_available() else "no GPU"
    return f"{cpu_model()}, {os.cpu_count()} cores, {mem}, {gpu}, {python}, torch {t.__version__}"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or, with ``resource.RUSAGE_CHILDREN``, of its largest
    waited-for child) in MiB: ``ru_maxrss`` is in KiB on Linux."""
    return resource.getrusage(who).ru_maxrss / 1024
