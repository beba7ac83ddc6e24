"""Global-local contrastive model (Sec. 3): open_clip backbone, global f/g, local f'/g' + cross-modal branch,
Sinkhorn frame selection and L = L_local + L_global. Knows nothing of Ray or DeepSpeed.

Encoder API used by the trainer, grounding/, the index and finetune/:

    model = build_model(ModelConfig(...))           # or load_model(export_dir_or_model_pt)
    tokens = model.tokenize(["crack eggs"])         # (B, L) long
    x = model.preprocess_frames(frames_uint8)       # (..., H, W, 3) uint8 -> (..., 3, S, S) float
    fg, fl, grid = model.encode_frames(x)           # (B, U, d) L2-normed, (B, U, N, d) L2-normed, (gh, gw)
    tg, tl, mask = model.encode_text(tokens)        # (B, d) L2-normed, (B, K, d) L2-normed, (B, K) bool
    idx = model.select_frames(fg, fl, tg, tl, mask) # (B, T) frame indices in temporal order
    out = model({"frames": (B, U, H, W, 3) uint8, "tokens": (B, L)[, "valid_frames": (B,)]
                 [, "pp_tokens": (B, L), "pp_mask": (B,) bool]})   # pseudo-positive captions (pretrain.data)
        # {"loss" (graph), "loss_local", "loss_global", "logit_scale" (detached scalars), "selected": (B, T)}
        # + "loss_crossvideo", "crossvideo_frac" when pp_tokens are given and cfg.cross_video
        # with cfg.mil_windows: + "mil_tokens" (B * n, L), "mil_mask" (B, n) [, "video_ids" (B,), "asr_spans" (B, 2)]
    model.frame_scores(fg, tg)                      # (U, d) x (Q, d) -> (U, Q) cosine; (B, U, d) -> (B, U, Q)
    model.heatmap(frames, tokens)                   # (B, T, gh, gw): word-over-region attention of the query
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from pretrain import architecture, losses, sinkhorn
from pretrain.backbone import Backbone, weights_follow
from pretrain.model_config import ModelConfig


class ExportError(UserError, ValueError):
    """An export that cannot be loaded: truncated, not a plain state_dict, not matching its model_config.json."""


class ExportMissing(UserError, FileNotFoundError):
    """No export where one was named."""


class CrossModalAttention(nn.Module):
    """Parameter-free cross-modal attention of Sec. 3.3: each video token attends over the words with
    softmax_k(cos(v, s_k) / t), each word over the video tokens likewise; residual connections keep each token's
    own content. Returns the word-over-video attention for heatmaps."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, video: torch.Tensor, words: torch.Tensor, mask: torch.Tensor):
        scores = F.normalize(video, dim=-1) @ F.normalize(words, dim=-1).transpose(1, 2) / self.temperature
        v_att = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(dim=-1)     # (P, M, K)
        w_att = scores.transpose(1, 2).softmax(dim=-1)                                      # (P, K, M)
        return video + v_att @ words, words + w_att @ video, w_att


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        return x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]


