"""Run a loss on two gloo ranks and compare it with one process: the check behind every "negatives gathered from
all ranks equal single-process negatives" test.

`loss_fn(rank, world, *params)` computes rank `rank`'s loss on its share of a global batch (world = 1: the whole
batch). `two_ranks` returns the ranks' mean loss and mean parameter gradients, which is what data-parallel
averaging (DDP, DeepSpeed) applies; `one_process` the same for world = 1. loss_fn must be a module-level function
(or a functools.partial of one) so that the spawned ranks can unpickle it.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_and_grads(loss_fn, rank: int, world: int, params):
    leaves = [p.clone().requires_grad_(True) for p in params]
    loss = loss_fn(rank, world, *leaves)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in leaves])


def _worker(rank, world, port, loss_fn, params, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss, grads = _loss_and_grads(loss_fn, rank, world, params)
        dist.all_reduce(loss)
        dist.all_reduce(grads)
        if rank == 0:
            torch.save({"loss": loss / world, "grads": grads / world}, out)
    finally:
        dist.destroy_process_group()
    # A rank whose result is saved leaves without the interpreter's teardown: there torch's C++ threads abort the
    # process now and then ("terminate called without an active exception", SIGABRT) after destroy_process_group has
    # returned on both ranks -- 2 in 60 runs with both cores busy, which failed a CI run. An exception above still
    # takes the normal path, so mp.spawn reports it with its traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def two_ranks(loss_fn, params) -> tuple[torch.Tensor, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_worker, args=(2, free_port(), loss_fn, list(params), out), nprocs=2, join=True)
        got = torch.load(out)
    return got["loss"], got["grads"]


def one_process(loss_fn, params) -> tuple[torch.Tensor, torch.Tensor]:
    return _loss_and_grads(loss_fn, 0, 1, params)


def assert_ranks_match_one_process(loss_fn, params) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ranks' mean loss and gradients equal one process's; returns the one-process (loss, grads)."""
    dist_loss, dist_grads = two_ranks(loss_fn, params)
    loss, grads = one_process(loss_fn, params)
    torch.testing.assert_close(dist_loss, loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dist_grads, grads, atol=1e-6, rtol=1e-5)
    return loss, grads


def share(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s rows of a global batch."""
    b = x.shape[0] // world
    return x[rank * b:(rank + 1) * b]
