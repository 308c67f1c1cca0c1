"""Property-based fuzzing of the OpenAPI document with schemathesis: a bounded number of generated
requests per operation against a live server; no 5xx, and every response matches the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_support import LiveServer, tiny_service

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 12  # per operation; ~25 operations


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from anima.server.app import create_app
    from anima.server.security import Limits

    # Tight limits: most generated generation requests are refused fast; the rest stay tiny.
    limits = Limits(max_side=64, max_pixels=64 * 64, max_steps=2, max_batch=1, max_n_iter=1)
    app = create_app(tiny_service(), data_dir=tmp_path_factory.mktemp("fuzz"), limits=limits)
    with LiveServer(app) as srv:
        yield srv


def test_openapi_fuzz(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    # The event stream never ends by design; it is tested in test_server_native.
    schema = schema.exclude(path="/api/events")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 20
    failures = []
    for op in operations:

        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=op.as_strategy())
        def run(case):
            case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=120)

        try:
            run()
        except Exception as exc:  # collect all operations' failures, report them together
            failures.append(f"{op.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_successful_responses_match_the_schema(server):
    """Random data rarely makes a valid job, so the success paths are also called explicitly."""
    import base64
    import io
    import time

    from PIL import Image

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    op = schema.find_operation_by_label

    def call(label, **kw):
        resp = op(label).Case(**kw).call_and_validate(base_url=server.url, checks=CHECKS, timeout=120)
        assert resp.status_code < 300, (label, resp.text)
        return resp

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 90)).save(buf, format="PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    small = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1}
    t2i = call("POST /sdapi/v1/txt2img", body=small).json()
    call(
        "POST /sdapi/v1/img2img",
        body={**small, "init_images": [init], "mask": init, "denoising_strength": 0.5},
    )
    call("POST /sdapi/v1/png-info", body={"image": t2i["images"][0]})
    call("POST /sdapi/v1/options", body={"show_progress_every_n_steps": 1})
    job = call(
        "POST /api/jobs", body={"recipe": {"prompt": "x", "size": "64x64", "steps": 2}, "init_image": init}
    ).json()
    while job["status"] in ("queued", "running"):
        time.sleep(0.05)
        job = call("GET /api/jobs/{job_id}", path_parameters={"job_id": job["id"]}).json()
    call("GET /api/outputs/{path}", path_parameters={"path": job["outputs"][0]})
    call("GET /api/jobs", query={"status": "done", "limit": 2, "offset": 0})
    call("DELETE /api/jobs/{job_id}", path_parameters={"job_id": job["id"]})
