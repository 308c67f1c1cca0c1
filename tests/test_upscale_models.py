"""Upscaler models through spandrel: the same pixels as spandrel's own call, tiling, errors, hires fix.

The upscaler is a tiny RRDBNet (ESRGAN layout) built from spandrel's own architecture class with
random weights and saved as .pth (`spandrel_support.write_esrgan`), so no model is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_ARGS
from PIL import Image
from spandrel_support import import_spandrel, write_esrgan

from anima.cli import main
from anima.errors import AnimaError
from anima.imageio import read_recipe, to_uint8
from anima.workflows import upscale_model
from anima.workflows.tiled_upscale import shrinking_tiles, tile_starts, tiled_apply
from anima.workflows.upscale_model import UpscaleModel

FLAGS = [*TINY_MODEL_ARGS, "--dtype", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def esrgan(tmp_path_factory):
    return write_esrgan(tmp_path_factory.mktemp("up") / "tiny-esrgan-2x.pth")


def _image(path, w=40, h=48, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _spandrel_direct(path, image):
    """spandrel's own loader and call on [1, H, W, 3] -> [1, H*s, W*s, 3]."""
    spandrel = import_spandrel()
    d = spandrel.ModelLoader(torch.device("cpu")).load_from_file(path)
    return d(image.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)


def test_upscale_command_gives_spandrels_pixels(esrgan, tmp_path, capsys) -> None:
    src = _image(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "--model", str(esrgan), "-o", str(out)]) == 0
    assert "ESRGAN 2x: 40x48 -> 80x96" in capsys.readouterr().err
    image = torch.from_numpy(np.asarray(Image.open(src), dtype=np.float32) / 255)[None]
    expected = to_uint8(_spandrel_direct(esrgan, image))[0]
    assert np.array_equal(np.asarray(Image.open(out)), expected)


def test_tiled_output_is_within_one_level_of_untiled(esrgan) -> None:
    model = UpscaleModel.load(esrgan)
    x = torch.rand(1, 72, 88, 3, generator=torch.Generator().manual_seed(1))
    whole = model(x)  # fits one 512 px tile: one untiled call
    assert torch.equal(whole, _spandrel_direct(esrgan, x))
    tiled = model(x, tile=32, overlap=8)  # 3 x 3 tiles
    assert whole.shape == tiled.shape == (1, 144, 176, 3)
    diff = (whole - tiled).abs()
    assert 0 < diff.mean() < 1 / 255, diff.mean()  # tiles differ at the seams, by far less than a level


def test_tiling_covers_every_pixel_once_in_weight() -> None:
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]  # stride 24, the last tile moved back to end at 100
    assert tile_starts(20, 32, 8) == [0]
    x = torch.rand(1, 3, 50, 70)
    # An identity "model" at scale 1: the feathered weights must sum back to the image exactly.
    assert torch.allclose(tiled_apply(lambda t: t, x, 1, 24, 6), x, atol=1e-6)
    # A 2x nearest upscaler: tiling must equal the whole-image result.
    up = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    assert torch.allclose(tiled_apply(up, x, 2, 24, 6), up(x), atol=1e-6)


def test_out_of_memory_halves_the_tile() -> None:
    tried = []

    def run(tile):
        tried.append(tile)
        if tile > 128:
            raise torch.OutOfMemoryError("fake")
        return torch.zeros(1)

    shrinking_tiles(run, 512)
    assert tried == [512, 256, 128]
    with pytest.raises(AnimaError, match="out of memory even with 128 px tiles"):
        shrinking_tiles(lambda t: (_ for _ in ()).throw(torch.OutOfMemoryError("fake")), 128)


def test_precision_is_fp32_on_a_cpu_and_half_where_supported() -> None:
    assert upscale_model.model_dtype(torch.device("cpu"), True, True) == torch.float32
    assert upscale_model.model_dtype(torch.device("cuda"), True, True) == torch.bfloat16
    assert upscale_model.model_dtype(torch.device("cuda"), False, True) == torch.float16
    assert upscale_model.model_dtype(torch.device("cuda"), False, False) == torch.float32


def test_files_that_are_no_upscaler_are_one_line(tmp_path) -> None:
    import_spandrel()
    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    with pytest.raises(AnimaError, match="not an upscaler model spandrel knows"):
        UpscaleModel.load(junk)
    text = tmp_path / "text.pth"
    text.write_text("not a model")
    with pytest.raises(AnimaError, match="cannot read it as a model file"):
        UpscaleModel.load(text)
    from spandrel.architectures.ESRGAN import ESRGAN

    gray = tmp_path / "gray.pth"
    torch.save(ESRGAN(in_nc=1, out_nc=1, num_filters=8, num_blocks=1, scale=2).state_dict(), gray)
    with pytest.raises(AnimaError, match="takes 1 and gives 1 channels"):
        UpscaleModel.load(gray)


def test_hires_upscaler_model_end_to_end(esrgan, tmp_path, capsys, monkeypatch) -> None:
    """--hires-upscaler FILE: the upscale inside the hires pass is spandrel's exact output; the PNG
    records the model by name and digest, --from-png repeats it, and bad files are one line."""
    seen = []
    original = UpscaleModel.__call__

    def spy(self, images, **kw):
        out = original(self, images, **kw)
        seen.append((images.clone(), out))
        return out

    monkeypatch.setattr(UpscaleModel, "__call__", spy)
    out = tmp_path / "h.png"
    flags = ["1girl", "--size", "64x64", "--steps", "2", "--sampler", "euler", "--seed", "3"]
    hires = ["--hires-scale", "1.5", "--hires-steps", "1", "--hires-upscaler", str(esrgan)]
    assert main(["generate", *flags, *hires, *FLAGS, "-o", str(out)]) == 0
    assert Image.open(out).size == (96, 96)
    (decoded, upscaled), = seen
    assert decoded.shape == (1, 64, 64, 3) and upscaled.shape == (1, 128, 128, 3)
    assert torch.equal(upscaled, _spandrel_direct(esrgan, decoded))  # untiled, small image: same pixels
    recipe = read_recipe(out)
    assert recipe.hires.upscaler == str(esrgan.resolve()) and len(recipe.hires.upscaler_hash) == 16
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    capsys.readouterr()

    junk = tmp_path / "junk.safetensors"
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(3)}, str(junk))
    bad = tmp_path / "bad.png"
    assert main(["generate", *flags, "--hires-scale", "1.5", "--hires-upscaler", str(junk), *FLAGS,
                 "-o", str(bad)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an upscaler model spandrel knows" in err[0] and not bad.exists()
    assert main(["generate", *flags, "--hires-scale", "1.5", "--hires-upscaler", "nowhere.pth", *FLAGS,
                 "-o", str(bad)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nowhere.pth' not found" in err[0] and "--hires-upscaler" in err[0]
