"""The layouts of ComfyUI's core nodes, read once from ``node_defs.json`` (see its provenance).

Two things depend on them: reading a UI graph (a node's ``widgets_values`` are its widget inputs in
declaration order, with one extra value after a seed-like INT, its ``control_after_generate``
choice, and one after an ``image_upload`` combo, the upload button's) and writing one (the graph
anima writes uses exactly these names and orders, which a test checks).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FILE = Path(__file__).with_name("node_defs.json")
# Input types that are sockets, not widgets (everything upper-case that is not a value type).
VALUE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3", "COLOR")


@dataclass(frozen=True)
class InputDef:
    name: str
    type: str
    spec: Mapping[str, Any]

    @property
    def is_widget(self) -> bool:
        return self.type in VALUE_TYPES and not self.spec.get("forceInput")

    @property
    def extra_widget_values(self) -> int:
        """Frontend-only values that follow this widget in ``widgets_values``: a seed's
        control_after_generate, and the upload button of an ``image_upload`` COMBO (LoadImage's);
        Painter's ``image_upload`` STRING is its own PAINTER widget and adds none (the LLLite
        inpainting template's Painter holds [mask, width, height, bg_color])."""
        upload = self.type == "COMBO" and bool(self.spec.get("image_upload"))
        return int(bool(self.spec.get("control_after_generate"))) + int(upload)


@dataclass(frozen=True)
class NodeDef:
    class_type: str
    inputs: tuple[InputDef, ...]
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool

    def input(self, name: str) -> InputDef | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def widgets(self) -> tuple[InputDef, ...]:
        return tuple(i for i in self.inputs if i.is_widget)


@functools.cache
def _data() -> dict[str, Any]:
    return json.loads(_FILE.read_text())


@functools.cache
def node_def(class_type: str) -> NodeDef | None:
    """The layout of a core node, or None for a node the file does not list."""
    raw = _data()["nodes"].get(class_type)
    if raw is None:
        return None
    inputs = tuple(
        InputDef(i["name"], i["type"], {k: v for k, v in i.items() if k not in ("name", "type")})
        for i in raw["inputs"]
    )
    return NodeDef(
        class_type,
        inputs,
        tuple(raw["outputs"]),
        tuple(raw.get("output_names") or ()),
        bool(raw["output_node"]),
    )


def provenance() -> Mapping[str, Any]:
    return _data()["provenance"]


def known_types() -> tuple[str, ...]:
    return tuple(_data()["nodes"])
