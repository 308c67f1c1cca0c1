"""Where a ComfyUI graph comes from: a PNG's text chunks, a saved .json file, a request body.

A ComfyUI PNG holds ``prompt`` (API format, what the server ran) and ``workflow`` (UI format);
``prompt`` is preferred, since it is exactly what ran, and ``workflow`` is read when it is the only
one. A PNG that anima wrote carries these chunks too, but its own recipe (``anima_recipe``) comes
first (`has_graph` says no for it), so re-reading an anima PNG never goes through the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anima.errors import AnimaError
from anima.interop.comfyui.graph import Graph, is_ui_graph, parse_api, parse_json
from anima.interop.comfyui.ui import ui_to_api

PROMPT_KEY = "prompt"
WORKFLOW_KEY = "workflow"
ANIMA_RECIPE_KEY = "anima_recipe"  # anima.imageio.RECIPE_KEY (imageio sits above interop)


def load_graph(data: Any, where: str = "the graph") -> Graph:
    """A graph in either format; a UI workflow is converted as the frontend queues it."""
    if is_ui_graph(data):
        return ui_to_api(data, where)
    return parse_api(data, where)


def has_graph(text: Mapping[str, str]) -> bool:
    """Whether PNG text chunks should be read as a ComfyUI graph (not when anima's recipe is there)."""
    return ANIMA_RECIPE_KEY not in text and (PROMPT_KEY in text or WORKFLOW_KEY in text)


def graph_from_text(text: Mapping[str, str], where: str) -> Graph:
    """The graph in a PNG's text chunks: ``prompt``, else ``workflow``."""
    if PROMPT_KEY in text:
        return load_graph(parse_json(text[PROMPT_KEY], f"{where} (prompt chunk)"), where)
    if WORKFLOW_KEY in text:
        return load_graph(parse_json(text[WORKFLOW_KEY], f"{where} (workflow chunk)"), where)
    raise AnimaError(f"{where} holds no ComfyUI graph (no 'prompt' or 'workflow' text)")


def graph_from_json_text(text: str, where: str) -> Graph:
    """A saved workflow (UI format) or an "Export (API)" file."""
    return load_graph(parse_json(text, where), where)
