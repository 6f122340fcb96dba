"""experiments/backends/openai_backend.py: the class that ties profiles, requests, retries and workers together.

The openai client's transport is httpx's MockTransport (no socket); the real
server runs in tests/integration/test_openai_backend.py.
"""

from __future__ import annotations

import json
import logging
import threading

import httpx2
import openai
import pytest

from experiments.backends.base import FailedStory, GeneratedStory, StoryRequest
from experiments.backends.openai_backend import OpenAIBackend, ServerRefused, ServerUnreachable
from experiments.backends.openai_retry import RetryPolicy
from experiments.config import ConfigError, OpenAIBackendConfig, PromptConfig, SamplingConfig

CHAT = PromptConfig(id="story", messages=[{"role": "user", "content": "Write a story."}])
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "test", "created": 0}]}


def completion(body: dict) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "length", "logprobs": None,
                         "message": {"role": "assistant", "content": f"story {body['seed']}"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}


@pytest.fixture
def server(monkeypatch):
    """Answers GET /models with model "m", each POST from ``server.script`` (status codes) and then 200."""
    posts: list[dict] = []
    script: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            return httpx2.Response(200, json=MODELS)
        body = json.loads(request.content)
        posts.append(body)
        status = script.pop(0) if script else 200
        if status != 200:
            return httpx2.Response(status, json={"error": {"message": f"scripted {status}", "param": "top_k"}})
        return httpx2.Response(200, json=completion(body))

    real = openai.OpenAI
    monkeypatch.setattr(openai, "OpenAI", lambda **kwargs: real(
        **kwargs, http_client=httpx2.Client(transport=httpx2.MockTransport(handler))))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    handler.posts, handler.script = posts, script
    return handler


def backend_for(**overrides) -> tuple[OpenAIBackend, list[StoryRequest]]:
    config = dict(base_url="http://server.test/v1", model="m", profile="vllm", backoff_base_s=0.01,
                  backoff_max_s=0.05, max_concurrency=1)
    backend = OpenAIBackend(OpenAIBackendConfig(**{**config, **overrides}))
    prompt = backend.prompt_text(CHAT)
    return backend, [StoryRequest(f"s{i}", i, 100 + i, prompt) for i in range(4)]


def test_the_retry_settings_come_from_the_config():
    backend, _ = backend_for(max_retries=3, backoff_base_s=0.5, backoff_max_s=9.0, requests_per_minute=30)
    assert backend.retrier.policy == RetryPolicy(max_retries=3, base_s=0.5, max_s=9.0)
    assert backend.retrier.pacer.interval == 2.0
    assert backend.retrier.where == "server http://server.test/v1 (profile vllm, model 'm')"
    assert backend.retrier.api_key_env == "OPENAI_API_KEY"


def test_stories_are_generated_with_their_seeds_and_attempts(server):
    server.script.extend([503])
    backend, requests = backend_for()
    stories = list(backend.generate(requests, SamplingConfig(max_tokens=3)))
    assert all(isinstance(story, GeneratedStory) for story in stories)
    assert sorted(story.text for story in stories) == [f"story {100 + i}" for i in range(4)]
    assert [story.server_response["attempts"] for story in stories] == [2, 1, 1, 1]
    assert [post["seed"] for post in server.posts] == [100, 100, 101, 102, 103]


@pytest.mark.parametrize("concurrency,most", [(1, 1), (2, 2)])
def test_a_refusal_stops_the_run_before_another_request_is_sent(server, concurrency, most):
    server.script.extend([400])
    backend, requests = backend_for(max_concurrency=concurrency)
    with pytest.raises(ServerRefused, match=r"refused the request: HTTP 400: scripted 400 \[parameter top_k\]"):
        list(backend.generate(requests, SamplingConfig()))
    assert 1 <= len(server.posts) <= most  # the one refused, and those already in flight beside it


