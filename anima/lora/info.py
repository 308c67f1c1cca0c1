"""`anima lora info` and `anima lora convert`: what a LoRA file holds, and rewriting it in another format."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from anima.errors import AnimaError
from anima.lora.file import LoRAFile, load_lora, save_lora
from anima.lora.targets import PART_NAMES, PARTS

# Metadata keys worth a line of their own (sd-scripts `ss_*`, ours, diffusion-pipe/diffusers).
_HEADLINE = (
    "ss_output_name", "ss_base_model_version", "ss_sd_model_name", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_network_args", "ss_steps", "ss_epoch", "ss_num_train_images",
    "ss_learning_rate", "ss_training_comment", "anima_lora_format", "anima_network", "anima_rank",
    "anima_alpha", "anima_base_model_hash", "anima_steps", "anima_dataset_size", "format",
)  # fmt: skip


@dataclass
class LoRAInfo:
    path: Path
    fmt: str
    kinds: list[str]
    ranks: list[int]
    alphas: list[float | None]
    dtype: str
    layers: int
    targets: dict[str, dict[str, int]]  # part -> {layer template: count}
    unmatched: list[str]
    metadata: dict[str, str] = field(default_factory=dict)

    def lines(self, all_metadata: bool = False) -> list[str]:
        def span(values: list) -> str:
            shown = [("none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)) for v in values]
            return shown[0] if len(shown) == 1 else f"{len(shown)} values: " + ", ".join(shown[:8])

        out = [
            f"file:     {self.path}",
            f"format:   {self.fmt} ({' + '.join(self.kinds)})",
            f"rank:     {span(self.ranks)}",
            f"alpha:    {span(self.alphas)}",
            f"dtype:    {self.dtype}",
            f"layers:   {self.layers}",
        ]
        for part, counts in self.targets.items():
            out.append(f"targets ({PART_NAMES[part]}):")
            out += [f"    {n:4d} x {t}" for t, n in counts.items()]
        if self.unmatched:
            out.append(f"unmatched keys: {len(self.unmatched)} (e.g. {', '.join(self.unmatched[:3])})")
        keys = sorted(self.metadata) if all_metadata else [k for k in _HEADLINE if k in self.metadata]
        if keys:
            out.append("metadata:")
            for k in keys:
                v = self.metadata[k].replace("\n", " ")
                out.append(f"    {k}: {v if len(v) <= 100 else v[:97] + '...'}")
        hidden = len(self.metadata) - len(keys)
        if hidden > 0:
            out.append(f"    ({hidden} more metadata entries; --all-metadata shows them)")
        return out


def describe(lora: LoRAFile, path: Path) -> LoRAInfo:
    targets: dict[str, Counter[str]] = defaultdict(Counter)
    for t in sorted(lora.adapters):
        targets[t.part][t.template] += 1
    adapters = list(lora.adapters.values())
    return LoRAInfo(
        path=path,
        fmt=lora.fmt,
        kinds=lora.kinds,
        ranks=sorted({a.rank for a in adapters}),
        alphas=sorted({a.alpha for a in adapters}, key=lambda v: (v is None, v or 0.0)),
        dtype=str(lora.dtype).removeprefix("torch."),
        layers=len(adapters),
        targets={p: dict(targets[p]) for p in PARTS if p in targets},
        unmatched=lora.unmatched,
        metadata=lora.metadata,
    )


def lora_info(path: str | Path) -> LoRAInfo:
    path = Path(path)
    return describe(load_lora(path), path)


def convert(src: str | Path, dst: str | Path, fmt: str, *, overwrite: bool = False) -> LoRAFile:
    """Rewrite `src` in `fmt`; metadata is kept. Returns the parsed source."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise AnimaError(f"{dst}: output would overwrite the input; choose another name")
    if dst.exists() and not overwrite:
        raise AnimaError(f"{dst} exists; pass --overwrite to replace it")
    if dst.suffix != ".safetensors":
        raise AnimaError(f"output must be a .safetensors file, got {dst}")
    lora = load_lora(src)
    save_lora(lora.adapters, dst, fmt, lora.metadata)
    return lora
