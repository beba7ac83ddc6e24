"""ShardConfig: the one typed config of the sharding stage (docs/contracts.md section 2 is its output)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from common.config import ConfigError

DISTRIBUTORS = ("ray", "sequential")


@dataclass
class ShardConfig:
    manifest: str = ""               # CSV `video_id,path` (local or fsspec URL), contract 1
    captions: str = ""               # caption.json; empty: caption.json beside the manifest
    output: str = ""                 # local folder or s3://bucket/prefix
    fps: float = 1.0                 # frames per second sampled from each video
    size: int = 224                  # short side resize, then centre crop to size x size
    window_frames: int = 16          # U: frames of the window the reader cuts around each segment (data.window_frames
                                     # may choose another at training time: the frames are stored once, not windows)
    videos_per_shard: int = 32       # videos per shard tar, in manifest order
    jpeg_quality: int = 90           # JPEG quality of the stored frames, 1..100
    ffmpeg_threads: int = 1          # decoder threads per video; 1 matches one task per core
    retries: int = 2                 # extra attempts for a shard task that raised (bad input never raises)
    distributor: str = "ray"         # ray | sequential (in-process, for debugging)
    ray_address: str = ""            # empty: RAY_ADDRESS, else a local Ray
    num_cpus_per_task: float = 1.0   # Ray CPUs reserved per shard task
    max_shards: int = 0              # 0: all; otherwise only the first n shards of the plan (debugging)
    progress: bool = True            # a progress bar on stderr

    def validate(self) -> "ShardConfig":
        if not self.manifest:
            raise ConfigError("config [manifest]: manifest=<manifest.csv> is required")
        if not self.output:
            raise ConfigError("config [output]: output=<folder or s3:// URL> is required")
        for key in ("fps", "size", "window_frames", "videos_per_shard", "ffmpeg_threads", "num_cpus_per_task"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config [{key}]: must be > 0, got {getattr(self, key)!r}")
        if self.max_shards < 0:
            raise ConfigError(f"config [max_shards]: must be >= 0, got {self.max_shards!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"config [jpeg_quality]: must be in 1..100, got {self.jpeg_quality}")
        if self.distributor not in DISTRIBUTORS:
            raise ConfigError(f"config [distributor]: must be one of {DISTRIBUTORS}, got {self.distributor!r}")
        if self.retries < 0:
            raise ConfigError(f"config [retries]: must be >= 0, got {self.retries!r}")
        return self

    def output_hash(self) -> str:
        """Hash of the fields that change the bytes of a shard; a finished shard made with another is refused."""
        keys = ("fps", "size", "window_frames", "videos_per_shard", "jpeg_quality")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
