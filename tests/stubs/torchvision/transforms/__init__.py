"""TEST-ONLY stand-in (see tests/stubs/torchvision/__init__.py)."""
