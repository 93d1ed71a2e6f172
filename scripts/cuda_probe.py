#!/usr/bin/env python3
"""Probe torch's CUDA behaviour on the divergences the GPU run reported (all-ignored mean,
float class indices on an empty batch), next to the CPU's, for docs/findings.md."""
import torch
import torch.nn.functional as F

for dev in ("cpu", "cuda"):
    for dt in (torch.float32, torch.float16):
        for shape, t in (((3,), torch.tensor(-100)), ((2, 3), torch.tensor([-100, -100])),
                         ((2, 3, 2), torch.full((2, 2), -100))):
            x = torch.randn(*shape, dtype=dt, device=dev)
            v = F.cross_entropy(x, t.to(dev), reduction="mean")
            print(f"{dev:4s} {str(dt):14s} input {tuple(shape)} all ignored, mean -> {v.item()}")
    try:
        v = F.cross_entropy(torch.zeros(0, 1, device=dev), torch.zeros(0, device=dev), reduction="none")
        print(f"{dev:4s} float class indices on an empty batch: accepted, shape {tuple(v.shape)}")
    except Exception as e:  # noqa: BLE001
        print(f"{dev:4s} float class indices on an empty batch: {type(e).__name__}: {e}")
