"""ControlNet-LLLite for the Anima DiT (kohya's "v2" named-key format): the modules and their config.

An LLLite patch is a small conditioning network that turns a control image into one embedding per
DiT token, plus one tiny MLP per patched projection that adds a control-dependent term to that
projection's *input* (``x + up(...) * strength``; the projection itself is untouched). Attribute
names are the file's keys: ``lllite_conditioning1.*`` and ``lllite_dit_blocks_{i}_{target}.*``, so a
file loads with ``strict=True`` into a module built on meta from its shapes (`LLLiteConfig`).

The maths follows the reference loader (ComfyUI ``comfy/ldm/anima/lllite.py``, the training side
sd-scripts ``networks/control_net_lllite_anima.py``); the fixture README
(``shared/fixtures/anima-lllite/README.md``) lists every detail as ComfyUI was seen to compute it:

- conditioning: conv 4x4/4 -> GN -> SiLU, conv 3x3 -> GN -> SiLU, conv 4x4/4 -> GN -> SiLU (so the
  grid is 1/16 of the control image, one cell per DiT token), optional pre-activation resblocks,
  optional ASPP, 1x1 projection, tokens in row-major order, LayerNorm;
- one module: ``c = emb + depth_embed``; ``h = silu(down(x))``; ``gamma, beta = cond_to_film(c)``;
  ``h = silu(mid(cat(c, h)) * (1 + gamma) + beta)``; ``x + up(h) * strength``.

GroupNorm groups start at 8 and halve until they divide the channels (12 channels: 4 groups).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anima.errors import AnimaError

# target name in the file -> (DiT block attribute, projection attribute)
TARGETS: dict[str, tuple[str, str]] = {
    "self_attn_q_proj": ("self_attn", "q_proj"),
    "self_attn_k_proj": ("self_attn", "k_proj"),
    "self_attn_v_proj": ("self_attn", "v_proj"),
    "cross_attn_q_proj": ("cross_attn", "q_proj"),
    "mlp_layer1": ("mlp", "layer1"),
}
PREFIX = "lllite_conditioning1."
MODULE_NAME = re.compile(r"lllite_dit_blocks_(\d+)_(" + "|".join(TARGETS) + r")")
DEFAULT_ASPP_DILATIONS = (1, 2, 4, 8)  # the reference's default when the metadata names none
VERSION = "2"


def module_name(block: int, target: str) -> str:
    return f"lllite_dit_blocks_{block}_{target}"


def _groups(channels: int) -> int:
    groups = 8
    while groups > 1 and channels % groups:
        groups //= 2
    return groups


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels)


@dataclass(frozen=True)
class ModuleSpec:
    """One patched projection: DiT block, target name and the module's hidden width M."""

    block: int
    target: str
    mlp_dim: int

    @property
    def name(self) -> str:
        return module_name(self.block, self.target)


