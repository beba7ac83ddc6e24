"""What loading CLIP ViT-B/32 weights costs, per released format, against building the same model without weights.

    python -m benchmarks.speed.clip_weights [--repeat 1]

A random ViT-B-32 is written in each format (OpenAI's TorchScript archive, open_clip's state-dict .bin, safetensors)
into a temporary folder. Per format: the pre-flight check cluster.pretrain runs before Ray (open the file, fit it to
a meta model: pretrain.architecture.check) and a full build of the pretraining model from it (build_model), each as
a ratio to the baseline, building that model with random weights in the same run. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def write_formats(folder: str) -> dict[str, str]:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", quick_gelu=True).eval()
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    paths = {"torchscript": os.path.join(folder, "ViT-B-32.pt"),
             "bin": os.path.join(folder, "open_clip_pytorch_model.bin"),
             "safetensors": os.path.join(folder, "open_clip_model.safetensors")}
    torch.save(state, paths["bin"])
    save_file(state, paths["safetensors"])
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        clip.__dict__.pop(key, None)
        clip.register_buffer(key, torch.tensor(value))
    traced = torch.jit.trace_module(clip, {"encode_image": (torch.zeros(1, 3, 224, 224),)}, check_trace=False)
    with torch.no_grad():
        for _, p in traced.named_parameters():
            if p.dim() >= 2:
                p.data = p.data.half()
    traced.save(paths["torchscript"])
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    from pretrain import architecture
    from pretrain.model import build_model
    from pretrain.model_config import ModelConfig

    cfg = ModelConfig(backbone="ViT-B-32", freeze="partial", unfrozen_blocks=0, embed_dim=64, frames_in=2,
                      frames_selected=2)
    with tempfile.TemporaryDirectory(prefix="clip-weights-") as tmp:
        paths = write_formats(tmp)
        base = _best(lambda: build_model(cfg), args.repeat)
        out = {"baseline": "build_model ViT-B-32, random weights", "baseline_s": round(base, 3), "formats": {}}
        for fmt, path in paths.items():
            c = ModelConfig(**{**cfg.__dict__, "pretrained": path})
            check = _best(lambda: architecture.check(c), args.repeat)
            build = _best(lambda: build_model(c), args.repeat)
            out["formats"][fmt] = {"bytes": os.path.getsize(path), "check_s": round(check, 3),
                                   "check_ratio": round(check / base, 2), "build_s": round(build, 3),
                                   "build_ratio": round(build / base, 2)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
