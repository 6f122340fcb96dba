"""The OpenAI-compatible backend's errors and retries: what a failure means, how long to wait, the loop.

The openai client is built with ``max_retries=0``, so the loop here is the
only retry policy and every retry is logged. A failed attempt is one of two
kinds (``classify``):

* transient, worth waiting out: HTTP 429, 5xx, 408/409, timeouts and dropped
  connections. Retried with exponential backoff and jitter, never sooner than
  a Retry-After header asks; still failing after ``max_retries`` retries, the
  call raises ``RetriesExhausted``.
* permanent, which waiting cannot cure: any other status (401 key refused,
  404 unknown model, 400/422 bad parameter) and what a profile knows to be
  one (llama-cpp-python's server answers 500 for a field out of range).
  Raised at once as ``ServerRefused``, one line that names the server, the
  model and the parameter.

A transient failure that may mean the server itself is gone (connection
refused or dropped, 502, 503: ``Failure.unreachable``) first goes to the
backend's ``ServerWaiter``, which waits for a restarting server to come back
(``backend.server_wait_s``) without spending the request's retries.

The first story of a run to exhaust its retries marks the server down
(``ServerDown``); the other stories' retry loops then stop at their next
failure rather than each waiting out its own retries on a server that is down.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from experiments.backends.openai_profiles import Profile, wire_names
from experiments.backends.server_waiter import Outcome, ServerWaiter
from experiments.config import ConfigError
from experiments.identity import canonical_json

# The backend's own logger: one name for all of its lines, retries included.
log = logging.getLogger("experiments.backends.openai_backend")

T = TypeVar("T")

# 4xx statuses that are worth retrying: request timeout, conflict (a busy lock), rate limit.
TRANSIENT_CLIENT_STATUSES = frozenset({408, 409, 429})


class ServerRefused(ConfigError):
    """A permanent error (key, model or parameter refused): retrying cannot help."""


class RetriesExhausted(Exception):
    """A call still failing with transient errors after every retry, or after waiting for its server."""

    def __init__(self, reason: str, attempts: int, seconds: float):
        super().__init__(f"{reason} (gave up after {attempts} attempt(s) over {seconds:.1f} s)")


class ServerDown:
    """Shared by the stories of one generate(): set by the first one that exhausts its retries."""

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


# ---- what a failure means ------------------------------------------------

@dataclass(frozen=True)
class Failure:
    """One failed attempt, as the retry loop sees it."""

    permanent: bool
    reason: str  # one line: the status or connection error, and the server's message
    retry_after: Optional[float] = None  # seconds the server asked to wait (Retry-After)
    # The server may be down or restarting, not just failing this request: worth asking the ServerWaiter.
    unreachable: bool = False


# 502: a proxy in front of the server cannot reach it; 503: a server still loading its model
# (llama.cpp's llama-server answers "Loading model"), or one that is overloaded. The waiter's
# probe tells these apart: an overloaded server answers GET /models at once (an ordinary retry).
# A server that answers /models while its model still loads (some llama-server builds did) looks
# up to the probe, so its 503s spend the request's retries as before.
UNREACHABLE_STATUSES = frozenset({502, 503})


def classify(error: Exception, profile: Profile) -> Failure:
    """An ``openai.APIStatusError`` or ``openai.APIConnectionError`` (timeouts included) as a Failure."""
    import openai

    if isinstance(error, openai.APIStatusError):
        message, _ = server_detail(error.body)
        reason = f"HTTP {error.status_code}" + (f": {' '.join(message.split())[:200]}" if message else "")
        return Failure(is_permanent(error.status_code, error.body, profile), reason,
                       retry_after_seconds(error.response.headers), error.status_code in UNREACHABLE_STATUSES)
    if isinstance(error, openai.APIConnectionError):
        # Refused, reset or closed without an answer; a timeout is a slow server, not a missing one.
        unreachable = not isinstance(error, openai.APITimeoutError)
        reason = f"{type(error).__name__}: {error.message}"
        cause = error.__cause__  # the transport's own words: "Connection refused", "Server disconnected ..."
        if cause is not None and str(cause):
            reason += f" ({type(cause).__name__}: {' '.join(str(cause).split())[:200]})"
        return Failure(False, reason, unreachable=unreachable)
    raise TypeError(f"not an error from the openai client's transport: {error!r}")


def is_permanent(status: int, body: Any, profile: Profile) -> bool:
    """Whether a response with this status and body can get no better by waiting."""
    if status < 500 and status not in TRANSIENT_CLIENT_STATUSES:
        return True
    # The openai client hands over the body's "error" object; a plain body stays as it came.
    error = body.get("error", body) if isinstance(body, dict) else None
    raw = str(error.get("message", "")) if isinstance(error, dict) else str(body or "")
    return any(re.search(pattern, raw) for pattern in profile.bad_request_messages)


# One pydantic validation error as printed in a message: ... 'loc': ('body', 'mirostat_tau'), 'msg': '...', 'input': 20
_PYDANTIC_ERROR = re.compile(r"'loc': \((?:'body', )?'(?P<field>[^']+)',?\), 'msg': '(?P<msg>[^']*)'"
                             r"(?:, 'input': (?P<input>[^,}]+))?")


def server_detail(body: Any, profile: Optional[Profile] = None) -> tuple[str, Optional[str]]:
    """(message, refused field) from an error body: OpenAI's, FastAPI's, pydantic's text or plain.

    The field is OpenAI's ``param`` where the server fills it in; otherwise
    the one the message names (``field_named_in``, which needs the profile).
    """
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and "message" in error:
            message = str(error["message"])
            pydantic = _PYDANTIC_ERROR.search(message)
            if pydantic and not error.get("param"):
                got = f" (got {pydantic['input']})" if pydantic["input"] else ""
                return f"{pydantic['field']}: {pydantic['msg']}{got}", pydantic["field"]
            return message, error.get("param") or field_named_in(message, profile)
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # FastAPI validation
            first = detail[0]
            field_name = str(first.get("loc", ["?"])[-1])
            got = f" (got {first['input']!r})" if "input" in first else ""
            return f"{field_name}: {first.get('msg', '')}{got}", field_name
        if detail is not None:
            return str(detail), field_named_in(str(detail), profile)
    text = str(body) if body is not None else ""
    return text, field_named_in(text, profile)


# llama.cpp's llama-server: "Field 'repeat_last_n': Value must be between 0 <= value <= ..., but got -1".
_FIELD_PREFIX = re.compile(r"\bField '(?P<field>[A-Za-z_]\w*)'")
# Messages that name no field but are about one: vLLM's "This model's maximum context length is 2048
# tokens. However, you requested 4000 output tokens ..." is about max_tokens (vLLM's name for it).
_FIELD_PHRASES = ((re.compile(r"\byou requested \d+ output tokens\b"), "max_tokens"),)


def field_named_in(message: str, profile: Optional[Profile]) -> Optional[str]:
    """The request field an error message is about, for servers that leave OpenAI's ``param`` empty (vLLM).

    "Field 'x':" where the server says so; else the profile's request field
    named earliest in the message as a whole word ("max_tokens must be at
    least 1, got 0."), a best guess; else a known phrasing.
    """
    named = _FIELD_PREFIX.search(message)
    if named:
        return named["field"]
    if profile is None or not message:
        return None
    found = [(match.start(), name) for name in request_fields(profile)
             if (match := re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message))]
    if found:
        return min(found)[1]
    return next((name for pattern, name in _FIELD_PHRASES if pattern.search(message)), None)


def request_fields(profile: Profile) -> set[str]:
    """Every field a request of this profile can carry but the model and the prompt."""
    return set(wire_names(profile)) | {"temperature", "seed", "logprobs"} | set(profile.prefill or {})


def refusal_message(error: Any, where: str, profile: Profile, api_key_env: str,
                    sent: Optional[dict[str, Any]] = None) -> str:
    """One line for a permanent error: who refused what, the harness parameter behind the field, the body sent.

    ``error`` is an ``openai.APIStatusError``; the key is named by its variable, never shown.
    """
    message, field_name = server_detail(error.body, profile)
    status = error.status_code
    what = {401: "refused the API key from $" + api_key_env + " (backend.api_key_env)",
            403: "refused access with the API key from $" + api_key_env,
            404: "does not know the model or endpoint"}.get(status, "refused the request")
    text = f"{where} {what}: HTTP {status}: {message.strip() or error.message}"
    if field_name:
        harness_name = wire_names(profile).get(field_name)
        renamed = harness_name is not None and harness_name != field_name
        text += f" [parameter {field_name}" + (f" = sampling.{harness_name}" if renamed else "") + "]"
    if sent is not None:
        text += f"; sent {canonical_json(sent)}"
    return " ".join(text.split())  # one line


# ---- when to try again ----------------------------------------------------

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


# Waits for a server that came back, per call, that do not count as retries. A
# server that goes away on every generation request (it crashes on this request,
# a supervisor restarts it, GET /models answers again) would otherwise be waited
# for forever; three restarts within one request's life is no longer bad luck,
# so past them the request spends its retry budget as any other. (A bound per
# call rather than on total time: a long sweep may rightly ride out many restarts.)
MAX_FREE_WAITS = 3


class Retrier:
    """Calls to one server, paced, retried on transient errors, refused at once on permanent ones.

    Hand-written rather than tenacity (not a dependency): the waits must end
    early when the run stops, and a retry must check a flag shared with other
    threads (``ServerDown``) and wait on a server shared with them (``waiter``;
    None: no waiting, every failure spends a retry).
    """

    def __init__(self, policy: RetryPolicy, pacer: RequestPacer, profile: Profile, where: str, api_key_env: str,
                 rng: Optional[random.Random] = None, waiter: Optional[ServerWaiter] = None):
        self.policy = policy
        self.pacer = pacer
        self.profile = profile
        self.where = where  # "server <url> (profile ..., model ...)", the start of every line
        self.api_key_env = api_key_env
        self.waiter = waiter
        self._rng = rng or random.Random()

    def call(self, call: Callable[[], T], stop: threading.Event, sent: Optional[dict[str, Any]] = None,
             server_down: Optional[ServerDown] = None) -> T:
        """``call()``, retried on transient errors; raises ServerRefused or RetriesExhausted.

        Stops retrying once ``stop`` is set or ``server_down`` is; ``sent``
        (the request body's parameters) goes into a refusal's message. A
        server found unreachable is waited for first (``waiter``): back
        within the wait, the call is sent again without spending a retry;
        still down at its end, the call gives up at once.
        """
        import openai

        started = time.monotonic()
        attempts = retry = free_waits = 0
        while True:
            self.pacer.wait(stop)
            attempts += 1
            try:
                return call()
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                failure = classify(error, self.profile)
                if failure.permanent:
                    raise ServerRefused(refusal_message(error, self.where, self.profile, self.api_key_env,
                                                        sent)) from error
            if stop.is_set() or (server_down is not None and server_down.reason):
                break
            if failure.unreachable and self.waiter is not None and free_waits < MAX_FREE_WAITS:
                outcome = self.waiter.wait(failure.reason, stop)
                if outcome is Outcome.BACK:
                    free_waits += 1
                    continue
                if outcome is Outcome.GAVE_UP:
                    raise RetriesExhausted(f"{failure.reason}; {self.waiter.gave_up_text}", attempts,
                                           time.monotonic() - started)
                if outcome is Outcome.STOPPED:
                    break
                # Outcome.UP: the server answers, so the failure was this request's own: an ordinary retry.
            if retry == self.policy.max_retries:
                break
            delay = self.policy.delay(retry, failure.retry_after, self._rng)
            retry += 1
            log.warning("%s: %s; retry %d of %d in %.1f s", self.where, failure.reason, retry,
                        self.policy.max_retries, delay)
            stop.wait(delay)
        raise RetriesExhausted(failure.reason, attempts, time.monotonic() - started)
