"""What the web UI asks the server: completions, lint, a PNG's recipe, the hires plan, per-model
defaults, the history search and grid jobs, control preprocessing and a job's stored inputs; and
the page's contract (every client setting has a field, the accessible names the browser tests use)."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import sys

import httpx
import numpy as np
import pytest
from PIL import Image
from server_support import LLLITE_PATCHES, LiveServer, tiny_service, wait_job

from anima.errors import AnimaError
from anima.imageio import read_recipe, save_png
from anima.prompt_tools.artist_index import ArtistIndex
from anima.prompt_tools.tag_list import TagList
from anima.recipe import Recipe
from anima.server.app import STATIC_DIR, PromptHelp, create_app
from anima.server.settings_schema import CLIENT_SETTINGS

TAGS_CSV = (
    "1girl,0,6000000,\"1girls,sole_female\"\n"
    "long_hair,0,4000000,\n"
    "looking_at_viewer,0,3500000,\"eye_contact\"\n"
    "hatsune_miku,4,90000,\"miku\"\n"
    "lowres,5,0\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-api")
    (root / "tags.csv").write_text(TAGS_CSV, encoding="utf-8")
    help_ = PromptHelp(
        artists=ArtistIndex(["wlop", "wada arco", "ilya kuvshinov"], source="test"),
        tags=TagList.load(root / "tags.csv"),
    )
    app = create_app(tiny_service(patch_dirs=[LLLITE_PATCHES]), data_dir=root / "data", prompt_help=help_)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_tag_list_reads_tagcomplete_csv(tmp_path):
    path = tmp_path / "danbooru.csv"
    path.write_text(TAGS_CSV, encoding="utf-8")
    tags = TagList.load(path)
    assert [t.name for t in tags.complete("lo")] == ["long_hair", "looking_at_viewer", "lowres"]  # by count
    assert [t.prompt_form for t in tags.complete("mik")] == ["hatsune miku"]  # through an alias
    assert [t.name for t in tags.complete("sole")] == ["1girl"]
    with pytest.raises(AnimaError, match="not found"):
        TagList.load(tmp_path / "missing.csv")


def test_completions(client):
    names = [i["label"] for i in client.get("/api/complete", params={"q": "@wa"}).json()["items"]]
    assert names == ["wada arco"]
    item = client.get("/api/complete", params={"q": "@wl"}).json()["items"][0]
    assert (item["text"], item["kind"]) == ("@wlop", "artist")
    tags = client.get("/api/complete", params={"q": "looking"}).json()["items"]
    assert [t["text"] for t in tags] == ["looking at viewer"]
    assert client.get("/api/complete", params={"q": ""}).status_code == 422


def test_lint_findings_and_fix(client):
    r = client.post("/api/lint", json={"prompt": "1girl, 1girl, long_hair"}).json()
    assert r["findings"] and all(f["message"] for f in r["findings"])
    assert r["formatted"] != "1girl, 1girl, long_hair"


def test_png_recipe_reads_anima_and_a1111(client, tmp_path):
    recipe = Recipe.make("a png", seed=99, sampler="euler", width=64, height=64, nag_scale=3)
    path = save_png(tmp_path / "a.png", np.zeros((64, 64, 3), np.uint8), recipe)
    b64 = base64.b64encode(path.read_bytes()).decode()
    r = client.post("/api/png-recipe", json={"image": b64}).json()
    assert r["format"] == "anima" and r["recipe"]["seed"] == 99 and r["recipe"]["sampler"] == "euler"
    assert r["settings"] == {"nag_scale": 3.0} and r["runnable"]
    # An A1111 infotext only (as Forge writes it).
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "1girl\nNegative prompt: lowres\nSteps: 12, Sampler: Euler a, Schedule type: "
                  "Karras, CFG scale: 5, Seed: 7, Size: 64x64")  # fmt: skip
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG", pnginfo=info)
    r = client.post("/api/png-recipe", json={"image": base64.b64encode(buf.getvalue()).decode()}).json()
    assert r["format"] == "a1111"
    assert (r["recipe"]["sampler"], r["recipe"]["scheduler"], r["recipe"]["steps"]) == (
        "euler_ancestral", "karras", 12,
    )  # fmt: skip
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    bad = client.post("/api/png-recipe", json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert bad.status_code == 400 and "\n" not in bad.json()["detail"]


def test_hires_plan(client):
    r = client.post("/api/plan", json={"width": 64, "height": 64, "settings": {"hires_scale": 2.5}}).json()
    assert r["sizes"][0] == [64, 64] and r["sizes"][-1] == [160, 160] and len(r["sizes"]) == 3
    over = client.post("/api/plan", json={"width": 1024, "height": 1024, "settings": {"hires_scale": 3}})
    assert over.status_code == 400 and "hires" in over.json()["detail"]


def test_info_has_model_defaults_and_choices(client):
    info = client.get("/api/info").json()
    assert info["notice"] is None  # a real model file: no demo banner
    assert info["prompt_help"] == {"artists": True, "tags": True}
    assert info["choices"]["presets"]["turbo"]["cfg"] == 1.0
    assert set(info["setting_defaults"]) == set(CLIENT_SETTINGS)
    assert info["control_models"] == sorted(p.stem for p in LLLITE_PATCHES.glob("*.safetensors"))
    assert "anima_lllite_tiny_aspp" in info["control_models"]
    assert {"none", "invert", "canny", "lineart"} <= set(info["control_preprocessors"])


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _decode(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def test_preprocess_previews_a_control_image(client, monkeypatch):
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[8:24, 12:36] = (250, 200, 10)
    src = _data_url(Image.fromarray(arr))
    inverted = _decode(client.post("/api/preprocess", json={"kind": "invert", "image": src}).json()["image"])
    assert inverted.size == (48, 32) and np.array_equal(np.asarray(inverted.convert("RGB")), 255 - arr)
    lines = client.post("/api/preprocess", json={"kind": "lineart", "image": src}).json()["image"]
    lines = np.asarray(_decode(lines))
    assert lines.shape == (32, 48, 3) and lines.min() == 0 and lines.max() == 255  # dark lines on white
    for body, words in [
        ({"kind": "depth_midas", "image": src}, "unknown control preprocessor"),
        ({"kind": "invert", "image": "data:image/png;base64,bm90IGFuIGltYWdl"}, "could not be decoded"),
        ({"kind": "invert", "image": "%%%"}, "not valid base64"),
    ]:
        r = client.post("/api/preprocess", json=body)
        assert r.status_code == 400 and words in r.json()["detail"] and "\n" not in r.json()["detail"], r.text
    monkeypatch.setitem(sys.modules, "kornia.filters", None)  # kornia not installed
    r = client.post("/api/preprocess", json={"kind": "canny", "image": src})
    assert r.status_code == 400 and "needs kornia" in r.json()["detail"] and "\n" not in r.json()["detail"]


def test_job_inputs_are_served_and_deleted_with_the_job(tmp_path):
    control = Image.new("RGB", (64, 64), (10, 200, 30))
    mask = Image.new("L", (64, 64), 255)
    app = create_app(tiny_service(patch_dirs=[LLLITE_PATCHES]), data_dir=tmp_path, start_worker=False)
    recipe = {"prompt": "x", "size": "64x64", "steps": 2, "seed": 1, "denoise": 0.5}
    inputs = tmp_path / "inputs"
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        unit = {"model": "anima_lllite_tiny_inpaint", "image": _data_url(control), "mask": _data_url(mask)}
        body = {"recipe": recipe, "init_image": _data_url(control), "inpaint": {"mask": _data_url(mask)}}
        a = c.post("/api/jobs", json={**body, "controls": [unit]})
        ref = {"recipe": {**recipe, "denoise": 1}, "reference_image": _data_url(control)}
        b = c.post("/api/jobs", json=ref)
        assert a.status_code == b.status_code == 202, (a.text, b.text)
        a, b = a.json(), b.json()
        assert sorted(a["inputs"]) == ["control0-image", "control0-mask", "init", "mask"]
        assert list(b["inputs"]) == ["reference"]
        got = c.get(a["inputs"]["control0-image"])
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(got.content))), np.asarray(control))
        assert Image.open(io.BytesIO(c.get(a["inputs"]["control0-mask"]).content)).mode == "L"
        assert c.get(b["inputs"]["reference"]).status_code == 200
        for url in (f"/api/jobs/{a['id']}/inputs/reference", f"/api/jobs/{a['id']}/inputs/..%2Fjobs.sqlite3",
                    f"/api/jobs/{'0' * 16}/inputs/init"):  # fmt: skip
            r = c.get(url)
            assert r.status_code == 404 and "\n" not in r.json()["detail"], url
        # A refused job stores nothing.
        before = sorted(inputs.iterdir())
        bad = c.post("/api/jobs", json={**body, "controls": [{**unit, "model": "nowhere"}]})
        assert bad.status_code == 400 and sorted(inputs.iterdir()) == before
        for job in (a, b):  # cancel (queued), then forget: the stored inputs go with it
            assert c.delete(f"/api/jobs/{job['id']}").json()["status"] == "cancelled"
            assert c.delete(f"/api/jobs/{job['id']}").status_code == 200
        assert list(inputs.iterdir()) == []
        assert c.get(a["inputs"]["init"]).status_code == 404


def test_history_search_and_grid_job(server, client):
    base = {"size": "64x64", "steps": 2, "seed": 3}
    a = client.post("/api/jobs", json={"recipe": {"prompt": "a Lighthouse at dusk", **base}}).json()
    grid = client.post(
        "/api/jobs", json={"recipe": {"prompt": "grid cell", **base, "grid": ["cfg=2,5", "steps=1,2"]}}
    ).json()
    assert grid["kind"] == "grid"
    a, grid = wait_job(client, a["id"]), wait_job(client, grid["id"], timeout=120)
    assert a["status"] == grid["status"] == "done", grid["error"]
    found = client.get("/api/jobs", params={"q": "lighthouse", "status": "done"}).json()
    assert [j["id"] for j in found["items"]] == [a["id"]]
    sheet = server.ctx.outputs_dir / grid["outputs"][0]
    assert len(grid["outputs"]) == 1 and Image.open(sheet).width > 2 * 64  # 2 x 2 cells and labels
    made = read_recipe(sheet)
    assert [g.spec() for g in made.grid] == ["cfg=2,5", "steps=1,2"]
    cells = json.loads(Image.open(sheet).text["anima_grid"])
    assert len(cells["cells"]) == 4
    # A grid cell over the limits is refused before anything is queued.
    bad = client.post("/api/jobs", json={"recipe": {"prompt": "x", **base, "grid": ["steps=2,100000"]}})
    assert bad.status_code in (400, 422)


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.settings: list[str] = []
        self.by_id: dict[str, dict] = {}
        self.labels: dict[str, str] = {}
        self._label_for: str | None = None
        self._text: dict[str, str] = {}
        self._open: list[str] = []
        self.controls: dict[str, dict] = {}  # data-control fields (the unit template): tag, labelled, text
        self._labels_open = 0
        self._button: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-setting" in a:
            self.settings.append(a["data-setting"])
        if "id" in a:
            self.by_id[a["id"]] = {"tag": tag, **a}
            self._open.append(a["id"])
            self._text[a["id"]] = ""
        if tag == "label" and "for" in a:
            self._label_for = a["for"]
            self.labels[a["for"]] = ""
        if tag == "label":
            self._labels_open += 1
        if "data-control" in a:
            labelled = self._labels_open > 0
            self.controls[a["data-control"]] = {"tag": tag, "labelled": labelled, "text": "", **a}
            self._button = a["data-control"] if tag == "button" else None

    def handle_endtag(self, tag):
        if tag == "label":
            self._label_for = None
            self._labels_open -= 1
        if tag == "button":
            self._button = None

    def handle_data(self, data):
        if self._button:
            self.controls[self._button]["text"] += data
        if self._label_for:
            self.labels[self._label_for] += data
        for i in self._open[-1:]:
            self._text[i] += data


def test_page_has_a_field_for_every_client_setting_and_the_names_tests_use():
    page = _Page()
    page.feed((STATIC_DIR / "index.html").read_text(encoding="utf-8"))
    assert sorted(page.settings) == sorted(CLIENT_SETTINGS)  # each exactly once
    assert page.labels["prompt"].strip() == "Prompt" and page.labels["png-file"].strip() == "PNG info"
    assert page.by_id["generate"]["tag"] == "button" and page._text["generate"].strip() == "Generate"
    assert page.by_id["completions"]["role"] == "listbox"
    assert page.by_id["gallery"]["aria-label"] == "Gallery"
    assert "disabled" in page.by_id["generate"]  # until /api/info is in
    # A control unit (the page clones the template per unit): a field for each ControlIn field,
    # each inside its label or a button with its own text.
    from anima.server.schemas import ControlIn

    unit = page.controls
    assert set(ControlIn.model_fields) <= set(unit)  # model, image, mask, strength, start, end
    assert {"enabled", "preprocessor", "preview"} <= set(unit)
    for name, el in unit.items():
        assert el["labelled"] if el["tag"] != "button" else el["text"].strip(), name
    assert unit["preview"]["text"].strip() == "Preview" and unit["image"]["type"] == "file"
    assert page.by_id["control-unit-template"]["tag"] == "template"


def test_serve_refuses_a_missing_artist_or_tag_file_in_one_line(tmp_path, capsys):
    from server_support import TINY_FILES

    from anima.cli import main

    common = ["--dit", str(TINY_FILES["dit"]), "--port", "1", "--data-dir", str(tmp_path / "d")]
    assert main(["serve", "--artists", str(tmp_path / "nope.txt"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "artist file" in err and "not found" in err and len(err.splitlines()) == 1
    assert main(["serve", "--tags", str(tmp_path), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "tag file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "d").exists()  # refused before anything was made
