"""A ComfyUI graph in API format: what the server executes, and what a PNG's ``prompt`` chunk holds.

    {"<node id>": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["<id>", 0], ...},
                   "_meta": {"title": "..."}}}

An input is a link ``[node id, output slot]`` or a literal widget value; a literal list is wrapped
as ``{"__value__": [...]}`` (the frontend's convention, unwrapped by the server and here). Ids are
strings; nodes of a flattened subgraph have ids ``"<subgraph node>:<inner node>"``. Every error
is one line naming the node by id and type (`anima.interop.comfyui.read` reads either format).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from anima.errors import AnimaError


@dataclass(frozen=True)
class Link:
    """An input wired to output `slot` of node `node`."""

    node: str
    slot: int


@dataclass(frozen=True)
class Node:
    id: str
    class_type: str
    inputs: Mapping[str, Any] = field(default_factory=dict)  # name -> Link or literal
    title: str = ""

    @property
    def label(self) -> str:
        """How errors name the node: ``node 76 (KSampler)``."""
        return f"node {self.id} ({self.class_type})"


@dataclass(frozen=True)
class Graph:
    """An API-format graph. `notes`: what reading it decided (muted nodes, dropped links)."""

    nodes: Mapping[str, Node]
    notes: tuple[str, ...] = ()

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def to_api(self) -> dict[str, Any]:
        """The JSON form ComfyUI's ``POST /prompt`` takes."""
        out: dict[str, Any] = {}
        for n in self.nodes.values():
            inputs = {
                k: [v.node, v.slot]
                if isinstance(v, Link)
                else ({"__value__": v} if isinstance(v, list) else v)
                for k, v in n.inputs.items()
            }
            out[n.id] = {
                "inputs": inputs,
                "class_type": n.class_type,
                "_meta": {"title": n.title or n.class_type},
            }
        return out


def is_ui_graph(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list)


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnimaError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def parse_api(data: Any, where: str = "the graph") -> Graph:
    """An API-format dict -> `Graph`; every link must name an existing node and output slot."""
    if isinstance(data, Mapping) and isinstance(data.get("prompt"), Mapping) and "nodes" not in data:
        data = data["prompt"]  # a /prompt request body, or a history entry
    if not isinstance(data, Mapping) or not data:
        raise AnimaError(f"{where} is not a ComfyUI graph (expected API-format nodes or a UI workflow)")
    nodes: dict[str, Node] = {}
    for node_id, raw in data.items():
        if not isinstance(raw, Mapping) or not isinstance(raw.get("class_type"), str):
            raise AnimaError(f"{where}: node {node_id} has no class_type; not an API-format ComfyUI graph")
        inputs_raw = raw.get("inputs", {})
        if not isinstance(inputs_raw, Mapping):
            raise AnimaError(f"{where}: node {node_id} ({raw['class_type']}) has no inputs object")
        inputs = {
            str(k): _value(v, f"{where}: node {node_id} ({raw['class_type']})", str(k))
            for k, v in inputs_raw.items()
        }
        meta = raw.get("_meta")
        title = meta.get("title", "") if isinstance(meta, Mapping) else ""
        nodes[str(node_id)] = Node(str(node_id), raw["class_type"], inputs, str(title))
    graph = Graph(nodes)
    check_links(graph)
    return graph


def _value(v: Any, label: str, name: str) -> Any:
    if isinstance(v, list):
        if (
            len(v) == 2
            and isinstance(v[0], str | int)
            and isinstance(v[1], int)
            and not isinstance(v[1], bool)
        ):
            return Link(str(v[0]), v[1])
        raise AnimaError(f"{label} input {name!r}: a link is [node id, output slot], got {v!r:.60}")
    if isinstance(v, Mapping) and "__value__" in v:
        return v["__value__"]
    return v


def check_links(graph: Graph) -> None:
    """Every link names a node of the graph (a broken link is one line, naming both ends)."""
    for node in graph.nodes.values():
        for name, v in node.inputs.items():
            if isinstance(v, Link) and v.node not in graph.nodes:
                raise AnimaError(
                    f"{node.label} input {name!r} is linked to node {v.node}, which is not in the graph "
                    "(a broken link)"
                )
            if isinstance(v, Link) and v.slot < 0:
                raise AnimaError(f"{node.label} input {name!r} is linked to output slot {v.slot}")
