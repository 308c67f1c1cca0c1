"""TEST-ONLY stand-in: the names spandrel imports, each refusing to run (no test uses LaMa/RestoreFormer)."""

from enum import Enum


class InterpolationMode(Enum):
    BILINEAR = "bilinear"


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("torchvision stand-in: LaMa and RestoreFormer need the real torchvision")


rotate = _unavailable
normalize = _unavailable
