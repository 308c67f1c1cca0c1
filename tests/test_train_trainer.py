"""End-to-end training runs on a tiny model: LoRA / LoKr / full, formats, metadata, logs, samples,
Ctrl-C checkpoints, exact in-process resume, and the text-cache rule for random captions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_support import load_tensors, make_tiny, tiny_config

from anima.train.checkpoint import list_checkpoints
from anima.train.trainer import Trainer


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_tiny(tmp_path_factory.mktemp("tiny"), n_images=8, extra_sizes=((96, 64),))


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_lora_run_writes_a_comfy_lora_with_metadata_logs_and_samples(files, tmp_path: Path) -> None:
    from anima.lora.file import load_lora
    from anima.weights.hashes import model_hash
    from anima.weights.safetensors import read_header

    cfg = tiny_config(files, tmp_path / "out", steps=4, sample_every=2, sample_prompts=("red circle",),
                      sample_steps=3, sample_size=64)  # fmt: skip
    infos = []
    result = Trainer(cfg, on_step=infos.append).run()
    assert [i.step for i in infos] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(i.loss)) for i in infos)
    assert infos[-1].eta_seconds == 0
    keys = list(load_tensors(result))
    assert keys and all(k.startswith("diffusion_model.blocks.") for k in keys)
    assert any(k.endswith(".lora_A.weight") for k in keys) and any(k.endswith(".alpha") for k in keys)
    meta = read_header(result).metadata
    assert meta["anima_base_model_hash"] == model_hash(files["dit"])
    assert meta["anima_steps"] == "4" and meta["anima_dataset_size"] == "9"
    assert meta["ss_network_dim"] == "4"
    lora = load_lora(result)
    assert len(lora.adapters) == len({k.rsplit(".", 2)[0] for k in keys if "lora_A" in k})
    rows = (tmp_path / "out/logs/train.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 5
    samples = sorted(p.name for p in (tmp_path / "out/samples").iterdir())
    assert samples == ["step-0000002-00.png", "step-0000004-00.png"]
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-0000004"]


def test_sd_scripts_format_lokr_and_full_training(files, tmp_path: Path) -> None:
    from anima.weights import loading

    lora = Trainer(tiny_config(files, tmp_path / "a", steps=1, save_format="sd-scripts")).run()
    assert all(k.startswith("lora_unet_blocks_") for k in load_tensors(lora))
    lokr = Trainer(tiny_config(files, tmp_path / "b", steps=2, network="lokr", rank=2)).run()
    assert any("lokr_w1" in k for k in load_tensors(lokr))
    full = Trainer(
        tiny_config(files, tmp_path / "c", steps=2, network="full", train_adapter=True, save_dtype="fp32")
    ).run()
    dit, adapter = loading.load_dit(full)
    base, base_adapter = loading.load_dit(files["dit"])
    changed = [
        not torch.equal(a, b)
        for a, b in zip(dit.state_dict().values(), base.state_dict().values(), strict=True)
    ]
    assert any(changed)
    assert not torch.equal(adapter.embed.weight, base_adapter.embed.weight)


def _final_weights(cfg) -> dict[str, torch.Tensor]:
    t = Trainer(cfg)
    t.run()
    return t.trainable.state_dict()


def test_ctrl_c_checkpoint_and_resume_are_exact(files, tmp_path: Path) -> None:
    common = dict(steps=5, ema_decay=0.9, shuffle_captions=True, caption_dropout=0.3, tag_dropout=0.2)
    straight = _final_weights(tiny_config(files, tmp_path / "straight", **common))

    def interrupt(info) -> None:
        if info.step == 3:
            raise KeyboardInterrupt

    cfg = tiny_config(files, tmp_path / "cut", **common)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, on_step=interrupt).run()
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step-0000003"]
    resumed = _final_weights(cfg.with_(resume="latest"))
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert any(k.endswith(".up") and straight[k].any() for k in straight)  # the weights did train
    rows = (tmp_path / "cut/logs/train.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]


def test_random_captions_keep_text_encodings_out_of_the_disk_cache(files, tmp_path: Path) -> None:
    Trainer(tiny_config(files, tmp_path / "fixed", steps=1)).run()
    assert len(list((tmp_path / "fixed/cache/text").iterdir())) == 9  # one per distinct caption
    Trainer(tiny_config(files, tmp_path / "random", steps=1, shuffle_captions=True)).run()
    assert not (tmp_path / "random/cache/text").exists()
    assert len(list((tmp_path / "random/cache/latents").iterdir())) == 9  # latents are still cached


def test_trained_lora_survives_conversion_to_every_format(files, tmp_path: Path) -> None:
    from anima.lora.file import load_lora
    from anima.lora.info import convert

    cfg = tiny_config(files, tmp_path / "out", steps=2, train_adapter=True, save_dtype="fp32")
    result = Trainer(cfg).run()
    original = load_lora(result)
    assert {t.part for t in original.adapters} == {"dit", "adapter"}
    for fmt in ("comfy", "sd-scripts", "diffusers", "diffusion-pipe"):
        out = convert(result, tmp_path / f"{fmt}.safetensors", fmt)
        back = load_lora(tmp_path / f"{fmt}.safetensors")
        assert back.adapters.keys() == original.adapters.keys(), fmt
        for target, adapter in original.adapters.items():
            want = adapter.delta_weight()
            assert torch.allclose(back.adapters[target].delta_weight(), want, atol=1e-6), (fmt, target)
        assert out is not None
