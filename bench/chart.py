"""A PNG bar chart of a results dict, drawn with PIL (matplotlib is not a dependency)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"anima": (46, 125, 200), "diffusers": (230, 126, 34), "floor": (120, 120, 120)}


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, groups: list) -> None:
    """groups: [(label, {series: seconds})]; bars share one linear scale per panel."""
    x0, y0, x1, y1 = box
    draw.text((x0, y0), title, fill="black")
    top, bottom = y0 + 30, y1 - 30
    vmax = max((v for _, series in groups for v in series.values() if v), default=1.0) * 1.15
    draw.line((x0 + 40, bottom, x1, bottom), fill="black")
    for frac in (0.25, 0.5, 0.75, 1.0):
        y = bottom - (bottom - top) * frac
        draw.line((x0 + 40, y, x1, y), fill=(225, 225, 225))
        draw.text((x0, y - 6), f"{vmax * frac:.1f}", fill="black")
    slot = (x1 - x0 - 50) / max(len(groups), 1)
    for i, (label, series) in enumerate(groups):
        gx = x0 + 50 + i * slot
        width = slot * 0.8 / max(len(series), 1)
        for j, (name, value) in enumerate(series.items()):
            if value is None:
                continue
            bx = gx + j * width
            by = bottom - (bottom - top) * value / vmax
            draw.rectangle((bx, by, bx + width - 3, bottom), fill=COLORS.get(name, (90, 160, 90)))
            draw.text((bx, by - 12), f"{value:.2f}", fill="black")
        draw.text((gx, bottom + 6), label, fill="black")


def draw_chart(results: dict, path: Path) -> Path:
    rows = results["rows"]
    step_groups, vae_groups = [], []
    for r in rows:
        label = f"{r['dtype']} {r['size']}"
        step_groups.append(
            (label, {"anima": r.get("anima_per_step_s"), "diffusers": r.get("diffusers_per_step_s"),
                     "floor": r.get("floor_full_s")})
        )  # fmt: skip
        vae_groups.append((label, {"anima": r.get("anima_vae_s"), "diffusers": r.get("diffusers_vae_s")}))
    width = max(900, 170 * len(rows) + 100)
    img = Image.new("RGB", (width, 760), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, (10, 10, width - 10, 380), "seconds per sampling step (CFG 4)", step_groups)
    _panel(draw, (10, 390, width - 10, 720), "seconds per VAE decode", vae_groups)
    x = 20
    for name, color in COLORS.items():
        draw.rectangle((x, 735, x + 14, 749), fill=color)
        draw.text((x + 20, 736), name, fill="black")
        x += 120
    load = results.get("machine", {}).get("note", "")
    draw.text((x + 20, 736), load, fill=(90, 90, 90))
    img.save(path)
    return path


def draw_gpu_chart(results: dict, path: Path) -> Path:
    """`python -m bench.gpu` results: end-to-end seconds per setup, and peak VRAM per memory setup.
    Sections that did not run (or failed) are left out."""
    sec = results.get("sections", {})

    def get(name: str, *keys: str):
        v = sec.get(name, {})
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v if isinstance(v, int | float) else None

    times = [
        ("eager", {"anima": get("e2e", "end_to_end", "wall_s")}),
        ("--compile", {"anima": get("compile", "wall_s")}),
        ("diffusers", {"diffusers": get("diffusers", "wall_s")}),
        ("matmul floor", {"floor": get("floor", "floor_run_s")}),
        ("int8", {"anima": get("weights_int8", "wall_s")}),
        ("fp8", {"anima": get("weights_fp8", "wall_s")}),
        ("fp16", {"anima": get("fp16", "fp16", "wall_s")}),
        ("step cache .1", {"anima": get("step_cache", "0.1", "wall_s")}),
    ]
    vram = [
        ("no budget", {"anima": get("e2e", "end_to_end", "peak_vram_gb")}),
        ("8 GB bf16", {"anima": get("budget_8gb", "peak_vram_gb")}),
        ("4 GB int8", {"anima": get("budget_4gb_int8", "peak_vram_gb")}),
        ("3 GB stream", {"anima": get("streaming", "bf16_3gb", "peak_vram_gb")}),
        ("2.2 GB int8 st.", {"anima": get("streaming", "int8_2.2gb", "peak_vram_gb")}),
        ("diffusers", {"diffusers": get("diffusers", "peak_vram_gb")}),
    ]
    times = [g for g in times if any(v is not None for v in g[1].values())]
    vram = [g for g in vram if any(v is not None for v in g[1].values())]
    env = sec.get("env", {})
    head = f"{env.get('gpu', env.get('device', '?'))}, {env.get('size')}px, {env.get('steps')} steps, CFG 4"
    img = Image.new("RGB", (1100, 760), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, (10, 10, 1090, 380), f"end to end, seconds after warm-up ({head})", times)
    _panel(draw, (10, 390, 1090, 750), "peak VRAM allocated during a run, GB", vram)
    img.save(path)
    return path
