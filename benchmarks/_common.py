"""Shared bits of the benchmark scripts: import path, machine description, results file."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` without an installed aiops
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("benchmarks")


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and library versions, GPU name when torch sees one."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        # other work on the machine skews absolute times; ratios from one run hold better
        "load_avg_1m_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:  # the code measured: commit, and whether the model code differed from it
        import subprocess

        git = ["git", "-C", str(REPO)]
        info["commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip()
        info["models_dirty"] = bool(subprocess.run(git + ["status", "--porcelain", "aiops/models", "aiops/detect"],
                                                   capture_output=True, text=True, timeout=10).stdout.strip())
    except Exception:  # noqa: BLE001 - informational
        pass
    for mod in ("numpy", "pandas", "torch", "statsforecast"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional, version only
            pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return info


def aiops_api(name: str):
    """``aiops.models.<name>`` (``detect_frame``/``forecast_frame``), or None before it exists."""
    try:
        import aiops.models as models

        return getattr(models, name)
    except (ImportError, AttributeError) as exc:
        logger.warning("aiops.models.%s is not available (%s); skipping the aiops detector", name, exc)
        return None


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=float))
    print(f"results written to {path}")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
