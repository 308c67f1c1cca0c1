"""`anima explore`: an artist style gallery (or a side-by-side sheet with --compare).

    anima explore --artists artists.txt --prompt "1girl, smile" --seeds 1,2 --limit 20 --out styles/
    anima explore --compare "@a" "@b" --prompt "1girl, smile" --seeds 1,2

Each image is keyed by its recipe hash: re-running the command renders only what is missing, and a
killed run leaves complete images plus a gallery of them. Model, recipe and --ray flags are those of
`anima batch`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from anima.cli.batch import add_render_args
from anima.errors import AnimaError

GALLERY_EVERY_S = 20.0  # rebuild the gallery at most this often while rendering


def add_explore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artists", type=Path, help="artist list: one name per line, or the 59k index file")
    p.add_argument(
        "--prompt", "-p", required=True, help="the fixed prompt ({artist} marks where the tag goes)"
    )
    p.add_argument("--seeds", default="1", help="seeds: 1,2 or 1-4 (default 1)")
    p.add_argument("--limit", type=int, help="only the first N artists of the list")
    p.add_argument("--compare", nargs="+", metavar="TAG", help="compare these artists side by side")
    p.add_argument(
        "--mix",
        choices=["blend", "edit", "none"],
        default="blend",
        help="with --compare, also render pairs: '@a, @b' (blend) or '[@a:@b:0.5]' (edit)",
    )
    p.add_argument("--title", help="gallery title")
    add_render_args(p)


def run_explore(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from anima.cli.batch import make_executor, recipe_defaults, resolve_model, run_stamp, with_quality
    from anima.explore import build_gallery, compare_jobs, compare_sheet, index_jobs, parse_seeds
    from anima.jobs.batch import run_jobs, with_keys
    from anima.jobs.store import OutputStore
    from anima.prompt_tools import ArtistIndex
    from anima.recipe import Recipe

    if not args.prompt.strip():
        raise AnimaError("--prompt is empty")
    if args.limit is not None and args.limit < 1:
        raise AnimaError("--limit must be at least 1")
    if (args.artists is None) == (args.compare is None):
        raise AnimaError("give either --artists FILE or --compare TAG TAG ...")
    seeds = parse_seeds(args.seeds)
    spec, model_defaults = resolve_model(args)
    base = Recipe.make(with_quality(args, args.prompt), **recipe_defaults(args, model_defaults))
    if args.compare:
        jobs = compare_jobs(base, args.compare, seeds, args.mix)
        title = args.title or "compare: " + ", ".join(args.compare)
    else:
        index = ArtistIndex.load(args.artists)
        jobs = index_jobs(base, index, seeds, args.limit)
        title = args.title or f"styles: {args.artists.name}"
    store = OutputStore(args.out or Path("explore_out"))
    stamp = run_stamp(spec)
    jobs = with_keys(
        [replace(j, recipe=j.recipe.with_(**stamp)) for j in jobs], spec.fingerprint(), stamp["dtype"]
    )
    executor = make_executor(args, spec)
    last = [time.monotonic()]

    def on_saved(job, paths) -> None:
        if not args.no_progress:
            info = dict(job.info)
            print(f"{info.get('tag', '')} seed {info.get('seed', '')} -> {paths[0]}", file=sys.stderr)
        if time.monotonic() - last[0] > GALLERY_EVERY_S:
            build_gallery(store, jobs, title=title, prompt=base.prompt)
            last[0] = time.monotonic()

    extra = {"explore": {"prompt": base.prompt, "seeds": seeds, "title": title}}
    try:
        report = run_jobs(jobs, store, executor, on_saved=on_saved, manifest_extra=extra)
    finally:
        page = build_gallery(store, jobs, title=title, prompt=base.prompt)
    for msg in report.errors:
        print(f"anima: error: {msg}", file=sys.stderr)
    if args.compare:
        sheet = compare_sheet(store, jobs, store.root / "compare.png")
        if sheet is not None:
            print(sheet)
    print(f"{report.rendered} rendered, {report.skipped} already done, {len(report.errors)} failed")
    print(page)
    return 2 if report.errors else 0
