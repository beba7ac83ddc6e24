"""IndexConfig: one typed config for the embedding, index building, mining and search commands."""
from __future__ import annotations

import dataclasses

from common import fsio
from common.config import ConfigError


@dataclasses.dataclass
class EmbedSection:
    checkpoint: str = ""          # pretrain export dir (model.pt + model_config.json)
    batch_size: int = 32          # clips per forward pass
    actors: int = 0               # 0: one per GPU when the cluster has GPUs, else 2
    gpus_per_actor: float = 1.0   # used only when the cluster has GPUs
    overwrite: bool = False       # re-embed every shard (needed to switch the tag to another export)


@dataclasses.dataclass
class BuildSection:
    vectors: str = "video"        # which embedding to index: video | text
    factory: str = "auto"         # a FAISS factory string, or auto (from count, dim and memory budget)
    memory_budget_mb: float = 4096.0  # what the index may take in memory (auto factory)
    flat_max: int = 20000         # at most this many vectors: exact search (Flat)
    train_size: int = 0           # 0: auto (64 points per IVF list, at most all vectors)
    shards_per_task: int = 4      # embedding shards added per partial index (one Ray task each)
    merge: str = "memory"         # memory | ondisk (IVF only: inverted lists in an .ivfdata file, memory-mapped)
    gpu: str = "auto"             # auto | on | off (train and add on GPU when faiss-gpu sees a GPU)
    rebuild: bool = False         # `build` over an existing index replaces it (only once the new one is complete)


@dataclasses.dataclass
class MineSection:
    k: int = 5                    # pseudo-positives kept per clip
    tau: float = 0.9              # caption cosine gate (WSRA Eq. 10), in [-1, 1]
    search_k: int = 64            # neighbours fetched per clip before the video and caption filters (>= k)
    clips_per_task: int = 20000   # query clips per Ray task
    out: str = ""                 # table folder URL; empty: <index>/pseudo_positives
    overwrite: bool = False       # replace a table mined with other settings or from another index version


@dataclasses.dataclass
class SearchSection:
    text: str = ""                # natural-language query (needs embed.checkpoint or the one recorded at embed time)
    clip: str = ""                # or a sample key: its own embedding is the query
    k: int = 10                   # neighbours shown
    nprobe: int = 16              # IVF lists visited per query (search and mine)


@dataclasses.dataclass
class IndexConfig:
    shards: str = ""              # shard set URL (contract 2)
    model_tag: str = "default"    # embeddings live under <shards>/embeddings/<model_tag>/
    embeddings: str = ""          # explicit embedding dir; empty: derived from shards and model_tag
    index: str = ""               # index dir URL; empty: <embeddings>/index
    ray_address: str = ""         # Ray cluster address; empty: RAY_ADDRESS, else a local Ray
    num_cpus: int = 0             # local Ray only; 0: all
    seed: int = 0                 # draws the IVF training sample
    embed: EmbedSection = dataclasses.field(default_factory=EmbedSection)  # `embed`
    build: BuildSection = dataclasses.field(default_factory=BuildSection)  # `build` and `add`
    mine: MineSection = dataclasses.field(default_factory=MineSection)     # `mine`
    search: SearchSection = dataclasses.field(default_factory=SearchSection)  # `search`

    def embeddings_url(self) -> str:
        if self.embeddings:
            return self.embeddings
        if not self.shards:
            raise ConfigError("shards: set shards=<shard set URL> or embeddings=<embedding dir>")
        return fsio.join(self.shards, "embeddings", self.model_tag)

    def index_url(self) -> str:
        return self.index or fsio.join(self.embeddings_url(), "index")

    def table_url(self) -> str:
        return self.mine.out or fsio.join(self.index_url(), "pseudo_positives")

    def validate(self, command: str) -> "IndexConfig":
        """Refuse values that cannot be meant, before any cluster is started."""
        e, b, m, s = self.embed, self.build, self.mine, self.search
        checks = [
            ("num_cpus", self.num_cpus >= 0, "must be >= 0"),
            ("model_tag", bool(self.model_tag.strip()) and "/" not in self.model_tag, "must be a non-empty name"),
            ("embed.batch_size", e.batch_size > 0, "must be > 0"),
            ("embed.actors", e.actors >= 0, "must be >= 0"),
            ("embed.gpus_per_actor", e.gpus_per_actor > 0, "must be > 0"),
            ("build.vectors", b.vectors in ("video", "text"), "must be video or text"),
            ("build.factory", bool(b.factory.strip()), "must be auto or a FAISS factory string"),
            ("build.memory_budget_mb", b.memory_budget_mb > 0, "must be > 0"),
            ("build.flat_max", b.flat_max >= 0, "must be >= 0"),
            ("build.train_size", b.train_size >= 0, "must be >= 0"),
            ("build.shards_per_task", b.shards_per_task > 0, "must be > 0"),
            ("build.merge", b.merge in ("memory", "ondisk"), "must be memory or ondisk"),
            ("build.gpu", b.gpu in ("auto", "on", "off"), "must be auto, on or off"),
            ("mine.k", m.k > 0, "must be > 0"),
            ("mine.tau", -1.0 <= m.tau <= 1.0, "is a cosine threshold in [-1, 1]"),
            ("mine.search_k", m.search_k >= m.k, f"must be >= mine.k ({m.k})"),
            ("mine.clips_per_task", m.clips_per_task > 0, "must be > 0"),
            ("search.k", s.k > 0, "must be > 0"),
            ("search.nprobe", s.nprobe > 0, "must be > 0"),
        ]
        for key, ok, problem in checks:
            if not ok:
                value = _value(self, key)
                raise ConfigError(f"config [{key}]: {problem}, got {value!r}")
        if command == "embed":
            if not self.shards:
                raise ConfigError("config [shards]: embed needs shards=<shard set URL>")
            if not e.checkpoint:
                raise ConfigError("config [embed.checkpoint]: embed needs embed.checkpoint=<pretrain export dir>")
        if command == "search":
            if bool(s.text.strip()) == bool(s.clip.strip()):
                raise ConfigError("config [search.text]: search needs exactly one non-empty search.text=<query> "
                                  "or search.clip=<sample key>")
        self.embeddings_url()  # shards or embeddings must be given
        return self


def _value(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg
