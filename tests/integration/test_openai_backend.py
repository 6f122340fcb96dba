"""The OpenAI-compatible backend against a real server on loopback.

The server is llama-cpp-python's (``python -m llama_cpp.server``, from the
llama-cpp-python[server] extra), started as ``scripts/serve llama-cpp-python``
starts it, serving the embedded SmolLM2 GGUF and requiring an API key, so the key really travels. The generate stage runs as
the researcher runs it, in a subprocess, with the key in the environment.
The server is killed with SIGKILL mid-sweep and started again on its port to
show that a sweep waits for it (backend.server_wait_s), or stops clearly.
A tiny threaded http.server stands in only for what a real server cannot be
made to do on demand: answer 429 with Retry-After, a 400 naming a field, or
show how many requests are in flight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from experiments.backends.base import FailedStory, GeneratedStory, StoryRequest
from experiments.backends.openai_backend import OpenAIBackend, ServerRefused
from experiments.config import OpenAIBackendConfig, PromptConfig, SamplingConfig
from experiments.store import read_stories
from experiments.servers.process import free_port
from tests.integration.served import ServedEngine, wait_for_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the alias the server lists the model under
SECRET = "sk-test-SECRET-123"
CHAT = PromptConfig(id="story", messages=[{"role": "user", "content": "Write a story."}])


class LlamaServer(ServedEngine):
    """``scripts/serve llama-cpp-python`` requiring SECRET as its API key, restartable on the same port."""

    def __init__(self, log_path: Path):
        super().__init__("llama-cpp-python", log_path, "--api-key-env", "HARNESS_TEST_SERVER_KEY")
        self.env["HARNESS_TEST_SERVER_KEY"] = SECRET  # the key reaches the server from the environment
        self.api_key = SECRET  # for the readiness check (GET /models)

    def start(self, timeout: float = 180) -> "LlamaServer":
        return super().start(timeout)

    def ensure_running(self, timeout: float = 180) -> None:
        super().ensure_running(timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    llama = LlamaServer(tmp_path_factory.mktemp("llama-server") / "server.log")
    llama.start()
    try:
        yield llama
    finally:
        llama.stop()


def generate_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.generate", *args, "progress=false"]


def run_generate(*args: str, key: str = SECRET, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "OPENAI_API_KEY"}
    env["OPENAI_API_KEY"] = key
    return subprocess.run(generate_command(*args), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def backend_args(server: LlamaServer, out: Path, *more: str) -> list[str]:
    return ["backend=openai", f"backend.base_url={server.url}", f"backend.model={MODEL}", f"out_dir={out}", *more]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


# ---- against the real server -------------------------------------------------

def test_a_sweep_through_chat_and_completions_stores_what_was_sent_and_never_the_key(server, tmp_path):
    out = tmp_path / "sweep"
    # Chat, as a -m sweep over two temperatures (SmolLM2's chat template, applied by the server).
    assert_ok(run_generate("-m", *backend_args(server, out, "prompt=paper", "prompt.assistant_prefix=''",
                                               "sampling.temperature=0.5,1.0", "sampling.n=2",
                                               "sampling.max_tokens=8")))
    # Completions: the paper's raw Llama-2 prompt, verbatim, with the paper's top_k.
    raw_args = backend_args(server, out, "prompt=paper_llama2_raw", "sampling.top_k=50", "sampling.n=2",
                            "sampling.max_tokens=8")
    assert_ok(run_generate(*raw_args))

    stories = read_stories(out / "stories.jsonl")
    chat = [s for s in stories if s["prompt_id"] == "paper"]
    raw = [s for s in stories if s["prompt_id"] == "paper_llama2_raw"]
    assert len(chat) == 4 and len(raw) == 2 and len({s["story_id"] for s in stories}) == 6
    for story in stories:
        sent = story["sent_parameters"]
        assert story["backend"] == "openai" and story["model"] == MODEL
        assert sent["seed"] == story["seed"] and sent["temperature"] == story["setting"]["temperature"]
        assert sent["max_tokens"] == 8 and sent["repeat_penalty"] == 1.0 and sent["min_p"] == 0.0
        assert story["server_response"]["attempts"] == 1 and 1 <= story["n_tokens"] <= 8
    for story in chat:
        assert json.loads(story["prompt"]) == [{"role": "user", "content": "Write a story."}]
        assert story["messages"] == [{"role": "user", "content": "Write a story."}]
        assert story["token_logprobs"] is None  # llama-cpp-python's server gives none for chat
        assert story["sent_parameters"]["top_k"] == 0 and story["sent_parameters"]["logprobs"] is True
    assert {s["setting"]["temperature"] for s in chat} == {0.5, 1.0}
    for story in raw:
        assert story["prompt"] == "[INST]Write a story.[/INST]Here it is:\n\n" and story["messages"] is None
        assert story["sent_parameters"]["top_k"] == 50 and story["sent_parameters"]["logprobs"] == 1
        assert len(story["token_logprobs"]) == story["n_tokens"] and all(v <= 0 for v in story["token_logprobs"])
    manifests = [json.loads(path.read_text()) for path in (out / "jobs").glob("*/manifest.json")]
    assert len(manifests) == 3 and all(m["model"]["server_model"]["id"] == MODEL for m in manifests)

    # The per-story seed is honoured: the same command elsewhere writes the same stories.
    again = tmp_path / "again"
    assert_ok(run_generate(*backend_args(server, again, *raw_args[4:])))
    key = lambda s: s["sample_index"]  # noqa: E731
    assert [s["text"] for s in sorted(raw, key=key)] == \
           [s["text"] for s in sorted(read_stories(again / "stories.jsonl"), key=key)]

    # The key reached the server (it requires one) but no file under the output folder.
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(".hydra" in path.parts for path in files) and any(path.suffix == ".log" for path in files)
    leaked = [str(path) for path in files if SECRET.encode() in path.read_bytes()]
    assert leaked == []


def restart_later(server: LlamaServer, seconds: float) -> threading.Thread:
    """Start the (killed) server again on its port after ``seconds``, in a thread; join it to see it done."""
    def restart():
        time.sleep(seconds)
        try:
            server.start()
        except BaseException as error:  # noqa: BLE001 - handed to the test through the thread
            thread.error = error

    thread = threading.Thread(target=restart, daemon=True)
    thread.error = None
    thread.start()
    return thread


def start_generate(args: list[str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, OPENAI_API_KEY=SECRET)
    with open(log_path, "w") as log:
        return subprocess.Popen(generate_command(*args), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)


def finish(process: subprocess.Popen, restart: threading.Thread, server: LlamaServer, timeout: float = 240) -> None:
    try:
        process.wait(timeout=timeout)
        restart.join(timeout=180)
        assert restart.error is None, restart.error
    finally:
        if process.poll() is None:
            process.kill()
        server.ensure_running()


def assert_all_stories_once(out: Path, n: int) -> list[dict]:
    stories = read_stories(out / "stories.jsonl")
    assert sorted(s["sample_index"] for s in stories) == list(range(n))
    assert len({s["story_id"] for s in stories}) == len({s["seed"] for s in stories}) == n
    assert (out / "stories.jsonl").read_bytes().count(b"\n") == n  # none twice, not even as a duplicate line
    return stories


def test_killing_the_server_mid_sweep_the_sweep_waits_for_it_and_loses_and_repeats_nothing(server, tmp_path):
    out = tmp_path / "restart"
    # The default retries (6, backoff from 1 s) and the default wait (300 s); the server is down for 3 s and more.
    args = backend_args(server, out, "prompt=paper", "prompt.assistant_prefix=''", "sampling.n=8",
                        "sampling.max_tokens=24", "backend.max_concurrency=2", "backend.server_poll_s=0.5")
    log_path = tmp_path / "generate.stderr"
    process = start_generate(args, log_path)
    before = wait_for_lines(out / "stories.jsonl", 2, process)
    server.kill()  # SIGKILL: both requests in flight lose their connection
    restart = restart_later(server, 3)
    finish(process, restart, server)
    stderr = log_path.read_text()
    assert before < 8, "the server must die mid-sweep"
    assert process.returncode == 0, stderr[-4000:]
    waits = [line for line in stderr.splitlines() if "waiting up to 300 s for it to come back" in line]
    assert len(waits) == 1 and "(backend.server_wait_s)" in waits[0] and server.url in waits[0], stderr[-4000:]
    assert "answers again after" in stderr and "retry 1 of 6" not in stderr  # waited, no retry spent
    stories = assert_all_stories_once(out, 8)
    assert max(s["server_response"]["attempts"] for s in stories) == 2  # sent once more after the restart


def test_a_sweep_started_before_its_server_is_up_waits_for_it(server, tmp_path):
    out = tmp_path / "early"
    args = backend_args(server, out, "prompt=paper_llama2_raw", "sampling.n=2", "sampling.max_tokens=8",
                        "backend.server_poll_s=0.5")
    server.kill()
    log_path = tmp_path / "generate.stderr"
    process = start_generate(args, log_path)
    restart = restart_later(server, 3)  # the model check finds nobody on the port at first
    finish(process, restart, server)
    stderr = log_path.read_text()
    assert process.returncode == 0, stderr[-4000:]
    assert "waiting up to 300 s for it to come back" in stderr and "answers again after" in stderr
    assert_all_stories_once(out, 2)


def run_and_take_the_server_down(server, args, out, after_lines: int):
    """Start a sweep, kill the server once ``after_lines`` stories are stored, and let the sweep end."""
    env = dict(os.environ, OPENAI_API_KEY=SECRET)
    process = subprocess.Popen(generate_command(*args), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(out / "stories.jsonl", after_lines, process)
        server.kill()
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        server.ensure_running()
    return process, stderr


def test_a_server_down_longer_than_the_wait_stops_the_sweep_clearly_and_a_rerun_completes(server, tmp_path):
    out = tmp_path / "resume"
    # The default retries (6); a 3 s wait; the server stays down until the sweep has ended.
    args = backend_args(server, out, "prompt=paper", "prompt.assistant_prefix=''", "sampling.n=6",
                        "sampling.max_tokens=24", "backend.max_concurrency=2", "backend.server_wait_s=3",
                        "backend.server_poll_s=0.5")
    started = time.monotonic()
    process, stderr = run_and_take_the_server_down(server, args, out, after_lines=2)
    stored = (out / "stories.jsonl").read_bytes().count(b"\n")
    assert process.returncode == 3, stderr[-4000:]
    assert 2 <= stored < 6 and f"INCOMPLETE: {6 - stored} stories failed" in stderr
    assert "waiting up to 3 s for it to come back (backend.server_wait_s)" in stderr
    assert "is still unreachable after waiting 3 s (backend.server_wait_s); giving up" in stderr
    assert "run the same command again" in stderr and "Traceback" not in stderr
    assert "retry 1 of 6" not in stderr  # the wait, not each request's retries, decided it
    assert time.monotonic() - started < 60  # not the 7 attempts over 43 s of every request

    resumed = run_generate(*args)
    assert_ok(resumed)
    assert f"{stored} were already stored, {6 - stored} generated" in resumed.stderr
    assert_all_stories_once(out, 6)


def test_a_multirun_sweep_finishes_every_job_then_reports_incomplete(server, tmp_path):
    out = tmp_path / "multirun"
    args = ["-m", *backend_args(server, out, "prompt=paper", "prompt.assistant_prefix=''",
                                "sampling.temperature=0.5,1.0", "sampling.n=4", "sampling.max_tokens=24",
                                "backend.max_concurrency=1", "backend.max_retries=1", "backend.backoff_base_s=0.2",
                                "backend.backoff_max_s=0.4", "backend.server_wait_s=1", "backend.server_poll_s=0.2")]
    process, stderr = run_and_take_the_server_down(server, args, out, after_lines=1)
    assert process.returncode != 0 and "Traceback" not in stderr
    assert stderr.count("the sweep is INCOMPLETE") == 3  # each job's own list, then Hydra's one line at the end
    job_logs = sorted((out / "hydra").glob("job-*/generate.log"))  # the second job ran after the first came up short
    assert len(job_logs) == 2 and all("INCOMPLETE" in log.read_text() for log in job_logs)
    assert_ok(run_generate(*args))
    stories = read_stories(out / "stories.jsonl")
    assert len(stories) == 8 and (out / "stories.jsonl").read_bytes().count(b"\n") == 8


@pytest.mark.parametrize("case,overrides,key,expected", [
    ("wrong model", ["backend.model=no-such-model"], SECRET,
     f"does not serve model 'no-such-model' (backend.model); it lists '{MODEL}'"),
    ("wrong key", [], "sk-wrong-KEY-456", "refused the API key from $OPENAI_API_KEY"),
    # llama-cpp-python's server answers 400 for a prompt longer than its context (a long max_tokens is cut short).
    ("prompt too long", ["prompt.raw='" + "story " * 2100 + "'"], SECRET, "maximum context length is 2048"),
    ("value out of the server's range", ["sampling.mirostat_mode=2", "sampling.mirostat_tau=20"], SECRET,
     "[parameter mirostat_tau]"),
])
def test_a_permanent_error_stops_the_run_with_one_clear_line(server, tmp_path, case, overrides, key, expected):
    result = run_generate(*backend_args(server, tmp_path / "out", "prompt=paper_llama2_raw", "sampling.n=3",
                                        "sampling.max_tokens=8", *overrides), key=key)
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and expected in errors[0] and server.url in errors[0], result.stderr[-2000:]
    assert key not in result.stderr
    assert not (tmp_path / "out" / "stories.jsonl").exists()


@pytest.mark.parametrize("wait,expected", [
    ("0", "gave up after 3 attempt(s)"),  # no waiting: the retries, as before there was a wait
    ("1", "still unreachable after waiting 1 s (backend.server_wait_s) (gave up after 1 attempt(s)"),
])
def test_a_server_that_is_down_gives_one_clear_line(tmp_path, wait, expected):
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = run_generate("backend=openai", f"backend.base_url={url}", "prompt=paper_llama2_raw",
                          "backend.max_retries=2", "backend.backoff_base_s=0.1", f"backend.server_wait_s={wait}",
                          "backend.server_poll_s=0.2", f"out_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"cannot reach server {url}" in errors[0] and expected in errors[0], errors
    assert "Nothing was generated" in errors[0]


# ---- a scripted server, for what a real one will not do on demand -------------

class ScriptedServer:
    """A loopback OpenAI-style server answering each POST from a script of (status, headers, delay)."""

    def __init__(self, script=(), delay: float = 0.0):
        self.script = list(script)
        self.delay = delay
        self.posts: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _reply(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self):
                self._reply(200, {"object": "list", "data": [{"id": "mock-model", "object": "model",
                                                               "owned_by": "test", "created": 0}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.posts.append({"time": time.monotonic(), "body": body,
                                        "authorization": self.headers.get("Authorization")})
                    status, headers = owner.script.pop(0) if owner.script else (200, {})
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    time.sleep(owner.delay)
                    if status == 200:
                        self._reply(200, chat_completion(body))
                    else:
                        self._reply(status, {"error": {"message": f"scripted {status}", "param": "top_k",
                                                       "type": "invalid_request_error"}}, headers)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def chat_completion(body: dict) -> dict:
    return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "mock-model-2026-01-01",
            "system_fingerprint": "fp_test",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": f"story {body['seed']}"},
                         "logprobs": {"content": [{"token": "story", "logprob": -0.5, "bytes": None, "top_logprobs": []},
                                                  {"token": " 1", "logprob": -1.25, "bytes": None, "top_logprobs": []}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


@pytest.fixture
def scripted(request):
    servers = []

    def make(*args, **kwargs):
        servers.append(ScriptedServer(*args, **kwargs))
        return servers[-1]

    yield make
    for scripted_server in servers:
        scripted_server.close()


def scripted_backend(url: str, **overrides) -> tuple[OpenAIBackend, str]:
    config = dict(base_url=url, model="mock-model", profile="vllm", backoff_base_s=0.01, backoff_max_s=0.05)
    backend = OpenAIBackend(OpenAIBackendConfig(**{**config, **overrides}))
    return backend, backend.prompt_text(CHAT)


def requests_for(prompt: str, count: int) -> list[StoryRequest]:
    return [StoryRequest(story_id=f"s{i}", sample_index=i, seed=100 + i, prompt=prompt) for i in range(count)]


def test_a_429_with_retry_after_is_waited_out_and_the_body_is_what_the_story_records(scripted, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-mock-KEY")
    mock = scripted(script=[(429, {"Retry-After": "1"}), (503, {})])
    backend, prompt = scripted_backend(mock.url)
    [story] = list(backend.generate(requests_for(prompt, 1), SamplingConfig(top_k=50, max_tokens=5)))
    assert isinstance(story, GeneratedStory) and story.server_response["attempts"] == 3
    first, second, third = mock.posts
    assert second["time"] - first["time"] >= 1.0  # Retry-After: 1, though the backoff alone is 0.01 s
    assert third["time"] - second["time"] < 1.0
    assert third["body"] == {"model": "mock-model", "messages": CHAT.messages, **story.sent_parameters}
    assert story.sent_parameters["top_k"] == 50 and story.sent_parameters["seed"] == 100
    assert third["authorization"] == "Bearer sk-mock-KEY"
    assert story.token_logprobs == [-0.5, -1.25] and story.n_tokens == 2 and story.text == "story 100"
    assert story.server_response["model"] == "mock-model-2026-01-01"
    assert story.server_response["system_fingerprint"] == "fp_test"


def test_a_400_stops_the_run_naming_server_model_and_parameter(scripted):
    mock = scripted(script=[(400, {})])
    backend, prompt = scripted_backend(mock.url, max_concurrency=1)
    with pytest.raises(ServerRefused) as error:
        list(backend.generate(requests_for(prompt, 5), SamplingConfig(top_k=50)))
    message = str(error.value)
    assert mock.url in message and "'mock-model'" in message and "[parameter top_k]" in message
    assert "\n" not in message and len(mock.posts) == 1  # stopped at once, not after every story


def test_concurrency_is_bounded_and_stories_arrive_as_they_finish(scripted):
    mock = scripted(delay=0.2)
    backend, prompt = scripted_backend(mock.url, max_concurrency=3)
    started = time.monotonic()
    stories = list(backend.generate(requests_for(prompt, 9), SamplingConfig()))
    assert mock.max_in_flight == 3 and len(stories) == 9
    assert time.monotonic() - started < 9 * 0.2 * 0.75  # in parallel, not one after another
    assert sorted(story.request.seed for story in stories) == list(range(100, 109))


def test_requests_per_minute_spaces_the_requests(scripted):
    mock = scripted()
    backend, prompt = scripted_backend(mock.url, max_concurrency=4, requests_per_minute=600)
    list(backend.generate(requests_for(prompt, 5), SamplingConfig()))
    times = sorted(post["time"] for post in mock.posts)
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.09


def test_stories_not_yet_sent_fail_at_once_when_the_server_stays_down(scripted):
    mock = scripted(script=[(503, {})] * 3)
    backend, prompt = scripted_backend(mock.url, max_concurrency=1, max_retries=2)
    outcomes = list(backend.generate(requests_for(prompt, 4), SamplingConfig()))
    failed = [o for o in outcomes if isinstance(o, FailedStory)]
    assert len(failed) == 4 and len(mock.posts) == 3  # one story used its retries; three were never sent
    assert "HTTP 503" in failed[0].error and sum(f.error.startswith("not sent") for f in failed) == 3
    # The next setting checks that the server is back, then proceeds.
    stories = list(backend.generate(requests_for(prompt, 2), SamplingConfig()))
    assert all(isinstance(story, GeneratedStory) for story in stories)


def test_a_request_that_times_out_is_retried_then_reported_failed(scripted):
    mock = scripted(delay=1.0)
    backend, prompt = scripted_backend(mock.url, max_concurrency=1, max_retries=1, timeout_s=0.3)
    [story] = list(backend.generate(requests_for(prompt, 1), SamplingConfig()))
    assert isinstance(story, FailedStory) and "APITimeoutError" in story.error and len(mock.posts) == 2
