"""Downloading the official Anima files from Hugging Face, after the licence is accepted.

Files land in `dest` laid out like a ComfyUI models folder, so `models_dir.discover` finds them
with ``--models-dir dest``::

    dest/diffusion_models/anima-base-v1.0.safetensors
    dest/text_encoders/qwen_3_06b_base.safetensors
    dest/vae/qwen_image_vae.safetensors
    dest/tokenizers/qwen/   dest/tokenizers/t5/

Each file is fetched into ``dest/.download`` (huggingface_hub resumes interrupted files there),
checked by its header, then moved into place, so a half-downloaded file never looks usable.
Files already present and readable are skipped. The hub client is a parameter so tests can pass
a local fake; `huggingface_hub` itself is imported only when no client is given.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.weights.discovery import ModelSet, inspect_file, is_qwen_tokenizer_dir, is_t5_tokenizer_dir

log = logging.getLogger(__name__)

REPO = "circlestone-labs/Anima"
DIFFUSERS_REPO = "circlestone-labs/Anima-Base-v1.0-Diffusers"
TEXT_ENCODER_FILE = "split_files/text_encoders/qwen_3_06b_base.safetensors"
VAE_FILE = "split_files/vae/qwen_image_vae.safetensors"
TOKENIZER_FOLDERS = {"qwen": "tokenizer", "t5": "t5_tokenizer"}  # ours -> diffusers repo subfolder

LICENSE_TEXT = """\
Anima model weights (CircleStone Labs, built on NVIDIA Cosmos-Predict2) are licensed under the
CircleStone Labs Non-Commercial License together with the NVIDIA Open Model License.
- The weights may not be used commercially (for example in a paid service) under these terms.
- Images you generate with them may be used commercially (model card and its discussion #37).
- The text encoder (Qwen3-0.6B-Base) and VAE (Qwen-Image) files come with their own licences.
Read the full terms at https://huggingface.co/circlestone-labs/Anima before you accept."""


@dataclass(frozen=True)
class Variant:
    """One DiT release. `verified` is False where the file name is inferred, not seen in the repo."""

    name: str
    filename: str
    verified: bool
    note: str


def _dit(name: str, stem: str, verified: bool, note: str) -> Variant:
    return Variant(name, f"split_files/diffusion_models/{stem}.safetensors", verified, note)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _dit("base-v1.0", "anima-base-v1.0", True, "v1.0 base: neutral style; train LoRAs on it"),
        _dit("aesthetic-v1.0", "anima-aesthetic-v1.0", False, "v1.0 aesthetic finetune"),
        _dit("turbo-v1.0", "anima-turbo-v1.0", False, "v1.0 distilled: CFG 1, 8-12 steps"),
        _dit("aesthetic-v1.1", "anima-aesthetic-v1.1", False, "v1.1 aesthetic finetune (July 2026)"),
        _dit("turbo-v1.1", "anima-turbo-v1.1", False, "v1.1 distilled: CFG 1, few steps (July 2026)"),
        _dit("preview3-base", "anima-preview3-base", True, "preview 3"),
        _dit("preview2", "anima-preview2", True, "preview 2"),
        _dit("preview", "anima-preview", True, "first preview"),
    )
}
ALIASES = {
    "base": "base-v1.0",
    "aesthetic": "aesthetic-v1.0",
    "turbo": "turbo-v1.0",
    "preview3": "preview3-base",
}


@dataclass(frozen=True)
class Extra:
    """An add-on file set (LoRAs, LLLite control patches) from another repository.

    Their exact file names were not verified against the repositories, so each is found by `pattern`
    (fnmatch) in the repository's file list when downloading; `many` takes every match."""

    name: str
    repo: str
    pattern: str
    folder: str  # models-folder subfolder, as ComfyUI names it
    note: str
    many: bool = False


LORA_REPO = "circlestone-labs/Anima-Official-LoRAs"
LLLITE_REPO = "Comfy-Org/Anima-LLLite"
EXTRAS: dict[str, Extra] = {
    e.name: e
    for e in (
        Extra("turbo-lora-v0.2", LORA_REPO, "*turbo*0.2*.safetensors", "loras",
              "official LoRA: turbo (CFG 1, about 8 steps) on base models"),
        Extra("rl-v0.1", LORA_REPO, "*rl*0.1*.safetensors", "loras", "official LoRA: RL-tuned preferences"),
        Extra("highres-aesthetic-boost", LORA_REPO, "*highres*aesthetic*.safetensors", "loras",
              "official LoRA: high-resolution aesthetic boost"),
        Extra("lllite", LLLITE_REPO, "model_patches/*.safetensors", "model_patches",
              "ControlNet-LLLite control patches (every file in model_patches/)", many=True),
    )
}  # fmt: skip


def catalog() -> list[str]:
    """One line per downloadable name, for ``anima models download --list``."""
    unverified = " (file name unverified)"
    lines = [f"{v.name:24} {v.note}" + ("" if v.verified else unverified) for v in VARIANTS.values()]
    lines += [f"{e.name:24} {e.note} [{e.repo}]" for e in EXTRAS.values()]
    return lines


def resolve_variant(name: str) -> Variant:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in VARIANTS:
        names = ", ".join([*VARIANTS, *ALIASES, *EXTRAS])
        raise AnimaError(f"unknown model variant {name!r}; choose from: {names}")
    return VARIANTS[key]


