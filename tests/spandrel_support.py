"""Import spandrel in the tests, with the test-only torchvision stand-in where torchvision is absent.

CI and the CPU machines install spandrel without its dependencies (``pip install --no-deps spandrel``
plus einops), because the PyPI torchvision does not load against the local CPU torch wheel. spandrel
imports torchvision only for LaMa and RestoreFormer (`tests/stubs/torchvision`). The stand-in is put in
``sys.modules`` just for spandrel's import and taken out again, so nothing else ever sees a torchvision.
Users install the real one with ``pip install 'anima[upscale]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch

STUBS = Path(__file__).resolve().parent / "stubs"


def import_spandrel():
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("spandrel")
    sys.path.insert(0, str(STUBS))
    try:
        return importlib.import_module("spandrel")
    finally:
        sys.path.remove(str(STUBS))
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]


def write_esrgan(path: Path, *, scale: int = 2, filters: int = 8, blocks: int = 1, seed: int = 0) -> Path:
    """A tiny RRDBNet (ESRGAN layout) from spandrel's own class, random weights, saved as .pth."""
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=filters, num_blocks=blocks, scale=scale)
    torch.save(net.state_dict(), path)
    return path
