"""On-disk caches of VAE latents and text-encoder outputs, with their invalidation rules.

Every entry is content-addressed: its file name is a hash of everything its value depends on, so a
stale entry is never *read*; it is just no longer looked up. What each key covers:

- latents: the VAE file's content hash, the image file (absolute path, size, mtime) and the bucket
  the image is cropped to (so changing `resolution` / `bucket_step` re-encodes). Captions do not
  matter. Values are VAE-space posterior means [16, 1, h, w] (fp32).
- text: the text encoder's content hash, both tokenizer folders' content hash and the exact caption
  string after caption processing. Values are the Qwen3 hidden states [Lq, D] (fp32) plus the T5 ids
  the adapter needs. The adapter itself is never cached: it is trained in full runs.

Caption shuffling and tag dropout make the caption differ at every step, so no per-image text can
be pre-computed: texts are then encoded when first seen and kept in memory only (bounded), never
written to disk, where the number of permutations would grow without bound. A text encoder that is
being trained (its LoRA) disables the text cache altogether. Writes are atomic (temp + rename), so a
run killed mid-write leaves no corrupt entry.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from anima.train.data import Item
from anima.weights.safetensors import save


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:

    save(tensors, path)


def _load(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, ValueError, RuntimeError):
        return None  # missing or unreadable: recompute


class LatentCache:
    """VAE latents per (image, bucket, VAE). `root` None: memory only (cache_latents = false)."""

    def __init__(self, root: Path | None, vae_hash: str) -> None:
        self.root, self.vae_hash = root, vae_hash
        self._memory: dict[str, torch.Tensor] = {}

    def key(self, item: Item) -> str:
        st = item.image.stat()
        return _key("latent/1", self.vae_hash, item.image.resolve(), st.st_size, st.st_mtime_ns, item.bucket)

    def get(self, item: Item) -> torch.Tensor | None:
        k = self.key(item)
        if self.root is None:
            return self._memory.get(k)
        # Read from disk each time (the page cache makes it cheap): a large dataset's latents do
        # not fit in RAM.
        data = _load(self.root / f"{k}.safetensors")
        return None if data is None else data["latent"]

    def put(self, item: Item, latent: torch.Tensor) -> None:
        k = self.key(item)
        latent = latent.detach().float().cpu().contiguous()
        if self.root is None:
            self._memory[k] = latent
        else:
            _save({"latent": latent}, self.root / f"{k}.safetensors")

    def fill(
        self,
        items: Sequence[Item],
        encode: Callable[[torch.Tensor], torch.Tensor],
        load: Callable[[Item], torch.Tensor],
        batch_size: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Encode every item not cached yet (batched per bucket); returns how many were encoded.

        `encode`: uint8 [B, H, W, 3] -> VAE-space latents [B, 16, 1, h, w]; `load`: item -> uint8 image.
        """
        todo = [it for it in items if self.get(it) is None]
        by_bucket: dict = {}
        for it in todo:
            by_bucket.setdefault(it.bucket, []).append(it)
        done = 0
        for group in by_bucket.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                latents = encode(torch.stack([load(it) for it in chunk]))
                for it, z in zip(chunk, latents, strict=True):
                    self.put(it, z)
                done += len(chunk)
                if progress is not None:
                    progress(done, len(todo))
        return done


@dataclass(frozen=True)
class TextEntry:
    qwen_hidden: torch.Tensor  # [Lq, D] fp32
    t5_ids: torch.Tensor  # [Lt] int64 (ends with </s>)


class TextCache:
    """Text-encoder outputs per caption. `root` None: memory only, at most `max_memory` entries."""

    def __init__(self, root: Path | None, fingerprint: str, max_memory: int = 2048) -> None:
        self.root, self.fingerprint, self.max_memory = root, fingerprint, max_memory
        self._memory: OrderedDict[str, TextEntry] = OrderedDict()

    def key(self, caption: str) -> str:
        return _key("text/1", self.fingerprint, caption)

    def get(self, caption: str) -> TextEntry | None:
        k = self.key(caption)
        if k in self._memory:
            self._memory.move_to_end(k)
            return self._memory[k]
        if self.root is None:
            return None
        data = _load(self.root / f"{k}.safetensors")
        if data is None:
            return None
        entry = TextEntry(data["qwen_hidden"], data["t5_ids"])
        self._remember(k, entry)
        return entry

    def put(self, caption: str, entry: TextEntry) -> None:
        k = self.key(caption)
        entry = TextEntry(
            entry.qwen_hidden.detach().float().cpu().contiguous(), entry.t5_ids.cpu().contiguous()
        )
        self._remember(k, entry)
        if self.root is not None:
            _save({"qwen_hidden": entry.qwen_hidden, "t5_ids": entry.t5_ids}, self.root / f"{k}.safetensors")

    def _remember(self, k: str, entry: TextEntry) -> None:
        self._memory[k] = entry
        self._memory.move_to_end(k)
        while len(self._memory) > self.max_memory:
            self._memory.popitem(last=False)
