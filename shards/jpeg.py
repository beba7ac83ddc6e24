"""Decoding a shard's JPEG frames, on the CPU (PIL) or on a torch device (torchvision.io.decode_jpeg: nvJPEG on a
GPU). Imports only numpy, PIL and (for a device) torch/torchvision, so benchmarks/gpu/check.py can time it on a bare
GPU machine."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

class JpegError(ValueError):
    """Blob `index` of a batch is not a JPEG image."""

    def __init__(self, index: int, detail: str):
        super().__init__(f"frame {index}: {detail}")
        self.index = index


decoded_frames = 0  # JPEG frames this process has decoded (benchmarks and the loader's batches report it)


def decode_jpegs(blobs: list[bytes], device=None) -> list:
    """Decoded RGB frames of JPEG blobs: device None decodes with PIL on this CPU into (H, W, 3) uint8 arrays; a
    torch device ("cpu", "cuda") decodes the batch with torchvision.io.decode_jpeg on it (nvJPEG on a GPU) into
    (H, W, 3) uint8 tensors there. Raises JpegError naming the first blob that is not a JPEG image."""
    global decoded_frames
    if device is None:
        out = []
        for j, b in enumerate(blobs):
            try:
                with Image.open(io.BytesIO(b)) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for broken data
                raise JpegError(j, str(exc)) from None
        decoded_frames += len(out)
        return out
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    try:
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device) if data else []
    except (RuntimeError, ValueError):
        out = []
        for j, d in enumerate(data):  # a batch fails as a whole: find the bad one
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except (RuntimeError, ValueError) as exc:
                raise JpegError(j, str(exc).splitlines()[0]) from None
    decoded_frames += len(out)
    return [x.permute(1, 2, 0) for x in out]
