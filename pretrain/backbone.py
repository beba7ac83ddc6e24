"""open_clip backbone with token outputs: per-frame patch grid + CLS, word tokens + EOT.

Our tiny configs in `pretrain/model_configs/` are registered with open_clip on import, so
`open_clip.create_model("stg-tiny")` works. Weights never download: `pretrained` is a local file in any released
format (pretrain/clip_weights.py), or an open_clip tag whose file is already in the local cache (HF hub cache or
~/.cache/clip). The architecture beyond the name (activation, image size, mean/std) comes resolved from
pretrain/architecture.py, so the same config always builds the same forward pass.
"""
from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.open_clip_models import CONFIG_DIR, weights_follow  # noqa: F401 - registers our configs


class Backbone(nn.Module):
    """Image and text towers of an open_clip CLIP model, exposing tokens as well as pooled features.

    Video tokens and word tokens are mapped through open_clip's own output projections (visual.proj,
    text_projection), so local and global features start in the same CLIP embedding space.
    """

    def __init__(self, name: str, pretrained: str | None = None, *, quick_gelu: bool, image_size: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float], weights=None):
        """`pretrained`: a local weights file (an open_clip tag is resolved to its file by
        pretrain.architecture.resolve, which also gives the other arguments); `weights`: that file already read
        (clip_weights.Weights)."""
        super().__init__()
        from pretrain import architecture, clip_weights
        from pretrain.model_config import ModelConfig

        kwargs = architecture.create_kwargs(ModelConfig(backbone=name, quick_gelu=quick_gelu, image_size=image_size))
        if pretrained:
            weights = weights if weights is not None else clip_weights.read(pretrained)
        # open_clip's "Model initialized randomly" warning tells nothing here or the opposite of what happens:
        # with a file its weights are loaded right below; without one the config asks for random
        # initialisation, or weights follow (an export, a checkpoint, a warm start)
        with weights_follow():
            clip = open_clip.create_model(name, **kwargs)
        if pretrained:
            clip.load_state_dict(clip_weights.fit(clip, weights, name, resize="force_image_size" in kwargs))
        if not hasattr(clip, "token_embedding") or not hasattr(clip.visual, "conv1"):
            raise ValueError(f"backbone {name!r}: only open_clip ViT image towers with the built-in text "
                             f"transformer are supported (need patch tokens and word tokens)")
        # CLIP's own logit_scale (unused here) is a 0-dim parameter, which DeepSpeed's broadcast (uint8 view) and
        # its ZeRO-0 gradient clipping cannot handle: give every scalar parameter shape (1,)
        for pname, param in list(clip.named_parameters()):
            if param.dim() == 0:
                owner = clip.get_submodule(pname.rpartition(".")[0]) if "." in pname else clip
                setattr(owner, pname.rpartition(".")[2], nn.Parameter(param.data.reshape(1),
                                                                     requires_grad=param.requires_grad))
        self.clip = clip
        self.name = name
        visual = clip.visual
        visual.output_tokens = True
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        grid = visual.grid_size
        self.grid = (int(grid[0]), int(grid[1]))
        self.vision_dim = int(visual.output_dim)
        proj = clip.text_projection
        self.text_dim = int(proj.shape[1] if isinstance(proj, torch.Tensor) else
                            proj.out_features if isinstance(proj, nn.Linear) else clip.transformer.width)
        self.context_length = int(clip.context_length)
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        self.tokenizer = open_clip.get_tokenizer(name)

    # --- freezing -------------------------------------------------------------------------------------------
    def freeze(self, mode: str, unfrozen_blocks: int = 0) -> None:
        """none: all trainable; all: nothing trainable; partial: only the last `unfrozen_blocks` transformer blocks
        of each tower plus their final norms and projections."""
        for p in self.parameters():
            p.requires_grad_(mode == "none")
        if mode != "partial":
            return
        clip = self.clip
        keep: list[nn.Module | nn.Parameter] = []
        if unfrozen_blocks > 0:
            keep += list(clip.visual.transformer.resblocks[-unfrozen_blocks:])
            keep += list(clip.transformer.resblocks[-unfrozen_blocks:])
        keep += [clip.visual.ln_post, clip.ln_final]
        for item in keep + [clip.visual.proj, clip.text_projection]:
            if item is None:
                continue
            params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
            for p in params:
                p.requires_grad_(True)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    # --- inputs ---------------------------------------------------------------------------------------------
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., H, W, 3) uint8 -> (..., 3, S, S) normalised float: short-side resize + centre crop to S."""
        if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
            raise ValueError(f"expected (..., H, W, 3) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
        lead = frames.shape[:-3]
        h, w = frames.shape[-3], frames.shape[-2]
        x = frames.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float().div_(255.0)
        s = self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[:, :, top:top + s, left:left + s]
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.reshape(*lead, 3, s, s)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    # --- towers ---------------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, S, S) -> CLS (n, Dv), patch tokens (n, gh*gw, Dv), both through visual.proj."""
        pooled, tokens = self.clip.visual(images)
        proj = self.clip.visual.proj
        if proj is not None:
            tokens = tokens @ proj
        return pooled, tokens

    @property
    def vision_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    def encode_image_block(self, images: torch.Tensor, block: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """encode_image plus the patch tokens after visual block `block` (1-based, < the tower's depth), taken by
        a forward hook on that block and mapped like the last layer's (the tower's ln_post, then visual.proj):
        (CLS, patch tokens, block tokens), the last two (n, gh*gw, Dv)."""
        if not 1 <= block < self.vision_layers:
            raise ValueError(f"visual block {block}: the image tower has {self.vision_layers} blocks; an earlier "
                             f"layer is one of 1..{self.vision_layers - 1}")
        visual = self.clip.visual
        seen: list[torch.Tensor] = []
        batch_first = getattr(visual.transformer, "batch_first", True)
        hook = visual.transformer.resblocks[block - 1].register_forward_hook(
            lambda _m, _i, out: seen.append(out if batch_first else out.transpose(0, 1)))
        try:
            pooled, tokens = self.encode_image(images)
        finally:
            hook.remove()
        mid = visual.ln_post(seen[0])[:, 1:]       # the class token is the first (open_clip's ViT)
        if visual.proj is not None:
            mid = mid @ visual.proj
        return pooled, tokens, mid

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> EOT (B, Dt), all token features (B, L, Dt), through text_projection."""
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding.to(cast)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        proj = clip.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        eot = tokens.argmax(dim=-1)  # the EOT id is the largest in CLIP's vocabulary
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return pooled, x
