"""How big a network is: parameters and the bytes of its saved weights (every stage reports both)."""

from __future__ import annotations

import io


def count_params(model) -> int:
    """Number of parameters of a torch module."""
    return int(sum(p.numel() for p in model.parameters()))


def state_dict_bytes(module) -> int:
    """Bytes of a network's weights as torch.save writes them (no optimiser state)."""
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return len(buf.getvalue())


def vm_hwm_mb() -> float:
    """This process's peak resident set in MB (VmHWM; ru_maxrss would carry a parent's peak across exec), or
    NaN where /proc/self/status has no VmHWM (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
