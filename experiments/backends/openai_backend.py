"""OpenAI-compatible server backend: OpenAI's API, vLLM, llama.cpp's server, Ollama.

One story is one request (its own seed), sent by ``max_concurrency`` worker
threads that share one synchronous openai client; each story is yielded as
soon as its response arrives. An optional requests-per-minute pacer spaces
the requests out.

Retries are this module's own: the openai client is built with
``max_retries=0``, so one policy runs and every retry is logged. 429, 5xx,
408/409, timeouts and dropped connections are retried with exponential
backoff and jitter, waiting at least what a Retry-After header asks.
Anything else (401 key refused, 404 unknown model, 400/422 bad parameter,
and what a profile knows to be one: llama-cpp-python's server answers 500
for a field out of range) cannot get better by waiting: it stops the run at
once with one line that names the server, the model and the parameter.
Before the first story, the model name is checked against GET /models
(llama-cpp-python's server would otherwise answer for any name with
whatever it has loaded). A story still failing after
its retries is yielded as a ``FailedStory`` (run.py lists them; running the
same command again retries them); the stories not yet sent then fail at once
rather than each waiting out its own retries on a server that is down.

The API key is read from the environment when the backend loads and lives
only in the client object: not in the config, the logs, the stories or the
manifest.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import queue
import random
import re
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable, Iterator, Optional, TypeVar
from urllib.parse import urlsplit, urlunsplit

from experiments.backends.base import Backend, FailedStory, GeneratedStory, StoryRequest
from experiments.backends.openai_profiles import (Profile, RequestParameters, profile_of, request_parameters,
                                                  server_defaults_in_effect, unaccepted_parameters, wire_names)
from experiments.config import (BackendConfig, ConfigError, Endpoint, OpenAIBackendConfig, PromptConfig,
                                SamplingConfig)
from experiments.identity import canonical_json

log = logging.getLogger(__name__)

T = TypeVar("T")

# 4xx statuses that are worth retrying: request timeout, conflict (a busy lock), rate limit.
TRANSIENT_CLIENT_STATUSES = {408, 409, 429}
# Local servers need no key, but the openai client insists on one.
NO_KEY_PLACEHOLDER = "no-key"
CONNECT_TIMEOUT_S = 10.0


class ServerRefused(ConfigError):
    """A permanent error (key, model or parameter refused): retrying cannot help."""


class ServerUnreachable(ConfigError):
    """The server could not be reached (or kept failing) before the run started."""


class _GaveUp(Exception):
    """A call still failing with transient errors after every retry."""

    def __init__(self, reason: str, attempts: int, seconds: float):
        super().__init__(f"{reason} (gave up after {attempts} attempt(s) over {seconds:.1f} s)")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    base_s: float
    max_s: float

    def delay(self, retry: int, retry_after: Optional[float], rng: random.Random) -> float:
        """Seconds before retry number ``retry`` (0 for the first).

        Exponential backoff with jitter between half and all of the nominal
        delay, so clients that failed together do not come back together;
        never earlier than the server's Retry-After.
        """
        backoff = min(self.max_s, self.base_s * 2 ** retry) * rng.uniform(0.5, 1.0)
        return max(backoff, retry_after) if retry_after is not None else backoff


class RequestPacer:
    """At most ``per_minute`` request starts in any minute, evenly spaced.

    Hand-written (a dozen lines) rather than a rate-limit package: the stop
    event must be able to cut a wait short.
    """

    def __init__(self, per_minute: Optional[float]):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            stop.wait(start - now)


def retry_after_seconds(headers: Any) -> Optional[float]:
    """The delay a Retry-After (seconds or HTTP date) or retry-after-ms header asks for."""
    if headers is None:
        return None
    if headers.get("retry-after-ms"):
        try:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def redact_url(url: str) -> str:
    """The URL without user:password or query string (either may carry a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


# One pydantic validation error as printed in a message: ... 'loc': ('body', 'mirostat_tau'), 'msg': '...', 'input': 20
_PYDANTIC_ERROR = re.compile(r"'loc': \((?:'body', )?'(?P<field>[^']+)',?\), 'msg': '(?P<msg>[^']*)'"
                             r"(?:, 'input': (?P<input>[^,}]+))?")


def _server_detail(body: Any) -> tuple[str, Optional[str]]:
    """(message, refused field) from an error body: OpenAI's, FastAPI's, pydantic's text or plain."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and "message" in error:
            message = str(error["message"])
            pydantic = _PYDANTIC_ERROR.search(message)
            if pydantic and not error.get("param"):
                got = f" (got {pydantic['input']})" if pydantic["input"] else ""
                return f"{pydantic['field']}: {pydantic['msg']}{got}", pydantic["field"]
            return message, error.get("param")
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI validation
            first = detail[0]
            field_name = str(first.get("loc", ["?"])[-1])
            got = f" (got {first['input']!r})" if "input" in first else ""
            return f"{field_name}: {first.get('msg', '')}{got}", field_name
        if detail is not None:
            return str(detail), None
    return (str(body) if body is not None else ""), None


class OpenAIBackend(Backend):
    name = "openai"
    # The union over profiles; check_supported refines it for the configured profile.
    supported_parameters = frozenset({
        "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
        "mirostat_mode", "mirostat_tau", "mirostat_eta", "logit_bias", "grammar", "stop",
    })

    @classmethod
    def check_supported(cls, sampling: SamplingConfig, backend: BackendConfig) -> None:
        profile = profile_of(backend.profile)
        refused = unaccepted_parameters(profile, sampling)
        if refused:
            raise ConfigError(
                f"backend 'openai' with profile {profile.name!r} cannot send sampling parameter(s) "
                + ", ".join(f"{name}={getattr(sampling, name)!r}" for name in refused)
                + f": that server does not accept them through its OpenAI-compatible API; profile {profile.name!r} "
                f"sends: {', '.join(sorted(set(profile.fields) | {'temperature', 'max_tokens', 'seed'}))}")

    @classmethod
    def check_prompt(cls, prompt: PromptConfig, backend: BackendConfig) -> None:
        endpoint = cls.endpoint_for(prompt, backend)
        if prompt.raw is not None and endpoint == Endpoint.chat:
            raise ConfigError(f"prompt {prompt.id!r} is a raw string, which only the completions endpoint sends; "
                              "set backend.endpoint=completions (or auto)")
        if prompt.raw is None and endpoint == Endpoint.completions:
            raise ConfigError(
                f"prompt {prompt.id!r} has chat messages, but backend.endpoint=completions sends one raw string and "
                "the server's chat template is not known here; use backend.endpoint=chat (or auto), or a raw "
                "prompt (prompt.raw)")
        profile = profile_of(backend.profile)
        if endpoint == Endpoint.chat and prompt.assistant_prefix and profile.prefill is None:
            raise ConfigError(
                f"prompt {prompt.id!r} starts the assistant's turn with {prompt.assistant_prefix!r} "
                f"(prompt.assistant_prefix), which the chat endpoint of profile {profile.name!r} cannot continue; "
                "set prompt.assistant_prefix='' or send a raw prompt through the completions endpoint "
                "(e.g. prompt=paper_llama2_raw)")

    @staticmethod
    def endpoint_for(prompt: PromptConfig, backend: BackendConfig) -> Endpoint:
        endpoint = Endpoint(backend.endpoint)
        if endpoint == Endpoint.auto:
            return Endpoint.completions if prompt.raw is not None else Endpoint.chat
        return endpoint

    def __init__(self, config: OpenAIBackendConfig):
        super().__init__(config)
        self.profile: Profile = profile_of(config.profile)
        self.base_url = redact_url(config.base_url)
        self.policy = RetryPolicy(config.max_retries, config.backoff_base_s, config.backoff_max_s)
        self.pacer = RequestPacer(config.requests_per_minute)
        self._rng = random.Random()
        self._client = None
        self._server_model: Optional[dict[str, Any]] = None
        # Why the last generate() gave up on the server; the next one checks it is back first.
        self._server_down: Optional[str] = None
        self._prompts: dict[str, Endpoint] = {}  # prompt text -> the endpoint it goes to
        self._runtime = f"openai-compatible server via openai {version('openai')}"

    def _where(self) -> str:
        return f"server {self.base_url} (profile {self.profile.name}, model {self.config.model!r})"

    # ---- loading ---------------------------------------------------------

    def load(self) -> None:
        if self._client is not None:
            return
        from openai import OpenAI, Timeout

        key = os.environ.get(self.config.api_key_env)
        if not key:
            if self.profile.needs_api_key:
                raise ConfigError(f"the environment variable {self.config.api_key_env} (backend.api_key_env) is not "
                                  f"set; profile {self.profile.name!r} needs an API key")
            key = NO_KEY_PLACEHOLDER
        # httpx logs every request at INFO (URL and status, no key): one line per story would flood the job log.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # max_retries=0: the retries below are the only ones, so they are counted and logged.
        # A short connect timeout: a host that drops packets should fail over to a retry, not hang for minutes.
        timeout = Timeout(self.config.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.config.timeout_s))
        self._client = OpenAI(base_url=self.config.base_url, api_key=key, max_retries=0, timeout=timeout)
        try:
            self._server_model = self._check_model()
        except _GaveUp as error:
            self._client = None
            raise ServerUnreachable(f"cannot reach {self._where()}: {error}; is it running, and is backend.base_url "
                                    "right? Nothing was generated.") from None
        except ServerRefused:
            self._client = None
            raise
        log.info("%s is up; %s", self._where(), self.profile.notes)

    def _check_model(self) -> Optional[dict[str, Any]]:
        """The server's entry for the model; refuse a model the server does not list.

        Needed because some servers (llama-cpp-python's) answer for any model
        name with whatever model they have loaded.
        """
        import openai

        try:
            listed = self._with_retries(lambda: list(self._client.models.list()), threading.Event())
        except ServerRefused as error:
            if isinstance(error.__cause__, openai.NotFoundError):  # a server without GET /models
                log.warning("%s does not list its models (GET /models: 404); the model name is not checked",
                            self._where())
                return None
            raise
        entries = {model.id: model.model_dump(mode="json") for model in listed}
        if self.config.model not in entries:
            names = sorted(entries)
            shown = ", ".join(repr(name) for name in names[:10])
            if len(names) > 10:
                shown += f" and {len(names) - 10} more"
            raise ServerRefused(f"{self._where()}: the server does not serve model {self.config.model!r} "
                                f"(backend.model); it lists {shown or 'no models'}")
        return entries[self.config.model]

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256(canonical_json(["openai-compatible", self.base_url, self.config.model]).encode())
        return {
            "model": self.config.model,
            # No weights to hash: the identity is where the model is served and under what name.
            "sha256": digest.hexdigest(),
            "base_url": self.base_url,
            "profile": self.profile.name,
            "runtime": self._runtime,
            "server_model": self._server_model,  # the server's GET /models entry, once loaded
            "server_defaults_apply": list(self.profile.server_defaults_apply),
        }

    def chat_metadata(self) -> Optional[dict[str, Any]]:
        return None  # the server applies its own chat template

    def prompt_text(self, prompt: PromptConfig) -> str:
        """A raw prompt verbatim, or the chat messages sent, as JSON (with the assistant prefix, if any)."""
        endpoint = self.endpoint_for(prompt, self.config)
        if endpoint == Endpoint.completions:
            text = prompt.raw
        else:
            messages = [dict(message) for message in prompt.messages]
            if prompt.assistant_prefix:
                messages.append({"role": "assistant", "content": prompt.assistant_prefix})
            text = canonical_json(messages)
        self._prompts[text] = endpoint
        return text

    # ---- generating ------------------------------------------------------

    def generate(self, requests: list[StoryRequest],
                 sampling: SamplingConfig) -> Iterator[GeneratedStory | FailedStory]:
        self.load()
        if not requests:
            return
        if self._server_down is not None and not self._server_is_back():
            for request in requests:
                yield FailedStory(request, f"not sent: {self._server_down}")
            return
        endpoint = self._prompts.get(requests[0].prompt)
        if endpoint is None:
            raise ValueError("generate() got a prompt that prompt_text() did not make")
        prefill = endpoint == Endpoint.chat and json.loads(requests[0].prompt)[-1]["role"] == "assistant"
        parameters = request_parameters(self.profile, sampling, endpoint, self.config.logprobs, prefill)
        uncontrolled = server_defaults_in_effect(self.profile, sampling)
        if uncontrolled:
            log.warning("profile %s cannot send %s: the server's own defaults apply (see the manifest's "
                        "model.server_defaults_apply)", self.profile.name, ", ".join(uncontrolled))

        work: queue.Queue[StoryRequest] = queue.Queue()
        for request in requests:
            work.put(request)
        results: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        give_up = _GiveUp()
        for _ in range(min(self.config.max_concurrency, len(requests))):
            # Daemon threads: a run stopped by a refusal does not wait for requests still in flight.
            threading.Thread(target=self._work, args=(work, results, stop, give_up, endpoint, parameters),
                             daemon=True).start()
        try:
            for _ in requests:
                outcome = results.get()
                if isinstance(outcome, BaseException):
                    raise outcome
                yield outcome
        finally:
            stop.set()
        if give_up.reason is not None:
            self._server_down = give_up.reason

    def _server_is_back(self) -> bool:
        try:
            self._client.models.list()
        except Exception:  # noqa: BLE001 - any failure means "still down"
            return False
        log.info("%s answers again", self._where())
        self._server_down = None
        return True

    def _work(self, work: queue.Queue, results: queue.Queue, stop: threading.Event, give_up: "_GiveUp",
              endpoint: Endpoint, parameters: RequestParameters) -> None:
        while not stop.is_set():
            try:
                request = work.get_nowait()
            except queue.Empty:
                return
            try:
                results.put(self._story(request, endpoint, parameters, stop, give_up))
            except BaseException as error:  # noqa: BLE001 - handed to the consuming thread, which raises it
                results.put(error)

    def _story(self, request: StoryRequest, endpoint: Endpoint, parameters: RequestParameters,
               stop: threading.Event, give_up: "_GiveUp") -> GeneratedStory | FailedStory:
        if give_up.reason is not None:
            return FailedStory(request, f"not sent: {give_up.reason}")
        story_parameters = parameters.for_story(request.seed, self.profile)
        attempts = 0

        def send():
            nonlocal attempts
            attempts += 1
            started = time.perf_counter()
            response = self._send(request, endpoint, story_parameters)
            return response, time.perf_counter() - started

        try:
            response, latency = self._with_retries(send, stop, sent=story_parameters.sent(), give_up=give_up)
        except _GaveUp as error:
            if stop.is_set():  # the run stopped (a refusal elsewhere): nobody reads this story
                return FailedStory(request, f"stopped: {error}")
            if give_up.set(f"{self._where()}: {error}"):
                log.warning("giving up on the server for now (%s); the stories not yet sent fail at once and are "
                            "retried when the same command is run again", give_up.reason)
            return FailedStory(request, str(error))
        return self._parse(request, endpoint, response, latency, story_parameters, attempts)

    def _send(self, request: StoryRequest, endpoint: Endpoint, parameters: RequestParameters):
        extra_body = parameters.extra_body or None
        if endpoint == Endpoint.chat:
            return self._client.chat.completions.create(model=self.config.model, messages=json.loads(request.prompt),
                                                        extra_body=extra_body, **parameters.standard)
        return self._client.completions.create(model=self.config.model, prompt=request.prompt,
                                               extra_body=extra_body, **parameters.standard)

    def _parse(self, request: StoryRequest, endpoint: Endpoint, response: Any, latency: float,
               parameters: RequestParameters, attempts: int) -> GeneratedStory:
        choice = response.choices[0]
        logprobs = None
        if endpoint == Endpoint.chat:
            text = choice.message.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                logprobs = [token.logprob for token in choice.logprobs.content]
        else:
            text = choice.text
            if choice.logprobs is not None and choice.logprobs.token_logprobs is not None:
                logprobs = list(choice.logprobs.token_logprobs)
        if logprobs is not None:
            logprobs = [float("nan") if value is None else float(value) for value in logprobs]  # stored as null
        usage = response.usage
        n_tokens = usage.completion_tokens if usage is not None else (len(logprobs) if logprobs is not None else 0)
        return GeneratedStory(
            request=request, text=text, n_tokens=n_tokens, finish_reason=choice.finish_reason or "unknown",
            token_logprobs=logprobs, latency_s=latency, sent_parameters=parameters.sent(),
            server_response={"model": response.model,
                             "system_fingerprint": getattr(response, "system_fingerprint", None),
                             "attempts": attempts})

    # ---- retries ---------------------------------------------------------

    def _with_retries(self, call: Callable[[], T], stop: threading.Event, sent: Optional[dict[str, Any]] = None,
                      give_up: Optional["_GiveUp"] = None) -> T:
        """``call()``, retried on transient errors; raises ServerRefused or _GaveUp."""
        import openai

        started = time.monotonic()
        for retry in range(self.policy.max_retries + 1):
            self.pacer.wait(stop)
            try:
                return call()
            except openai.APIStatusError as error:
                message, _ = _server_detail(error.body)
                if self._is_permanent(error.status_code, error.body):
                    raise ServerRefused(self._refusal(error, sent)) from error
                reason = f"HTTP {error.status_code}" + (f": {' '.join(message.split())[:200]}" if message else "")
                retry_after = retry_after_seconds(error.response.headers)
            except openai.APIConnectionError as error:  # includes timeouts
                reason, retry_after = f"{type(error).__name__}: {error.message}", None
            if retry == self.policy.max_retries or stop.is_set() or (give_up is not None and give_up.reason):
                break
            delay = self.policy.delay(retry, retry_after, self._rng)
            log.warning("%s: %s; retry %d of %d in %.1f s", self._where(), reason, retry + 1,
                        self.policy.max_retries, delay)
            stop.wait(delay)
        raise _GaveUp(reason, retry + 1, time.monotonic() - started)

    def _is_permanent(self, status: int, body: Any) -> bool:
        if status < 500 and status not in TRANSIENT_CLIENT_STATUSES:
            return True
        # The openai client hands over the body's "error" object; a plain body stays as it came.
        error = body.get("error", body) if isinstance(body, dict) else None
        raw = str(error.get("message", "")) if isinstance(error, dict) else str(body or "")
        return any(re.search(pattern, raw) for pattern in self.profile.bad_request_messages)

    def _refusal(self, error: Any, sent: Optional[dict[str, Any]]) -> str:
        message, field_name = _server_detail(error.body)
        status = error.status_code
        what = {401: "refused the API key from $" + self.config.api_key_env + " (backend.api_key_env)",
                403: "refused access with the API key from $" + self.config.api_key_env,
                404: "does not know the model or endpoint"}.get(status, "refused the request")
        text = f"{self._where()} {what}: HTTP {status}: {message.strip() or error.message}"
        if field_name:
            harness_name = wire_names(self.profile).get(field_name)
            renamed = harness_name is not None and harness_name != field_name
            text += f" [parameter {field_name}" + (f" = sampling.{harness_name}" if renamed else "") + "]"
        if sent is not None:
            text += f"; sent {canonical_json(sent)}"
        return " ".join(text.split())  # one line

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _GiveUp:
    """Shared by the workers of one generate(): the first story that runs out of retries sets it."""

    def __init__(self):
        self.reason: Optional[str] = None
        self._lock = threading.Lock()

    def set(self, reason: str) -> bool:
        """Record why; True for the first story to give up."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
            return True
