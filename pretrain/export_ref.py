"""Export: one pretrain export (contract 3) as every later stage reads it: its folder, its key, its model config and
what follows from the config alone (backbone, tokenizer, image size, visual depth), and its model.

Thin on purpose: how model_config.json is written and how the backbone is rebuilt stay in pretrain/model.py and
pretrain/backbone.py; this only says where an export is and asks them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from common import fsio
from pretrain.export_key import export_folder, export_key


@dataclass(frozen=True)
class Export:
    folder: str       # the export folder (model.pt + model_config.json), local or a URL
    weights: str = ""  # the .pt file named instead of the folder, which load_model reads (as pretrain.load_model
                       # always has); "" reads <folder>/model.pt. The key hashes <folder>/model.pt either way

    @classmethod
    def of(cls, checkpoint: str) -> "Export":
        """The export of a folder or of its model.pt."""
        named = str(checkpoint).rstrip("/")
        return cls(export_folder(checkpoint), named if named.endswith(".pt") else "")

    @property
    def run(self) -> str:
        """The pretrain run folder (<run>/export -> <run>); the export's own folder otherwise."""
        base = self.folder.rsplit("/", 1)
        return base[0] if len(base) == 2 and base[1] == "export" else self.folder

    def files(self) -> list[str]:
        return [fsio.join(self.folder, name) for name in ("model_config.json", "model.pt")]

    @functools.cached_property
    def key(self) -> str:
        """The export's identity (pretrain/export_key.py), what every derived cache is keyed by."""
        return export_key(self.folder)

    @functools.cached_property
    def model_config(self) -> dict:
        return fsio.read_json(fsio.join(self.folder, "model_config.json"))

    def _clip_config(self) -> dict:
        import open_clip

        import pretrain.open_clip_models  # noqa: F401 - registers the project's model configs with open_clip

        return open_clip.get_model_config(self.model_config["backbone"])

    def tokenizer(self):
        """The text tokenizer, from the config alone (no weights)."""
        import open_clip

        import pretrain.open_clip_models  # noqa: F401 - registers the project's model configs with open_clip

        return open_clip.get_tokenizer(self.model_config["backbone"])

    def image_size(self) -> int:
        """The image encoder's input size, from the config alone (recorded since the config holds the whole
        architecture, docs/contracts.md section 3; else the open_clip model config's)."""
        if self.model_config.get("image_size"):
            return int(self.model_config["image_size"])
        size = self._clip_config()["vision_cfg"]["image_size"]
        return int(size if isinstance(size, int) else size[0])

    def vision_depth(self) -> int:
        """The visual transformer's depth (blocks), from the config alone."""
        return int(self._clip_config()["vision_cfg"]["layers"])

    def load_model(self, map_location="cpu"):
        """The model in eval mode (pretrain.model.load_model); ExportMissing / ExportError name what is wrong."""
        from pretrain.model import load_model

        return load_model(self.weights or self.folder, map_location)


__all__ = ["Export"]