def test_once_a_story_exhausts_its_retries_the_rest_fail_unsent_and_the_next_setting_checks_first(server):
    server.script.extend([503, 503, 503])
    backend, requests = backend_for(max_retries=2)
    outcomes = list(backend.generate(requests, SamplingConfig()))
    assert all(isinstance(outcome, FailedStory) for outcome in outcomes) and len(server.posts) == 3
    assert outcomes[0].error.startswith("HTTP 503: scripted 503 (gave up after 3 attempt(s)")
    where = "server http://server.test/v1 (profile vllm, model 'm')"
    assert [outcome.error for outcome in outcomes[1:]] == [f"not sent: {where}: {outcomes[0].error}"] * 3
    assert all(isinstance(story, GeneratedStory) for story in backend.generate(requests, SamplingConfig()))


def use_handler(monkeypatch, handler) -> None:
    real = openai.OpenAI
    monkeypatch.setattr(openai, "OpenAI", lambda **kwargs: real(
        **kwargs, http_client=httpx2.Client(transport=httpx2.MockTransport(handler))))


@pytest.mark.parametrize("wait,expected", [
    (0, r"APIConnectionError: Connection error\. \(ConnectError: connection refused\) \(gave up after 2 "
        r"attempt\(s\)"),  # no waiting: the retries
    (0.2, r"APIConnectionError: Connection error\. \(ConnectError: connection refused\); still unreachable after "
          r"waiting 0\.2 s \(backend\.server_wait_s\) \(gave up after 1 attempt\(s\)"),
])
def test_a_server_that_cannot_be_reached_is_named_and_nothing_is_sent(monkeypatch, wait, expected):
    def handler(request):
        raise httpx2.ConnectError("connection refused", request=request)

    use_handler(monkeypatch, handler)
    backend, _ = backend_for(max_retries=1, server_wait_s=wait, server_poll_s=0.05)
    with pytest.raises(ServerUnreachable, match=r"^cannot reach server http://server\.test/v1 \(profile vllm, "
                                                rf"model 'm'\): {expected}.*Nothing was generated\.$"):
        backend.load()


# ---- a server that goes away and comes back ------------------------------------

class Restarting:
    """A mock server that refuses connections while ``down`` is set (GET /models included)."""

    def __init__(self):
        self.down = threading.Event()
        self.posts: list[dict] = []
        self.gets = 0
        self.on_post = lambda count: None  # called with the number of POSTs so far, before answering

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "GET":
            self.gets += 1
        if self.down.is_set():
            raise httpx2.ConnectError("connection refused", request=request)
        if request.method == "GET":
            return httpx2.Response(200, json=MODELS)
        body = json.loads(request.content)
        self.posts.append(body)
        self.on_post(len(self.posts))
        if self.down.is_set():  # went down while this request was in flight
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx2.Response(200, json=completion(body))


def test_a_server_restarting_mid_run_is_waited_for_and_no_retry_is_spent(monkeypatch, caplog):
    server = Restarting()
    # The second request finds the server dying under it; it is back 0.3 s later.
    server.on_post = lambda count: count == 2 and (server.down.set(),
                                                   threading.Timer(0.3, server.down.clear).start())
    use_handler(monkeypatch, server)
    backend, requests = backend_for(max_retries=0, server_wait_s=30, server_poll_s=0.05)
    with caplog.at_level(logging.INFO):
        stories = list(backend.generate(requests, SamplingConfig()))
    assert all(isinstance(story, GeneratedStory) for story in stories)
    assert sorted(story.request.seed for story in stories) == [100, 101, 102, 103]
    assert [post["seed"] for post in server.posts] == [100, 101, 101, 102, 103]  # 101 sent again, once
    assert [story.server_response["attempts"] for story in stories] == [1, 2, 1, 1]
    lines = [record.getMessage() for record in caplog.records]
    assert any("is unreachable (APIConnectionError: Connection error. (RemoteProtocolError: Server disconnected "
               "without sending a response.)); waiting up to 30 s" in line for line in lines), lines
    assert any("answers again after" in line and line.endswith("; resuming") for line in lines)
    assert not any("retry" in line for line in lines)  # max_retries=0, and none was needed


