"""`anima batch`: job files, per-line errors, outputs + manifest, resuming, crash leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, TOKENIZERS

from anima.cli import main
from anima.errors import AnimaError
from anima.jobs.batch import BatchJob, LocalExecutor, PipelineSpec, read_jobs, run_jobs, with_keys
from anima.jobs.store import OutputStore
from anima.pipeline import RunOptions
from anima.recipe import Recipe
from anima.weights.discovery import ModelSet

W = TINY / "weights"
SPEC = PipelineSpec(
    ModelSet("anima_tiny_dit", W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors",
             W / "wan21_tiny_vae.safetensors", TOKENIZERS / "qwen", TOKENIZERS / "t5", "explicit"),
    RunOptions(device="cpu", dtype="fp32"),
)  # fmt: skip
MODEL = [
    "--dit", str(SPEC.models.dit), "--text-encoder", str(SPEC.models.text_encoder),
    "--vae", str(SPEC.models.vae), "--tokenizer-dir", str(TOKENIZERS), "--dtype", "fp32",
]  # fmt: skip
FAST = {"width": 64, "height": 64, "steps": 2, "sampler": "euler"}

JOBS = """{"prompt": "1girl, smile", "seed": 1}
{"prompt": "1boy", "seed": 2, "stepz": 3}
this is not json
{"prompt": "scenery", "seed": 3, "sampler": "nope"}

