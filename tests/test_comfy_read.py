"""Reading ComfyUI graphs: API and UI format, the frontend's flattening rules, one-line errors.

Done-when 4 (unsupported nodes, broken links and cycles are one-line errors) and the reading half of
done-when 1 (every fixture case's UI graph means exactly its API graph).
"""

from __future__ import annotations

import copy
import json

import pytest
from comfy_support import CASES, FIX

from anima.errors import AnimaError
from anima.imageio import read_png_text
from anima.interop.comfyui.graph import Link, parse_api
from anima.interop.comfyui.plan import plan_graph
from anima.interop.comfyui.read import graph_from_json_text, graph_from_text, has_graph, load_graph
from anima.interop.comfyui.ui import ui_to_api


def _norm(graph) -> dict:
    return {
        i: (n.class_type, {k: (v.node, v.slot) if isinstance(v, Link) else v for k, v in n.inputs.items()})
        for i, n in graph.nodes.items()
    }


def _case_json(case_id: str, kind: str) -> dict:
    return json.loads((FIX / case_id / f"{kind}.json").read_text())


def _plan(graph):
    return plan_graph(graph, lambda name: (140, 108), lambda name: f"/input/{name}")


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_ui_graph_means_the_api_graph(case: dict) -> None:
    # The fixture's workflow chunk, flattened as the frontend queues it (subgraph 90 -> "90:<id>",
    # primitives and switches kept as backend nodes), is the prompt chunk ComfyUI ran, value for value.
    api = parse_api(_case_json(case["id"], "graph"))
    ui = ui_to_api(_case_json(case["id"], "workflow"))
    assert _norm(ui) == _norm(api)


def test_png_chunks_prefer_the_prompt() -> None:
    png = FIX / "wf_a2_anima_base_template_subgraph" / "Anima_00001_.png"
    text = read_png_text(png)
    assert has_graph(text)
    assert _norm(graph_from_text(text, str(png))) == _norm(parse_api(json.loads(text["prompt"])))
    only_ui = {"workflow": text["workflow"]}
    assert _norm(graph_from_text(only_ui, "x")) == _norm(parse_api(json.loads(text["prompt"])))
    assert not has_graph({**text, "anima_recipe": "{}"})  # anima's own recipe wins


def _flat_ui() -> dict:
    return copy.deepcopy(_case_json("wf_a_anima_base_flat", "workflow"))


def _node(ui: dict, node_id: int) -> dict:
    return next(n for n in ui["nodes"] if n["id"] == node_id)


def _insert(ui: dict, new: dict, origin: int, target: int, target_slot: int, kind: str) -> None:
    """Put `new` (one input, one output) on the link origin -> target."""
    link = next(lk for lk in ui["links"] if lk[1] == origin and lk[3] == target and lk[4] == target_slot)
    a, b = max(lk[0] for lk in ui["links"]) + 1, max(lk[0] for lk in ui["links"]) + 2
    link[0:1] = [a]
    link[3], link[4] = new["id"], 0
    new["inputs"][0]["link"] = a
    new["outputs"][0]["links"] = [b]
    _node(ui, target)["inputs"][target_slot]["link"] = b
    ui["links"].append([b, new["id"], 0, target, target_slot, kind])
    ui["nodes"].append(new)


def test_bypassed_node_passes_its_matching_input() -> None:
    ui = _flat_ui()
    lora = {
        "id": 200, "type": "LoraLoaderModelOnly", "mode": 4, "widgets_values": ["missing.safetensors", 1.0],
        "inputs": [{"name": "model", "type": "MODEL", "link": None}],
        "outputs": [{"name": "MODEL", "type": "MODEL", "links": []}],
    }  # fmt: skip
    _insert(ui, lora, 78, 76, 0, "MODEL")
    graph = ui_to_api(ui)
    assert "200" not in graph.nodes
    assert graph.node("76").inputs["model"] == Link("78", 0)
    assert _plan(graph).jobs[0].recipe.loras == ()


def test_muted_node_is_not_run_and_its_links_go() -> None:
    ui = _flat_ui()
    _node(ui, 72)["mode"] = 2  # the VAE loader
    graph = ui_to_api(ui)
    assert "72" not in graph.nodes and "vae" not in graph.node("73").inputs
    with pytest.raises(AnimaError, match=r"^node 73 \(VAEDecode\): input 'vae' is missing"):
        _plan(graph)


