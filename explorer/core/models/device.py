"""Which torch device a backend runs on, and how many CPU threads torch may use."""

from __future__ import annotations

import os
import threading

import torch

from ..errors import ModelUnavailable

_threads_lock = threading.Lock()
_threads_done = False


def pick_device(settings_device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is a torch device string (``cpu``, ``cuda:1``...)."""
    name = (settings_device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ModelUnavailable(f"unknown device '{settings_device}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device '{settings_device}' was asked for but CUDA is not available here; use auto or cpu")
    return device


def configure_cpu_threads() -> None:
    """Let torch use every core this process may run on, once, unless the environment already says how many."""
    global _threads_done
    with _threads_lock:
        if _threads_done:
            return
        _threads_done = True
        if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
            return
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
        if n > 0:
            torch.set_num_threads(n)
