"""Downloads through a local fake hub: licence gate, layout, skipping, verification. No network."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest
from conftest import TINY, TOKENIZERS

from anima.errors import AnimaError
from anima.weights.discovery import PREFERRED_DIT_STEMS, choose, discover, sniff_kind
from anima.weights.download import (
    DIFFUSERS_REPO,
    EXTRAS,
    LICENSE_TEXT,
    LLLITE_REPO,
    LORA_REPO,
    REPO,
    TEXT_ENCODER_FILE,
    VAE_FILE,
    VARIANTS,
    catalog,
    download,
    download_extra,
    download_tokenizers,
    resolve_variant,
)

WEIGHTS = TINY / "weights"


class FakeHub:
    """Stands in for huggingface_hub: serves files from a local folder laid out as repo/path."""

    def __init__(self, remote: Path) -> None:
        self.remote = remote
        self.calls: list[tuple[str, str]] = []

    def hf_hub_download(
        self, *, repo_id: str, filename: str, local_dir: Path, revision: str | None = None
    ) -> str:
        self.calls.append((repo_id, filename))
        src = self.remote / repo_id / filename
        if not src.is_file():
            raise FileNotFoundError(f"404 Entry Not Found: {repo_id}/{filename}")
        dst = Path(local_dir) / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return str(dst)

    def list_repo_files(self, *, repo_id: str, revision: str | None = None) -> list[str]:
        self.calls.append((repo_id, "list"))
        root = self.remote / repo_id
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def snapshot_download(
        self, *, repo_id: str, allow_patterns: list[str], local_dir: Path, revision: str | None = None
    ) -> str:
        self.calls.append((repo_id, ",".join(allow_patterns)))
        root = self.remote / repo_id
        for src in root.rglob("*"):
            rel = src.relative_to(root).as_posix()
            if src.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                dst = Path(local_dir) / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        return str(local_dir)


@pytest.fixture()
def hub(tmp_path: Path) -> FakeHub:
    remote = tmp_path / "remote"
    files = {
        VARIANTS["base-v1.0"].filename: "anima_tiny_dit.safetensors",
        VARIANTS["preview2"].filename: "anima_tiny_dit.safetensors",
        TEXT_ENCODER_FILE: "qwen3_tiny_te.safetensors",
        VAE_FILE: "wan21_tiny_vae.safetensors",
    }
    for name, src in files.items():
        (remote / REPO / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(WEIGHTS / src, remote / REPO / name)
    shutil.copytree(TOKENIZERS / "qwen", remote / DIFFUSERS_REPO / "tokenizer")
    shutil.copytree(TOKENIZERS / "t5", remote / DIFFUSERS_REPO / "t5_tokenizer")
    return FakeHub(remote)


def test_refuses_without_licence_and_shows_it_first(hub: FakeHub, tmp_path: Path) -> None:
    said: list[str] = []
    with pytest.raises(AnimaError, match="--accept-license"):
        download("base", tmp_path / "dest", accept_license=False, hub=hub, report=said.append)
    assert said == [LICENSE_TEXT] and hub.calls == []
    assert not (tmp_path / "dest").exists()
    assert "Non-Commercial" in LICENSE_TEXT and "NVIDIA Open Model" in LICENSE_TEXT
    assert "used commercially" in LICENSE_TEXT  # generated images


def test_download_lays_out_a_models_folder(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    said: list[str] = []
    got = download("base", dest, accept_license=True, hub=hub, report=said.append)
    assert said[0] == LICENSE_TEXT
    assert got.dit == dest / "diffusion_models" / "anima-base-v1.0.safetensors"
    assert got.text_encoder == dest / "text_encoders" / "qwen_3_06b_base.safetensors"
    assert got.vae == dest / "vae" / "qwen_image_vae.safetensors"
    assert (got.qwen_tokenizer, got.t5_tokenizer) == (
        dest / "tokenizers" / "qwen",
        dest / "tokenizers" / "t5",
    )
    assert (got.qwen_tokenizer / "vocab.json").read_bytes() == (
        TOKENIZERS / "qwen" / "vocab.json"
    ).read_bytes()
    assert [sniff_kind(p) for p in (got.dit, got.text_encoder, got.vae)] == ["dit", "text_encoder", "vae"]
    # Discovery finds exactly what was downloaded, tokenizers included.
    found = choose(discover(None, dest, [], None))
    assert (found.dit, found.text_encoder, found.vae, found.qwen_tokenizer, found.t5_tokenizer) == (
        got.dit,
        got.text_encoder,
        got.vae,
        got.qwen_tokenizer,
        got.t5_tokenizer,
    )


def test_second_download_skips_present_files(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    download("base-v1.0", dest, accept_license=True, hub=hub)
    hub.calls.clear()
    download("preview2", dest, accept_license=True, hub=hub)
    assert hub.calls == [(REPO, VARIANTS["preview2"].filename)]  # TE, VAE, tokenizers already there


def test_damaged_file_is_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "vae").mkdir(parents=True)
    (dest / "vae" / "qwen_image_vae.safetensors").write_bytes(b"\x00" * 5)  # an interrupted copy
    got = download("base", dest, accept_license=True, hub=hub)
    assert sniff_kind(got.vae) == "vae"


def test_wrong_file_served_is_not_installed(hub: FakeHub, tmp_path: Path) -> None:
    shutil.copyfile(WEIGHTS / "wan21_tiny_vae.safetensors", hub.remote / REPO / TEXT_ENCODER_FILE)
    dest = tmp_path / "dest"
    with pytest.raises(AnimaError, match="is a vae file, expected text_encoder"):
        download("base", dest, accept_license=True, hub=hub)
    assert not (dest / "text_encoders" / "qwen_3_06b_base.safetensors").exists()


def test_unverified_variant_is_flagged(hub: FakeHub, tmp_path: Path) -> None:
    said: list[str] = []
    with pytest.raises(AnimaError, match="failed: 404.*unverified"):
        download("turbo", tmp_path / "dest", accept_license=True, hub=hub, report=said.append)
    assert any("not verified" in line for line in said)
    assert not VARIANTS["turbo-v1.0"].verified and not VARIANTS["aesthetic-v1.0"].verified


def test_variant_table() -> None:
    assert (
        resolve_variant("Base") is VARIANTS["base-v1.0"]
        and resolve_variant("preview3").name == "preview3-base"
    )
    with pytest.raises(AnimaError, match="unknown model variant 'v9'; choose from: base-v1.0"):
        resolve_variant("v9")
    for v in VARIANTS.values():
        assert v.filename.startswith("split_files/diffusion_models/anima-")
        assert Path(v.filename).stem in PREFERRED_DIT_STEMS  # discovery ranks every official file
    official = {"anima-preview", "anima-preview2", "anima-preview3-base", "anima-base-v1.0"}
    assert {Path(v.filename).stem for v in VARIANTS.values() if v.verified} == official


def test_tokenizers_alone_need_no_licence(hub: FakeHub, tmp_path: Path) -> None:
    qwen, t5 = download_tokenizers(tmp_path / "d", hub=hub)
    assert (qwen / "merges.txt").is_file() and (t5 / "tokenizer.json").is_file()
    hub.calls.clear()
    assert download_tokenizers(tmp_path / "d", hub=hub) == (qwen, t5) and hub.calls == []
    shutil.rmtree(hub.remote / DIFFUSERS_REPO / "t5_tokenizer")
    with pytest.raises(AnimaError, match="t5_tokenizer did not contain a usable tokenizer"):
        download_tokenizers(tmp_path / "e", hub=hub)


def test_v1_1_releases_are_listed_and_ranked() -> None:
    assert {"aesthetic-v1.1", "turbo-v1.1"} <= set(VARIANTS)
    assert not VARIANTS["turbo-v1.1"].verified  # July 2026 releases: names follow the v1.0 pattern
    lines = catalog()
    for name in ("base-v1.0", "aesthetic-v1.1", "turbo-v1.1", "turbo-lora-v0.2", "rl-v0.1",
                 "highres-aesthetic-boost", "lllite"):  # fmt: skip
        assert any(line.startswith(name + " ") for line in lines), name
    assert PREFERRED_DIT_STEMS.index("anima-base-v1.0") == 0  # the default model is still v1.0 base


def test_official_loras_and_lllite_patches_download(hub: FakeHub, tmp_path: Path) -> None:
    src = TINY.parent / "comfy-workflows" / "models" / "loras" / "anima_tiny_lora_kohya.safetensors"
    names = [
        "anima-turbo-lora-v0.2.safetensors",
        "anima-rl-v0.1.safetensors",
        "highres-aesthetic-boost-v1.safetensors",
    ]
    for name in names:
        (hub.remote / LORA_REPO).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, hub.remote / LORA_REPO / name)
    patches = hub.remote / LLLITE_REPO / "model_patches"
    patches.mkdir(parents=True)
    for name in ("anima_lllite_canny.safetensors", "anima_lllite_depth.safetensors"):
        shutil.copyfile(
            TINY.parent / "anima-lllite" / "lllite" / "anima_lllite_tiny_plain.safetensors", patches / name
        )
    dest = tmp_path / "dest"
    with pytest.raises(AnimaError, match="--accept-license"):
        download_extra("rl-v0.1", dest, accept_license=False, hub=hub)
    got = download_extra("turbo-lora-v0.2", dest, accept_license=True, hub=hub)
    assert got == [dest / "loras" / "anima-turbo-lora-v0.2.safetensors"] and sniff_kind(got[0]) == "lora"
    shutil.copyfile(WEIGHTS / "anima_tiny_dit.safetensors", hub.remote / LORA_REPO / names[2])
    with pytest.raises(AnimaError, match="is a dit file, expected lora"):  # a wrong file is not installed
        download_extra("highres-aesthetic-boost", dest, accept_license=True, hub=hub)
    got = download_extra("lllite", dest, accept_license=True, hub=hub)
    assert [p.name for p in got] == ["anima_lllite_canny.safetensors", "anima_lllite_depth.safetensors"]
    assert all(p.parent == dest / "model_patches" and p.is_file() for p in got)
    (hub.remote / LORA_REPO / names[1]).unlink()
    with pytest.raises(AnimaError, match="no file matching"):
        download_extra("rl-v0.1", tmp_path / "other", accept_license=True, hub=hub)
    assert set(EXTRAS) == {"turbo-lora-v0.2", "rl-v0.1", "highres-aesthetic-boost", "lllite"}
