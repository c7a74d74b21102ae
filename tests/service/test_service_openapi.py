"""GET /api/v1/openapi.json describes every /api/v1 route, and the app keeps to it (schemathesis)."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta, timezone

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from aiops.config import AiopsConfig
from aiops.service.actions import ActionRunRequest
from aiops.service.api import ExplainRequest
from aiops.service.app import create_app
from aiops.store import Store
from aiops.types import AnomalyEvent

TOKEN = "oas-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)


@Request.application
def _receiver(request: Request) -> Response:
    return Response("{}", content_type="application/json")


def build_app(tmp_path, receiver_url: str):
    store = Store.open(f"sqlite:///{tmp_path}/aiops.db")
    for i, watch in enumerate(("rps", "rps", "disk")):
        eid = store.upsert_event(AnomalyEvent(
            watch=watch, series_id=f'm{{i="{i}"}}', start=T0 + timedelta(hours=i), end=None if i else T0,
            peak_time=T0, peak_score=7.0, severity="warning", direction="spike", observed=1.0, expected=float("nan"),
            expected_lower=0.0, expected_upper=0.5, labels={"i": str(i)},
        ))
        store.add_explanation(subject_kind="event", subject_ref=f"event:{eid}", watch=watch, backend="template",
                              evidence={"subject": "m", "items": []}, explanation={"title": "t", "summary": "s"},
                              markdown="t")
    cfg = AiopsConfig.model_validate({
        "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
        "source": {"kind": "synthetic", "synthetic": {"days": 1, "end": "2026-11-22T12:00:00Z"}},
        "service": {"token": TOKEN, "scheduler_required": False},
        "watches": [{"name": "rps", "query": 'http_requests_per_second{service="cart"}', "step": "5m",
                     "actions": [{"name": "restart", "url": receiver_url, "timeout": "2s"}]},
                    {"name": "disk", "query": "node_filesystem_avail_bytes"}],
        "explain": {"kb_index_dir": str(tmp_path / "kb")},
    })
    return create_app(cfg, store)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    server = make_server("127.0.0.1", 0, _receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield build_app(tmp_path_factory.mktemp("oas"), f"http://127.0.0.1:{server.server_port}/run")
    server.shutdown()
    thread.join(5)


def flask_paths(app) -> dict[str, set[str]]:
    """Routes of the app under /api/v1 (plus /healthz, /readyz) in OpenAPI form: path -> methods."""
    out: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") or rule.rule in ("/healthz", "/readyz"):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            out.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    return out


def test_every_api_route_is_documented_with_its_methods(app):
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    routes = flask_paths(app)
    assert {"/api/v1/anomalies", "/api/v1/actions/{watch}/{name}/runs", "/api/v1/dead-letters"} <= set(routes)
    for path, methods in routes.items():
        assert path in doc["paths"], f"{path} is served but not in the OpenAPI document"
        assert methods == set(doc["paths"][path]), f"{path}: served {methods}, documented {set(doc['paths'][path])}"
    assert {"/healthz", "/readyz"} <= set(doc["paths"])


def test_request_bodies_come_from_the_validating_models(app):
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    for model in (ExplainRequest, ActionRunRequest):
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        assert schemas[model.__name__] == expected
    body = doc["paths"]["/api/v1/explanations/{explanation_id}/feedback"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/FeedbackRequest"}
    assert schemas["FeedbackEdit"]["required"] == ["verdict", "text"]
    write_ops = [op for item in doc["paths"].values() for m, op in item.items() if m == "post"]
    assert write_ops and all(op["security"] == [{"bearer": []}] for op in write_ops)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


# The semantic rules a JSON Schema cannot state (a PromQL query the source accepts, a range
# that holds data, end after start) answer 4xx to schema-valid input there; every other check
# (no 5xx, documented status, content type and body shape, bad input rejected, auth enforced) holds.
_SEMANTIC = {("POST", "/api/v1/explain")}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case):
    excluded = [positive_data_acceptance] if (case.operation.method.upper(), case.operation.path) in _SEMANTIC else []
    case.call_and_validate(headers=AUTH, excluded_checks=excluded)
