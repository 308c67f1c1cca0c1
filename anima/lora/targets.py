"""Which layers of an Anima model a LoRA can adapt, and how each file format names them.

A `Target` is a Linear layer: the model part it lives in (``dit``, ``adapter``, ``te``) plus its
module path inside that part, which is also its state-dict name without the part's prefix
(``blocks.0.self_attn.q_proj`` in the DiT, ``blocks.0.mlp.0`` in the LLM adapter,
``layers.0.mlp.gate_proj`` in the Qwen3 text encoder).

The set of possible paths is a small grammar (`TEMPLATES`: fixed names with a block index), so
file keys are parsed without loading a model. This matters for the sd-scripts style, whose
``lora_unet_blocks_0_self_attn_q_proj`` turned every dot into an underscore: only a grammar of
the real names can put the dots back (``self_attn`` keeps its underscore, ``blocks_0`` does not).
The apply step then checks every parsed target against the loaded modules and their shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

from anima.weights.diffusers_keys import dit_to_diffusers

Part = Literal["dit", "adapter", "te"]
PARTS: tuple[Part, ...] = ("dit", "adapter", "te")
PART_NAMES = {"dit": "DiT", "adapter": "LLM adapter", "te": "text encoder"}


def _expand(*patterns: str) -> tuple[str, ...]:
    """'a.{q,k}_proj' -> ('a.q_proj', 'a.k_proj'); '{n}' (the block index) is kept."""
    out: list[str] = []
    for p in patterns:
        m = re.search(r"\{([^{}n][^{}]*)\}", p)
        if m is None:
            out.append(p)
            continue
        for alt in m.group(1).split(","):
            out.extend(_expand(p[: m.start()] + alt + p[m.end() :]))
    return tuple(out)


# Every nn.Linear of each part (anima-spec §1.2 and 1.4); `{n}` is a block/layer index.
TEMPLATES: dict[Part, tuple[str, ...]] = {
    "dit": _expand(
        "x_embedder.proj.1",
        "t_embedder.1.linear_{1,2}",
        "blocks.{n}.{self_attn,cross_attn}.{q_proj,k_proj,v_proj,output_proj}",
        "blocks.{n}.mlp.{layer1,layer2}",
        "blocks.{n}.adaln_modulation_{self_attn,cross_attn,mlp}.{1,2}",
        "final_layer.linear",
        "final_layer.adaln_modulation.{1,2}",
    ),
    "adapter": _expand(
        "blocks.{n}.{self_attn,cross_attn}.{q_proj,k_proj,v_proj,o_proj}",
        "blocks.{n}.mlp.{0,2}",
        "out_proj",
    ),
    "te": _expand(
        "layers.{n}.self_attn.{q_proj,k_proj,v_proj,o_proj}",
        "layers.{n}.mlp.{gate_proj,up_proj,down_proj}",
    ),
}

# Default training targets: attention q/k/v/out and the MLP of every block; sd-scripts'
# default (its exclude regex drops modulations, norms, embedders and the final layer) gives the same.
DEFAULT_TARGETS: dict[Part, str] = {
    "dit": r"blocks\.\d+\.((self|cross)_attn\.(q|k|v|output)_proj|mlp\.layer[12])",
    "adapter": r"blocks\.\d+\.((self|cross)_attn\.[qkvo]_proj|mlp\.[02])",
    "te": r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)",
}


@dataclass(frozen=True, order=True)
class Target:
    """One adaptable Linear layer: model part + module path inside it."""

    part: Part
    path: str

    def __str__(self) -> str:
        return f"{self.part}:{self.path}"

    @property
    def template(self) -> str:
        """The path with its block index replaced by ``{n}`` (groups targets for summaries)."""
        return re.sub(r"^(blocks|layers)\.\d+\.", r"\1.{n}.", self.path)


def _regex(template: str, sep: str) -> str:
    parts = [re.escape(p.replace(".", sep)) for p in template.split("{n}")]
    return r"(\d+)".join(parts)


@cache
def _matchers(part: Part, style: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    """(compiled full-match regex in `style`, official template) for each template of `part`."""
    out = []
    for t in TEMPLATES[part]:
        if style == "dotted":
            pattern = _regex(t, ".")
        elif style == "underscored":
            pattern = _regex(t, "_")
        elif style == "diffusers":
            pattern = _regex(dit_to_diffusers(t) if part == "dit" else t, ".")
        else:
            raise ValueError(style)
        out.append((re.compile(pattern), t))
    return tuple(out)


def parse_path(part: Part, name: str, style: str = "dotted") -> Target | None:
    """A module name written in `style` ('dotted', 'underscored' or 'diffusers') -> Target, or None."""
    hits = []
    for rx, template in _matchers(part, style):
        m = rx.fullmatch(name)
        if m:
            path = template
            for idx in m.groups():
                path = path.replace("{n}", idx, 1)
            hits.append(Target(part, path))
    # The grammar is unambiguous in all three styles; more than one hit would be a bug in TEMPLATES.
    assert len(hits) <= 1, (name, hits)
    return hits[0] if hits else None


def is_target_path(part: Part, path: str) -> bool:
    return parse_path(part, path) is not None


def select(part: Part, paths: list[str], pattern: str | None = None) -> list[Target]:
    """Targets among `paths` (module names of a loaded part) that full-match `pattern` (default:
    `DEFAULT_TARGETS`); '.*' selects every Linear layer the grammar knows."""
    rx = re.compile(pattern if pattern is not None else DEFAULT_TARGETS[part])
    return [Target(part, p) for p in paths if is_target_path(part, p) and rx.fullmatch(p)]