class LocalBranch(nn.Module):
    """Cross-modal attention -> self-attention (per modality) -> cross-modal attention, then mean pooling:
    V_bar = mean over the T*N video tokens, S_bar = mean over the valid words (Sec. 3.3).

    The video self-attention runs over each frame's N tokens (scope "frame") or over all T*N tokens of the clip
    ("clip"); the paper does not say, and "frame" costs T times less attention, which matters because the branch
    runs once per (clip, caption) pair, imposters included."""

    def __init__(self, dim: int, heads: int, temperature: float, scope: str = "frame"):
        super().__init__()
        if scope not in ("frame", "clip"):
            raise ValueError(f"local self-attention scope must be frame|clip, got {scope!r}")
        self.scope = scope
        self.cross1 = CrossModalAttention(temperature)
        self.video_self = SelfAttention(dim, heads)
        self.text_self = SelfAttention(dim, heads)
        self.cross2 = CrossModalAttention(temperature)

    def forward(self, video: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, frames: int = 1):
        """video (P, M = frames * N, d), words (P, K, d), mask (P, K) -> V_bar (P, d), S_bar (P, d),
        word-to-token attention (P, K, M)."""
        v, s, _ = self.cross1(video, words, mask)
        if self.scope == "frame" and frames > 1:
            p, m, d = v.shape
            v = self.video_self(v.reshape(p * frames, m // frames, d)).reshape(p, m, d)
        else:
            v = self.video_self(v)
        s = self.text_self(s, pad=~mask)
        v, s, att = self.cross2(v, s, mask)
        m = mask.unsqueeze(-1).to(s.dtype)
        return v.mean(dim=1), (s * m).sum(1) / m.sum(1).clamp_min(1.0), att


class GlobalLocalModel(nn.Module):
    def __init__(self, cfg: ModelConfig, weights=None):
        """`cfg`'s unset architecture fields are resolved here (pretrain.architecture); self.cfg is the resolved
        config, the one pretraining records. `weights`: cfg.pretrained already read (clip_weights.Weights)."""
        super().__init__()
        if not architecture.is_resolved(cfg) or (cfg.pretrained and not os.path.isfile(cfg.pretrained)):
            cfg = architecture.resolve(cfg, weights)
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, quick_gelu=cfg.quick_gelu, image_size=cfg.image_size,
                                 mean=cfg.image_mean, std=cfg.image_std, weights=weights)
        self.backbone.freeze(cfg.freeze, cfg.unfrozen_blocks)
        bb = self.backbone
        self.image_size = bb.image_size
        self.grid = bb.grid
        d = cfg.embed_dim
        self.f = nn.Linear(bb.vision_dim, d)          # global video
        self.g = nn.Linear(bb.text_dim, d)            # global text
        self.f_local = nn.Linear(bb.vision_dim, d)    # f'
        self.g_local = nn.Linear(bb.text_dim, d)      # g'
        self.local = LocalBranch(d, cfg.local_heads, cfg.attention_temperature, cfg.local_attention)
        # shape (1,), not a 0-dim scalar: DeepSpeed's broadcast and its ZeRO-0 gradient clipping fail on 0-dim params
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.temperature)),
                                        requires_grad=cfg.learn_temperature)

    # --- inputs ---------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.backbone.tokenize(texts)

    def preprocess_frames(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        return self.backbone.preprocess(frames_uint8)

    def _images(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, W, 3) or preprocessed float (..., 3, S, S) -> float on the model's device."""
        device = self.logit_scale.device
        if frames.dtype == torch.uint8:
            return self.preprocess_frames(frames.to(device))
        if frames.shape[-3] != 3 or frames.shape[-1] != self.image_size:
            raise ValueError(f"float frames must be preprocessed (..., 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(frames.shape)}")
        return frames.to(device)

    # --- encoders -------------------------------------------------------------------------------------------
    def _backbone_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, U, 3, S, S) -> CLS (B, U, Dv), patches (B, U, N, Dv) in backbone space."""
        b, u = images.shape[:2]
        cls, tokens = self.backbone.encode_image(images.flatten(0, 1))
        return cls.view(b, u, -1), tokens.view(b, u, tokens.shape[1], -1)

    def encode_frames(self, frames: torch.Tensor):
        """(B, U, H, W, 3) uint8 or (B, U, 3, S, S) float -> global (B, U, d), local (B, U, N, d), grid (gh, gw).
        Both L2-normalised; global = f(CLS), local = f'(patch tokens)."""
        images = self._images(frames)
        if images.dim() == 4:
            images = images.unsqueeze(0)
        cls, tokens = self._backbone_frames(images)
        return F.normalize(self.f(cls), dim=-1), F.normalize(self.f_local(tokens), dim=-1), self.grid

    def encode_frames_block(self, frames: torch.Tensor, block: int):
        """encode_frames plus f'(patch tokens of the earlier visual block `block`): (global, local, block local
        (B, U, N, d), grid), the block's tokens through the same ln_post, proj and f' as the last layer's, so both
        scales live in the word-region space."""
        images = self._images(frames)
        if images.dim() == 4:
            images = images.unsqueeze(0)
        b, u = images.shape[:2]
        cls, tokens, mid = self.backbone.encode_image_block(images.flatten(0, 1), block)
        local = (lambda x: F.normalize(self.f_local(x.view(b, u, x.shape[1], -1)), dim=-1))  # noqa: E731
        return F.normalize(self.f(cls.view(b, u, -1)), dim=-1), local(tokens), local(mid), self.grid

    def _backbone_text(self, tokens: torch.Tensor):
        """EOT (B, Dt), word tokens (B, K, Dt) and mask (B, K): the tokens between SOT and EOT, at most K."""
        tokens = tokens.to(self.logit_scale.device)
        pooled, feats = self.backbone.encode_text(tokens)
        b, length = tokens.shape
        eot = tokens.argmax(dim=-1, keepdim=True)
        pos = 1 + torch.arange(self.cfg.max_words, device=tokens.device).expand(b, -1)
        mask = pos < eot
        empty = ~mask[:, 0]
        if empty.any():  # a caption without word tokens keeps its EOT as the single word
            pos = pos.clone()
            pos[empty, 0] = eot[empty, 0]
            mask = mask.clone()
            mask[empty, 0] = True
        pos = pos.clamp(max=length - 1)
        words = feats.gather(1, pos.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
        return pooled, words, mask

    def encode_text(self, tokens: torch.Tensor):
        """(B, L) -> global (B, d) = g(EOT), local (B, K, d) = g'(words) (zeros at padding), mask (B, K) bool."""
        pooled, words, mask = self._backbone_text(tokens)
        local = F.normalize(self.g_local(words), dim=-1) * mask.unsqueeze(-1)
        return F.normalize(self.g(pooled), dim=-1), local, mask

    # --- frame selection ------------------------------------------------------------------------------------
    def select_frames(self, frames_global, frames_local, text_global, text_local, text_mask,
                      frame_valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) indices of the selected frames (sorted), by cfg.selection at cfg's granularity (Table 5).
        Inputs as from encode_frames / encode_text (or any L2-normalised features of those shapes)."""
        cfg = self.cfg
        b, u = frames_global.shape[:2]
        if cfg.selection == "none" or cfg.frames_selected >= u:
            return sinkhorn.select_frames(frames_global.new_zeros(b, 1, u), text_mask[:, :1],
                                          min(cfg.frames_selected, u), "none", frame_valid=frame_valid)
        sim, mask = sinkhorn.word_frame_similarity(text_global, text_local, text_mask, frames_global,
                                                   frames_local, cfg.selection_text, cfg.selection_video)
        return sinkhorn.select_frames(sim.float(), mask, cfg.frames_selected, cfg.selection, cfg.sinkhorn_iters,
                                      cfg.sinkhorn_temperature, frame_valid)

    @torch.no_grad()
    def _selection_features(self, cls, tokens, pooled_text, words, mask):
        """Selection similarity lives in the global space (Sec. 3.2): f, g applied to CLS/patches and EOT/words."""
        cfg = self.cfg
        fg = F.normalize(self.f(cls), dim=-1)
        fl = F.normalize(self.f(tokens), dim=-1) if cfg.selection_video == "local" else None
        tg = F.normalize(self.g(pooled_text), dim=-1)
        tl = F.normalize(self.g(words), dim=-1) if cfg.selection_text == "local" else None
        return fg, fl, tg, tl, mask

    # --- training forward -----------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        cfg = self.cfg
        images = self._images(batch["frames"])
        if images.dim() != 5:
            raise ValueError(f"batch['frames'] must be (B, U, H, W, 3) uint8 or (B, U, 3, S, S), "
                             f"got {tuple(batch['frames'].shape)}")
        b, u = images.shape[:2]
        t = min(cfg.frames_selected, u)
        valid = batch.get("valid_frames")
        frame_valid = None
        if valid is not None:
            valid = torch.as_tensor(valid, device=images.device).view(b, 1)
            frame_valid = torch.arange(u, device=images.device).unsqueeze(0) < valid
        cross_video = cfg.cross_video and batch.get("pp_tokens") is not None
        if cross_video:
            # one text pass for the captions and the pseudo-positive captions: the same module calls on every
            # rank whatever its share of pseudo-positives (ZeRO-3 gathers parameters collectively per call)
            pooled_text, words, mask = self._backbone_text(torch.cat([batch["tokens"], batch["pp_tokens"]]))
            pooled_text, pooled_pp, words, mask = pooled_text[:b], pooled_text[b:], words[:b], mask[:b]
        else:
            pooled_text, words, mask = self._backbone_text(batch["tokens"])
        mil = cfg.mil_windows > 0 and batch.get("mil_tokens") is not None
        if mil:  # neighbouring windows' captions (B * n rows): the positives' bag of MIL-NCE (L_global)
            mil_pooled, _, _ = self._backbone_text(batch["mil_tokens"])
            bag = F.normalize(self.g(mil_pooled), dim=-1).view(b, -1, cfg.embed_dim)
        hard_text = hard_mask = None
        if batch.get("hard_tokens") is not None:  # verb-swapped captions: one hard negative per clip (L_global)
            hard_pooled, _, _ = self._backbone_text(batch["hard_tokens"])
            hard_text = F.normalize(self.g(hard_pooled), dim=-1)
            hard_mask = torch.as_tensor(batch["hard_mask"], device=images.device).bool().view(b)

        rows = torch.arange(b, device=images.device).unsqueeze(1)
        if cfg.selection == "none" or t == u:
            selected = self.select_frames(images.new_zeros(b, u, 1), None, None, None, mask, frame_valid)
            cls, tokens = self._backbone_frames(images[rows, selected])
        else:
            regrad = self.backbone.trainable and torch.is_grad_enabled()
            with torch.set_grad_enabled(not regrad and torch.is_grad_enabled()):
                cls_all, tok_all = self._backbone_frames(images)
            feats = self._selection_features(cls_all, tok_all, pooled_text, words, mask)
            selected = self.select_frames(*feats, frame_valid=frame_valid)
            if regrad:  # encode only the T selected frames with a graph: cheaper than backprop through U
                cls, tokens = self._backbone_frames(images[rows, selected])
            else:
                cls, tokens = cls_all[rows, selected], tok_all[rows, selected]

        scale = self.logit_scale.exp().clamp(max=100.0)[0]
        zero = scale.new_zeros(())
        loss_global = loss_local = zero
        if cfg.loss_global or cross_video:
            video = F.normalize(F.normalize(self.f(cls), dim=-1).mean(dim=1), dim=-1)
            text = F.normalize(self.g(pooled_text), dim=-1)
        if cfg.loss_global and mil:
            ids, spans = batch.get("video_ids"), batch.get("asr_spans")
            loss_global = losses.mil_contrastive(
                video, text, bag, torch.as_tensor(batch["mil_mask"], device=images.device).bool().view(b, -1),
                scale, cfg.margin, None if ids is None else torch.as_tensor(ids, device=images.device),
                None if spans is None else torch.as_tensor(spans, device=images.device, dtype=video.dtype),
                cfg.mil_shift, cfg.gather, hard_text, hard_mask)
        elif cfg.loss_global and cfg.frame_pool == "max":
            loss_global = losses.frame_max_contrastive(F.normalize(self.f(cls), dim=-1), text, scale, cfg.margin,
                                                       cfg.gather, hard_text, hard_mask)
        elif cfg.loss_global:
            loss_global = losses.contrastive(video, text, scale, cfg.margin, cfg.gather, hard_text, hard_mask)
        if cfg.loss_local:
            loss_local = self._local_loss(tokens, words, mask, scale)
        loss = (loss_local if cfg.loss_local else zero) + (loss_global if cfg.loss_global else zero)
        out = {"loss": loss, "loss_local": loss_local.detach(), "loss_global": loss_global.detach(),
               "logit_scale": scale.detach(), "selected": selected}
        if cross_video:
            pp_mask = torch.as_tensor(batch["pp_mask"], device=images.device).bool().view(b)
            pp_text = F.normalize(self.g(pooled_pp), dim=-1)  # rows without a pseudo-positive are masked out
            loss_crov = losses.multi_positive_nce(video, text, pp_text, pp_mask, scale, cfg.margin, cfg.gather)
            out["loss"] = loss + cfg.pseudo_positive_weight * loss_crov
            out["loss_crossvideo"] = loss_crov.detach()
            out["crossvideo_frac"] = pp_mask.float().mean()  # share of clips that had a pseudo-positive
        return out

    def _local_inputs(self, tokens: torch.Tensor, words: torch.Tensor, mask: torch.Tensor):
        video = F.normalize(self.f_local(tokens), dim=-1).flatten(1, 2)          # (B, T*N, d)
        text = F.normalize(self.g_local(words), dim=-1) * mask.unsqueeze(-1)     # (B, K, d)
        return video, text

    def _local_loss(self, tokens, words, mask, scale):
        cfg = self.cfg
        video, text = self._local_inputs(tokens, words, mask)
        b = video.shape[0]
        shifts = losses.imposter_pairs(b, cfg.imposters if cfg.imposter_weight > 0 else 0)
        vi = torch.arange(b, device=video.device).repeat(len(shifts))
        ti = torch.cat([(torch.arange(b, device=video.device) + s) % b for s in shifts])
        v_bar, s_bar, _ = self.local(video[vi], text[ti], mask[ti], tokens.shape[1])
        v_bar, s_bar = F.normalize(v_bar, dim=-1), F.normalize(s_bar, dim=-1)
        loss = losses.contrastive(v_bar[:b], s_bar[:b], scale, cfg.margin, cfg.gather)
        if len(shifts) > 1:
            pair = (v_bar * s_bar).sum(-1).view(len(shifts), b).t()             # m(i, i + s): (B, 1 + n)
            loss = loss + cfg.imposter_weight * losses.imposter_nce(pair, scale, cfg.margin)
        if cfg.word_region_weight > 0:
            loss = loss + cfg.word_region_weight * losses.word_region_contrastive(
                video, text, mask, scale, cfg.margin, cfg.gather)
        return loss

    # --- inference helpers ----------------------------------------------------------------------------------
    def frame_scores(self, frames_global: torch.Tensor, text_global: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of frames (U, d) or (B, U, d) with queries (Q, d): (U, Q) or (B, U, Q)."""
        return frames_global @ text_global.to(frames_global.dtype).t()

    def heatmap(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Spatial grounding of query b in frames b: (B, T, H, W, 3) uint8 or (B, T, 3, S, S) with tokens (B, L),
        or (1, L) for one query in every clip -> (B, T, gh, gw), word-to-region attention averaged over the query's
        words (it sums to 1 over the T*gh*gw regions of a clip): of the projected tokens f', g' (cfg.heatmap word_region, what the word-region
        term of L_local trains) or of the local branch's last cross-attention (branch)."""
        images = self._images(frames)
        if images.dim() == 4:
            images = images.unsqueeze(0)
        b, t = images.shape[:2]
        _, tok = self._backbone_frames(images)
        _, words, mask = self._backbone_text(tokens)
        if words.shape[0] == 1 and b > 1:  # one query for every clip: its words are encoded once
            words, mask = words.expand(b, -1, -1), mask.expand(b, -1)
        if words.shape[0] != b:
            raise ValueError(f"heatmap: {b} clips but {words.shape[0]} queries")
        video, text = self._local_inputs(tok, words, mask)
        if self.cfg.heatmap == "word_region":   # each word's softmax over the regions of its cosine similarity
            sim = text @ video.transpose(1, 2) / self.cfg.attention_temperature
            att = sim.softmax(dim=-1)                                             # (B, K, T*N)
        else:
            _, _, att = self.local(video, text, mask, t)                          # (B, K, T*N)
        m = mask.unsqueeze(-1).to(att.dtype)
        att = (att * m).sum(1) / m.sum(1).clamp_min(1.0)
        return att.view(b, t, *self.grid)


def build_model(cfg: ModelConfig, weights=None) -> GlobalLocalModel:
    return GlobalLocalModel(cfg, weights)


def load_model(export_dir_or_file: str, map_location: str | torch.device = "cpu") -> GlobalLocalModel:
    """Model from an export (contracts.md sec. 3): a folder (local or s3) holding model.pt + model_config.json,
    or the model.pt itself with model_config.json beside it. Returned in eval mode."""
    from common import fsio

    path = str(export_dir_or_file).rstrip("/")
    if path.endswith(".pt"):
        weights, folder = path, path.rsplit("/", 1)[0] if "/" in path else "."
    else:
        weights, folder = fsio.join(path, "model.pt"), path
    conf_url = fsio.join(folder, "model_config.json")
    if not fsio.exists(conf_url):
        raise ExportMissing(f"export [{conf_url}]: not found (an export holds model.pt and model_config.json)")
    if not fsio.exists(weights):
        raise ExportMissing(f"export [{weights}]: not found (an export holds model.pt and model_config.json)")
    try:
        data = dict(fsio.read_json(conf_url))
    except (ValueError, TypeError) as e:
        raise ExportError(f"export [{conf_url}]: not a JSON object of model config fields ({e})") from None
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ExportError(f"export [{conf_url}]: unknown model config keys {unknown}")
    if "quick_gelu" not in data:  # written before the architecture was recorded: rebuilt as that run built it
        try:
            data.update(architecture.legacy(data, conf_url))
        except UserError as e:
            raise ExportError(str(e)) from None
    if data.get("quick_gelu") is None:
        raise ExportError(f"export [{conf_url}]: quick_gelu is null; an export records the activation it was "
                          f"trained with (true: QuickGELU, false: GELU)")
    data["pretrained"] = None  # the export's weights replace the backbone initialisation
    try:
        cfg = ModelConfig(**data)
        cfg = architecture.resolve(cfg)  # fills nothing the file holds; validates the name
    except (TypeError, ValueError, UserError) as e:
        raise ExportError(f"export [{conf_url}]: {str(e).splitlines()[0]}") from None
    with weights_follow():
        model = build_model(cfg)
    state = load_weights(weights, map_location)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"export [{weights}]: not a state_dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExportError(f"export [{weights}]: does not match {conf_url}: {str(e).splitlines()[0]}") from None
    return model.eval()


def load_weights(url: str, map_location: str | torch.device = "cpu"):
    """torch.load(weights_only=True) of a local path or fsspec URL: tensors and plain containers only, never
    code. A truncated file or one holding pickled objects is an ExportError naming the file, in one line."""
    import pickle

    from common import fsio

    blob = fsio.read_bytes(url) if not os.path.isfile(url) else None
    try:
        return torch.load(io.BytesIO(blob) if blob is not None else url, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as e:
        first = next((ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise ExportError(f"export [{url}]: holds pickled objects, not only tensors; refused (weights_only "
                          f"load: {first.strip().split('. ')[0][:200]})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise ExportError(f"export [{url}]: truncated or not a torch file "
                          f"({type(e).__name__}: {str(e).splitlines()[0].split('. ')[0][:200]})") from None


def save_export(model: GlobalLocalModel, folder: str) -> None:
    """Write model.pt + model_config.json + backbone.safetensors (the layout pretrain.export writes and load_model
    reads); a helper for tests and tools."""
    from pretrain import backbone_file

    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
    backbone_file.write(model.state_dict(), model.cfg, os.path.join(folder, backbone_file.NAME))
    with open(os.path.join(folder, "model_config.json"), "w") as fh:
        json.dump(dataclasses.asdict(model.cfg), fh, indent=2)
