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


def count_macs(model, size: int = 512, in_channels: int = 4) -> int:
    """Multiply-accumulates of one (1, C, size, size) forward pass of a torch module in Conv/ConvTranspose/Linear
    layers."""
    import math

    import torch

    total = [0]

    def conv_hook(m, inp, out):
        k = int(math.prod(m.kernel_size))
        if isinstance(m, torch.nn.ConvTranspose2d):  # every input pixel scatters a k x k x cout patch
            total[0] += inp[0].numel() * k * m.out_channels // m.groups
        else:
            total[0] += out.numel() * k * m.in_channels // m.groups

    def linear_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, size, size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return int(total[0])


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
