"""The bundled DEMO model: a tiny Anima-architecture model trained on coloured shapes.

`default_model()` returns the paths of the files shipped in ``anima/demo/model`` (weights and
tokenizers) plus the generation settings it was trained for (64x64, empty negative prompt). It is
what ``anima generate`` falls back to when no model is given. Importing this package is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from anima.errors import AnimaError

MODEL_DIR = Path(__file__).resolve().parent / "model"
NAME = "anima-demo"
FILE_NAMES = MappingProxyType(
    {
        "dit": "anima-demo-dit.safetensors",
        "text_encoder": "anima-demo-te.safetensors",
        "vae": "anima-demo-vae.safetensors",
    }
)
# Recipe fields the demo needs (it only knows 64x64 and was trained with empty-prompt dropout).
RECIPE_DEFAULTS = MappingProxyType(
    {
        "width": 64,
        "height": 64,
        "negative_prompt": "",
        "steps": 20,
        "cfg": 4.0,
        "sampler": "er_sde",
        "scheduler": "simple",
        "shift": 3.0,
        "dtype": "fp32",
    }
)
SOURCE = "demo"  # the `ModelSet.source` of the bundled demo model
NOTICE = (
    "using the bundled DEMO model (tiny, coloured shapes only; not Anima): see anima/demo/model/README.md"
)


@dataclass(frozen=True)
class DemoModel:
    """Paths of the demo files; `tokenizer_dir` holds ``qwen/`` and ``t5/`` like any tokenizer folder."""

    dit: Path
    text_encoder: Path
    vae: Path
    tokenizer_dir: Path
    name: str = NAME
    recipe_defaults: Any = field(default_factory=lambda: RECIPE_DEFAULTS)
    notice: str = NOTICE

    @property
    def qwen_tokenizer(self) -> Path:
        return self.tokenizer_dir / "qwen"

    @property
    def t5_tokenizer(self) -> Path:
        return self.tokenizer_dir / "t5"


def default_model(model_dir: str | Path | None = None) -> DemoModel:
    """The demo model in `model_dir` (default: the copy inside the package); AnimaError if incomplete."""
    root = Path(model_dir) if model_dir is not None else MODEL_DIR
    model = DemoModel(
        dit=root / FILE_NAMES["dit"],
        text_encoder=root / FILE_NAMES["text_encoder"],
        vae=root / FILE_NAMES["vae"],
        tokenizer_dir=root / "tokenizer",
    )
    needed = [
        model.dit,
        model.text_encoder,
        model.vae,
        model.qwen_tokenizer / "vocab.json",
        model.t5_tokenizer / "tokenizer.json",
    ]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        raise AnimaError(
            f"the demo model in {root} is incomplete ({missing[0].name} is missing); "
            "rebuild it with `python -m anima.demo.build_cli`"
        )
    return model
