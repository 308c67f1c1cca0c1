"""Explorer jobs: one recipe per (artist, seed), everything else fixed; compare sets and mixes."""

from __future__ import annotations

from collections.abc import Sequence

from anima.errors import AnimaError
from anima.jobs.batch import BatchJob
from anima.prompt_tools.artist_index import ArtistIndex, normalize_name, prompt_tag
from anima.prompt_tools.format import insert_tag
from anima.recipe import Recipe

MIX_MODES = ("blend", "edit", "none")


def parse_seeds(text: str) -> list[int]:
    """``1,2,5-7`` -> [1, 2, 5, 6, 7] (duplicates dropped, order kept)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                rng = range(int(lo), int(hi) + 1)
                if len(rng) > 10000:
                    raise AnimaError(f"--seeds range {part} is too long")
                seeds.extend(rng)
            else:
                seeds.append(int(part))
        except ValueError:
            raise AnimaError(f"--seeds: {part!r} is not a seed or a range like 1-4") from None
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        raise AnimaError("--seeds is empty; give e.g. --seeds 1,2")
    if any(s < 0 or s > 2**64 - 1 for s in seeds):
        raise AnimaError("seeds must be in 0..2**64-1")
    return seeds


def artist_jobs(
    base: Recipe, names: Sequence[str], seeds: Sequence[int], ranks: dict[str, int] | None = None
) -> list[BatchJob]:
    """One job per artist and seed, the @tag inserted at the artist position of `base.prompt`."""
    jobs = []
    for name in names:
        tag = prompt_tag(name)
        prompt = insert_tag(base.prompt, tag)
        for seed in seeds:
            info = [("artist", normalize_name(name)), ("tag", tag), ("seed", str(seed))]
            if ranks and name in ranks:
                info.append(("rank", str(ranks[name])))
            jobs.append(BatchJob(recipe=base.with_(prompt=prompt, seed=seed), info=tuple(info)))
    return jobs


def index_jobs(base: Recipe, index: ArtistIndex, seeds: Sequence[int], limit: int | None) -> list[BatchJob]:
    names = index.names[:limit] if limit else index.names
    return artist_jobs(base, names, seeds, {n: i for i, n in enumerate(names)})


def compare_jobs(
    base: Recipe, tags: Sequence[str], seeds: Sequence[int], mix: str = "blend"
) -> list[BatchJob]:
    """Each artist alone, then for every pair a mix: ``@a, @b`` (blend) or ``[@a:@b:0.5]`` (edit)."""
    if mix not in MIX_MODES:
        raise AnimaError(f"--mix must be one of {', '.join(MIX_MODES)}")
    names = [normalize_name(t) for t in tags]
    if len(names) < 2 or any(not n for n in names):
        raise AnimaError('--compare needs at least two artist tags, e.g. --compare "@a" "@b"')
    jobs = artist_jobs(base, names, seeds)
    if mix == "none":
        return jobs
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ta, tb = prompt_tag(a), prompt_tag(b)
            mixed = f"{ta}, {tb}" if mix == "blend" else f"[{ta}:{tb}:0.5]"
            prompt = insert_tag(base.prompt, mixed)
            for seed in seeds:
                info = (("artist", f"{a} + {b}"), ("tag", mixed), ("seed", str(seed)), ("mix", mix))
                jobs.append(BatchJob(recipe=base.with_(prompt=prompt, seed=seed), info=info))
    return jobs
