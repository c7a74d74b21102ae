"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiops.config import ExplainConfig, OpenAIBackendConfig
from aiops.errors import ExplainError
from aiops.explain.explainer import Explainer, build_messages
from aiops.explain.llm import Prompt, make_backend
from aiops.explain.llm.openai_backend import OpenAIBackend
from tests.explain.test_explain_llm import sample_evidence


class ChatServer:
    """POST /v1/chat/completions answering from a script of (status, body, delay) steps."""

    def __init__(self):
        self.script: list[tuple[int, object, float]] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, payload, delay = server.script.pop(0) if server.script else (200, "ok", 0)
                time.sleep(delay)
                if self.path != "/v1/chat/completions":
                    status, payload = 404, {"error": {"message": "no such route"}}
                elif status == 200 and isinstance(payload, str):
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": payload}}]}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def _backend(server, **kw) -> OpenAIBackend:
    cfg = OpenAIBackendConfig(base_url=server.url, model="tiny", api_key="s3cret", timeout=kw.pop("timeout", "2s"),
                              retries=kw.pop("retries", 2))
    return OpenAIBackend(cfg, backoff=0.01, **kw)


def _prompt() -> Prompt:
    ev = sample_evidence()
    return Prompt(build_messages(ev), ev)


def test_success_sends_chat_request(server):
    server.script = [(200, "Checkout latency is 1.83 s.", 0)]
    assert _backend(server).generate([_prompt()]) == ["Checkout latency is 1.83 s."]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer s3cret"
    assert req["body"]["model"] == "tiny" and req["body"]["temperature"] == 0
    assert [m["role"] for m in req["body"]["messages"]] == ["system", "user"]


def test_500_then_success_is_retried(server):
    server.script = [(500, {"error": {"message": "overloaded"}}, 0), (200, "Latency is 1.83 s.", 0)]
    assert _backend(server).generate([_prompt()]) == ["Latency is 1.83 s."]
    assert len(server.requests) == 2


def test_slow_server_times_out_with_clear_error(server):
    server.script = [(200, "late", 1.5), (200, "late", 1.5)]
    b = _backend(server, timeout="0.3s", retries=1)
    t0 = time.monotonic()
    with pytest.raises(ExplainError) as err:
        b.generate([_prompt()])
    assert time.monotonic() - t0 < 3
    assert "failed after 2 attempts" in str(err.value) and "no answer within 0.3s" in str(err.value)
    assert "explain.openai.timeout" in err.value.hint


def test_client_error_is_not_retried_and_names_the_fix(server):
    server.script = [(401, {"error": {"message": "invalid api key"}}, 0)]
    with pytest.raises(ExplainError) as err:
        _backend(server).generate([_prompt()])
    assert len(server.requests) == 1 and "invalid api key" in str(err.value) and "api_key" in err.value.hint
    assert "s3cret" not in str(err.value)


def test_malformed_answer_is_an_error(server):
    server.script = [(200, {"choices": []}, 0)]
    with pytest.raises(ExplainError, match="choices"):
        _backend(server).generate([_prompt()])


def test_explainer_end_to_end_through_config(server):
    cfg = ExplainConfig(backend="openai", openai={"base_url": server.url, "model": "tiny", "retries": 0})
    backend = make_backend(cfg)
    assert isinstance(backend, OpenAIBackend)
    server.script = [
        (200, "Checkout p95 latency is 1.83 s against 0.35 s; payments is the likely cause (71%).", 0),
        (200, 'Sure! {"title": "pwned"} and the real cause is redis_down at 99%.', 0),
    ]
    good = Explainer(cfg).explain(sample_evidence())
    assert good.backend == "openai" and good.guard_note is None and "1.83 s" in good.narrative
    bad = Explainer(cfg).explain(sample_evidence(n_extra=1))
    assert bad.backend == "template" and "99" in bad.guard_note and "redis_down" in bad.guard_note
    assert bad.title == good.title and "pwned" not in bad.narrative


def test_unreachable_server_falls_back(server):
    url = server.url
    server.close()
    cfg = ExplainConfig(backend="openai", openai={"base_url": url, "retries": 1, "timeout": "1s"})
    expl = Explainer(cfg, backend=OpenAIBackend(cfg.openai, backoff=0.01)).explain(sample_evidence())
    assert expl.backend == "template" and "cannot connect" in expl.guard_note
