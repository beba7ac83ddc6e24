"""CLIP weight files as released, read without running code, and what each says about how it was trained.

Formats: OpenAI's TorchScript archive (`ViT-B-32.pt`), open_clip's state-dict files (`open_clip_pytorch_model.bin`,
the GitHub release `.pt`/`.pth`), safetensors (`open_clip_model.safetensors`, and the backbone file of our exports),
and an open_clip tag resolved to one of those in the local Hugging Face cache or ~/.cache/clip (never downloaded).

A TorchScript archive is a zip whose data.pkl pickles the traced modules; torch.load(weights_only=True) refuses it
and torch.jit.load would deserialize its code. Here data.pkl is unpickled with only tensors, storages and ordered
dicts allowed, every module class replaced by a plain attribute holder, so only the tensors come out.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass

import torch

from common.errors import UserError

# entries of OpenAI's archive that are not weights (build_model_from_openai_state_dict drops the same)
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


class WeightsError(UserError, ValueError):
    """A weights file that cannot be read, or does not fit the backbone it is given to."""


class WeightsMissing(UserError, FileNotFoundError):
    """No weights file where model.pretrained points, nor a cached file of that open_clip tag."""


@dataclass
class Weights:
    path: str
    format: str                      # torchscript | state_dict | safetensors
    state: dict[str, torch.Tensor]
    quick_gelu: bool | None          # the activation the file says its weights were trained with; None: silent
    why: str                         # where quick_gelu comes from, for the log
    meta: dict                       # our safetensors metadata (image_mean, image_std, ...); {} otherwise


def hf_cache_dir() -> str:
    """The Hugging Face hub cache as the environment names it now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def clip_cache_dir() -> str:
    return os.path.expanduser("~/.cache/clip")


def cached_tag_file(name: str, tag: str) -> tuple[str, dict]:
    """The local file of open_clip's pretrained `tag` for model `name` and the tag's config (quick_gelu, mean,
    std); a WeightsError when the tag is unknown or its file is not in the local cache (nothing downloads)."""
    import open_clip

    cfg = open_clip.pretrained.get_pretrained_cfg(name, tag)
    if not cfg and (os.sep in tag or "/" in tag):
        raise WeightsMissing(f"model.pretrained [{tag}]: no such file")
    if not cfg:
        raise WeightsMissing(
            f"model.pretrained={tag!r} is neither a local weights file nor an open_clip tag of {name!r} "
            f"(tags: {open_clip.list_pretrained_tags_by_model(name)})")
    candidates = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo = cfg["hf_hub"].rstrip("/")
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname, cache_dir=hf_cache_dir())
            if isinstance(hit, str):
                candidates.append(hit)
    if cfg.get("url"):
        candidates.append(os.path.join(clip_cache_dir(), os.path.basename(cfg["url"])))
    for path in candidates:
        if os.path.isfile(path):
            return path, cfg
    where = [f"{hf_cache_dir()} ({cfg['hf_hub'].rstrip('/')})"] if cfg.get("hf_hub") else []
    where += [os.path.join(clip_cache_dir(), os.path.basename(cfg["url"]))] if cfg.get("url") else []
    raise WeightsMissing(
        f"model.pretrained={tag!r}: the weights of {name!r} {tag!r} are not in the local cache ({', '.join(where)}) "
        f"and this project never downloads at run time; download them yourself and pass model.pretrained=FILE")


def _tag_of_file(path: str) -> tuple[str, str, dict] | None:
    """(model, tag, tag config) of the open_clip release this file is, by its HF cache repo or release file name."""
    import open_clip

    parts = os.path.realpath(path).split(os.sep) + os.path.abspath(path).split(os.sep)
    repos = {p[len("models--"):].replace("--", "/") for p in parts if p.startswith("models--")}
    base = os.path.basename(path)
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.pretrained.get_pretrained_cfg(model, tag)
        if (cfg.get("hf_hub") and cfg["hf_hub"].rstrip("/") in repos) or (
                cfg.get("url") and os.path.basename(cfg["url"]) == base and "openaipublic" not in cfg["url"]):
            return model, tag, cfg
    return None


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("/constants.pkl") for n in z.namelist())


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool}


