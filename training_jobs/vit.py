"""A small Vision Transformer for chest X-ray triage, built from the smallest piece up (nanoGPT style).

Every module takes the one `ViTConfig`. `ViT.forward(x, targets)` returns `(logits, loss)` so training and
evaluation share one path; `ViT.forward_with_attention(x)` also returns each layer's head-averaged attention
map `[N, depth, T, T]` (T = 1 + G*G, token 0 = CLS) for the ONNX export and attention rollout.
`Ensemble` averages the logits of several ViTs of one config behind the same interface (a deep ensemble: members
trained from different seeds, in parallel, one per core). A checkpoint (`save_checkpoint`) carries the config that
rebuilds the exact model, either kind (`load_checkpoint`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ViTConfig:
    image_size: int = 28
    patch: int = 4
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    conv_stem: bool = True  # hybrid ViT: a small CNN makes the tokens (measured: val AUC 0.996 vs 0.992 without)
    num_classes: int = 2
    # Standardize each image (zero mean, unit std) inside the graph: exposure / window offsets and linear
    # contrast changes of another acquisition cancel before the first layer.
    input_norm: bool = False

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"ViTConfig: image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"ViTConfig: dim {self.dim} is not a multiple of heads {self.heads}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def tokens(self) -> int:
        return 1 + self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"ViTConfig: unknown fields {sorted(unknown)}")
        # Checkpoints written before a field existed were trained without it: rebuild them the same way.
        return cls(**{"input_norm": False, **data})


def conv_stage(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + GELU at one resolution."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU(),
    )


class PatchEmbed(nn.Module):
    """Image [N, 1, S, S] -> patch tokens [N, G*G, dim], optionally through a convolutional stem first.

    The conv stem (a hybrid ViT) is a small CNN that halves the resolution once per factor 2 of `patch`
    (width doubling each time), then a `patch / 2^k` strided projection makes the G x G tokens. Measured on
    PneumoniaMNIST: a ViT alone cannot learn the local texture from ~5k images as fast as a CNN does.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        if config.conv_stem:
            width = max(8, config.dim // 4)
            layers: list[nn.Module] = [conv_stage(1, width)]
            remaining = config.patch
            while remaining % 2 == 0:
                layers += [nn.MaxPool2d(2), conv_stage(width, 2 * width)]
                width, remaining = 2 * width, remaining // 2
            self.stem = nn.Sequential(*layers)
            in_channels, stride = width, remaining
        else:
            self.stem = nn.Identity()
            in_channels, stride = 1, config.patch
        self.proj = nn.Conv2d(in_channels, config.dim, kernel_size=stride, stride=stride)
        self.input_norm = config.input_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm:  # per image; the floor keeps a flat image from being blown up into noise
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            var = (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / torch.sqrt(var + 0.01)
        x = self.proj(self.stem(x))  # [N, dim, G, G]
        return x.flatten(2).transpose(1, 2)  # row-major grid order, as the attention contract says


class Attention(nn.Module):
    """Multi-head self-attention written out, so the attention probabilities can be returned."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.dim // config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.attn_drop = nn.Dropout(config.dropout)
        self.proj_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, c = x.shape
        # -1 instead of n keeps the batch axis symbolic when exported to ONNX.
        qkv = self.qkv(x).reshape(-1, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.softmax(dim=-1)  # [N, heads, T, T]
        y = self.attn_drop(att) @ v
        y = y.transpose(1, 2).reshape(-1, t, c)
        return self.proj_drop(self.proj(y)), att.mean(dim=1)


class MLP(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        hidden = int(config.dim * config.mlp_ratio)
        self.fc = nn.Linear(config.dim, hidden)
        self.out = nn.Linear(hidden, config.dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.out(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, att = self.attn(self.ln_1(x))
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return x, att


class Classifier(nn.Module):
    """What training, calibration and the export call on a model: `forward(x, targets)` -> (logits, loss) from the
    subclass's `forward_with_attention`, and its parameter count."""

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding the head sees [N, embedding_dim] and the attention [N, depth, T, T]."""
        raise NotImplementedError

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, classes] and head-averaged attention of every layer [N, depth, T, T]."""
        embedding, attention = self.forward_features(x)
        return self.head(embedding), attention

    def forward(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        class_weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, _ = self.forward_with_attention(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, targets, weight=class_weight, label_smoothing=label_smoothing)
        return logits, loss


class ViT(Classifier):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens, config.dim))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.depth)])
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def embedding_dim(self) -> int:
        return self.config.dim

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding the head sees (the CLS token after ln_f) [N, dim] and the attention [N, depth, T, T]."""
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.drop(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        maps = []
        for block in self.blocks:
            h, att = block(h)
            maps.append(att)
        return self.ln_f(h[:, 0]), torch.stack(maps, dim=1)




class MeanHead(nn.Module):
    """The ensemble's head: each member's head on its slice of the concatenated embedding, the logits averaged."""

    def __init__(self, heads: list[nn.Module], dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.dim = dim

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        parts = embedding.split(self.dim, dim=-1)
        return torch.stack([head(part) for head, part in zip(self.heads, parts, strict=True)]).mean(dim=0)


class Ensemble(Classifier):
    """Members of one `ViTConfig`, as one model: the logits are the members' mean, the embedding their
    concatenation [N, members * dim] (the gate's reference is fitted on it), the attention their mean
    [N, depth, T, T] (attention rollout of the ensemble). `config` is the members' config."""

    def __init__(self, members: list[ViT]) -> None:
        super().__init__()
        if len(members) < 2 or len({id(m) for m in members}) != len(members):
            raise ValueError("Ensemble: needs at least two distinct members")
        configs = {tuple(sorted(m.config.to_dict().items())) for m in members}
        if len(configs) != 1:
            raise ValueError("Ensemble: every member must have the same ViTConfig")
        self.config = members[0].config
        self.members = nn.ModuleList(members)
        self.head = MeanHead([m.head for m in members], self.config.dim)

    @property
    def embedding_dim(self) -> int:
        return self.config.dim * len(self.members)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [m.forward_features(x) for m in self.members]
        return torch.cat([e for e, _ in outputs], dim=-1), torch.stack([a for _, a in outputs]).mean(dim=0)




class ViTWithAttention(nn.Module):
    """Export wrapper: one call returns `(logits, attention, embedding)`, the three outputs of the ONNX contract
    (the embedding [N, dim] is what the not-assessable gate of `shared.gate` measures its distance on)."""

    def __init__(self, model: ViT | Ensemble) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embedding, attention = self.model.forward_features(image)
        return self.model.head(embedding), attention, embedding


def save_checkpoint(model: ViT | Ensemble, path: str | Path, **extra: Any) -> Path:
    """Write weights + the config that rebuilds them (+ any extra entries such as temperature/threshold); an
    Ensemble's entry `members` is its member count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    members = {"members": len(model.members)} if isinstance(model, Ensemble) else {}
    torch.save({"config": model.config.to_dict(), "model": model.state_dict(), **members, **extra}, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[ViT | Ensemble, dict[str, Any]]:
    """Rebuild the exact model of a checkpoint; returns (model in eval mode, the checkpoint's other entries)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from exc
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"{path}: checkpoint lacks 'config' and 'model' entries")
    config = ViTConfig.from_dict(payload["config"])
    members = payload.get("members", 1)
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"{path}: checkpoint's 'members' is not a positive whole number")
    model = ViT(config) if members == 1 else Ensemble([ViT(config) for _ in range(members)])
    model.load_state_dict(payload["model"])
    model.eval()
    extra = {k: v for k, v in payload.items() if k not in ("config", "model", "members")}
    return model, extra
