"""``anima generate`` with ComfyUI graphs: ``--workflow FILE.json``, ``--from-png`` of a ComfyUI PNG,
``--input-dir``, and ``--export-workflow FILE.json``.

A graph names its own model files, pictures, sampler and settings; the model-finding flags
(``--models-dir``, ``--comfyui``, ``--tokenizer-dir``) say where its names are looked up, and
``--prompt / --negative-prompt / --width / --height / --size / --steps / --cfg / --sampler /
--scheduler / --seed / --batch-size / --shift / --denoise`` change every output's recipe. Flags
that describe a recipe the graph does not have (``--lora``, ``--init-image``, ``--grid``, ...) are
refused rather than ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from anima.errors import AnimaError

OVERRIDES = (
    "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler", "seed", "batch_size",
    "shift", "denoise",
)  # fmt: skip
_REFUSED = {
    "init_image": "--init-image", "mask": "--mask", "lora": "--lora", "grid": "--grid",
    "prompt_matrix": "--prompt-matrix", "preset": "--preset", "only_masked": "--only-masked",
}  # fmt: skip


def add_graph_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ComfyUI graphs")
    g.add_argument("--workflow", type=Path, help="run a ComfyUI graph file (saved workflow or API export)")
    g.add_argument(
        "--input-dir", type=Path, action="append", default=[],
        help="folder of the pictures LoadImage names (default: the graph's folder, then ComfyUI's input/)",
    )  # fmt: skip
    g.add_argument(
        "--export-workflow", type=Path, metavar="FILE.json",
        help="write the recipe as a ComfyUI workflow (FILE.api.json: API format) and stop",
    )  # fmt: skip


def graph_source(args: argparse.Namespace):
    """(graph, where, folder) for --workflow or a ComfyUI PNG given to --from-png; None otherwise."""
    from anima.imageio import read_png_text
    from anima.interop.comfyui.read import graph_from_json_text, graph_from_text, has_graph

    if getattr(args, "workflow", None) is not None:
        if args.from_png is not None:
            raise AnimaError("give either --workflow or --from-png, not both")
        path = Path(args.workflow)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AnimaError(f"--workflow {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AnimaError(f"--workflow {path}: cannot read it ({exc})") from None
        return graph_from_json_text(text, str(path)), str(path), path.parent
    if args.from_png is not None:
        text = read_png_text(args.from_png)
        if has_graph(text):
            return graph_from_text(text, str(args.from_png)), str(args.from_png), Path(args.from_png).parent
    return None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from anima.recipe import parse_size

    for name, flag in _REFUSED.items():
        if getattr(args, name, None):
            raise AnimaError(f"{flag} does not apply to a ComfyUI graph (the graph says what it uses)")
    values = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    prompt = args.prompt if args.prompt is not None else args.prompt_pos
    if prompt is not None:
        values["prompt"] = prompt
    if args.size:
        if args.width is not None or args.height is not None:
            raise AnimaError("give either --size or --width/--height, not both")
        values["width"], values["height"] = parse_size(args.size)
    return values


def _tokenizers(args: argparse.Namespace, places, comfyui_dirs) -> tuple[Path | None, Path | None]:
    import os

    from anima.weights.discovery import default_data_dir, find_tokenizers
    from anima.weights.model_files import tokenizers_in

    q, t = find_tokenizers(tokenizer_dir=args.tokenizer_dir) if args.tokenizer_dir else (None, None)
    for root in places.model_roots:
        for d in (root / "tokenizers", root):
            a, b = tokenizers_in(d)
            q, t = q or a, t or b
    if q and t:
        return q, t
    data = default_data_dir(os.environ, Path.home())
    a, b = find_tokenizers(comfyui_dirs=list(comfyui_dirs), data_dir=data)
    return q or a, t or b


def run_graph(args: argparse.Namespace, graph, where: str, folder: Path) -> int:
    """Plan the graph, find its files, render every output, write the PNGs."""
    from anima.cli.generate import _default_output
    from anima.cli.model_selection import search_places
    from anima.interop.comfyui.plan import plan_graph
    from anima.jobs.comfy_files import GraphPlaces, input_file, picture_size
    from anima.jobs.comfy_graph import derive_controls, graph_output_paths, prepare_graph

    overrides = _overrides(args)
    found = search_places(args)
    models = [found["models_dir"]] if found["models_dir"] is not None else []
    places = GraphPlaces.make(models, found["comfyui_dirs"], args.input_dir, folder)
    plan = plan_graph(
        graph,
        image_size=lambda name: picture_size(input_file(name, places)),
        image_path=lambda name: str(input_file(name, places).resolve()),
    )
    runs = prepare_graph(plan, places, _tokenizers(args, places, found["comfyui_dirs"]), overrides)
    for note in plan.notes:
        print(f"anima: {note}", file=sys.stderr)
    out = args.output or _default_output(runs[0].recipe.seed)
    if out.suffix.lower() != ".png":
        raise AnimaError(f"--output must end in .png, got '{out}'")
    paths = graph_output_paths(out, runs)
    given = {f for r in runs for u in r.recipe.controls for f in (u.image, u.mask)}
    runs = derive_controls(runs, out)  # the graph's computed control pictures, beside the output
    derived = {f for r in runs for u in r.recipe.controls for f in (u.image, u.mask)} - given - {""}
    try:
        return _render(args, runs, paths, out)
    except BaseException:  # a run that fails leaves no files of its own behind
        for f in derived:
            Path(f).unlink(missing_ok=True)
        raise


def _render(args, runs, paths, out: Path) -> int:
    from anima.cli.generate import _device, _hash_cache, _progress_bar
    from anima.cli.perf_flags import run_options
    from anima.imageio import save_png
    from anima.interop.comfyui.write import GraphFiles
    from anima.jobs.comfy_graph import render_graph
    from anima.pipeline import Pipeline
    from anima.runtime.precision import SHORT_NAMES, resolve_dtype

    device = _device(args.device)
    dtype = SHORT_NAMES[resolve_dtype(args.dtype or "auto", device)]
    loras = {name: path for run in runs for name, path in run.loras.items()}
    big = max((r.recipe for r in runs), key=lambda r: r.width * r.height * r.batch_size)

    def pipeline_for(model_set):
        options = run_options(
            args, device=str(device), dtype=dtype, weights=None, fp16_accumulation=False,
            lora_resolver=lambda name: loras[name], hash_cache=_hash_cache(),
            plan_size=(big.width, big.height, big.batch_size),
        )  # fmt: skip
        pipe = Pipeline.load(model_set, options)
        for note in pipe.notes:
            print(note, file=sys.stderr)
        return pipe

    seeds = sorted({r.recipe.seed for r in runs})
    print(f"seed: {seeds[0]}" if len(seeds) == 1 else f"seeds: {', '.join(map(str, seeds))}", file=sys.stderr)
    bar = _progress_bar(args.no_progress)
    try:
        images = render_graph(runs, pipeline_for, progress=bar, on_note=lambda t: print(t, file=sys.stderr))
    finally:
        if hasattr(bar, "close"):
            bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    for run, files, made in zip(runs, paths, images, strict=True):
        f = run.job.files
        parts = (f.unet_from_checkpoint, f.clip_from_checkpoint, f.vae_from_checkpoint)
        # A checkpoint's parts mixed with split files has no one-loader form: no graph then.
        names = (
            GraphFiles(f.unet, f.clip, f.vae, checkpoint=f.unet if all(parts) else "")
            if all(parts) or not any(parts)
            else False
        )
        for i, (path, (img, recipe)) in enumerate(zip(files, made, strict=True)):
            extra = {"batch_index": i} if len(made) > 1 else None
            save_png(path, img, recipe, extra_json=extra, comfyui=names)
            print(path)
    return 0


def comfyui_names(files):
    """The ComfyUI names of a model set's split files (None for a diffusers folder: the graph then
    names the official files)."""
    from anima.interop.comfyui.write import GraphFiles

    if files is None or files.diffusers is not None:
        return None
    return GraphFiles(Path(files.dit).name, Path(files.text_encoder).name, Path(files.vae).name)


def export_workflow(args: argparse.Namespace, recipe, files) -> int:
    """Write `recipe` as a ComfyUI graph file: UI format, or API format for a ``*.api.json`` name."""
    from anima.imageio import atomic_write
    from anima.interop.comfyui.write import api_graph, ui_graph
    from anima.jobs.comfy_files import picture_size

    out = Path(args.export_workflow)
    if out.suffix.lower() != ".json":
        raise AnimaError(f"--export-workflow needs a .json file name, got '{out}'")
    names = comfyui_names(files)
    api = out.name.lower().endswith(".api.json")
    size = lambda path: picture_size(Path(path))  # noqa: E731
    graph = api_graph(recipe, names, size) if api else ui_graph(recipe, names, size)
    data = json.dumps(graph, indent=2, ensure_ascii=False).encode("utf-8")
    atomic_write(out, lambda fh: fh.write(data))
    print(out)
    return 0
