"""Finding model files: where the Anima files live, and which of them belong together.

Files are classified by their headers alone (`anima.weights.model_files.inspect_file`), so a
folder of multi-GB checkpoints is searched in milliseconds, with the loaders' own key rules.

`discover` searches, in this order, and returns one `ModelSet` per DiT found:

1. explicit paths (the dit, text encoder and VAE slots): they override whatever is found;
2. a models folder, laid out like ComfyUI's (diffusion_models/, text_encoders/,
   vae/, loras/, plus tokenizers/) or flat;
3. ComfyUI installs (their models/ folder and the tokenizers bundled in comfy/text_encoders/);
4. the Hugging Face cache (``models--circlestone-labs--Anima*``: split_files/ snapshots and
   diffusers-format pipelines).

A DiT is paired with the first text encoder and VAE whose widths fit it (same source first), so a
Qwen3-4B or a 48-channel VAE lying in the same folder is never picked. The library reads no
environment variables: the CLI passes paths in (see `default_hf_cache`, `default_comfyui_dirs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.weights.hashes import file_sha256
from anima.weights.model_files import (
    KIND_NAMES,
    QWEN_TOKENIZER_DIRS,
    T5_TOKENIZER_DIRS,
    FileInfo,
    Kind,
    ModelSet,
    header_shapes,
    inspect_file,
    is_qwen_tokenizer_dir,
    is_t5_tokenizer_dir,
    sniff_kind,
    tokenizers_in,
)

__all__ = [
    "KIND_NAMES", "QWEN_TOKENIZER_DIRS", "T5_TOKENIZER_DIRS", "FileInfo", "Kind", "ModelSet", "choose",
    "discover", "file_sha256", "find_tokenizers", "header_shapes", "inspect_file", "is_qwen_tokenizer_dir",
    "is_t5_tokenizer_dir", "resolve_lora", "resolve_patch", "scan", "sniff_kind",
]  # fmt: skip

log = logging.getLogger(__name__)


# ComfyUI's folders for DiTs, text encoders and VAEs (current, then legacy names). The header, not
# the folder, decides what a file is: a VAE left in diffusion_models/ is still found as a VAE.
MODEL_FOLDERS = ("diffusion_models", "unet", "text_encoders", "clip", "vae")
# Official file stems, best first: the default model is the first DiT in this order.
PREFERRED_DIT_STEMS = (
    "anima-base-v1.0",
    "anima-aesthetic-v1.0",
    "anima-turbo-v1.0",
    "anima-aesthetic-v1.1",
    "anima-turbo-v1.1",
    "anima-preview3-base",
    "anima-preview2",
    "anima-preview",
)
HF_REPO_GLOB = "models--circlestone-labs--Anima*"
WEIGHT_SUFFIXES = (".safetensors", ".gguf")  # quantised DiTs and text encoders come as GGUF too
_MAX_DEPTH = 3  # ComfyUI users nest models in subfolders; do not crawl whole disks


def find_tokenizers(
    *,
    tokenizer_dir: Path | None = None,
    diffusers_dirs: Sequence[Path] = (),
    comfyui_dirs: Sequence[Path] = (),
    data_dir: Path | None = None,
    hf_cache: Path | None = None,
) -> tuple[Path | None, Path | None]:
    """(qwen_dir, t5_dir), each from the first place that has it, in the order of the arguments.

    `tokenizer_dir` holds qwen/ and t5/ subfolders; a diffusers pipeline holds tokenizer/ and
    t5_tokenizer/; a ComfyUI install bundles comfy/text_encoders/{qwen25,t5}_tokenizer; the data
    dir is where ``anima models download`` put them (``tokenizers/qwen``, ``tokenizers/t5``).
    """
    roots: list[Path] = []
    if tokenizer_dir is not None:
        q, t = tokenizers_in(Path(tokenizer_dir))
        if q is None or t is None:
            if q is None:
                sub, need = "qwen", "vocab.json + merges.txt (or tokenizer.json)"
            else:
                sub, need = "t5", "tokenizer.json (or spiece.model)"
            raise AnimaError(
                f"--tokenizer-dir {tokenizer_dir}: {sub}/ folder missing or incomplete (needs {need})"
            )
        roots.append(Path(tokenizer_dir))
    roots += [Path(d) for d in diffusers_dirs]
    roots += [Path(d) / "comfy" / "text_encoders" for d in _comfy_roots(comfyui_dirs)]
    if data_dir is not None:
        roots += [Path(data_dir) / "tokenizers", Path(data_dir) / "models" / "tokenizers", Path(data_dir)]
    if hf_cache is not None:
        roots += [d for scan in _scan_hf_cache(Path(hf_cache)) for d in scan.diffusers]
    qwen = t5 = None
    for root in roots:
        q, t = tokenizers_in(root)
        qwen, t5 = qwen or q, t5 or t
        if qwen and t5:
            break
    return qwen, t5


# --------------------------------------------------------------------- scanning
@dataclass
class SourceScan:
    """What one place holds. `problems` lists unreadable files (skipped, with the reason)."""

    source: str
    root: Path
    dits: list[FileInfo] = field(default_factory=list)
    text_encoders: list[FileInfo] = field(default_factory=list)
    vaes: list[FileInfo] = field(default_factory=list)
    loras: list[Path] = field(default_factory=list)
    patches: list[Path] = field(default_factory=list)  # ControlNet-LLLite patches (model_patches/)
    diffusers: list[Path] = field(default_factory=list)
    qwen_tokenizer: Path | None = None
    t5_tokenizer: Path | None = None
    problems: list[str] = field(default_factory=list)


def _safetensors_under(
    folder: Path, depth: int = _MAX_DEPTH, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES
) -> Iterator[Path]:
    if depth < 0 or not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            yield from _safetensors_under(entry, depth - 1, suffixes)
        elif entry.suffix in suffixes and entry.is_file():
            yield entry


def _is_diffusers(d: Path) -> bool:
    return (d / "transformer").is_dir() and (d / "text_conditioner").is_dir() and (d / "vae").is_dir()


def _dit_rank(info: FileInfo) -> tuple[int, str]:
    stem = info.path.stem
    order = PREFERRED_DIT_STEMS.index(stem) if stem in PREFERRED_DIT_STEMS else len(PREFERRED_DIT_STEMS)
    return order, stem


def _add(scan: SourceScan, path: Path) -> None:
    try:
        info = inspect_file(path)
    except AnimaError as exc:
        log.warning("skipping %s", exc)
        scan.problems.append(str(exc))
        return
    target = {"dit": scan.dits, "text_encoder": scan.text_encoders, "vae": scan.vaes}.get(info.kind)
    if target is not None:
        target.append(info)
    elif info.kind == "lora":
        scan.loras.append(path)
    elif info.kind == "lllite":
        scan.patches.append(path)


def scan_models_folder(root: Path, source: str) -> SourceScan:
    """A ComfyUI-style models folder (kind subfolders), a flat folder, or both mixed."""
    scan = SourceScan(source, root)
    for name in MODEL_FOLDERS:
        for path in _safetensors_under(root / name):
            _add(scan, path)
    for path in sorted(p for p in root.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        _add(scan, path)
    loras = _safetensors_under(root / "loras", suffixes=(".safetensors",))
    scan.loras += [p for p in loras if p not in scan.loras]
    patches = _safetensors_under(root / "model_patches", suffixes=(".safetensors",))
    scan.patches += [p for p in patches if p not in scan.patches]
    scan.diffusers = [d for d in [root, *sorted(root.iterdir())] if d.is_dir() and _is_diffusers(d)]
    for d in [root / "tokenizers", root, *scan.diffusers]:
        q, t = tokenizers_in(d)
        scan.qwen_tokenizer, scan.t5_tokenizer = scan.qwen_tokenizer or q, scan.t5_tokenizer or t
    scan.dits.sort(key=_dit_rank)
    scan.text_encoders.sort(key=lambda i: (not i.path.name.startswith("qwen_3_06b"), str(i.path)))
    scan.vaes.sort(key=lambda i: (not i.path.name.startswith("qwen_image_vae"), str(i.path)))
    return scan


def _comfy_roots(dirs: Sequence[Path]) -> list[Path]:
    """Install roots from paths that name either the install or its models/ folder."""
    roots = []
    for d in map(Path, dirs):
        if not (d / "models").is_dir() and (d.parent / "comfy").is_dir():
            d = d.parent
        roots.append(d)
    return roots


def _scan_hf_cache(cache: Path) -> list[SourceScan]:
    hub = cache / "hub" if (cache / "hub").is_dir() else cache
    scans = []
    for repo in sorted(hub.glob(HF_REPO_GLOB)):
        snaps = repo / "snapshots"
        if not snaps.is_dir():
            continue
        main = (repo / "refs" / "main").read_text().strip() if (repo / "refs" / "main").is_file() else ""
        # The revision that refs/main names first, then the newest.
        order = sorted(snaps.iterdir(), key=lambda s: (s.name != main, -s.stat().st_mtime))
        for snap in order:
            if (snap / "split_files").is_dir():
                scans.append(scan_models_folder(snap / "split_files", f"hf-cache:{repo.name}"))
            elif _is_diffusers(snap):
                scan = SourceScan(f"hf-cache:{repo.name}", snap, diffusers=[snap])
                scan.qwen_tokenizer, scan.t5_tokenizer = tokenizers_in(snap)
                scans.append(scan)
    return scans


def scan(models_dir: Path | None, comfyui_dirs: Sequence[Path], hf_cache: Path | None) -> list[SourceScan]:
    """Every place in search order. A models or ComfyUI folder that does not exist is an error
    (the user named it); a missing HF cache is just empty."""
    scans = []
    if models_dir is not None:
        if not Path(models_dir).is_dir():
            raise AnimaError(f"models folder {models_dir} does not exist")
        scans.append(scan_models_folder(Path(models_dir), f"models-dir:{models_dir}"))
    for root in _comfy_roots(comfyui_dirs):
        if not (root / "models").is_dir():
            raise AnimaError(f"{root} is not a ComfyUI install (no models/ folder)")
        s = scan_models_folder(root / "models", f"comfyui:{root}")
        q, t = tokenizers_in(root / "comfy" / "text_encoders")
        s.qwen_tokenizer, s.t5_tokenizer = s.qwen_tokenizer or q, s.t5_tokenizer or t
        scans.append(s)
    if hf_cache is not None and Path(hf_cache).is_dir():
        scans += _scan_hf_cache(Path(hf_cache))
    return scans


EXPLICIT_KEYS = ("dit", "text_encoder", "vae", "qwen_tokenizer", "t5_tokenizer")


def _explicit(explicit: Mapping[str, Any]) -> tuple[dict[str, FileInfo], dict[str, Path]]:
    unknown = sorted(set(explicit) - set(EXPLICIT_KEYS))
    if unknown:
        raise AnimaError(f"unknown model slot(s) {', '.join(unknown)}; use {', '.join(EXPLICIT_KEYS)}")
    files: dict[str, FileInfo] = {}
    for key in ("dit", "text_encoder", "vae"):
        if key in explicit:
            info = inspect_file(explicit[key])
            if info.kind != key:
                raise AnimaError(f"{info.path} is {info.description}, not a {KIND_NAMES[key]}")
            files[key] = info
    toks: dict[str, Path] = {}
    for key, ok in (("qwen_tokenizer", is_qwen_tokenizer_dir), ("t5_tokenizer", is_t5_tokenizer_dir)):
        if key in explicit:
            if not ok(Path(explicit[key])):
                raise AnimaError(f"{explicit[key]} is not a {key.replace('_', ' ')} folder")
            toks[key] = Path(explicit[key])
    return files, toks


def _fits(dit: FileInfo, other: FileInfo) -> bool:
    attr = "text_width" if other.kind == "text_encoder" else "latent_channels"
    a, b = getattr(dit, attr), getattr(other, attr)
    return a is None or b is None or a == b


def _partner(dit: FileInfo, given: FileInfo | None, candidates: list[FileInfo]) -> FileInfo | None:
    if given is not None:
        if not _fits(dit, given):
            what = "width" if given.kind == "text_encoder" else "latent channels"
            raise AnimaError(
                f"{given.path} ({KIND_NAMES[given.kind]}) does not fit DiT {dit.path}: "
                f"{what} {given.text_width or given.latent_channels} vs "
                f"{dit.text_width if given.kind == 'text_encoder' else dit.latent_channels}"
            )
        return given
    return next((c for c in candidates if _fits(dit, c)), None)


def _first(*paths: Path | None) -> Path | None:
    return next((p for p in paths if p is not None), None)


def discover(
    explicit: Mapping[str, str | Path | None] | None,
    models_dir: Path | None,
    comfyui_dirs: Sequence[Path],
    hf_cache: Path | None,
    *,
    tokenizer_dir: Path | None = None,
    data_dir: Path | None = None,
) -> list[ModelSet]:
    """Complete model sets, best first (see the module docstring for the search order).

    `explicit` maps slots (``dit``, ``text_encoder``, ``vae``, ``qwen_tokenizer``,
    ``t5_tokenizer``) to paths; each is checked to be what its slot says. With an explicit DiT the
    result is that one set, and a missing partner is an error. Tokenizers come from: explicit,
    `tokenizer_dir`, the DiT's own source, any other source, then `data_dir`; None if nowhere.
    """
    given, toks = _explicit({k: v for k, v in (explicit or {}).items() if v is not None})
    scans = scan(models_dir, comfyui_dirs, hf_cache)
    user_q, user_t = find_tokenizers(tokenizer_dir=tokenizer_dir) if tokenizer_dir else (None, None)
    data_q, data_t = find_tokenizers(data_dir=data_dir) if data_dir else (None, None)
    any_q = _first(*(s.qwen_tokenizer for s in scans))
    any_t = _first(*(s.t5_tokenizer for s in scans))

    def tokenizers(s: SourceScan | None) -> tuple[Path | None, Path | None]:
        return (
            _first(toks.get("qwen_tokenizer"), user_q, s and s.qwen_tokenizer, any_q, data_q),
            _first(toks.get("t5_tokenizer"), user_t, s and s.t5_tokenizer, any_t, data_t),
        )

    all_tes = [i for s in scans for i in s.text_encoders]
    all_vaes = [i for s in scans for i in s.vaes]
    if "dit" in given:
        dits: list[tuple[FileInfo, SourceScan | None]] = [(given["dit"], None)]
    else:
        dits = [(d, s) for s in scans for d in s.dits]
    sets, seen = [], set()
    for dit, s in dits:
        if dit.path.resolve() in seen:
            continue
        seen.add(dit.path.resolve())
        te = _partner(dit, given.get("text_encoder"), (s.text_encoders if s else []) + all_tes)
        vae = _partner(dit, given.get("vae"), (s.vaes if s else []) + all_vaes)
        if te is None or vae is None:
            missing = "text encoder (qwen_3_06b_base.safetensors)" if te is None else "VAE (qwen_image_vae)"
            if s is None:
                raise AnimaError(f"found DiT {dit.path} but no fitting {missing}; pass its path too")
            log.info("skipping %s: no fitting %s found", dit.path, missing)
            continue
        q, t = tokenizers(s)
        sets.append(ModelSet(dit.path.stem, dit.path, te.path, vae.path, q, t, s.source if s else "explicit"))
    if "dit" not in given:
        for s in scans:
            for d in s.diffusers:
                name = d.parent.parent.name.split("--")[-1] if d.parent.name == "snapshots" else d.name
                q, t = tokenizers(s)
                te, vae = given.get("text_encoder"), given.get("vae")
                te_path = te.path if te else d / "text_encoder"
                vae_path = vae.path if vae else d / "vae"
                sets.append(ModelSet(name, d / "transformer", te_path, vae_path, q, t, s.source, d))
    return sets


def choose(sets: Sequence[ModelSet], name: str | None = None) -> ModelSet:
    """The set named `name` (exact, else a unique substring), or the first one."""
    if not sets:
        raise AnimaError(
            "no Anima model found: need diffusion_models/anima-*.safetensors, "
            "text_encoders/qwen_3_06b_base.safetensors and vae/qwen_image_vae.safetensors; "
            "use --models-dir, or run `anima models download base-v1.0 --accept-license`"
        )
    if name is None:
        return sets[0]
    exact = [s for s in sets if s.name == name]
    matches = exact or [s for s in sets if name.lower() in s.name.lower()]
    if len({s.name for s in matches}) == 1:
        return matches[0]
    listed = ", ".join(dict.fromkeys(s.name for s in (matches or sets)))
    raise AnimaError(f"model {name!r} is {'ambiguous' if matches else 'not found'}; choose from: {listed}")


def resolve_lora(name: str | Path, scans: Sequence[SourceScan]) -> Path:
    """A LoRA by path, or by file stem among the LoRAs found (loras/ folders and sniffed files)."""
    path = Path(name)
    if path.is_file():
        return path
    found = [p for s in scans for p in s.loras]
    rel = str(name).replace("\\", "/")  # ComfyUI names a LoRA by its path under loras/
    for match in (
        [p for p in found if p.stem == str(name)],
        [p for p in found if p.stem.lower() == str(name).lower()],
        [p for p in found if p.as_posix().endswith("/" + rel)],
    ):
        if match:
            return match[0]
    raise AnimaError(
        f"LoRA {str(name)!r} not found; known: {', '.join(sorted({p.stem for p in found})) or 'none'}"
    )


def resolve_patch(name: str | Path, scans: Sequence[SourceScan]) -> Path:
    """A control patch by path, or by file stem among the patches found (model_patches/ folders)."""
    path = Path(name)
    if path.is_file():
        return path
    found = [p for s in scans for p in s.patches]
    for match in (
        [p for p in found if p.stem == str(name)],
        [p for p in found if p.stem.lower() == str(name).lower()],
    ):
        if match:
            return match[0]
    known = ", ".join(sorted({p.stem for p in found})) or "none"
    raise AnimaError(f"control model {str(name)!r} not found; known: {known}", setting="control_model")


# --------------------------------------------------------------------- default places (for the CLI)
def default_hf_cache(env: Mapping[str, str], home: Path) -> Path:
    """The hub cache folder huggingface_hub uses, from the given environment mapping."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return base / "huggingface" / "hub"


def default_comfyui_dirs(home: Path) -> list[Path]:
    """Common ComfyUI install places that exist on this machine."""
    candidates = [
        home / "ComfyUI",
        home / "comfyui",
        home / "Documents" / "ComfyUI",
        home / "ComfyUI_windows_portable" / "ComfyUI",
        Path("/opt/ComfyUI"),
        Path("/workspace/ComfyUI"),
    ]
    return [d for d in candidates if (d / "models").is_dir()]


def default_data_dir(env: Mapping[str, str], home: Path) -> Path:
    """Where anima keeps downloads: $ANIMA_HOME, else $XDG_DATA_HOME/anima, else ~/.local/share/anima."""
    if env.get("ANIMA_HOME"):
        return Path(env["ANIMA_HOME"])
    base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else home / ".local" / "share"
    return base / "anima"
