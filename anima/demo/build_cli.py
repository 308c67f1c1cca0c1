"""Regenerate the bundled DEMO model from scratch: ``python -m anima.demo.build_cli``.

The same command is ``anima train --demo``. Steps (all seeded):

1. render the shapes dataset (`anima.demo.dataset`): 400 training combinations x `per_combo` images;
2. fit the two tokenizers on the caption vocabulary (`anima.demo.tokenizer_train`);
3. write the random, frozen Qwen3-style text encoder and the starting DiT + adapter (`anima.demo.spec`);
4. train the tiny Wan VAE on the images, with its two-channel position code, then its decoder alone
   on the frozen encoder's latents (`anima.demo.vae_train`);
5. train DiT + adapter with ``anima train`` (network = full) on the cached latents;
6. write everything, with a README that labels it a demo, into the output folder
   (by default the package's ``anima/demo/model``), then score it with the evaluator.

``--quick`` runs a much shorter schedule (a smoke test of the whole path, not a usable model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from anima.demo import FILE_NAMES, MODEL_DIR, dataset
from anima.demo.runner import evaluate_model
from anima.demo.spec import vae_config, write_initial
from anima.demo.tokenizer_train import train_tokenizers
from anima.demo.vae_train import VAETrainConfig, polish_decoder, train_vae
from anima.text.tokenize import AnimaTokenizer
from anima.train.config import TrainConfig
from anima.train.trainer import Trainer
from anima.weights.loading import read_headers
from anima.weights.safetensors import load_mmap, read_header, save


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    per_combo: int = 8
    vae_dim: int = 12
    vae_steps: int = 3000
    vae_batch: int = 6
    vae_decoder_steps: int = 2000
    vae_latent_noise: float = 0.05
    dit_steps: int = 7000
    dit_batch: int = 32
    dit_lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    shift: float = 3.0
    threads: int = 1  # one thread: robust on a shared 2-core machine (two spin-wait under contention)


DEMO_LABEL = "tiny DEMO model trained on coloured shapes (anima.demo); not Anima"
QUICK = BuildConfig(
    per_combo=1, vae_steps=30, vae_batch=2, vae_decoder_steps=10, dit_steps=30, dit_batch=8, warmup=5
)


def _train_config(cfg: BuildConfig, work: Path, out: Path, init_dit: Path):

    return TrainConfig(
        dit=str(init_dit),
        text_encoder=str(out / FILE_NAMES["text_encoder"]),
        vae=str(out / FILE_NAMES["vae"]),
        tokenizer_dir=str(out / "tokenizer"),
        data_dir=str(work / "data"),
        resolution=64,
        bucket_step=16,
        max_aspect=1.0,
        caption_dropout=cfg.caption_dropout,
        network="full",
        train_dit=True,
        train_adapter=True,
        optimizer="adamw",
        lr=cfg.dit_lr,
        weight_decay=0.0,
        beta2=0.99,
        max_grad_norm=1.0,
        schedule="cosine",
        warmup_steps=cfg.warmup,
        min_lr_ratio=0.05,
        steps=cfg.dit_steps,
        batch_size=cfg.dit_batch,
        timestep_sampling="uniform",
        shift=cfg.shift,
        precision="fp32",
        ema_decay=cfg.ema_decay,
        seed=cfg.seed,
        device="cpu",
        threads=cfg.threads,
        output_dir=str(work / "train"),
        output_name="anima-demo-dit",
        save_dtype="fp32",
        save_every=500,
        keep_checkpoints=1,
        log_every=50,
        log_backend="csv",
        sample_every=0,
    )


def build(cfg: BuildConfig, out_dir: Path, work_dir: Path, say=print) -> dict:
    """Run every step; returns a summary (timings, sizes) that also goes into the model README."""
    import torch


    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)

    say("1/5 rendering the shapes dataset")
    train_combos, _ = dataset.split_combos()
    if (work_dir / "data").exists():
        shutil.rmtree(work_dir / "data")
    n_images = dataset.write_dataset(work_dir / "data", train_combos, per_combo=cfg.per_combo, seed=cfg.seed)
    times["dataset"] = time.perf_counter() - t0

    say("2/5 fitting the tokenizers, writing the text encoder and the starting DiT")
    tok_dir = out_dir / "tokenizer"
    train_tokenizers(dataset.vocabulary_text(), tok_dir)
    tok = AnimaTokenizer.from_dirs(tok_dir / "qwen", tok_dir / "t5")
    qwen_vocab, t5_vocab = tok._qwen.get_vocab_size(), tok._t5.get_vocab_size()
    init_dit, te_path = write_initial(work_dir, qwen_vocab, t5_vocab, seed=cfg.seed)
    shutil.move(str(te_path), out_dir / FILE_NAMES["text_encoder"])
    times["tokenizers"] = time.perf_counter() - t0 - sum(times.values())

    say(f"3/5 training the VAE ({cfg.vae_steps} steps)")
    # The VAE is a generic image codec: it sees every shape, the star included (a VAE that cannot
    # draw a star would make the LoRA experiment meaningless). Only the DiT and the text side are
    # kept from ever seeing "star".
    vae_scenes = dataset.scenes(dataset.all_combos(dataset.ALL_SHAPES), 2, cfg.seed + 7)
    images = dataset.render_batch(vae_scenes)
    vae_cfg = VAETrainConfig(
        dim=vae_config(cfg.vae_dim).dim,
        steps=cfg.vae_steps,
        batch_size=cfg.vae_batch,
        latent_noise=cfg.vae_latent_noise,
        decoder_steps=cfg.vae_decoder_steps,
        seed=cfg.seed,
    )
    vae = train_vae(images, vae_cfg, _every(say, "VAE", max(cfg.vae_steps // 10, 1)))
    if cfg.vae_decoder_steps:
        say(f"  polishing the VAE decoder ({cfg.vae_decoder_steps} steps, encoder frozen)")
        # Stars weighted up: their points are the finest detail the decoder has to draw.
        combos = dataset.all_combos(dataset.ALL_SHAPES) + dataset.all_combos([dataset.NEW_SHAPE]) * 2
        dec_scenes = dataset.scenes(combos, 2, cfg.seed + 77)
        dec_images = dataset.render_batch(dec_scenes)
        polish_decoder(
            vae, dec_images, vae_cfg, _every(say, "VAE decoder", max(cfg.vae_decoder_steps // 10, 1))
        )
    save(vae.state_dict(), out_dir / FILE_NAMES["vae"], metadata={"format": "pt", "anima_demo": DEMO_LABEL})
    times["vae"] = time.perf_counter() - t0 - sum(times.values())

    say(f"4/5 training DiT + adapter ({cfg.dit_steps} steps, batch {cfg.dit_batch})")
    tcfg = _train_config(cfg, work_dir, out_dir, init_dit)
    every = max(cfg.dit_steps // 20, 1)

    def on_step(info) -> None:
        if info.step % every == 0 or info.step == info.total:
            say(
                f"  DiT step {info.step}/{info.total} loss {info.loss:.4f} "
                f"{info.seconds_per_step:.3f} s/step, ETA {info.eta_seconds / 60:.1f} min"
            )

    result = Trainer(tcfg, on_step=on_step, on_message=say).run()
    _copy_labelled(result, out_dir / FILE_NAMES["dit"])
    times["dit"] = time.perf_counter() - t0 - sum(times.values())
    for f in out_dir.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    summary = {
        "build_config": asdict(cfg),
        "images": n_images,
        "minutes": {k: round(v / 60, 2) for k, v in times.items()},
        "total_minutes": round((time.perf_counter() - t0) / 60, 2),
        "bytes": {k: (out_dir / v).stat().st_size for k, v in FILE_NAMES.items() if (out_dir / v).is_file()},
        "torch": torch.__version__,
    }
    return summary


def _copy_labelled(src: Path, dst: Path) -> None:
    """Copy the trained DiT file, adding the demo label to the trainer's metadata."""

    header = read_header(src)
    tensors = {k: v.clone() for k, v in load_mmap(src, header).items()}
    save(tensors, dst, metadata={**header.metadata, "anima_demo": DEMO_LABEL})