def _default_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise AnimaError("downloading needs huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub


def _fetch(
    hub: Any,
    filename: str,
    target: Path,
    staging: Path,
    kind: str,
    revision: str | None,
    hint: str,
    repo: str = REPO,
) -> Path:
    """One weight file into `target` (skipped when a readable file of the right kind is there)."""
    if target.is_file():
        try:
            if inspect_file(target).kind == kind:
                log.info("already present: %s", target)
                return target
        except AnimaError:
            pass  # damaged: fetch again
    try:
        got = Path(hub.hf_hub_download(repo_id=repo, filename=filename, revision=revision, local_dir=staging))
    except Exception as exc:  # network, 404, auth: all become one actionable line
        raise AnimaError(f"download of {repo}/{filename} failed: {exc}{hint}") from exc
    if kind == "model_patch":  # control patches are not model files inspect_file classifies
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, target)
        return target
    found = inspect_file(got).kind
    if found != kind:
        raise AnimaError(f"downloaded {filename} is a {found} file, expected {kind}; not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, target)
    return target


def download_tokenizers(dest: Path, *, hub: Any = None, revision: str | None = None) -> tuple[Path, Path]:
    """The Qwen and T5 tokenizers (from the diffusers repo) into dest/tokenizers/{qwen,t5}."""
    root = Path(dest) / "tokenizers"
    targets = {ours: root / ours for ours in TOKENIZER_FOLDERS}
    if is_qwen_tokenizer_dir(targets["qwen"]) and is_t5_tokenizer_dir(targets["t5"]):
        return targets["qwen"], targets["t5"]
    hub = hub or _default_hub()
    staging = Path(dest) / ".download"
    patterns = [f"{sub}/*" for sub in TOKENIZER_FOLDERS.values()]
    try:
        hub.snapshot_download(
            repo_id=DIFFUSERS_REPO, allow_patterns=patterns, revision=revision, local_dir=staging
        )
    except Exception as exc:
        raise AnimaError(f"download of the tokenizers from {DIFFUSERS_REPO} failed: {exc}") from exc
    for ours, sub in TOKENIZER_FOLDERS.items():
        src = staging / sub
        if not (is_qwen_tokenizer_dir if ours == "qwen" else is_t5_tokenizer_dir)(src):
            raise AnimaError(f"{DIFFUSERS_REPO}/{sub} did not contain a usable tokenizer")
        if targets[ours].exists():
            shutil.rmtree(targets[ours])
        targets[ours].parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), targets[ours])
    return targets["qwen"], targets["t5"]


def download(
    variant: str,
    dest: Path,
    *,
    accept_license: bool,
    hub: Any = None,
    revision: str | None = None,
    report: Callable[[str], None] | None = None,
) -> ModelSet:
    """Fetch one DiT variant plus the text encoder, VAE and tokenizers into `dest`.

    `report` receives the licence notice first, then progress lines (the CLI prints them;
    by default they go to the log). Without `accept_license` nothing is downloaded.
    """
    say = report or log.info
    chosen = resolve_variant(variant)
    say(LICENSE_TEXT)
    if not accept_license:
        raise AnimaError(
            "the Anima weights need their licence accepted: read it above, then pass --accept-license"
        )
    hint = ""
    if not chosen.verified:
        say(f"note: the file name {chosen.filename} is inferred, not verified against the repository")
        hint = " (this file name is unverified: check the repository's file list)"
    hub = hub or _default_hub()
    dest = Path(dest)
    parts = (
        (chosen.filename, "diffusion_models", "dit", hint),
        (TEXT_ENCODER_FILE, "text_encoders", "text_encoder", ""),
        (VAE_FILE, "vae", "vae", ""),
    )
    paths = []
    for filename, folder, kind, why in parts:
        say(f"fetching {REPO}/{filename}")
        target = dest / folder / Path(filename).name
        paths.append(_fetch(hub, filename, target, dest / ".download", kind, revision, why))
    say(f"fetching tokenizers from {DIFFUSERS_REPO}")
    qwen, t5 = download_tokenizers(dest, hub=hub, revision=None)
    dit, te, vae = paths
    return ModelSet(dit.stem, dit, te, vae, qwen, t5, f"download:{dest}")


def download_extra(
    name: str,
    dest: Path,
    *,
    accept_license: bool,
    hub: Any = None,
    revision: str | None = None,
    report: Callable[[str], None] | None = None,
) -> list[Path]:
    """Fetch an add-on (`EXTRAS`: official LoRAs, LLLite patches) into ``dest/<folder>/``; -> the paths.

    Its files are looked up by pattern in the repository's file list (one listing call)."""
    say = report or log.info
    extra = EXTRAS[name.strip().lower()]
    say(LICENSE_TEXT)
    if not accept_license:
        raise AnimaError("the Anima files need their licence accepted: read it above, pass --accept-license")
    hub = hub or _default_hub()
    try:
        files = list(hub.list_repo_files(repo_id=extra.repo, revision=revision))
    except Exception as exc:
        raise AnimaError(f"listing {extra.repo} failed: {exc}") from exc
    matches = sorted(f for f in files if fnmatch.fnmatch(f, extra.pattern))
    if not matches:
        shown = ", ".join(f for f in files if f.endswith(".safetensors")) or "none"
        raise AnimaError(f"{extra.repo} has no file matching {extra.pattern} (its .safetensors: {shown})")
    kind = "model_patch" if extra.folder == "model_patches" else "lora"
    paths = []
    for filename in matches if extra.many else matches[:1]:
        say(f"fetching {extra.repo}/{filename}")
        target = Path(dest) / extra.folder / Path(filename).name
        paths.append(_fetch(hub, filename, target, Path(dest) / ".download", kind, revision, "", extra.repo))
    return paths
