"""experiments/backends/openai_backend.py: the class that ties profiles, requests, retries and workers together.

The openai client's transport is httpx's MockTransport (no socket); the real
server runs in tests/integration/test_openai_backend.py.
"""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from experiments.backends.base import FailedStory, GeneratedStory, StoryRequest
from experiments.backends.openai_backend import OpenAIBackend, ServerRefused, ServerUnreachable
from experiments.backends.openai_retry import RetryPolicy
from experiments.config import OpenAIBackendConfig, PromptConfig, SamplingConfig

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


def test_a_server_that_cannot_be_reached_is_named_and_nothing_is_sent(monkeypatch):
    def handler(request):
        raise httpx2.ConnectError("connection refused", request=request)

    real = openai.OpenAI
    monkeypatch.setattr(openai, "OpenAI", lambda **kwargs: real(
        **kwargs, http_client=httpx2.Client(transport=httpx2.MockTransport(handler))))
    backend, _ = backend_for(max_retries=1)
    with pytest.raises(ServerUnreachable, match=r"^cannot reach server http://server\.test/v1 .*gave up after 2 "
                                                r"attempt\(s\).*Nothing was generated\.$"):
        backend.load()
