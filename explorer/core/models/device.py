"""Device choice and CPU thread set-up for torch backends."""

from __future__ import annotations

import os
import threading

_configured = False
_lock = threading.Lock()


def pick_device(settings_device: str = "auto"):
    import torch

    if settings_device in ("", "auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(settings_device)


def configure_cpu_threads() -> None:
    """Use every core for intra-op work, once, unless the user set a thread count."""
    global _configured
    with _lock:
        if _configured:
            return
        import torch

        if not os.environ.get("OMP_NUM_THREADS") and not os.environ.get("EXPLORER_THREADS"):
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        elif os.environ.get("EXPLORER_THREADS"):
            torch.set_num_threads(int(os.environ["EXPLORER_THREADS"]))
        _configured = True
