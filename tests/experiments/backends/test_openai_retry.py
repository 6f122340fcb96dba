"""experiments/backends/openai_retry.py: what a failure means, how long to wait, the retry loop.

No server and no sleeping: errors are the openai client's own exception
objects, built here, and the loop's waits go to a stop event that records them.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time

import httpx2
import openai
import pytest

from experiments.backends.openai_profiles import profile_of
from experiments.backends.openai_retry import (MAX_FREE_WAITS, Failure, RequestPacer, Retrier, RetriesExhausted,
                                               RetryPolicy, ServerDown, ServerRefused, classify, field_named_in,
                                               is_permanent, refusal_message, retry_after_seconds, server_detail)
from experiments.backends.server_waiter import Outcome
from experiments.config import ConfigError

URL = "http://127.0.0.1:9/v1/chat/completions"
WHERE = "server http://127.0.0.1:9/v1 (profile vllm, model 'm')"


def status_error(status: int, message: str = "", headers: dict | None = None, param: str | None = None):
    """The error the openai client raises for an HTTP error (its body is the response's "error" object)."""
    response = httpx2.Response(status, headers=headers or {}, request=httpx2.Request("POST", URL))
    body = {"message": message, "type": "invalid_request_error", "param": param}
    return openai.APIStatusError(f"Error code: {status} - {message}", response=response, body=body)


def connection_error():
    return openai.APIConnectionError(request=httpx2.Request("POST", URL))


def timeout_error():
    return openai.APITimeoutError(request=httpx2.Request("POST", URL))


# ---- classification ---------------------------------------------------------

@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_a_client_error_is_permanent(status):
    failure = classify(status_error(status, "bad"), profile_of("vllm"))
    assert failure == Failure(permanent=True, reason=f"HTTP {status}: bad", retry_after=None)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_a_rate_limit_timeout_conflict_or_server_error_is_transient(status):
    failure = classify(status_error(status, "busy"), profile_of("vllm"))
    assert failure == Failure(False, f"HTTP {status}: busy", unreachable=status in (502, 503))


def test_dropped_connections_and_timeouts_are_transient_and_only_a_connection_error_may_mean_the_server_is_gone():
    assert classify(connection_error(), profile_of("vllm")) == \
        Failure(False, "APIConnectionError: Connection error.", unreachable=True)
    # A timeout is a slow server, not a missing one: its retries as before.
    assert classify(timeout_error(), profile_of("vllm")) == Failure(False, "APITimeoutError: Request timed out.")


def test_a_connection_errors_reason_carries_the_transports_words():
    request = httpx2.Request("POST", URL)
    try:
        raise openai.APIConnectionError(request=request) from httpx2.ConnectError("[Errno 111] Connection\nrefused")
    except openai.APIConnectionError as error:
        assert classify(error, profile_of("vllm")).reason == \
            "APIConnectionError: Connection error. (ConnectError: [Errno 111] Connection refused)"


def test_llama_servers_loading_answer_may_mean_a_restarting_server():
    failure = classify(status_error(503, "Loading model"), profile_of("llamacpp"))
    assert failure == Failure(False, "HTTP 503: Loading model", unreachable=True)


def test_a_transient_failure_carries_the_servers_retry_after_and_a_one_line_reason():
    failure = classify(status_error(429, "slow\n  down", headers={"Retry-After": "7"}), profile_of("vllm"))
    assert failure == Failure(False, "HTTP 429: slow down", 7.0)
    assert classify(status_error(503), profile_of("vllm")).reason == "HTTP 503"  # no message: the status alone
    long = classify(status_error(500, "x" * 500), profile_of("vllm")).reason
    assert long == "HTTP 500: " + "x" * 200


def test_only_the_openai_clients_transport_errors_are_classified():
    with pytest.raises(TypeError):
        classify(ValueError("a bug"), profile_of("vllm"))


@pytest.mark.parametrize("profile,status,message,permanent", [
    ("vllm", 400, "bad", True), ("vllm", 401, "key", True), ("vllm", 404, "model", True), ("vllm", 422, "x", True),
    ("vllm", 408, "slow", False), ("vllm", 409, "busy", False), ("vllm", 429, "rate", False),
    ("vllm", 500, "1 validation error: ...", False), ("vllm", 503, "busy", False),
    # llama-cpp-python's server answers 500 for a field out of its range.
    ("llamacpp", 500, "1 validation error:\n  {...}", True), ("llamacpp", 500, "2 validation errors: ...", True),
    ("llamacpp", 500, "CUDA out of memory", False), ("llamacpp", 503, "1 validation error", True),
])
def test_which_errors_are_permanent(profile, status, message, permanent):
    assert is_permanent(status, {"message": message}, profile_of(profile)) is permanent
    # The same, whether the body is the "error" object, the whole body or plain text.
    assert is_permanent(status, {"error": {"message": message}}, profile_of(profile)) is permanent
    assert is_permanent(status, message, profile_of(profile)) is permanent


# ---- the words of an error ----------------------------------------------------

@pytest.mark.parametrize("body,message,field", [
    ({"error": {"message": "Unknown parameter: top_k", "param": "top_k", "type": "invalid_request_error"}},
     "Unknown parameter: top_k", "top_k"),
    ({"detail": [{"loc": ["body", "mirostat_tau"], "msg": "Input should be less than or equal to 10", "input": 20}]},
     "mirostat_tau: Input should be less than or equal to 10 (got 20)", "mirostat_tau"),
    ({"detail": "Invalid API key"}, "Invalid API key", None),
    ("plain text", "plain text", None),
    (None, "", None),
])
def test_server_error_bodies_give_a_message_and_the_refused_field(body, message, field):
    assert server_detail(body) == (message, field)


def test_pydantic_errors_reported_in_a_message_name_the_field():
    message = ("1 validation error:\n  {'type': 'less_than_equal', 'loc': ('body', 'mirostat_tau'), "
               "'msg': 'Input should be less than or equal to 10', 'input': 20, 'ctx': {'le': 10.0}}")
    assert server_detail({"message": message, "type": "internal_server_error", "param": None}) == \
        ("mirostat_tau: Input should be less than or equal to 10 (got 20)", "mirostat_tau")


# The bodies as the servers send them; the openai client hands over the "error" object.
LLAMA_SERVER_400 = {"error": {"code": 400, "message": "Field 'repeat_last_n': Value must be between 0 <= value <= "
                                                      "2147483647, but got -1", "type": "invalid_request_error"}}
VLLM_MAX_TOKENS_400 = {"object": "error", "message": "max_tokens must be at least 1, got 0.",
                       "type": "BadRequestError", "param": None, "code": 400}
VLLM_CONTEXT_400 = {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
                    "message": "This model's maximum context length is 2048 tokens. However, you requested 4000 "
                               "output tokens and your prompt contains at least 12 input tokens, for a total of at "
                               "least 4012 tokens. Please reduce the length of the input prompt or the number of "
                               "requested output tokens."}


def body_error(status: int, body: dict):
    response = httpx2.Response(status, request=httpx2.Request("POST", URL))
    error = body.get("error", body)
    return openai.APIStatusError(f"Error code: {status} - {body}", response=response, body=error)


@pytest.mark.parametrize("body,profile,field", [
    (LLAMA_SERVER_400, "llamacpp", "repeat_last_n"),
    (LLAMA_SERVER_400["error"], "llamacpp", "repeat_last_n"),
    (VLLM_MAX_TOKENS_400, "vllm", "max_tokens"),
    (VLLM_CONTEXT_400, "vllm", "max_tokens"),
    ({"message": "repeat_penalty must be > 0, got -1.0", "param": None}, "llamacpp", "repeat_penalty"),
    ({"message": "temperature must be non-negative, got -0.5.", "param": None}, "vllm", "temperature"),
    ({"detail": "min_p out of range"}, "vllm", "min_p"),
    ("top_k must be -1 (disable), or at least 1, got 0.", "vllm", "top_k"),
    # The earliest field named wins; a name inside a longer word is no match.
    ({"message": "top_p must be in (0, 1] when top_k is set", "param": None}, "vllm", "top_p"),
    ({"message": "unknown field my_top_k_extra", "param": None}, "vllm", None),
    ({"message": "Invalid request", "param": None}, "vllm", None),
    # OpenAI's param, where the server fills it in, comes first.
    ({"message": "max_tokens is too large", "param": "messages"}, "vllm", "messages"),
])
def test_a_400_names_its_field_when_the_server_leaves_param_empty(body, profile, field):
    assert server_detail(body, profile_of(profile))[1] == field


def test_the_field_prefix_needs_no_profile_and_the_guess_does():
    message = LLAMA_SERVER_400["error"]["message"]
    assert field_named_in(message, None) == "repeat_last_n"
    assert server_detail(LLAMA_SERVER_400)[0] == message
    assert field_named_in("max_tokens must be at least 1, got 0.", None) is None


def test_a_refused_field_is_named_with_its_harness_parameter_and_never_retried():
    call = scripted(body_error(400, {"error": {"code": 400, "type": "invalid_request_error",
                                               "message": "Field 'repeat_penalty': Value must be > 0"}}), "never")
    with pytest.raises(ServerRefused) as error:
        retrier(profile="llamacpp").call(call, RecordingStop(), sent={"repeat_penalty": -1.0})
    assert call.count == 1
    assert str(error.value) == (f"{WHERE} refused the request: HTTP 400: Field 'repeat_penalty': Value must be > 0 "
                                "[parameter repeat_penalty = sampling.repetition_penalty]; "
                                'sent {"repeat_penalty":-1.0}')
    vllm = refusal_message(body_error(400, VLLM_CONTEXT_400), WHERE, profile_of("vllm"), "K")
    assert vllm.startswith(f"{WHERE} refused the request: HTTP 400: This model's maximum context length is 2048")
    assert vllm.endswith("requested output tokens. [parameter max_tokens]")
    assert refusal_message(body_error(400, VLLM_MAX_TOKENS_400), WHERE, profile_of("vllm"), "K") == \
        f"{WHERE} refused the request: HTTP 400: max_tokens must be at least 1, got 0. [parameter max_tokens]"


def test_a_refusal_is_one_line_naming_the_key_variable_the_harness_parameter_and_the_body():
    key = refusal_message(status_error(401, "Invalid API key"), WHERE, profile_of("vllm"), "MY_KEY")
    assert key == f"{WHERE} refused the API key from $MY_KEY (backend.api_key_env): HTTP 401: Invalid API key"
    model = refusal_message(status_error(404, ""), WHERE, profile_of("vllm"), "MY_KEY")
    assert model == f"{WHERE} does not know the model or endpoint: HTTP 404: Error code: 404 -"
    bad = refusal_message(status_error(400, "repeat_penalty\nout of range", param="repeat_penalty"), WHERE,
                          profile_of("llamacpp"), "MY_KEY", sent={"repeat_penalty": 9.0, "seed": 1})
    assert bad == (f"{WHERE} refused the request: HTTP 400: repeat_penalty out of range "
                   '[parameter repeat_penalty = sampling.repetition_penalty]; sent {"repeat_penalty":9.0,"seed":1}')
    same_name = refusal_message(status_error(400, "no", param="top_k"), WHERE, profile_of("vllm"), "K")
    assert same_name.endswith("HTTP 400: no [parameter top_k]")


# ---- how long to wait -----------------------------------------------------------

class Highest(random.Random):
    """Jitter at its top: the nominal delay."""

    def uniform(self, a, b):
        return b


class Lowest(random.Random):
    def uniform(self, a, b):
        return a


def test_backoff_doubles_from_the_base_up_to_the_cap_with_jitter_down_to_half():
    policy = RetryPolicy(max_retries=10, base_s=1.0, max_s=60.0)
    assert [policy.delay(retry, None, Highest()) for retry in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [policy.delay(retry, None, Lowest()) for retry in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_retry_after_longer_than_the_backoff_wins_and_a_shorter_one_does_not_shorten_it():
    policy = RetryPolicy(max_retries=6, base_s=1.0, max_s=60.0)
    assert policy.delay(0, 30.0, Highest()) == 30.0
    assert policy.delay(5, 0.1, Highest()) == 32.0
    assert policy.delay(2, 0.0, Lowest()) == 2.0


def test_backoff_jitter_spreads_clients_that_failed_together():
    policy, rng = RetryPolicy(max_retries=6, base_s=1.0, max_s=8.0), random.Random(0)
    for retry in range(6):
        nominal = min(8.0, 2.0 ** retry)
        delays = [policy.delay(retry, None, rng) for _ in range(200)]
        assert nominal / 2 <= min(delays) and max(delays) <= nominal and len(set(delays)) > 100
    assert all(policy.delay(0, 5.0, rng) >= 5.0 for _ in range(50))


@pytest.mark.parametrize("headers,seconds", [
    ({"retry-after": "3"}, 3.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "0"}, 0.0),
    ({"retry-after": "-4"}, 0.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "3"}, 0.25),  # the finer one first
    ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # an unreadable one is skipped
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: at once
    ({"retry-after": "soon"}, None),
    ({"retry-after": ""}, None),
    ({}, None),
    (None, None),
])
def test_retry_after_headers(headers, seconds):
    assert retry_after_seconds(headers) == seconds


def test_retry_after_as_an_http_date_and_in_the_clients_case_insensitive_headers():
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= retry_after_seconds({"retry-after": in_ten}) <= 10
    assert retry_after_seconds(httpx2.Headers({"Retry-After": "2"})) == 2.0
    assert retry_after_seconds(httpx2.Headers({"Retry-After-Ms": "1500"})) == 1.5


def test_the_pacer_spaces_request_starts():
    pacer, stop = RequestPacer(per_minute=1200), threading.Event()  # one every 0.05 s
    started = time.monotonic()
    for _ in range(5):
        pacer.wait(stop)
    assert time.monotonic() - started >= 0.19
    unlimited = RequestPacer(None)
    started = time.monotonic()
    for _ in range(100):
        unlimited.wait(stop)
    assert time.monotonic() - started < 0.05


def test_a_stop_cuts_the_pacers_wait_short():
    pacer, stop = RequestPacer(per_minute=1), threading.Event()
    pacer.wait(stop)  # the first starts at once
    stop.set()
    started = time.monotonic()
    pacer.wait(stop)  # the next would wait a minute
    assert time.monotonic() - started < 1


# ---- the loop ---------------------------------------------------------------------

class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are recorded."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.is_set()


def scripted(*outcomes):
    """A call that raises or returns each outcome in turn, counting its calls."""
    outcomes = list(outcomes)

    def call():
        call.count += 1
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    call.count = 0
    return call


def retrier(max_retries: int = 3, profile: str = "vllm", waiter=None) -> Retrier:
    return Retrier(RetryPolicy(max_retries, base_s=1.0, max_s=60.0), RequestPacer(None), profile_of(profile), WHERE,
                   "MY_KEY", rng=Highest(), waiter=waiter)


def test_transient_errors_are_retried_with_backoff_and_logged(caplog):
    call, stop = scripted(status_error(503, "busy"), connection_error(), "ok"), RecordingStop()
    with caplog.at_level(logging.WARNING):
        assert retrier().call(call, stop) == "ok"
    assert call.count == 3 and stop.waits == [1.0, 2.0]
    assert [record.getMessage() for record in caplog.records] == [
        f"{WHERE}: HTTP 503: busy; retry 1 of 3 in 1.0 s",
        f"{WHERE}: APIConnectionError: Connection error.; retry 2 of 3 in 2.0 s"]
    # Logged under the backend's name, as before the retries had a module of their own.
    assert {record.name for record in caplog.records} == {"experiments.backends.openai_backend"}


def test_the_wait_honours_retry_after():
    call, stop = scripted(status_error(429, "rate", headers={"Retry-After": "20"}), "ok"), RecordingStop()
    assert retrier().call(call, stop) == "ok" and stop.waits == [20.0]


def test_a_permanent_error_is_raised_at_once_as_a_refusal_with_the_body_sent():
    call = scripted(status_error(400, "bad top_k", param="top_k"), "never")
    with pytest.raises(ServerRefused) as error:
        retrier().call(call, RecordingStop(), sent={"top_k": 50})
    assert call.count == 1 and isinstance(error.value, ConfigError)  # exit code 2, one line
    assert str(error.value) == (f"{WHERE} refused the request: HTTP 400: bad top_k [parameter top_k]; "
                                'sent {"top_k":50}')
    assert isinstance(error.value.__cause__, openai.APIStatusError)


def test_a_call_failing_after_every_retry_raises_retries_exhausted_with_the_last_reason():
    call, stop = scripted(*[status_error(503, "busy")] * 3), RecordingStop()
    with pytest.raises(RetriesExhausted) as error:
        retrier(max_retries=2).call(call, stop)
    assert call.count == 3 and stop.waits == [1.0, 2.0]  # no wait after the last attempt
    assert str(error.value) == "HTTP 503: busy (gave up after 3 attempt(s) over 0.0 s)"


def test_no_retries_once_the_run_stops_or_the_server_is_marked_down():
    stop = RecordingStop()
    stop.set()
    call = scripted(timeout_error(), "never")
    with pytest.raises(RetriesExhausted, match=r"^APITimeoutError: Request timed out\. \(gave up after 1 attempt"):
        retrier().call(call, stop)
    assert call.count == 1

    down = ServerDown()
    assert down.set("server gone") and not down.set("again") and down.reason == "server gone"
    call = scripted(status_error(502), "never")
    with pytest.raises(RetriesExhausted, match="gave up after 1 attempt"):
        retrier().call(call, RecordingStop(), server_down=down)
    assert call.count == 1


def test_other_exceptions_are_not_retried():
    call = scripted(ValueError("a bug"), "never")
    with pytest.raises(ValueError, match="a bug"):
        retrier().call(call, RecordingStop())
    assert call.count == 1


def test_zero_retries_means_one_attempt():
    call = scripted(status_error(503))
    with pytest.raises(RetriesExhausted, match=r"^HTTP 503 \(gave up after 1 attempt\(s\)"):
        retrier(max_retries=0).call(call, RecordingStop())


# ---- the loop with a server waiter ------------------------------------------------

class FakeWaiter:
    """Answers each wait from a script of outcomes, recording the reasons."""

    gave_up_text = "still unreachable after waiting 300 s (backend.server_wait_s)"

    def __init__(self, *outcomes: Outcome):
        self.outcomes, self.reasons = list(outcomes), []

    def wait(self, reason, stop):
        self.reasons.append(reason)
        return self.outcomes.pop(0)


def test_a_server_that_comes_back_is_sent_the_request_again_without_spending_a_retry(caplog):
    waiter, stop = FakeWaiter(Outcome.BACK, Outcome.BACK), RecordingStop()
    call = scripted(connection_error(), status_error(503, "Loading model"), "ok")
    with caplog.at_level(logging.WARNING):
        assert retrier(max_retries=0, waiter=waiter).call(call, stop) == "ok"
    assert call.count == 3 and stop.waits == [] and caplog.records == []  # no backoff, no retry line
    assert waiter.reasons == ["APIConnectionError: Connection error.", "HTTP 503: Loading model"]


def test_a_server_still_down_after_the_wait_gives_up_at_once_saying_it_waited():
    waiter, stop = FakeWaiter(Outcome.GAVE_UP), RecordingStop()
    call = scripted(connection_error(), "never")
    with pytest.raises(RetriesExhausted) as error:
        retrier(max_retries=6, waiter=waiter).call(call, stop)
    assert call.count == 1 and stop.waits == []  # the retries are not spent after the wait
    assert str(error.value).startswith("APIConnectionError: Connection error.; still unreachable after waiting 300 s "
                                       "(backend.server_wait_s) (gave up after 1 attempt(s) over ")


def test_a_server_that_answers_at_once_makes_the_failure_an_ordinary_retry():
    waiter, stop = FakeWaiter(Outcome.UP), RecordingStop()
    call = scripted(status_error(503, "overloaded"), "ok")
    assert retrier(waiter=waiter).call(call, stop) == "ok"
    assert call.count == 2 and stop.waits == [1.0]


def test_timeouts_and_500s_are_not_waited_for():
    waiter = FakeWaiter()
    call = scripted(timeout_error(), status_error(500, "oops"), status_error(429, "slow"), "ok")
    assert retrier(waiter=waiter).call(call, RecordingStop()) == "ok" and waiter.reasons == []


def test_a_stop_during_the_wait_ends_the_call():
    call = scripted(connection_error(), "never")
    with pytest.raises(RetriesExhausted, match="gave up after 1 attempt"):
        retrier(waiter=FakeWaiter(Outcome.STOPPED)).call(call, RecordingStop())
    assert call.count == 1


def test_free_waits_are_bounded_per_call_then_the_retry_budget_is_spent():
    waiter, stop = FakeWaiter(*[Outcome.BACK] * MAX_FREE_WAITS), RecordingStop()
    call = scripted(*[connection_error()] * (MAX_FREE_WAITS + 3))
    with pytest.raises(RetriesExhausted, match=rf"gave up after {MAX_FREE_WAITS + 3} attempt\(s\)"):
        retrier(max_retries=2, waiter=waiter).call(call, stop)
    assert len(waiter.reasons) == MAX_FREE_WAITS and stop.waits == [1.0, 2.0]


def test_no_wait_once_the_server_is_marked_down():
    down, waiter = ServerDown(), FakeWaiter()
    down.set("gone")
    with pytest.raises(RetriesExhausted):
        retrier(waiter=waiter).call(scripted(connection_error()), RecordingStop(), server_down=down)
    assert waiter.reasons == []
