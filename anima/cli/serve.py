"""`anima serve`: flags -> models, limits, security -> the FastAPI app under uvicorn.

Every flag is checked (binding without a key, folders, limits, model files by header, Ray
installed for ``--ray``) before any model is loaded or the port is opened. ``--ray [ADDRESS]``
runs the jobs on a Ray cluster's actors (`anima.server.ray_pool`); the queue stays here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from anima.cli import model_selection
from anima.errors import AnimaError

DEFAULT_PORT = 7860  # A1111's, so its clients find the server without configuration


def add_serve_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("network and security")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)"
    )
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    g.add_argument("--listen", action="store_true", help="bind all interfaces (0.0.0.0); needs --api-key")
    g.add_argument(
        "--api-key", help="required key: 'Authorization: Bearer KEY' or basic auth (user:pass form ok)"
    )
    g.add_argument("--insecure", action="store_true", help="allow --listen without --api-key")
    g.add_argument(
        "--cors-origin", action="append", default=[], help="allow this browser origin (repeatable)"
    )
    h = p.add_argument_group("prompt help (web UI)")
    h.add_argument("--artists", type=Path, help="artist list for @name completion and the linter")
    h.add_argument("--tags", type=Path, help="tag list to complete (a1111-tagcomplete CSV: danbooru.csv)")
    s = p.add_argument_group("storage")
    s.add_argument("--data-dir", type=Path, help="queue database and inputs (default: <anima data>/server)")
    s.add_argument("--output-dir", type=Path, help="where images are written (default: DATA_DIR/outputs)")
    s.add_argument("--lora-dir", type=Path, action="append", default=[], help="a LoRA folder (repeatable)")
    r = p.add_argument_group("generation")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    r.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 or auto")
    r.add_argument("--preview-every", type=int, default=2, help="preview image every N steps (0: none)")
    c = p.add_argument_group("Ray cluster (jobs run on its actors; the queue stays here)")
    c.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run jobs on Ray: no value starts a local cluster; or a cluster address")  # fmt: skip
    c.add_argument("--ray-workers", type=int, help="Ray actors (default: one per GPU, or 2 CPU workers)")
    c.add_argument("--ray-threads", type=int, help="torch threads per CPU actor (default: this process's)")
    c.add_argument("--ray-attempts", type=int, default=3, help="a job whose worker dies this often fails")
    lim = p.add_argument_group("request limits")
    lim.add_argument("--max-size", type=int, default=2048, help="largest width or height (default 2048)")
    lim.add_argument("--max-pixels", type=int, default=2048 * 2048, help="largest width*height")
    lim.add_argument("--max-steps", type=int, default=150)
    lim.add_argument("--max-batch", type=int, default=8)
    lim.add_argument("--max-n-iter", type=int, default=16)
    lim.add_argument("--max-queue", type=int, default=1000, help="queued jobs at most")


def build_app(args: argparse.Namespace):
    """Everything but the network: checks, models, the app. Raises AnimaError on bad input."""
    from anima.server.security import Limits, check_bind

    host = "0.0.0.0" if args.listen else args.host
    api_key = args.api_key or os.environ.get("ANIMA_API_KEY") or None
    check_bind(host, api_key, args.insecure)
    if not 0 <= args.port <= 65535:
        raise AnimaError(f"--port {args.port} is not a port number")
    if args.preview_every < 0:
        raise AnimaError("--preview-every must be >= 0")
    limits = Limits(
        max_side=args.max_size, max_pixels=args.max_pixels, max_steps=args.max_steps,
        max_batch=args.max_batch, max_n_iter=args.max_n_iter, max_queued=args.max_queue,
    )  # fmt: skip
    for d in args.lora_dir:
        if not d.is_dir():
            raise AnimaError(f"--lora-dir {d}: no such folder")
    _import_server_deps()
    ray = _ray_settings(args)
    from anima.cli.perf_flags import run_options
    from anima.prompt_tools.artist_index import ArtistIndex
    from anima.prompt_tools.tag_list import TagList
    from anima.server.app import PromptHelp, create_app

    prompt_help = PromptHelp(
        artists=ArtistIndex.load(args.artists) if args.artists else None,
        tags=TagList.load(args.tags) if args.tags else None,
    )
    from anima.server.service import PipelineService
    from anima.weights.discovery import default_data_dir

    models, rescan, lora_dirs = _model_sets(args)
    places = model_selection.search_places(args)
    roots = [Path(r) for r in (places["models_dir"], *places["comfyui_dirs"]) if r]
    subs = ("model_patches", "models/model_patches")
    patch_dirs = [r / sub for r in roots for sub in subs if (r / sub).is_dir()]
    notice = model_selection.model_notice(models[0])
    if notice:
        print(notice, file=sys.stderr)
    options = run_options(args, device=args.device, dtype=args.dtype, weights=None, fp16_accumulation=False)
    service = PipelineService(
        models, lora_dirs=lora_dirs, options=options, rescan=rescan, patch_dirs=patch_dirs
    )
    data_dir = args.data_dir or default_data_dir(os.environ, Path.home()) / "server"
    app = create_app(
        service, data_dir=data_dir, outputs_dir=args.output_dir, limits=limits, api_key=api_key,
        cors_origins=args.cors_origin, preview_every=args.preview_every, prompt_help=prompt_help, ray=ray,
    )  # fmt: skip
    return app, host


def _ray_settings(args: argparse.Namespace):
    """RaySettings for --ray (None without it); checked, and Ray importable, before any model loads."""
    if getattr(args, "ray", None) is None:
        for flag in ("ray_workers", "ray_threads"):
            if getattr(args, flag, None) is not None:
                raise AnimaError(f"--{flag.replace('_', '-')} needs --ray")
        return None
    from anima.jobs.ray import require_ray

    try:
        require_ray()
    except AnimaError:
        raise AnimaError("--ray needs Ray: pip install 'anima[ray]' (or pip install ray)") from None
    for flag in ("ray_workers", "ray_threads", "ray_attempts"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise AnimaError(f"--{flag.replace('_', '-')} must be at least 1")
    from anima.server.ray_pool import RaySettings

    address = None if args.ray == "local" else args.ray
    return RaySettings(address, args.ray_workers, args.ray_threads, max_attempts=args.ray_attempts)


def run_serve(args: argparse.Namespace) -> int:
    app, host = build_app(args)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    print(
        f"anima serve: http://{shown}:{args.port}/  (A1111 API at /sdapi/v1, OpenAPI at /openapi.json)",
        file=sys.stderr,
    )
    # A1111 calls wait for their job; on Ctrl+C do not wait for them (the jobs stay queued).
    uvicorn.run(
        app,
        host=host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        timeout_graceful_shutdown=3,
    )
    return 0


def _import_server_deps() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise AnimaError(f"anima serve needs {exc.name}: pip install 'anima[serve]'") from None


def _model_sets(args: argparse.Namespace):
    """(model sets with the chosen one first, a rescan function or None, LoRA folders)."""
    from anima.weights.discovery import discover

    # Checks every path and the tokenizers; with no model anywhere and none asked for, the bundled
    # DEMO model, as `anima generate` does, so a fresh install serves something.
    chosen = model_selection.resolve_files(args, demo_fallback=True)
    places = model_selection.search_places(args)
    lora_dirs = list(args.lora_dir)
    roots = [places["models_dir"], *places["comfyui_dirs"]]
    for root in roots:
        for sub in ("loras", "models/loras"):
            if root is not None and (Path(root) / sub).is_dir():
                lora_dirs.append(Path(root) / sub)
    if args.dit or args.diffusers or chosen.source == model_selection.DEMO_SOURCE:
        return [chosen], None, lora_dirs

    def rescan():
        sets = discover(
            None, places["models_dir"], places["comfyui_dirs"], places["hf_cache"],
            tokenizer_dir=getattr(args, "tokenizer_dir", None), data_dir=places["data_dir"],
        )  # fmt: skip
        return [s for s in sets if s.diffusers is not None or (s.qwen_tokenizer and s.t5_tokenizer)]

    others = [s for s in rescan() if s.name != chosen.name]
    return [chosen, *others], rescan, lora_dirs
