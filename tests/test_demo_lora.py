"""Issue 5, done-when 3: a LoRA trained with `anima train` teaches the demo model the word "star".

(The time it takes is measured and printed by ``python -m anima.demo.lora_cli``, not asserted here.)
"""

from __future__ import annotations

import pytest

from anima.demo.lora_cli import train_star_lora
from anima.demo.runner import evaluate_model, load_demo_pipeline

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'


def test_star_lora_teaches_a_new_shape(tmp_path) -> None:
    lora, _minutes = train_star_lora(tmp_path, threads=1, say=lambda *_: None)
    pipe = load_demo_pipeline()
    without = evaluate_model(new_shape=True, pipeline=pipe)
    with_lora = evaluate_model(new_shape=True, pipeline=pipe, loras=[str(lora)])
    assert without.total == with_lora.total == 50
    assert without.shape < 5, without.summary()  # under 10% stars without the LoRA
    assert with_lora.shape >= 40, with_lora.summary()  # at least 80% with it
    # Evaluation removes the LoRA again: the same pipeline is back to the base model's images.
    assert evaluate_model(new_shape=True, pipeline=pipe) == without