def test_the_model_check_waits_for_a_server_that_is_starting(monkeypatch):
    server = Restarting()
    server.down.set()
    threading.Timer(0.3, server.down.clear).start()
    use_handler(monkeypatch, server)
    backend, requests = backend_for(max_retries=0, server_wait_s=30, server_poll_s=0.05)
    backend.load()
    assert backend.identity()["server_model"]["id"] == "m" and server.gets >= 3
    assert len(list(backend.generate(requests, SamplingConfig()))) == 4


def test_past_the_wait_the_rest_fail_unsent_and_the_next_setting_looks_once_then_waits_again(monkeypatch):
    server = Restarting()
    server.on_post = lambda count: count == 2 and server.down.set()
    use_handler(monkeypatch, server)
    backend, requests = backend_for(max_retries=5, server_wait_s=0.5, server_poll_s=0.05)
    outcomes = list(backend.generate(requests, SamplingConfig()))
    assert [type(outcome) for outcome in outcomes] == [GeneratedStory] + [FailedStory] * 3
    assert "still unreachable after waiting 0.5 s (backend.server_wait_s) (gave up after 1 attempt(s)" in \
        outcomes[1].error
    assert all(outcome.error.startswith("not sent: ") for outcome in outcomes[2:]) and len(server.posts) == 2

    gets = server.gets
    assert all(isinstance(o, FailedStory) for o in backend.generate(requests, SamplingConfig()))
    assert server.gets == gets + 1  # one look, no second wait

    server.down.clear()
    server.on_post = lambda count: count == 4 and (server.down.set(),
                                                   threading.Timer(0.05, server.down.clear).start())
    # Back: the next setting runs, and a second outage is waited for again.
    assert all(isinstance(o, GeneratedStory) for o in backend.generate(requests, SamplingConfig()))


@pytest.mark.parametrize("status,answers", [(200, True), (404, True), (401, True), (503, False), (502, False)])
def test_the_probe_counts_any_answer_but_5xx_as_the_server_being_there(monkeypatch, status, answers):
    use_handler(monkeypatch, lambda request: httpx2.Response(status, json=MODELS if status == 200 else {}))
    backend, _ = backend_for()
    backend._client = openai.OpenAI(base_url="http://server.test/v1", api_key="k", max_retries=0)
    assert backend._answers() is answers


def test_the_wait_settings_come_from_the_config_and_zero_means_no_waiting():
    backend, _ = backend_for(server_wait_s=45, server_poll_s=0.5)
    assert backend.retrier.waiter is backend.waiter
    assert (backend.waiter.wait_s, backend.waiter.poll_s) == (45, 0.5)
    assert backend.waiter.where == "server http://server.test/v1 (profile vllm, model 'm')"
    assert backend_for(server_wait_s=0)[0].retrier.waiter is None
    defaults = OpenAIBackendConfig()
    assert (defaults.server_wait_s, defaults.server_poll_s) == (300.0, 2.0)


@pytest.mark.parametrize("overrides,field", [
    ({"server_wait_s": -1}, "backend.server_wait_s"),
    ({"server_wait_s": float("inf")}, "backend.server_wait_s"),
    ({"server_poll_s": 0}, "backend.server_poll_s"),
])
def test_out_of_range_wait_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is not allowed: a number of seconds"):
        OpenAIBackendConfig(**overrides)


@pytest.mark.parametrize("profile, concurrency, warned", [("vllm", 4, "is not batch-invariant"),
                                                          ("vllm", 1, None), ("llamacpp", 4, None),
                                                          ("ollama", 4, "is not known to be batch-invariant")])
def test_concurrent_requests_to_a_server_that_is_not_batch_invariant_are_warned_about(
        server, caplog, profile, concurrency, warned):
    backend, _ = backend_for(profile=profile, max_concurrency=concurrency)
    with caplog.at_level(logging.WARNING, logger="experiments.backends.openai_backend"):
        backend.load()
    lines = [r.getMessage() for r in caplog.records if "batch-invariant" in r.getMessage()]
    assert bool(lines) == bool(warned)
    if warned:
        assert len(lines) == 1 and warned in lines[0] and "backend.max_concurrency=1" in lines[0]
    assert backend.identity()["server_batch_invariant"] == {"vllm": False, "llamacpp": True, "ollama": None}[profile]
