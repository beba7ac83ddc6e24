"""Sharded DeepSpeed checkpoints under `<run>/checkpoints/step-XXXXXXXX/`, local or s3.

Every rank saves its DeepSpeed shards plus `trainer-rank<r>.pt` (step, data position, RNG states, counters) and,
for s3 runs, uploads them from a local scratch folder. The trainer file holds only plain values and tensors (the
python and numpy RNG states as lists, torch's as a tensor) and is read with `weights_only=True`: a file from run
storage that carries a pickled object is refused, not run. After a barrier, rank 0 writes `complete` (JSON), last:
only a folder with that marker is ever resumed from, so a save cut short by a crash is invisible. Pruning
deletes the marker of an old checkpoint before its shards for the same reason.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import tempfile
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from common import fsio
from common.errors import UserError

log = logging.getLogger(__name__)
MARKER = "complete"
PREFIX = "step-"


def tag(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def root(run: str) -> str:
    return fsio.join(run, "checkpoints")


def url_of(run: str, step: int) -> str:
    return fsio.join(root(run), tag(step))


def _steps(run: str) -> list[int]:
    return sorted(int(n[len(PREFIX):]) for n in fsio.listdir(root(run)) if n.startswith(PREFIX) and
                  n[len(PREFIX):].isdigit())


def complete_steps(run: str) -> list[int]:
    return [s for s in _steps(run) if fsio.exists(fsio.join(url_of(run, s), MARKER))]


def latest(run: str) -> int | None:
    done = complete_steps(run)
    return done[-1] if done else None


def read_marker(run: str, step: int) -> dict:
    return fsio.read_json(fsio.join(url_of(run, step), MARKER))


def rng_state() -> dict:
    """This process's RNG states as lists, numbers and tensors (what weights_only loading accepts)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": list(words), "gauss_next": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class UnsafeCheckpoint(UserError):
    """A trainer-state file that holds more than plain values and tensors."""


def read_trainer_state(path: str) -> dict:
    """A trainer-rank file, loaded without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a page of advice; the line naming the refused global is the one that matters
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln or "GLOBAL" in ln]
        why = f" ({lines[0].split(' Please')[0]})" if lines else ""
        raise UnsafeCheckpoint(f"checkpoint file [{path}]: refused, it holds more than plain values and "
                               f"tensors{why}") from None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def _local_dir(run: str):
    """A local folder standing for <run>/checkpoints: the real one for a local run, scratch for object stores."""
    if fsio.is_local(run):
        path = fsio.filesystem(root(run))[1]
        os.makedirs(path, exist_ok=True)
        yield path
    else:
        tmp = tempfile.mkdtemp(prefix="stg-ckpt-")
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def save(engine, run: str, step: int, trainer_state: dict, *, rank: int, world: int, keep_last: int,
         extra_marker: dict | None = None) -> str:
    """Collective: every rank calls it. Returns the checkpoint URL once it is complete. `keep_last` 0 prunes
    nothing (Ray Train prunes the checkpoints of its runs itself, cluster/pretrain.py)."""
    name = tag(step)
    url = url_of(run, step)
    if rank == 0 and fsio.exists(url):  # a half-written save of an earlier attempt
        fsio.remove(url)
    _barrier()
    with _local_dir(run) as local:
        engine.save_checkpoint(local, tag=name, save_latest=False)
        mine = os.path.join(local, name, f"trainer-rank{rank}.pt")
        torch.save({**trainer_state, "rng": rng_state()}, mine)
        if not fsio.is_local(run):
            # each rank uploads what it wrote itself (its shards live only on its node)
            for fname in sorted(os.listdir(os.path.join(local, name))):
                fsio.put_file_atomic(os.path.join(local, name, fname), fsio.join(url, fname))
    _barrier()
    if rank == 0:
        files = fsio.listdir(url)
        marker = {"step": step, "world_size": world, "zero_stage": engine.zero_optimization_stage(),
                  "files": files, **(extra_marker or {})}
        fsio.write_json_atomic(fsio.join(url, MARKER), marker)
        if keep_last > 0:
            prune(run, keep_last)
    _barrier()
    return url


def prune(run: str, keep_last: int) -> None:
    done = complete_steps(run)
    keep = set(done[-keep_last:])
    newest = done[-1] if done else -1
    for step in _steps(run):
        if step in keep or step > newest:  # a newer unmarked folder may be a save in progress
            continue
        delete(run, step)


def delete(run: str, step: int) -> None:
    """Marker first: a deletion cut short leaves an unmarked folder, never a marked one with shards missing."""
    url = url_of(run, step)
    marker = fsio.join(url, MARKER)
    if fsio.exists(marker):
        fsio.remove(marker)
    fsio.remove(url)
    log.info("deleted checkpoint %s", url)


@contextmanager
def weights_only_loads():
    """DeepSpeed's engine.load_checkpoint and zero_to_fp32 call torch.load(weights_only=False) on files from run
    storage and have no option for anything else: inside this block torch.load loads weights only, with the
    classes DeepSpeed pickles into its checkpoints allowed by name, so a tampered shard is refused instead of
    running code on every rank."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    real = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return real(f, *args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        torch.load = real


def load(engine, run: str, step: int, *, rank: int, world: int) -> dict:
    """Collective: restores module, optimizer and LR scheduler into `engine`; returns this rank's trainer state
    (its RNG states already applied)."""
    marker = read_marker(run, step)
    if marker["world_size"] != world:
        raise RuntimeError(f"checkpoint {url_of(run, step)} was written by {marker['world_size']} workers, this "
                           f"run has {world}: resume with cluster.workers={marker['world_size']}")
    name = tag(step)
    if fsio.is_local(run):
        local_root, tmp = fsio.filesystem(root(run))[1], None
    else:
        tmp = tempfile.mkdtemp(prefix="stg-ckpt-")
        local_root = tmp
        fs, path = fsio.filesystem(url_of(run, step))
        os.makedirs(os.path.join(tmp, name))
        for fname in _files_for_rank(marker["files"], rank):
            fs.get_file(f"{path}/{fname}", os.path.join(tmp, name, fname))
    try:
        try:
            with weights_only_loads():
                load_path, _ = engine.load_checkpoint(local_root, tag=name, load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpoint(f"checkpoint [{url_of(run, step)}]: refused, a DeepSpeed file holds pickled "
                                   f"objects, not only tensors ({str(e).splitlines()[-1].strip()[:160]})") from None
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {url_of(run, step)}")
        state = read_trainer_state(os.path.join(local_root, name, f"trainer-rank{rank}.pt"))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    set_rng_state(state.pop("rng"))
    return state


def _files_for_rank(files: list[str], rank: int) -> list[str]:
    """Shared files plus this rank's own shards (ZeRO keeps one optimizer/parameter file per data-parallel rank)."""
    def per_rank(f: str) -> bool:
        return "zero_pp_rank_" in f or f.startswith("trainer-rank")

    return [f for f in files if f != MARKER and (not per_rank(f) or f"zero_pp_rank_{rank}_" in f
                                                  or f == f"trainer-rank{rank}.pt")]


def download(run: str, step: int, dest: str) -> str:
    """Copy a complete checkpoint to local `dest`; returns the folder holding the tag folder."""
    marker = read_marker(run, step)
    fs, path = fsio.filesystem(url_of(run, step))
    os.makedirs(os.path.join(dest, tag(step)), exist_ok=True)
    for fname in marker["files"]:
        fs.get_file(f"{path}/{fname}", os.path.join(dest, tag(step), fname))
    return dest


def describe(run: str) -> str:
    return json.dumps({"complete": complete_steps(run), "all": _steps(run)})
