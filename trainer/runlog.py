"""Rank 0's records of one attempt: per-step JSON lines and TensorBoard events, synced to object storage at each
flush."""
from __future__ import annotations

import json
import os
import tempfile
import time

from common import fsio


class RunLog:
    """`<run>/logs/attempt-<first step>-<time>-<pid>.jsonl` and `<run>/tensorboard`. Disabled (every call a no-op)
    on ranks other than 0."""

    def __init__(self, run: str, first_step: int, enabled: bool):
        self.enabled = enabled
        self.records: list[dict] = []
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.url = fsio.join(run, "logs", f"attempt-{first_step:08d}-{stamp}-{os.getpid()}.jsonl")
        self.tb_url = fsio.join(run, "tensorboard")
        self._tmp = None
        if fsio.is_local(run):
            tb_dir = fsio.filesystem(self.tb_url)[1]
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="stg-tb-")
            tb_dir = self._tmp.name
        self.tb_dir = tb_dir
        self.writer = SummaryWriter(tb_dir)

    def step(self, record: dict) -> None:
        if self.enabled:
            self.records.append(record)

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k.replace(".", "/"), v, step)

    def flush(self) -> None:
        if not self.enabled:
            return
        fsio.write_text_atomic(self.url, "".join(json.dumps(r) + "\n" for r in self.records))
        self.writer.flush()
        if self._tmp is not None:
            for name in os.listdir(self.tb_dir):
                fsio.put_file_atomic(os.path.join(self.tb_dir, name), fsio.join(self.tb_url, name))

    def close(self) -> None:
        if self.enabled:
            self.flush()
            self.writer.close()
            if self._tmp is not None:
                self._tmp.cleanup()
