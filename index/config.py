"""IndexConfig: one typed config for the embedding, index building, mining and search commands."""
from __future__ import annotations

import dataclasses

from common import fsio


@dataclasses.dataclass
class EmbedSection:
    checkpoint: str = ""          # pretrain export dir (model.pt + model_config.json)
    batch_size: int = 32
    actors: int = 0               # 0: one per GPU when the cluster has GPUs, else 2
    gpus_per_actor: float = 1.0   # used only when the cluster has GPUs
    overwrite: bool = False       # re-embed shards that already have a stats marker


@dataclasses.dataclass
class BuildSection:
    vectors: str = "video"        # which embedding to index: video | text
    factory: str = "auto"         # a FAISS factory string, or auto (from count, dim and memory budget)
    memory_budget_mb: float = 4096.0
    flat_max: int = 20000         # at most this many vectors: exact search (Flat)
    train_size: int = 0           # 0: auto (64 points per IVF list, at most all vectors)
    shards_per_task: int = 4      # embedding shards added per partial index (one Ray task each)
    merge: str = "memory"         # memory | ondisk (IVF only: inverted lists in an .ivfdata file, memory-mapped)
    gpu: str = "auto"             # auto | on | off (train and add on GPU when faiss-gpu sees a GPU)
    rebuild: bool = False         # `build` over an existing index replaces it (only once the new one is complete)


@dataclasses.dataclass
class MineSection:
    k: int = 5                    # pseudo-positives kept per clip
    tau: float = 0.9              # caption cosine gate (WSRA Eq. 10)
    search_k: int = 64            # neighbours fetched per clip before the video and caption filters
    clips_per_task: int = 20000
    out: str = ""                 # table URL; empty: <index>/pseudo_positives.json


@dataclasses.dataclass
class SearchSection:
    text: str = ""                # natural-language query (needs embed.checkpoint or the one recorded at embed time)
    clip: str = ""                # or a sample key: its own embedding is the query
    k: int = 10
    nprobe: int = 16


@dataclasses.dataclass
class IndexConfig:
    shards: str = ""              # shard set URL (contract 2)
    model_tag: str = "default"    # embeddings live under <shards>/embeddings/<model_tag>/
    embeddings: str = ""          # explicit embedding dir; empty: derived from shards and model_tag
    index: str = ""               # index dir URL; empty: <embeddings>/index
    ray_address: str = ""
    num_cpus: int = 0             # local Ray only; 0: all
    seed: int = 0
    embed: EmbedSection = dataclasses.field(default_factory=EmbedSection)
    build: BuildSection = dataclasses.field(default_factory=BuildSection)
    mine: MineSection = dataclasses.field(default_factory=MineSection)
    search: SearchSection = dataclasses.field(default_factory=SearchSection)

    def embeddings_url(self) -> str:
        if self.embeddings:
            return self.embeddings
        if not self.shards:
            raise ValueError("set shards=<shard set URL> or embeddings=<embedding dir>")
        return fsio.join(self.shards, "embeddings", self.model_tag)

    def index_url(self) -> str:
        return self.index or fsio.join(self.embeddings_url(), "index")

    def table_url(self) -> str:
        return self.mine.out or fsio.join(self.index_url(), "pseudo_positives.json")