def _every(say, what: str, n: int):
    def progress(step: int, total: int, loss: float) -> None:
        if step % n == 0 or step == total:
            say(f"  {what} step {step}/{total} reconstruction loss {loss:.4f}")

    return progress


README = """# anima DEMO model (tiny, trained on coloured shapes)

**This is a demo, not Anima.** A {params:.1f} M-parameter model with the Anima architecture (MiniTrainDIT +
LLM adapter + Qwen3-style text encoder + Wan-2.1 VAE, all shrunk) trained from scratch on a
procedurally generated dataset of coloured shapes, so that `anima generate` works on a fresh
machine without downloads. It draws one circle, square or triangle in red, green, blue, yellow,
white or black, in the centre or a corner, on a plain background of one of those colours, at
64x64 pixels. It knows nothing else.

Prompts: tags (`red circle, blue background, top left`) or sentences
(`a red circle in the top left on a blue background`). Positions: centre, top left, top right,
bottom left, bottom right.

Files: `{dit}` (DiT + adapter), `{te}` (text encoder, random and frozen), `{vae}` (VAE),
`tokenizer/qwen` and `tokenizer/t5` (tiny tokenizers fitted on the captions). Rebuild it with
`python -m anima.demo.build_cli`; score it with `python -m anima.demo.evaluate`.

Demo-specific choices (see `anima/demo/*.py` for the reasons): the text encoder is random and
frozen (the adapter's own token embedding carries word identity); latent channels 0 and 1 of the
VAE hold a fixed coordinate code that the decoder ignores, because the DiT has no absolute position
embedding and a model this small would otherwise not learn "top left"; the VAE saw every shape
including stars, while the DiT and the text side never saw the word "star" (it is left for the
LoRA example, `python -m anima.demo.lora_cli`); after the joint VAE training, its decoder was trained
alone on the frozen encoder's latents, which made reconstructed stars sharp enough to read back.

Build record:

```json
{summary}
```
"""