class _Attributes:
    """Stand-in for every TorchScript module class: keeps the pickled attributes, runs nothing."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"_state": state})


def _read_torchscript(path: str) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
        prefix = pkl[: -len("data.pkl")]

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module.startswith("__torch__"):
                    return _Attributes
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return torch._utils._rebuild_tensor_v2
                if (module, name) == ("collections", "OrderedDict"):
                    import collections
                    return collections.OrderedDict
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _STORAGE_DTYPES[name]
                raise pickle.UnpicklingError(f"{module}.{name} is not a tensor or a module's attributes")

            def persistent_load(self, pid):
                kind, dtype, key, _location, _numel = pid
                if kind != "storage" or not isinstance(dtype, torch.dtype):
                    raise pickle.UnpicklingError(f"persistent id {kind!r}")
                raw = bytearray(z.read(f"{prefix}data/{key}"))
                untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
                return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)

        root = Unpickler(io.BytesIO(z.read(pkl))).load()
    state: dict[str, torch.Tensor] = {}

    def walk(obj, prefix_: str) -> None:
        for key, value in vars(obj).items():
            if isinstance(value, torch.Tensor):
                state[prefix_ + key] = value
            elif isinstance(value, _Attributes):
                walk(value, f"{prefix_}{key}.")

    walk(root, "")
    return state


def read(path: str) -> Weights:
    """The tensors of a released CLIP weights file and what it says of its activation; a WeightsError in one line
    for a file that is missing, truncated, holds code or objects, or is not a state dict of tensors."""
    if not os.path.isfile(path):
        raise WeightsMissing(f"model.pretrained [{path}]: no such file")
    meta: dict = {}
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
            fmt = "safetensors"
        elif _is_torchscript(path):
            state, fmt = _read_torchscript(path), "torchscript"
        else:
            state, fmt = torch.load(path, map_location="cpu", weights_only=True), "state_dict"
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except pickle.UnpicklingError as e:
        with open(path, "rb") as f:   # torch files are zips (PK) or legacy pickles (protocol byte 0x80)
            magic = f.read(2)
        if magic != b"PK" and magic[:1] != b"\x80":
            raise WeightsError(f"model.pretrained [{path}]: not a weights file (neither safetensors, a TorchScript "
                               f"archive nor a torch state dict)") from None
        raise WeightsError(f"model.pretrained [{path}]: holds pickled objects, not only tensors; refused "
                           f"({str(e).splitlines()[0][:200]})") from None
    except Exception as e:  # noqa: BLE001 - zip, safetensors and torch each raise their own kinds for a bad file
        raise WeightsError(f"model.pretrained [{path}]: truncated or not a weights file "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"model.pretrained [{path}]: not a state dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    quick_gelu, why = None, ""
    if fmt == "torchscript":
        quick_gelu, why = True, "it is OpenAI's TorchScript archive (OpenAI trained CLIP with QuickGELU)"
    elif "quick_gelu" in meta:
        quick_gelu, why = meta["quick_gelu"] == "true", "its safetensors metadata says so"
    else:
        known = _tag_of_file(path)
        if known is not None:
            model, tag, cfg = known
            quick_gelu = bool(cfg.get("quick_gelu", False)) or bool(
                (__import__("open_clip").get_model_config(model) or {}).get("quick_gelu", False))
            why = f"it is open_clip's release {model} {tag!r}"
    return Weights(path, fmt, state, quick_gelu, why, meta)


def fit(model: torch.nn.Module, weights: Weights, name: str, resize: bool = False) -> dict[str, torch.Tensor]:
    """The file's tensors converted the way open_clip's load_checkpoint does (third-party layouts, a scalar or
    (1,) logit_scale; with `resize`, for a tower built at another image size, positional embeddings interpolated),
    checked by name and shape against `model` (a CLIP model on any device, meta included); a WeightsError listing
    the differences otherwise."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed

    expected = model.state_dict()
    state = {k: v for k, v in weights.state.items()
             if not (k in NOT_WEIGHTS or (k.endswith("attn_mask") and k not in expected))}
    state = convert_state_dict(model, state)
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in expected and state[key].ndim != expected[key].ndim:
            state[key] = state[key].reshape(expected[key].shape)
    if resize:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
             if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
        raise WeightsError(f"model.pretrained [{weights.path}]: does not fit model.backbone={name}: "
                           f"{'; '.join(parts)}")
    return state