@dataclass(frozen=True)
class LLLiteConfig:
    """Every size of a patch, as read from its tensors (and two metadata entries).

    `cond_in_channels` is 3 (RGB control) or 4 (RGB + mask, inpainting patches); `cond_dim` the
    conditioning trunk width D, `cond_emb_dim` the embedding width E, `width` the DiT width W the
    modules patch; `aspp_dilations` is empty without ASPP."""

    cond_in_channels: int
    cond_dim: int
    cond_emb_dim: int
    resblocks: int
    aspp_dilations: tuple[int, ...]
    width: int
    modules: tuple[ModuleSpec, ...]
    inpaint_masked_input: bool = False

    def __post_init__(self) -> None:
        if self.cond_dim % 2:
            raise AnimaError(f"LLLite conditioning width must be even, got {self.cond_dim}")
        if not self.modules:
            raise AnimaError("an LLLite patch needs at least one patched projection")
        for m in self.modules:
            if m.target not in TARGETS:
                raise AnimaError(f"unknown LLLite target {m.target!r}; known: {', '.join(TARGETS)}")

    @property
    def block_count(self) -> int:
        """Blocks the patch was made for: the highest patched block + 1."""
        return max(m.block for m in self.modules) + 1

    @classmethod
    def from_shapes(
        cls, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None
    ) -> LLLiteConfig:
        """Sizes from tensor shapes; `metadata` gives the ASPP dilations and the masked-input flag.

        Raises `AnimaError` (without a file name: the loader adds it) for keys the v2 format has not.
        """
        metadata = metadata or {}

        def shape(key: str) -> tuple[int, ...]:
            if key not in shapes:
                raise AnimaError(f"key '{key}' is missing")
            return tuple(shapes[key])

        conv1, conv3, proj = (shape(PREFIX + k + ".weight") for k in ("conv1", "conv3", "proj"))
        res = {int(k.split(".")[2]) for k in shapes if k.startswith(PREFIX + "resblocks.")}
        has_aspp = any(k.startswith(PREFIX + "aspp.") for k in shapes)
        dilations: tuple[int, ...] = ()
        if has_aspp:
            text = metadata.get("lllite.aspp_dilations", ",".join(map(str, DEFAULT_ASPP_DILATIONS)))
            try:
                dilations = tuple(int(v) for v in text.split(",") if v.strip())
            except ValueError:
                raise AnimaError(f"metadata lllite.aspp_dilations {text!r} is not numbers") from None
            if not dilations or min(dilations) < 1:
                raise AnimaError(f"metadata lllite.aspp_dilations {text!r} needs positive dilations")
        names = sorted({k.split(".", 1)[0] for k in shapes if k.startswith("lllite_dit_blocks_")})
        specs, widths = [], set()
        for name in names:
            m = MODULE_NAME.fullmatch(name)
            if m is None:
                raise AnimaError(f"unknown LLLite module {name!r}")
            mlp, width = shape(f"{name}.down.weight")
            widths.add(width)
            specs.append(ModuleSpec(int(m.group(1)), m.group(2), mlp))
        if not specs:
            raise AnimaError("no lllite_dit_blocks_* modules")
        if len(widths) > 1:
            raise AnimaError(f"modules patch different widths {sorted(widths)}")
        masked = metadata.get("lllite.inpaint_masked_input", "false").lower() == "true"
        return cls(
            cond_in_channels=conv1[1], cond_dim=conv3[0], cond_emb_dim=proj[0],
            resblocks=max(res) + 1 if res else 0, aspp_dilations=dilations, width=widths.pop(),
            modules=tuple(sorted(specs, key=lambda s: (s.block, list(TARGETS).index(s.target)))),
            inpaint_masked_input=masked,
        )  # fmt: skip

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata the reference loader reads (version, ASPP, masked input)."""
        masked = str(self.inpaint_masked_input).lower()
        out = {"lllite.version": VERSION, "lllite.inpaint_masked_input": masked}
        if self.aspp_dilations:
            out["lllite.aspp_dilations"] = ",".join(map(str, self.aspp_dilations))
        out["lllite.cond_emb_dim"] = str(self.cond_emb_dim)
        out["lllite.cond_dim"] = str(self.cond_dim)
        out["lllite.cond_resblocks"] = str(self.resblocks)
        out["lllite.cond_in_channels"] = str(self.cond_in_channels)
        return out


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(silu(norm2(conv1(silu(norm1(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: dilated branches plus a global average, fused by a 1x1 conv.

    Keys ``branches.{j}.{0,1}``, ``global_conv.{0,1}``, ``proj.{0,1}`` (conv, GroupNorm; index 2 is
    the weight-free SiLU)."""

    def __init__(self, channels: int, dilations: tuple[int, ...]) -> None:
        super().__init__()

        def branch(d: int) -> nn.Sequential:
            if d == 1:
                conv = nn.Conv2d(channels, channels, 1)
            else:
                conv = nn.Conv2d(channels, channels, 3, padding=d, dilation=d)
            return nn.Sequential(conv, _norm(channels), nn.SiLU())

        self.branches = nn.ModuleList(branch(d) for d in dilations)
        self.global_conv = nn.Sequential(nn.Conv2d(channels, channels, 1), _norm(channels), nn.SiLU())
        n = len(dilations) + 1
        self.proj = nn.Sequential(nn.Conv2d(channels * n, channels, 1), _norm(channels), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        pooled = self.global_conv(F.adaptive_avg_pool2d(x, 1))
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.proj(torch.cat(outs, dim=1))


class Conditioning(nn.Module):
    """Control image [B, C, H, W] in [-1, 1] -> embedding [B, (H/16)(W/16), E] (row-major tokens)."""

    def __init__(self, cfg: LLLiteConfig) -> None:
        super().__init__()
        d, half = cfg.cond_dim, cfg.cond_dim // 2
        self.conv1 = nn.Conv2d(cfg.cond_in_channels, half, 4, stride=4)
        self.norm1 = _norm(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1)
        self.norm2 = _norm(half)
        self.conv3 = nn.Conv2d(half, d, 4, stride=4)
        self.norm3 = _norm(d)
        self.resblocks = nn.ModuleList(ResBlock(d) for _ in range(cfg.resblocks))
        self.aspp = ASPP(d, cfg.aspp_dilations) if cfg.aspp_dilations else None
        self.proj = nn.Conv2d(d, cfg.cond_emb_dim, 1)
        self.out_norm = nn.LayerNorm(cfg.cond_emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm1(self.conv1(x)))
        x = F.silu(self.norm2(self.conv2(x)))
        x = F.silu(self.norm3(self.conv3(x)))
        for block in self.resblocks:
            x = block(x)
        if self.aspp is not None:
            x = self.aspp(x)
        return self.out_norm(self.proj(x).flatten(2).transpose(1, 2))


class Module(nn.Module):
    """The term one patched projection adds to its input (see the module docstring)."""

    def __init__(self, width: int, cond_emb_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, mlp_dim)
        self.mid = nn.Linear(mlp_dim + cond_emb_dim, mlp_dim)
        self.cond_to_film = nn.Linear(cond_emb_dim, 2 * mlp_dim)
        self.up = nn.Linear(mlp_dim, width)
        self.depth_embed = nn.Parameter(torch.zeros(cond_emb_dim))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, strength: float) -> torch.Tensor:
        """x: [B, L, W] projection input; emb: [b, L, E] with B a multiple of b (cond and uncond
        rows share the control, as the reference repeats it)."""
        if emb.shape[0] != x.shape[0]:
            if x.shape[0] % emb.shape[0]:
                raise AnimaError(f"LLLite: {x.shape[0]} model rows cannot share {emb.shape[0]} controls")
            emb = emb.repeat(x.shape[0] // emb.shape[0], 1, 1)
        if emb.shape[1] != x.shape[1]:
            raise AnimaError(f"LLLite: the model has {x.shape[1]} tokens, the control {emb.shape[1]}")
        c = emb + self.depth_embed.to(emb.dtype)
        h = F.silu(self.down(x))
        gamma, beta = self.cond_to_film(c).chunk(2, dim=-1)
        h = F.silu(self.mid(torch.cat((c, h), dim=-1)) * (1 + gamma) + beta)
        return x + self.up(h) * strength


class LLLite(nn.Module):
    """A whole patch: ``lllite_conditioning1`` plus one `Module` per patched (block, target)."""

    def __init__(self, cfg: LLLiteConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lllite_conditioning1 = Conditioning(cfg)
        for spec in cfg.modules:
            self.add_module(spec.name, Module(cfg.width, cfg.cond_emb_dim, spec.mlp_dim))

    @property
    def dtype(self) -> torch.dtype:
        return self.lllite_conditioning1.conv1.weight.dtype

    def targets(self) -> set[tuple[int, str]]:
        return {(m.block, m.target) for m in self.cfg.modules}

    def module(self, block: int, target: str) -> Module | None:
        return self._modules.get(module_name(block, target))  # type: ignore[return-value]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] control input in [-1, 1] (H, W multiples of 16) -> [B, HW/256, E]."""
        return self.lllite_conditioning1(image)

    @torch.no_grad()
    def init_for_training(self, generator: torch.Generator) -> None:
        """Starting weights for training (sd-scripts' scheme): convs and linears uniform in
        +-1/sqrt(fan_in) like torch's defaults, norms 1 and 0, and ``up``, ``cond_to_film`` and
        ``depth_embed`` zero, so an untrained patch adds exactly nothing and FiLM starts as identity."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                bound = 1.0 / mod.weight[0].numel() ** 0.5
                for t in (mod.weight, mod.bias):
                    t.copy_((torch.rand(t.shape, generator=generator) * 2 - 1) * bound)
            elif isinstance(mod, nn.GroupNorm | nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
        for spec in self.cfg.modules:
            m = self.module(spec.block, spec.target)
            for t in (m.up.weight, m.up.bias, m.cond_to_film.weight, m.cond_to_film.bias, m.depth_embed):
                t.zero_()
