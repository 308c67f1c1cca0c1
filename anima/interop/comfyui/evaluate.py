"""Evaluating a ComfyUI graph symbolically: each node's outputs as `values` descriptions.

Evaluation is lazy and memoised, as ComfyUI's executor runs a graph: a node runs when an output
needs it, once; ``ComfySwitchNode``'s ``on_false`` / ``on_true`` are lazy inputs, so only the
chosen branch is evaluated (the other may name files that do not exist). A loop of links is a
one-line error naming the nodes in it. Literal widget values are converted to their declared types
as ComfyUI's validation does (``int()``, ``float()``, ``bool()``, ``str()``). The node rules are in
`anima.interop.comfyui.node_rules`; a node without a rule is named in a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anima.errors import AnimaError
from anima.interop.comfyui.graph import Graph, Link, Node
from anima.interop.comfyui.node_defs import node_def

REQUIRED = object()


@dataclass
class Env:
    """What evaluation needs from outside: the size of an input picture, by LoadImage name."""

    image_size: Callable[[str], tuple[int, int]]
    notes: list[str] = field(default_factory=list)


Rule = Callable[["Evaluator", Node], tuple]


class Evaluator:
    """Evaluates nodes of one graph on demand; `rules` maps class types to node rules."""

    def __init__(self, graph: Graph, env: Env, rules: dict[str, Rule]) -> None:
        self.graph, self.env, self.rules = graph, env, rules
        self._done: dict[str, tuple] = {}
        self._running: list[str] = []

    def output(self, link: Link) -> Any:
        outputs = self.run(link.node)
        node = self.graph.node(link.node)
        if link.slot >= len(outputs):
            raise AnimaError(f"{node.label} has no output slot {link.slot}")
        return outputs[link.slot]

    def run(self, node_id: str) -> tuple:
        if node_id in self._done:
            return self._done[node_id]
        node = self.graph.node(node_id)
        if node_id in self._running:
            loop = self._running[self._running.index(node_id) :] + [node_id]
            raise AnimaError("the graph has a loop: " + " -> ".join(self.graph.node(i).label for i in loop))
        rule = self.rules.get(node.class_type)
        if rule is None:
            raise AnimaError(f"{node.label} is not a node anima supports")
        self._running.append(node_id)
        try:
            out = rule(self, node)
        finally:
            self._running.pop()
        self._done[node_id] = out
        return out

    # ------------------------------------------------------------------ inputs
    def get(self, node: Node, name: str, default: Any = REQUIRED) -> Any:
        """Input `name` of `node`: the linked node's output, or the literal in its declared type."""
        if name not in node.inputs:
            if default is REQUIRED:
                raise AnimaError(f"{node.label}: input {name!r} is missing (not connected and no value)")
            return default
        value = node.inputs[name]
        if isinstance(value, Link):
            return self.output(value)
        return coerce(node, name, value)

    def typed(self, node: Node, name: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = self.get(node, name)
        if not isinstance(value, kind):
            got = type(value).__name__.upper() if not isinstance(value, str | int | float) else repr(value)
            raise AnimaError(f"{node.label}: input {name!r} must be {what}, got {got}")
        return value

    def number(self, node: Node, name: str, kind: type = float, default: Any = REQUIRED) -> Any:
        value = self.get(node, name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AnimaError(f"{node.label}: input {name!r} must be a number, got {value!r}")
        if kind is int:
            if float(value) != int(value):
                raise AnimaError(f"{node.label}: input {name!r} must be an integer, got {value!r}")
            return int(value)
        return float(value)

    def text(self, node: Node, name: str, default: Any = REQUIRED) -> str:
        value = self.get(node, name, default)
        if not isinstance(value, str):
            raise AnimaError(f"{node.label}: input {name!r} must be text, got {value!r}")
        return value

    def flag(self, node: Node, name: str) -> bool:
        value = self.get(node, name)
        if not isinstance(value, bool | int):
            raise AnimaError(f"{node.label}: input {name!r} must be true or false, got {value!r}")
        return bool(value)


def coerce(node: Node, name: str, value: Any) -> Any:
    """A literal widget value converted to the input's declared type, as ComfyUI validates it."""
    spec = node_def(node.class_type)
    decl = spec.input(name) if spec is not None else None
    kind = decl.type if decl is not None else None
    if kind is None and "." in name and spec is not None:  # a dynamic combo's option input
        return value
    try:
        if kind == "INT":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "FLOAT":
            return float(value)
        if kind == "BOOLEAN":
            return bool(value)
        if kind == "STRING":
            return str(value)
    except (TypeError, ValueError):
        raise AnimaError(f"{node.label}: input {name!r} cannot be read as {kind}: {value!r:.60}") from None
    return value


def choose(ev: Evaluator, n: Node, name: str, allowed: tuple[str, ...]) -> str:
    """A resize-method combo, one of `allowed`."""
    value = ev.text(n, name)
    if value not in allowed:
        raise AnimaError(f"{n.label}: unknown {name} {value!r}")
    return value