def test_reroute_and_primitive_node_are_frontend_only() -> None:
    ui = _flat_ui()
    reroute = {
        "id": 201, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": None}],
        "outputs": [{"name": "", "type": "CLIP", "links": []}],
    }  # fmt: skip
    _insert(ui, reroute, 71, 77, 0, "CLIP")
    prim = {
        "id": 202, "type": "PrimitiveNode", "mode": 0, "widgets_values": [987, "fixed"], "inputs": [],
        "outputs": [{"name": "INT", "type": "INT", "links": [300], "widget": {"name": "seed"}}],
    }  # fmt: skip
    ui["nodes"].append(prim)
    ks = _node(ui, 76)
    ks["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 300})
    ui["links"].append([300, 202, 0, 76, len(ks["inputs"]) - 1, "INT"])
    graph = ui_to_api(ui)
    assert {"201", "202"}.isdisjoint(graph.nodes)
    assert graph.node("77").inputs["clip"] == Link("71", 0)
    assert graph.node("76").inputs["seed"] == 987
    assert _plan(graph).jobs[0].recipe.seed == 987


def test_unsupported_node_is_named_in_one_line() -> None:
    data = _case_json("wf_a_anima_base_flat", "graph")
    data["78"]["class_type"] = "UNETLoaderGGUF"
    with pytest.raises(AnimaError) as err:
        _plan(parse_api(data))
    assert str(err.value) == "node 78 (UNETLoaderGGUF) is not a node anima supports"


@pytest.mark.parametrize("kind", ["graph", "workflow"])
def test_broken_link_is_one_line(kind: str) -> None:
    data = _case_json("wf_a_anima_base_flat", kind)
    if kind == "graph":
        data["76"]["inputs"]["model"] = ["999", 0]
        pattern = r"node 76 \(KSampler\) input 'model' is linked to node 999, which is not in the graph"
    else:
        data["links"] = [lk for lk in data["links"] if not (lk[1] == 78 and lk[3] == 76)]
        pattern = r"node 76 \(KSampler\) input 'model' uses link \d+, which the graph does not have"
    with pytest.raises(AnimaError, match=pattern) as err:
        _plan(load_graph(data))
    assert "\n" not in str(err.value)


def test_cycle_is_one_line() -> None:
    data = _case_json("wf_c_lora_kohya_08", "graph")
    data["78"]["class_type"] = "LoraLoaderModelOnly"  # the UNET loader now takes the LoRA's output
    data["78"]["inputs"] = {"model": ["83", 0], "lora_name": "x.safetensors", "strength_model": 1.0}
    with pytest.raises(AnimaError) as err:
        _plan(parse_api(data))
    assert str(err.value) == (
        "the graph has a loop: node 83 (LoraLoaderModelOnly) -> node 78 (LoraLoaderModelOnly) -> "
        "node 83 (LoraLoaderModelOnly)"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "x.json: not valid JSON"),
        ("[1, 2]", "x.json is not a ComfyUI graph"),
        ('{"1": {"inputs": {}}}', "x.json: node 1 has no class_type"),
        ('{"1": {"class_type": "KSampler", "inputs": {"model": [1, 2, 3]}}}', "x.json: node 1 (KSampler)"),
    ],
)
def test_bad_graph_files(text: str, message: str) -> None:
    with pytest.raises(AnimaError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        graph_from_json_text(text, "x.json")


def test_subgraph_widget_values_of_the_instance_win() -> None:
    # Older frontends keep an unconnected subgraph input's widget value on the instance itself.
    ui = _case_json("wf_a2_anima_base_template_subgraph", "workflow")
    instance = _node(ui, 90)
    del instance["properties"]["proxyWidgets"]  # the older form: values by widget input, in order
    instance["widgets_values"] = ["a cat, from the instance"]  # the first widget input: "text"
    graph = ui_to_api(ui)
    assert graph.node("90:77").inputs["text"] == "a cat, from the instance"


def test_promoted_widget_values_of_the_instance_win() -> None:
    # A subgraph node that keeps values for its promoted widgets (properties.proxyWidgets, in the
    # order of its widgets_values) sets them on the inner nodes it names.
    ui = _case_json("wf_a2_anima_base_template_subgraph", "workflow")
    instance = _node(ui, 90)
    proxies = instance["properties"]["proxyWidgets"]
    values = {("77", "text"): "promoted prompt", ("76", "seed"): 5}
    instance["widgets_values"] = [values.get(tuple(p), "keep") for p in proxies]
    keep = {tuple(p) for p in proxies} - set(values)
    graph = ui_to_api(ui)
    assert graph.node("90:77").inputs["text"] == "promoted prompt"
    assert graph.node("90:76").inputs["seed"] == 5
    assert ("74", "width") in keep and graph.node("90:74").inputs["width"] == Link("91", 0)  # a link stays