def write_readme(out_dir: Path, summary: dict) -> None:

    params = 0
    for name in FILE_NAMES.values():
        _, shapes = read_headers(out_dir / name)
        for s in shapes.values():
            n = 1
            for d in s:
                n *= d
            params += n
    text = README.format(
        params=params / 1e6,
        dit=FILE_NAMES["dit"],
        te=FILE_NAMES["text_encoder"],
        vae=FILE_NAMES["vae"],
        summary=json.dumps(summary, indent=2),
    )
    (out_dir / "README.md").write_text(text, encoding="utf-8")
    (out_dir / "README.md").chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anima.demo.build_cli", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=MODEL_DIR, help=f"output folder (default: {MODEL_DIR})")
    p.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "anima-demo-build",
        help="scratch folder for the dataset, caches and checkpoints (default: in the temp folder)",
    )
    p.add_argument("--quick", action="store_true", help="tiny schedule: tests the path, not a usable model")
    p.add_argument("--dit-steps", type=int, help="override the DiT steps")
    p.add_argument("--vae-steps", type=int, help="override the VAE steps")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's choice)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else BuildConfig()
    cfg = replace(cfg, threads=args.threads)
    if args.dit_steps:
        cfg = replace(cfg, dit_steps=args.dit_steps)
    if args.vae_steps:
        cfg = replace(cfg, vae_steps=args.vae_steps)
    summary = build(cfg, args.out, args.work)
    if not args.no_eval:

        t = time.perf_counter()
        score = evaluate_model(model_dir=args.out)
        summary["evaluation"] = {
            "held_out_prompts": score.total,
            "all_right": score.all_right,
            "summary": score.summary(),
            "minutes": round((time.perf_counter() - t) / 60, 2),
        }
        print(f"evaluation: {score.summary()}")
    write_readme(args.out, summary)
    print(f"DEMO model written to {args.out} in {summary['total_minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
