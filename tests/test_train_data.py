"""Dataset scan, buckets, caption processing, batch order and the cache keys."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from anima.errors import AnimaError
from anima.train.cache import LatentCache, TextCache, TextEntry, content_hash
from anima.train.config import TrainConfig
from anima.train.data import (
    BatchOrder,
    Item,
    load_image,
    make_buckets,
    nearest_bucket,
    process_caption,
    scan,
    scan_folder,
)


def _image(path: Path, size: tuple[int, int], caption: str | None = "tag") -> None:
    from PIL import Image

    Image.new("RGB", size, (200, 10, 10)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")


def test_buckets_respect_area_step_and_aspect() -> None:
    buckets = make_buckets(1024, 64, 2.0)
    assert (1024, 1024) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert w * h <= 1024 * 1024
        assert max(w / h, h / w) <= 2.0
    assert nearest_bucket((3000, 2000), buckets) == (1216, 832)  # 1.5 -> 1.46
    assert nearest_bucket((500, 500), buckets) == (1024, 1024)
    assert make_buckets(64, 16, 1.0) == [(64, 64)]


def test_scan_pairs_images_with_captions(tmp_path: Path) -> None:
    _image(tmp_path / "b.png", (96, 64), "second")
    _image(tmp_path / "a.png", (64, 64), "first, tag")
    (tmp_path / ".anima_cache").mkdir()
    _image(tmp_path / ".anima_cache" / "x.png", (64, 64))  # hidden folders are not data
    pairs = scan_folder(tmp_path)
    assert [(p.name, c) for p, c in pairs] == [("a.png", "first, tag"), ("b.png", "second")]
    items = scan(TrainConfig(data_dir=str(tmp_path), resolution=64, bucket_step=16, max_aspect=2.0))
    assert items[0].bucket == (64, 64) and items[1].bucket == (80, 48)
    img = load_image(items[1])
    assert img.shape == (48, 80, 3) and img.dtype == torch.uint8
    _image(tmp_path / "c.jpg", (64, 64), caption=None)
    with pytest.raises(AnimaError, match="1 image.*no .txt caption, e.g. c.jpg"):
        scan_folder(tmp_path)


def test_caption_processing() -> None:
    caption = "1girl, solo, red hair, smile, outdoors"
    assert process_caption(caption, random.Random(0)) == caption
    seen = set()
    for seed in range(20):
        out = process_caption(caption, random.Random(seed), shuffle=True, keep_tokens=1)
        tags = out.split(", ")
        assert tags[0] == "1girl" and sorted(tags) == sorted(caption.split(", "))
        seen.add(out)
    assert len(seen) > 5
    dropped = [process_caption(caption, random.Random(s), tag_dropout=0.5, keep_tokens=2) for s in range(50)]
    assert all(d.startswith("1girl, solo") for d in dropped)
    assert min(len(d.split(", ")) for d in dropped) < 5
    empties = sum(process_caption(caption, random.Random(s), caption_dropout=0.3) == "" for s in range(400))
    assert 80 < empties < 160
    sentence = "a red circle in the top left on a blue background"
    assert process_caption(sentence, random.Random(1), shuffle=True) == sentence
    # the same generator state gives the same caption (resumable)
    assert process_caption(caption, random.Random(7), shuffle=True) == process_caption(
        caption, random.Random(7), shuffle=True
    )


def test_batch_order_is_deterministic_and_covers_each_epoch() -> None:
    buckets = [(64, 64)] * 7 + [(80, 48)] * 3
    order = BatchOrder(buckets, batch_size=2, seed=3, repeats=2)
    assert order.batches_per_epoch == 7 + 3
    epoch = [order.batch(m) for m in range(order.batches_per_epoch)]
    flat = sorted(i for b in epoch for i in b)
    assert flat == sorted(list(range(10)) * 2)
    for b in epoch:
        assert len({buckets[i] for i in b}) == 1
    again = BatchOrder(buckets, batch_size=2, seed=3, repeats=2)
    assert [again.batch(m) for m in range(25)] == [order.batch(m) for m in range(25)]
    assert [order.batch(m) for m in range(10)] != [order.batch(m) for m in range(10, 20)]  # epochs differ


def test_latent_cache_keys_follow_image_bucket_and_vae(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", (64, 64))
    item = Item(tmp_path / "a.png", "tag", (64, 64), (64, 64))
    cache = LatentCache(tmp_path / "latents", "vae1")
    z = torch.randn(16, 1, 8, 8)
    cache.put(item, z)
    assert torch.equal(cache.get(item), z)
    assert LatentCache(tmp_path / "latents", "vae2").get(item) is None  # another VAE
    assert (
        cache.get(Item(item.image, "other caption", (64, 64), (64, 64))) is not None
    )  # captions don't matter
    assert cache.get(Item(item.image, "tag", (64, 64), (48, 80))) is None  # another crop
    import os

    st = item.image.stat()
    os.utime(item.image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the image was edited
    assert cache.get(item) is None
    encoded = cache.fill([item], lambda imgs: torch.zeros(len(imgs), 16, 1, 8, 8), load_image)
    assert encoded == 1 and cache.fill([item], lambda imgs: 1 / 0, load_image) == 0


def test_text_cache_disk_and_memory(tmp_path: Path) -> None:
    entry = TextEntry(torch.randn(3, 8), torch.tensor([5, 6, 1]))
    disk = TextCache(tmp_path / "text", "fp")
    disk.put("red circle", entry)
    assert len(list((tmp_path / "text").iterdir())) == 1
    fresh = TextCache(tmp_path / "text", "fp")
    got = fresh.get("red circle")
    assert torch.equal(got.qwen_hidden, entry.qwen_hidden) and torch.equal(got.t5_ids, entry.t5_ids)
    assert TextCache(tmp_path / "text", "other encoder").get("red circle") is None
    memory = TextCache(None, "fp", max_memory=2)
    for c in ("a", "b", "c"):
        memory.put(c, entry)
    assert memory.get("a") is None and memory.get("c") is not None  # bounded, least recently used out
    assert content_hash(tmp_path / "text") == content_hash(tmp_path / "text")
