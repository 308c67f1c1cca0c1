"""`--compile`: torch.compile of the DiT blocks (inductor, C++ on a CPU) against the eager path.

Kept in its own file: compiling takes ~40 s of CPU time the first time (inductor caches it on disk).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, load_st
from test_dit import CASES, build, tiny_dit_state

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'


@torch.no_grad()
def test_compiled_blocks_match_eager_and_keep_names():
    eager = build(tiny_dit_state())
    compiled = copy.deepcopy(eager)
    for block in compiled.blocks:
        block.compile()  # in place: the module tree and state-dict names are unchanged
    assert list(compiled.state_dict()) == list(eager.state_dict())
    fx = load_st(TINY / "components" / "dit.safetensors")
    ctx = load_st(TINY / "components" / "adapter.safetensors")[f"{CASES['c0']}.context"]
    x, sigma = fx["c0.x"], fx["c0.sigma"]
    cache = compiled.prepare_context(ctx)
    for s in (sigma, sigma * 0.5):  # a second step reuses the compiled code
        ref = eager(x, s, ctx)
        got = compiled(x, s, ctx, context_cache=cache)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
