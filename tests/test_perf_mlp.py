"""The DiT's MLP in row chunks on a CPU (`anima.model.dit.MLP`): the numbers of the whole batch."""

from __future__ import annotations

import torch
from torch import nn

from anima.model.dit import CPU_MLP_ROWS, MLP
from anima.runtime.quant import QuantLinear, quantize_weight


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    mlp = MLP(16, 64)
    for p in mlp.parameters():
        nn.init.normal_(p, std=0.3)
    return mlp


def _calls(module: nn.Module) -> list[int]:
    rows: list[int] = []
    module.register_forward_pre_hook(lambda m, args: rows.append(args[0].numel() // args[0].shape[-1]))
    return rows


def test_big_inputs_run_in_row_chunks_with_the_same_numbers():
    mlp = _mlp()
    x = torch.randn(2, CPU_MLP_ROWS + 190, 16)  # 2 * 702 rows: chunks of 512, 512 and 380
    want = mlp.layer2(torch.nn.functional.gelu(mlp.layer1(x)))
    rows = _calls(mlp.layer1)
    with torch.no_grad():
        got = mlp(x)
    assert rows == [CPU_MLP_ROWS, CPU_MLP_ROWS, 2 * x.shape[1] - 2 * CPU_MLP_ROWS]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_small_inputs_gradients_and_8bit_layers_take_one_call():
    mlp = _mlp()
    rows = _calls(mlp.layer1)
    with torch.no_grad():
        mlp(torch.randn(1, CPU_MLP_ROWS, 16))  # not more than one chunk
    mlp(torch.randn(1, 2 * CPU_MLP_ROWS, 16))  # grad enabled: autograd keeps the plain graph
    assert rows == [CPU_MLP_ROWS, 2 * CPU_MLP_ROWS]

    q, scale = quantize_weight(mlp.layer1.weight.detach(), "int8")
    mlp.layer1 = QuantLinear(q, scale, "int8", torch.float32)  # one activation scale for all rows
    rows = _calls(mlp.layer1)
    with torch.no_grad():
        mlp(torch.randn(1, 2 * CPU_MLP_ROWS, 16))
    assert rows == [2 * CPU_MLP_ROWS]
