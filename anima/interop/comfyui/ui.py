"""A UI-format workflow (the editor's graph: a PNG's ``workflow`` chunk, a saved workflow, a
template) -> the API-format `Graph` the frontend would queue for it.

This follows what ComfyUI's frontend does when it queues a graph (``graphToPrompt`` and
``ExecutableNodeDTO`` in ComfyUI_frontend), written here from that behaviour:

- a node's ``widgets_values`` are its widget inputs in declaration order (`node_defs`), with the
  frontend-only ``control_after_generate`` / upload values skipped, and a dynamic combo followed by
  the widgets of the option it shows (named ``"<combo>.<input>"``);
- virtual nodes are not queued: ``Reroute`` passes its input through, a ``PrimitiveNode`` puts its
  value into the widget it feeds, notes are dropped;
- muted nodes (mode 2) are not queued and links from them are removed; bypassed nodes (mode 4)
  pass, for each output, the first input of a matching type (the same slot first);
- subgraphs are flattened: an inner node's id is ``"<instance id>:<inner id>"``; an inner input fed
  by the subgraph's input takes the instance's link there, or, when that is unconnected, the value of
  the widget it shows (a promoted widget is the inner widget, so its value is the inner one);
- a link to a node or slot that does not exist, or a loop of links, is a one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anima.errors import AnimaError
from anima.interop.comfyui.graph import Graph, Link, Node, check_links
from anima.interop.comfyui.node_defs import InputDef, node_def

MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
NOTE_TYPES = ("Note", "MarkdownNote", "Label (rgthree)", "Fast Groups Bypasser (rgthree)")
VIRTUAL_TYPES = ("Reroute", "PrimitiveNode", *NOTE_TYPES)


@dataclass(frozen=True)
class _Link:
    origin: int
    origin_slot: int
    target: int
    target_slot: int
    type: str


@dataclass
class _Level:
    """One graph level: the root graph or a subgraph definition."""

    nodes: dict[int, dict]
    links: dict[int, _Link]
    definition: Mapping[str, Any] | None = None


@dataclass
class _Dto:
    """One node in the flattened network (the frontend's ExecutableNodeDTO)."""

    node: dict
    level: _Level
    path: tuple[str, ...]
    instance: _Dto | None = None  # the subgraph node this one sits in
    inner: dict[int, _Dto] = field(default_factory=dict)  # a subgraph node's own nodes

    @property
    def id(self) -> str:
        return ":".join((*self.path, str(self.node["id"])))

    @property
    def type(self) -> str:
        return str(self.node.get("type", ""))

    @property
    def mode(self) -> int:
        return int(self.node.get("mode", 0) or 0)

    @property
    def label(self) -> str:
        return f"node {self.id} ({self.type})"

    def inputs(self) -> list[dict]:
        return list(self.node.get("inputs") or [])


@dataclass(frozen=True)
class _Widget:
    value: Any


_GONE = object()  # resolved to a muted node: the frontend deletes such inputs


def _links(raw: Any, where: str) -> dict[int, _Link]:
    out: dict[int, _Link] = {}
    for item in raw or []:
        if isinstance(item, Sequence) and len(item) >= 5:
            lid, o, os_, t, ts = item[:5]
            kind = item[5] if len(item) > 5 else ""
        elif isinstance(item, Mapping):
            lid, o, os_, t, ts = (
                item.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")
            )
            kind = item.get("type", "")
        else:
            raise AnimaError(f"{where}: a link is neither [id, from, slot, to, slot, type] nor an object")
        try:
            out[int(lid)] = _Link(int(o), int(os_), int(t), int(ts), str(kind or ""))
        except (TypeError, ValueError):
            raise AnimaError(f"{where}: link {lid!r} has a non-numeric end") from None
    return out


def _level(raw: Mapping[str, Any], where: str, definition: Mapping[str, Any] | None = None) -> _Level:
    nodes = {}
    for n in raw.get("nodes") or []:
        if not isinstance(n, Mapping) or "id" not in n:
            raise AnimaError(f"{where}: a node without an id")
        nodes[int(n["id"])] = dict(n)
    return _Level(nodes, _links(raw.get("links"), where), definition)


def _types_fit(a: Any, b: Any) -> bool:
    """litegraph's isValidConnection: equal, a wildcard, or overlapping comma lists."""
    a, b = str(a or "*").upper(), str(b or "*").upper()
    if a in ("*", "0") or b in ("*", "0") or a == b:
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


class _Flattener:
    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.where = where
        if isinstance(data.get("extra"), Mapping) and data["extra"].get("groupNodes"):
            raise AnimaError(
                f"{where} uses legacy group nodes; open it in ComfyUI and convert them to subgraphs"
            )
        defs = (data.get("definitions") or {}).get("subgraphs") or []
        self.defs = {str(d.get("id")): d for d in defs if isinstance(d, Mapping)}
        self.dtos: dict[str, _Dto] = {}
        self.notes: list[str] = []
        self._expand(_level(data, where), (), None, depth=0)

    # ------------------------------------------------------------------ the flattened network
    def _expand(self, level: _Level, path: tuple[str, ...], instance: _Dto | None, depth: int) -> None:
        if depth > 32:
            raise AnimaError(f"{self.where}: subgraphs nest more than 32 deep (a subgraph inside itself?)")
        for node in level.nodes.values():
            dto = _Dto(node, level, path, instance)
            if instance is not None:
                instance.inner[int(node["id"])] = dto
            self.dtos[dto.id] = dto
            definition = self.defs.get(dto.type)
            if definition is not None:
                sub = _level(
                    definition, f"{self.where}: subgraph {definition.get('name') or dto.type}", definition
                )
                self._expand(sub, (*path, str(node["id"])), dto, depth + 1)

    def is_subgraph(self, dto: _Dto) -> bool:
        return dto.type in self.defs

    def queued(self, dto: _Dto) -> bool:
        """Whether the frontend sends this node to the server."""
        d: _Dto | None = dto
        while d is not None:  # a node inside a muted or bypassed subgraph node is not sent
            if d.mode in (MUTED, BYPASSED):
                return False
            d = d.instance
        return not (dto.type in VIRTUAL_TYPES or self.is_subgraph(dto))

    # ------------------------------------------------------------------ link resolution
    def resolve_input(self, dto: _Dto, slot: int, seen: set, kind: str | None = None) -> Any:
        key = (dto.id, "in", slot)
        if key in seen:
            raise AnimaError(f"{self.where}: a loop of links through {dto.label} (input {slot})")
        seen.add(key)
        inputs = dto.inputs()
        if slot >= len(inputs):
            raise AnimaError(f"{self.where}: {dto.label} has no input slot {slot}")
        link_id = inputs[slot].get("link")
        if link_id is None:
            return None
        link = dto.level.links.get(int(link_id))
        if link is None:
            raise AnimaError(
                f"{self.where}: {dto.label} input {inputs[slot].get('name')!r} uses link {link_id}, "
                "which the graph does not have (a broken link)"
            )
        kind = kind or inputs[slot].get("type")
        if link.origin == SUBGRAPH_INPUT and dto.instance is not None:
            return self._from_subgraph_input(dto.instance, link.origin_slot, seen, kind)
        origin = dto.level.nodes.get(link.origin)
        if origin is None:
            raise AnimaError(
                f"{self.where}: {dto.label} input {inputs[slot].get('name')!r} is linked to node "
                f"{':'.join((*dto.path, str(link.origin)))}, which is not in the graph (a broken link)"
            )
        origin_dto = self.dtos[":".join((*dto.path, str(link.origin)))]
        return self.resolve_output(origin_dto, link.origin_slot, kind, seen)

    def _from_subgraph_input(self, instance: _Dto, slot: int, seen: set, kind: Any) -> Any:
        """Subgraph input `slot` (of the definition) as the instance feeds it. Saved workflows drop
        unconnected widget slots from a node's inputs, so the instance's slot is found by name."""
        declared = self.defs[instance.type].get("inputs") or []
        if slot >= len(declared):
            raise AnimaError(f"{self.where}: subgraph {instance.label} has no input slot {slot}")
        name = declared[slot].get("name")
        inputs = instance.inputs()
        index = next((i for i, x in enumerate(inputs) if x.get("name") == name), None)
        if index is None:
            return None  # not shown on the instance: the inner widget keeps its value
        if inputs[index].get("link") is None:
            value = self._instance_widget(instance, inputs[index])
            return None if value is None else _Widget(value)
        return self.resolve_input(instance, index, seen, kind)

    def _promoted(self, dto: _Dto) -> dict[str, Any]:
        """Values a subgraph node holds for promoted widgets of `dto` (``properties.proxyWidgets``
        lists them as [inner node id, widget name], in the order of the node's ``widgets_values``);
        none when the instance keeps no values of its own (then the inner widget's value stands)."""
        instance = dto.instance
        if instance is None:
            return {}
        proxies = (instance.node.get("properties") or {}).get("proxyWidgets")
        values = instance.node.get("widgets_values")
        if isinstance(proxies, str):
            try:
                proxies = json.loads(proxies)
            except ValueError:
                return {}
        if not (isinstance(proxies, list) and isinstance(values, list) and len(values) == len(proxies)):
            return {}
        own = str(dto.node["id"])
        return {
            str(p[1]): v
            for p, v in zip(proxies, values, strict=True)
            if isinstance(p, list | tuple) and len(p) == 2 and str(p[0]) == own
        }

    def _instance_widget(self, instance: _Dto, slot_input: Mapping[str, Any]) -> Any:
        """The value of the widget a subgraph node shows for an unconnected input, when it keeps one
        of its own (older workflows list them in ``widgets_values``, in input order); None when the
        widget is a promoted inner widget (its value is the inner node's own)."""
        values = instance.node.get("widgets_values")
        if not isinstance(values, list) or not values or "widget" not in slot_input:
            return None
        if (instance.node.get("properties") or {}).get("proxyWidgets"):
            return None  # promoted widgets: their values are set on the inner nodes (`_promoted`)
        widget_inputs = [i for i in instance.inputs() if "widget" in i]
        index = next((k for k, i in enumerate(widget_inputs) if i is slot_input), None)
        return values[index] if index is not None and index < len(values) else None

    def resolve_output(self, dto: _Dto, slot: int, kind: Any, seen: set) -> Any:
        key = (dto.id, "out", slot)
        if key in seen:
            raise AnimaError(f"{self.where}: a loop of links through {dto.label} (output {slot})")
        seen.add(key)
        if dto.mode == BYPASSED:
            index = self._bypass_slot(dto, slot, kind)
            return None if index < 0 else self.resolve_input(dto, index, seen)
        if dto.mode == MUTED:
            return _GONE
        if self.is_subgraph(dto):
            return self._subgraph_output(dto, slot, kind, seen)
        if dto.type == "Reroute":
            return self.resolve_input(dto, 0, seen, kind) if dto.inputs() else None
        if dto.type == "PrimitiveNode":
            values = dto.node.get("widgets_values") or []
            return _Widget(values[0]) if values else None
        if dto.type in NOTE_TYPES:
            return None
        outputs = dto.node.get("outputs") or []
        if outputs and slot >= len(outputs):
            raise AnimaError(f"{self.where}: {dto.label} has no output slot {slot}")
        return Link(dto.id, slot)

    def _bypass_slot(self, dto: _Dto, slot: int, kind: Any) -> int:
        inputs = dto.inputs()
        outputs = dto.node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) else kind
        if str(kind or "*") in ("*", ""):
            return slot if len(inputs) > slot else (0 if inputs else -1)
        if slot < len(inputs) and _types_fit(inputs[slot].get("type"), out_type):
            if _types_fit(inputs[slot].get("type"), kind):
                return slot
        exact = next((i for i, x in enumerate(inputs) if x.get("type") == kind), -1)
        if exact >= 0:
            return exact
        return next(
            (
                i
                for i, x in enumerate(inputs)
                if _types_fit(x.get("type"), out_type) and _types_fit(x.get("type"), kind)
            ),
            -1,
        )

    def _subgraph_output(self, dto: _Dto, slot: int, kind: Any, seen: set) -> Any:
        definition = self.defs[dto.type]
        outs = definition.get("outputs") or []
        if slot >= len(outs):
            raise AnimaError(f"{self.where}: subgraph {dto.label} has no output slot {slot}")
        sub = next(iter(dto.inner.values())).level if dto.inner else _level(definition, self.where)
        for link_id in outs[slot].get("linkIds") or []:
            link = sub.links.get(int(link_id))
            if link is None or link.target != SUBGRAPH_OUTPUT:
                continue
            if link.origin == SUBGRAPH_INPUT:  # passed straight through the subgraph
                return self._from_subgraph_input(dto, link.origin_slot, seen, kind)
            inner = dto.inner.get(link.origin)
            if inner is None:
                raise AnimaError(
                    f"{self.where}: subgraph {dto.label} output {slot} comes from a missing node"
                )
            return self.resolve_output(inner, link.origin_slot, kind, seen)
        return None

    # ------------------------------------------------------------------ one queued node
    def api_node(self, dto: _Dto) -> Node:
        inputs: dict[str, Any] = {}
        spec = node_def(dto.type)
        values = dto.node.get("widgets_values")
        if isinstance(values, Mapping):
            inputs.update(values)
        elif isinstance(values, list) and spec is not None:
            inputs.update(_widget_inputs(spec.inputs, values, dto.label))
        inputs.update(self._promoted(dto))
        for slot, item in enumerate(dto.inputs()):
            name = item.get("name")
            if not name:
                continue
            resolved = self.resolve_input(dto, slot, set())
            if resolved is _GONE:
                inputs.pop(name, None)
                self.notes.append(f"{dto.label} input {name!r} comes from a muted node: left unconnected")
            elif isinstance(resolved, _Widget):
                inputs[name] = resolved.value
            elif isinstance(resolved, Link):
                inputs[name] = resolved
        return Node(dto.id, dto.type, inputs, str(dto.node.get("title") or ""))


