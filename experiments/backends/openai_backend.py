"""OpenAI-compatible server backend: OpenAI's API, vLLM, llama.cpp's server, Ollama.

One story is one request (its own seed), sent by ``max_concurrency`` worker
threads that share one synchronous openai client (``worker_threads``); each
story is yielded as soon as its response arrives. An optional
requests-per-minute pacer spaces the requests out.

The parts: ``openai_profiles`` says what each server accepts and under what
name; ``openai_requests`` builds a story's request and reads its response;
``openai_retry`` tells transient errors (retried with backoff, logged) from
permanent ones (the run stops at once with one line naming the server, the
model and the parameter). This class ties them together.

Before the first story, the model name is checked against GET /models
(llama-cpp-python's server would otherwise answer for any name with
whatever it has loaded). A server that cannot be reached, then or later
(killed, restarting, still loading its model), is waited for up to
``backend.server_wait_s``, polling GET /models, by one thread for all of them
(``server_waiter``); it comes back and the run resumes, without spending any
request's retries. A story still failing after its retries, or after that
wait, is yielded as a ``FailedStory`` (run.py lists them; running the same
command again retries them); the stories not yet sent then fail at once
rather than each waiting out its own retries on a server that is down.

The API key is read from the environment when the backend loads and lives
only in the client object: not in the config, the logs, the stories or the
manifest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from importlib.metadata import version
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

from experiments.backends import openai_requests
from experiments.backends.base import Backend, FailedStory, GeneratedStory, StoryRequest
from experiments.backends.openai_profiles import (PROFILES, Profile, RequestParameters, profile_of,
                                                  profiles_accepting, request_parameters, server_defaults_in_effect,
                                                  unaccepted_parameters)
from experiments.backends.openai_retry import (RequestPacer, Retrier, RetriesExhausted, RetryPolicy, ServerDown,
                                               ServerRefused)
from experiments.backends.server_waiter import ServerWaiter
from experiments.backends.worker_threads import map_as_completed
from experiments.config import (BackendConfig, ConfigError, Endpoint, OpenAIBackendConfig, PromptConfig,
                                SamplingConfig)
from experiments.identity import canonical_json

log = logging.getLogger(__name__)

# Local servers need no key, but the openai client insists on one.
NO_KEY_PLACEHOLDER = "no-key"
CONNECT_TIMEOUT_S = 10.0
# GET /models while waiting for a server: a server that takes longer is "not answering" (hung, or
# llama-cpp-python's, which answers /models only between two generations, still busy with one).
PROBE_TIMEOUT_S = 15.0

__all__ = ["OpenAIBackend", "ServerRefused", "ServerUnreachable", "redact_url"]


class ServerUnreachable(ConfigError):
    """The server could not be reached (or kept failing) before the run started."""


def redact_url(url: str) -> str:
    """The URL without user:password or query string (either may carry a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class OpenAIBackend(Backend):
    name = "openai"
    # The union over profiles; check_supported refines it for the configured profile.
    supported_parameters = frozenset().union(*(profile.fields for profile in PROFILES.values()))

    @classmethod
    def check_supported(cls, sampling: SamplingConfig, backend: BackendConfig) -> None:
        profile = profile_of(backend.profile)
        refused = unaccepted_parameters(profile, sampling)
        if refused:
            elsewhere = [name for name in profiles_accepting(refused) if name != profile.name]
            raise ConfigError(
                f"backend 'openai' with profile {profile.name!r} cannot send sampling parameter(s) "
                + ", ".join(f"sampling.{name}={getattr(sampling, name)!r}" for name in refused)
                + ": that server does not accept them through its OpenAI-compatible API (most servers ignore a "
                "field they do not know, and the stories would claim a sampler that never ran); profile "
                f"{profile.name!r} sends: {', '.join(sorted(set(profile.fields) | {'temperature', 'max_tokens', 'seed'}))}"
                + (f"; profile(s) that can send them: {', '.join(elsewhere)}" if elsewhere else ""))

    @classmethod
    def check_prompt(cls, prompt: PromptConfig, backend: BackendConfig) -> None:
        openai_requests.check_prompt(prompt, cls.endpoint_for(prompt, backend), profile_of(backend.profile))

    endpoint_for = staticmethod(openai_requests.endpoint_for)

    def __init__(self, config: OpenAIBackendConfig):
        super().__init__(config)
        self.profile: Profile = profile_of(config.profile)
        self.base_url = redact_url(config.base_url)
        # One waiter for all the worker threads: one of them polls, the others wait with it.
        self.waiter = (ServerWaiter(self._answers, config.server_wait_s, config.server_poll_s, self._where())
                       if config.server_wait_s > 0 else None)
        self.retrier = Retrier(RetryPolicy(config.max_retries, config.backoff_base_s, config.backoff_max_s),
                               RequestPacer(config.requests_per_minute), self.profile, self._where(),
                               config.api_key_env, waiter=self.waiter)
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
        # max_retries=0: the Retrier's retries are the only ones, so they are counted and logged.
        # A short connect timeout: a host that drops packets should fail over to a retry, not hang for minutes.
        timeout = Timeout(self.config.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.config.timeout_s))
        self._client = OpenAI(base_url=self.config.base_url, api_key=key, max_retries=0, timeout=timeout)
        try:
            self._server_model = self._check_model()
        except RetriesExhausted as error:
            self._client = None
            raise ServerUnreachable(f"cannot reach {self._where()}: {error}; is it running, and is backend.base_url "
                                    "right? Nothing was generated.") from None
        except ServerRefused:
            self._client = None
            raise
        log.info("%s is up; %s", self._where(), self.profile.notes)
        if self.config.max_concurrency > 1 and self.profile.batch_invariant is not True:
            known = "is not" if self.profile.batch_invariant is False else "is not known to be"
            log.warning("profile %s %s batch-invariant: with backend.max_concurrency=%d a seeded story can depend "
                        "on which other requests share its batch; backend.max_concurrency=1 makes it reproducible",
                        self.profile.name, known, self.config.max_concurrency)

    def _check_model(self) -> Optional[dict[str, Any]]:
        """The server's entry for the model; refuse a model the server does not list.

        Needed because some servers (llama-cpp-python's) answer for any model
        name with whatever model they have loaded.
        """
        import openai

        try:
            listed = self.retrier.call(lambda: list(self._client.models.list()), threading.Event())
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
            "server_batch_invariant": self.profile.batch_invariant,
        }

    def chat_metadata(self) -> Optional[dict[str, Any]]:
        return None  # the server applies its own chat template

    def prompt_text(self, prompt: PromptConfig) -> str:
        endpoint = self.endpoint_for(prompt, self.config)
        text = openai_requests.prompt_text(prompt, endpoint)
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
        prefill = openai_requests.continues_assistant(requests[0].prompt, endpoint)
        parameters = request_parameters(self.profile, sampling, endpoint, self.config.logprobs, prefill)
        uncontrolled = server_defaults_in_effect(self.profile, sampling)
        if uncontrolled:
            log.warning("profile %s cannot send %s: the server's own defaults apply (see the manifest's "
                        "model.server_defaults_apply)", self.profile.name, ", ".join(uncontrolled))

        server_down = ServerDown()
        yield from map_as_completed(
            lambda request, stop: self._story(request, endpoint, parameters, stop, server_down),
            requests, self.config.max_concurrency)
        if server_down.reason is not None:
            self._server_down = server_down.reason

    def _server_is_back(self) -> bool:
        """One look, no waiting: the last generate() waited already (or spent its retries)."""
        if not self._answers():
            return False
        log.info("%s answers again", self._where())
        self._server_down = None
        if self.waiter is not None:
            self.waiter.reset()  # it may go away again: then it is waited for again
        return True

    def _answers(self) -> bool:
        """Whether GET /models gets an answer: any HTTP status but 5xx.

        A 404 (a server without /models) or 401 answers too: the server is
        up, and the request sent next says what is wrong. 5xx is a server
        (or the proxy before it) that is not ready: 503 "Loading model".
        """
        import openai

        try:
            self._client.with_options(timeout=PROBE_TIMEOUT_S).models.list()
        except openai.APIStatusError as error:
            return error.status_code < 500
        except openai.APIConnectionError:  # refused, dropped or timed out
            return False
        return True

    def _story(self, request: StoryRequest, endpoint: Endpoint, parameters: RequestParameters,
               stop: threading.Event, server_down: ServerDown) -> GeneratedStory | FailedStory:
        if server_down.reason is not None:
            return FailedStory(request, f"not sent: {server_down.reason}")
        story_parameters = parameters.for_story(request.seed, self.profile)
        attempts = 0

        def send():
            nonlocal attempts
            attempts += 1
            started = time.perf_counter()
            response = openai_requests.send(self._client, self.config.model, endpoint, request.prompt,
                                            story_parameters)
            return response, time.perf_counter() - started

        try:
            response, latency = self.retrier.call(send, stop, sent=story_parameters.sent(), server_down=server_down)
        except RetriesExhausted as error:
            if stop.is_set():  # the run stopped (a refusal elsewhere): nobody reads this story
                return FailedStory(request, f"stopped: {error}")
            if server_down.set(f"{self._where()}: {error}"):
                log.warning("giving up on the server for now (%s); the stories not yet sent fail at once and are "
                            "retried when the same command is run again", server_down.reason)
            return FailedStory(request, str(error))
        return openai_requests.story_from_response(request, endpoint, response, latency, story_parameters, attempts,
                                                   self.profile)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
