"""TEST-ONLY stand-in for torchvision, never shipped (see tests/spandrel_support.py).

spandrel imports ``torchvision.transforms.functional`` for two restoration architectures only
(LaMa: ``rotate``, ``InterpolationMode``; RestoreFormer: ``normalize``); none of the upscalers the
tests build touches them. The PyPI torchvision does not load against the CPU torch wheel of the
test machines, so these names exist here and refuse to run.
"""