def _widget_inputs(defs: Sequence[InputDef], values: list, label: str) -> dict[str, Any]:
    """``widgets_values`` -> {input name: value} in declaration order (see the module docstring)."""
    out: dict[str, Any] = {}
    pos = 0
    for d in defs:
        if not d.is_widget:
            continue
        if pos >= len(values):
            break
        out[d.name] = values[pos]
        pos += 1 + d.extra_widget_values
        if d.type == "COMFY_DYNAMICCOMBO_V3":
            option = next((o for o in d.spec.get("options", []) if o.get("key") == out[d.name]), None)
            if option is None:
                raise AnimaError(f"{label}: {d.name} {out[d.name]!r} is not one of its options")
            for sub_name, sub in (option.get("inputs", {}).get("required", {}) or {}).items():
                sub_def = InputDef(sub_name, sub.get("type", ""), sub)
                if sub_def.is_widget and pos < len(values):
                    out[f"{d.name}.{sub_name}"] = values[pos]
                    pos += 1 + sub_def.extra_widget_values
    return out


def ui_to_api(data: Mapping[str, Any], where: str = "the workflow") -> Graph:
    """The API-format graph the frontend queues for a UI-format workflow."""
    flat = _Flattener(data, where)
    queued = [flat.api_node(d) for d in flat.dtos.values() if flat.queued(d)]
    ids = {n.id for n in queued}
    # Links to nodes that are not sent are dropped, as the frontend drops them.
    nodes = {
        n.id: Node(
            n.id,
            n.class_type,
            {k: v for k, v in n.inputs.items() if not (isinstance(v, Link) and v.node not in ids)},
            n.title,
        )
        for n in queued
    }
    muted = sorted(d.id for d in flat.dtos.values() if d.mode == MUTED and d.type not in NOTE_TYPES)
    notes = list(dict.fromkeys(flat.notes))
    if muted:
        notes.append(f"muted nodes not run: {', '.join(muted)}")
    graph = Graph(nodes, tuple(notes))
    check_links(graph)
    return graph
