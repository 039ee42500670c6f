"""The machine a GPU check ran on: GPU model, driver and its CUDA version (nvidia-smi), torch, CUDA, cuDNN and triton
versions, CPU, and the source commit, as plain data for ``bncheck.gpu.report``."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess

from ..bench import cpu_name


def _driver_from_proc() -> dict:
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+([\d.]+)", f.read())
        return {"driver": m.group(1)} if m else {}
    except OSError:
        return {}


def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi") or next(
        (p for p in ("/usr/local/nvidia/bin/nvidia-smi", "/usr/bin/nvidia-smi") if os.access(p, os.X_OK)), None)
    if not exe:
        return {"nvidia_smi": "not found", **_driver_from_proc()}
    out = {}
    try:
        q = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        first = q.stdout.strip().splitlines()[0] if q.stdout.strip() else ""
        fields = [f.strip() for f in first.split(",")]
        if len(fields) == 5:
            out.update(gpu=fields[0], driver=fields[1], gpu_memory=fields[2], max_sm_clock=fields[3],
                       max_mem_clock=fields[4])
        else:
            out["nvidia_smi"] = (q.stderr or q.stdout).strip()[:200] or f"exit {q.returncode}"
        head = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        if m:
            out["driver_cuda"] = m.group(1)
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        out["nvidia_smi"] = f"{type(e).__name__}: {e}"[:200]
    if "driver" not in out:
        out.update(_driver_from_proc())
    return out


def _dist_version(*names) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    return None


def collect_environment(device: str) -> dict:
    """The machine and software versions (imports torch, not triton: importing triton would fix its mode)."""
    import torch

    from .. import __version__
    env = dict(device_type=device, bncheck=__version__, python=platform.python_version(), torch=torch.__version__,
               torch_cuda=torch.version.cuda, triton=_dist_version("triton", "pytorch-triton"),
               cuda_available=torch.cuda.is_available(), triton_interpret=os.environ.get("TRITON_INTERPRET"),
               cpu=cpu_name(), cpu_count=os.cpu_count(), platform=platform.platform())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), sms=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                   cudnn=torch.backends.cudnn.version())
    env.update(_nvidia_smi())
    env["commit"] = _git_commit()
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


__all__ = ["collect_environment"]
