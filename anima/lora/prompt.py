"""LoRA requests as users write them: ``--lora name:0.8`` and ``<lora:name:0.8>`` in a prompt.

The prompt form is the A1111 convention: the tag is removed from the prompt text (with the comma
that separated it) and the LoRA is applied with the given strength (1 when omitted). The older
LyCORIS-extension spelling ``<lyco:name:0.8>`` is read the same way. Names are file stems in a
loras/ folder or paths; see `anima.weights.discovery.resolve_lora`. No torch here: the CLI parses and
checks these before loading any model.
"""

from __future__ import annotations

import math
import re

from anima.errors import AnimaError

LoRASpec = tuple[str, float]

_TAG = re.compile(r"<(lora|lyco):([^<>]*)>", re.IGNORECASE)


def _strength(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnimaError(f"{where}: strength {text!r} is not a number") from None
    if not math.isfinite(value):
        raise AnimaError(f"{where}: strength must be finite, got {text!r}")
    return value


def parse_lora_arg(arg: str) -> LoRASpec:
    """``name`` or ``name:strength`` (``--lora``). A name may contain ':' (``C:\\x.safetensors``):
    only a trailing ``:number`` is read as the strength."""
    arg = arg.strip()
    name, sep, tail = arg.rpartition(":")
    if sep and name and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", tail):
        return name.strip(), _strength(tail, f"--lora {arg}")
    if not arg:
        raise AnimaError("--lora needs a name, e.g. --lora mystyle:0.8")
    return arg, 1.0


def extract_prompt_loras(prompt: str) -> tuple[str, list[LoRASpec]]:
    """Remove ``<lora:name[:strength]>`` tags from `prompt`; return (clean prompt, [(name, strength)])."""
    specs: list[LoRASpec] = []
    pieces: list[str] = []
    last = 0
    for m in _TAG.finditer(prompt):
        fields = m.group(2).split(":")
        name = fields[0].strip()
        if not name:
            raise AnimaError(f"prompt tag {m.group(0)!r} has no LoRA name")
        if len(fields) > 2:
            raise AnimaError(
                f"prompt tag {m.group(0)!r}: only <lora:name:strength> is supported "
                "(no separate text-encoder/unet strengths)"
            )
        strength = _strength(fields[1], f"prompt tag {m.group(0)}") if len(fields) == 2 else 1.0
        specs.append((name, strength))
        pieces.append(prompt[last : m.start()])
        last = m.end()
    if not specs:
        return prompt, []
    pieces.append(prompt[last:])
    # Join the remaining text, dropping the separator each tag leaves behind ("a, <lora:x>, b").
    text = ""
    for piece in (p.strip() for p in pieces):
        if piece.startswith(",") and (not text or text.endswith(",")):
            piece = piece[1:].strip()
        if piece:
            text = f"{text}{'' if not text or piece.startswith(',') else ' '}{piece}"
    return text.removesuffix(",").rstrip(), specs