# a comment line
{"prompt": "cat", "seed": 4, "id": "cat"}
["a", "list"]
{"prompt": "", "seed": 5}
{"prompt": "dog", "seed": 6, "batch_size": 2}
"""


@pytest.fixture(scope="module")
def pipe():
    return SPEC.build()


def test_read_jobs_reports_each_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "jobs.jsonl"
    f.write_text(JOBS)
    jobs, errors = read_jobs(f, FAST)
    assert [(j.line, j.recipe.prompt, j.recipe.seed) for j in jobs] == [
        (1, "1girl, smile", 1), (7, "cat", 4), (10, "dog", 6),
    ]  # fmt: skip
    assert jobs[1].job_id == "cat" and jobs[0].recipe.steps == 2
    msgs = [str(e) for e in errors]
    assert msgs[0] == "jobs.jsonl:2: unknown recipe field 'stepz'"
    assert msgs[1].startswith("jobs.jsonl:3: not valid JSON")
    assert msgs[2].startswith("jobs.jsonl:4: unknown sampler 'nope'")
    assert msgs[3] == "jobs.jsonl:8: a job must be a JSON object, got list"
    assert msgs[4] == "jobs.jsonl:9: the prompt is empty"
    assert all("\n" not in m for m in msgs)


def test_csv_and_prompt_list(tmp_path: Path) -> None:
    c = tmp_path / "jobs.csv"
    c.write_text('prompt,seed,steps\n"1girl, smile",7,3\ncat,x,3\ndog,,\n')
    jobs, errors = read_jobs(c, FAST)
    assert [(j.line, j.recipe.prompt, j.recipe.seed, j.recipe.steps) for j in jobs] == [
        (2, "1girl, smile", 7, 3), (4, "dog", 0, 2),
    ]  # fmt: skip
    assert [str(e) for e in errors] == ["jobs.csv:3: column 'seed': 'x' is not a number"]
    t = tmp_path / "prompts.txt"
    t.write_text("# prompts\n1girl, smile\n\ncat\n")
    jobs, errors = read_jobs(t, {**FAST, "seed": 9})
    assert [(j.line, j.recipe.prompt, j.recipe.seed) for j in jobs] == [(2, "1girl, smile", 9), (4, "cat", 9)]
    assert errors == []


def test_missing_or_empty_job_file(tmp_path: Path) -> None:
    with pytest.raises(AnimaError, match="not found"):
        read_jobs(tmp_path / "nope.jsonl")
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(AnimaError, match="holds no jobs"):
        read_jobs(tmp_path / "empty.txt")


def _jobs(n: int, fingerprint: str = "fp") -> list[BatchJob]:
    base = Recipe(prompt="1girl", **FAST)
    jobs = [
        BatchJob(recipe=base.with_(prompt=f"1girl, tag{i}", seed=i), source="t", line=i + 1) for i in range(n)
    ]
    return with_keys(jobs, fingerprint, "fp32")


def test_run_resume_and_manifest(tmp_path: Path, pipe) -> None:
    store = OutputStore(tmp_path / "out")
    jobs = _jobs(3)
    report = run_jobs(jobs, store, LocalExecutor(pipe))
    assert (report.rendered, report.skipped, report.errors) == (3, 0, [])
    files = sorted(store.images.glob("*.png"))
    before = {p.name: p.read_bytes() for p in files}
    manifest = json.loads(store.manifest_path.read_text())
    assert [e["line"] for e in manifest["jobs"]] == [1, 2, 3]
    assert all(e["status"] == "done" for e in manifest["jobs"])

    report = run_jobs(jobs, OutputStore(tmp_path / "out"), LocalExecutor(pipe))
    assert (report.rendered, report.skipped) == (0, 3)
    assert {p.name: p.read_bytes() for p in store.images.glob("*.png")} == before
    assert len(store.index_path.read_text().splitlines()) == 3


def test_crash_leftovers_are_repaired(tmp_path: Path, pipe) -> None:
    """A cut-off index line and an image saved just before the kill (not yet logged)."""
    store = OutputStore(tmp_path / "out")
    jobs = _jobs(3)
    run_jobs(jobs[:2], store, LocalExecutor(pipe))
    lines = store.index_path.read_text().splitlines()
    # Kill simulation: job 2's image is on disk but its log line was half written.
    store.index_path.write_text(lines[0] + "\n" + lines[1][:15])
    (store.images / ".x.png.1234.tmp").write_bytes(b"partial")  # an abandoned temp file is ignored
    report = run_jobs(jobs, OutputStore(tmp_path / "out"), LocalExecutor(pipe))
    assert (report.rendered, report.skipped) == (1, 2)
    recs = [json.loads(ln) for ln in store.index_path.read_text().splitlines()]
    assert sorted(r["key"] for r in recs) == sorted(j.key for j in jobs)
    assert [r.get("recovered", False) for r in recs] == [False, True, False]


def test_cli_batch_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "jobs.jsonl"
    f.write_text(JOBS)
    out = tmp_path / "out"
    args = [
        "batch",
        str(f),
        "--out",
        str(out),
        "--size",
        "64x64",
        "--steps",
        "2",
        "--sampler",
        "euler",
        *MODEL,
    ]
    assert main(args) == 2  # some lines were bad; the good ones still ran
    cap = capsys.readouterr()
    errs = [ln for ln in cap.err.splitlines() if ln.startswith("anima: error:")]
    assert [e.split(":")[2].strip() for e in errs] == ["jobs.jsonl"] * 5
    assert {int(e.split(":")[3]) for e in errs} == {2, 3, 4, 8, 9}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(e["line"], e["status"]) for e in manifest["jobs"]] == [
        (1, "done"), (2, "error"), (3, "error"), (4, "error"), (7, "done"), (8, "error"), (9, "error"),
        (10, "done"),
    ]  # fmt: skip
    assert len(list((out / "images").glob("*.png"))) == 4  # the last job has batch_size 2
    from anima.imageio import read_recipe

    done = manifest["jobs"][0]
    r = read_recipe(out / done["files"][0])
    assert (r.prompt, r.seed, r.width, r.steps) == ("1girl, smile", 1, 64, 2)
    # Resume: nothing rendered twice.
    assert main([*args, "--no-progress"]) == 2
    assert "0 rendered, 3 already done" in capsys.readouterr().out


def test_cli_batch_missing_file_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "nope.jsonl"), "--out", str(out), *MODEL]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not out.exists()


def test_ray_flag_without_ray_installed_is_one_line(tmp_path: Path) -> None:
    """Ray is an optional extra: without it `--ray` says how to install it; the local path needs none."""
    import subprocess
    import sys

    from conftest import REPO

    argv = ["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--ray", *MODEL]
    code = f"import sys; sys.modules['ray'] = None\nfrom anima.cli import main\nsys.exit(main({argv!r}))"
    (tmp_path / "p.txt").write_text("1girl\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "anima: error: --ray needs Ray: pip install 'anima[ray]' (or pip install ray)"
    )
    assert not (tmp_path / "o").exists()
