"""Dense bf16 peaks of accelerators, the denominator of model FLOP utilisation (benchmarks/gpu/check.py,
docs/gpu_check.md). Imports nothing: the GPU check reads it on a bare machine."""
from __future__ import annotations

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPS, from NVIDIA's data sheets; the first substring of the
# device name that matches wins, so the more specific names come first (GH200 before H200, H100 PCIe before H100).
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),          # H200 SXM
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),          # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),          # SXM4 and PCIe alike
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


def peak_bf16_tflops(name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None
