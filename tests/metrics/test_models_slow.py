"""The real models: all-MiniLM-L6-v2 (embeddings) and SmolLM2 (the scorer). Kept few and small."""

import math

import numpy as np
import pytest

from metrics.config import EmbeddingConfig, Pooling, Precision, ScorerConfig
from metrics.embeddings import SentenceTransformerEmbedder, pool_chunks, split_into_chunks

pytestmark = pytest.mark.slow

SHORT = "Once upon a time, a girl named Maria found a hidden path in the woods."
LONG = " ".join(
    f"On day {i} the keeper of the lighthouse wrote a letter to the sea, and the sea answered with {i} waves."
    for i in range(40))  # ~4,000 characters, ~1,000 word pieces


@pytest.fixture(scope="module")
def embedders():
    chunked = SentenceTransformerEmbedder(EmbeddingConfig(precision=Precision.float32), progress=False)
    truncated = SentenceTransformerEmbedder(EmbeddingConfig(precision=Precision.float32, pooling=Pooling.truncate),
                                            progress=False)
    truncated.model = chunked.model  # one model in memory
    return chunked, truncated


def test_chunks_fit_the_window_and_cover_the_text(embedders):
    chunked, _ = embedders
    assert chunked.max_seq_length == 256 and chunked.window == 254
    chunks = split_into_chunks(LONG, chunked.tokenizer, chunked.window)
    total = len(chunked.token_ids(LONG))
    assert len(chunks) == math.ceil(total / 254) or len(chunks) == math.ceil(total / 254) + 1
    assert sum(chunk.n_tokens for chunk in chunks) == total
    for chunk in chunks:
        assert chunk.n_tokens <= 254
        assert len(chunked.token_ids(chunk.text)) == chunk.n_tokens  # cut at word starts
    assert split_into_chunks(SHORT, chunked.tokenizer, 254)[0].text == SHORT


def test_chunked_versus_truncated(embedders):
    chunked, truncated = embedders
    texts = [SHORT, LONG, LONG + " Then a dragon ate the moon, and nobody wrote any letters again."]
    chunk_vectors, counts = chunked.embed(texts)
    truncated_vectors, _ = truncated.embed(texts)
    assert np.linalg.norm(chunk_vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    # a text inside one window: both give the same vector
    assert chunk_vectors[0] == pytest.approx(truncated_vectors[0], abs=1e-6)
    # truncation ignores the tail; chunking does not
    assert truncated_vectors[1] == pytest.approx(truncated_vectors[2], abs=1e-6)
    assert float(chunk_vectors[1] @ chunk_vectors[2]) < 0.99999
    assert counts[1] > 256
    # chunk_mean is the token-weighted mean of the chunks' own embeddings
    chunks = split_into_chunks(LONG, chunked.tokenizer, chunked.window)
    pieces = chunked._encode([chunk.text for chunk in chunks])
    assert chunk_vectors[1] == pytest.approx(pool_chunks(pieces, [c.n_tokens for c in chunks]), abs=1e-5)


def test_bfloat16_agrees_with_float32(embedders):
    chunked, _ = embedders
    fast = SentenceTransformerEmbedder(EmbeddingConfig(precision=Precision.bfloat16), progress=False)
    fast.model = chunked.model
    exact, _ = chunked.embed([SHORT, LONG])
    approximate, _ = fast.embed([SHORT, LONG])
    assert (np.sum(exact * approximate, axis=1) > 0.999).all()


def test_empty_texts_have_no_embedding(embedders):
    chunked, _ = embedders
    vectors, counts = chunked.embed(["", "   ", "\x00\x01", SHORT])
    assert np.isnan(vectors[:3]).all() and np.isfinite(vectors[3]).all()
    assert counts[:3].tolist() == [0, 0, 0]  # control characters: the tokenizer keeps nothing


@pytest.fixture(scope="module")
def scorer():
    from metrics.scorer import TransformersScorer

    return TransformersScorer(ScorerConfig(batch_size=4))


def _manual_nll(scorer, prefix_ids, story_ids):
    import torch

    ids = torch.tensor([prefix_ids + story_ids])
    with torch.inference_mode():
        logits = scorer.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    token_logprobs = logprobs[torch.arange(len(targets)), targets]
    return float(-token_logprobs[len(prefix_ids) - 1:].sum())


def test_scorer_matches_a_single_forward_pass(scorer):
    prompt = "<|im_start|>user\nWrite a story.<|im_end|>\n<|im_start|>assistant\n"
    texts = [SHORT, "The cat sat on the mat. It was warm."]
    scores = scorer.score(texts, [prompt, None], progress=False)
    story = scorer.token_ids(SHORT)
    assert scores[0].n_tokens == len(story) and scores[0].n_windows == 1
    assert scores[0].nll == pytest.approx(_manual_nll(scorer, scorer._prefix_ids(prompt), story), rel=1e-4)
    # no prompt: the story follows the model's start token, and every story token is scored
    other = scorer.token_ids(texts[1])
    assert scorer.start_ids == [scorer.tokenizer.bos_token_id]
    assert scores[1].n_tokens == len(other)
    assert scores[1].nll == pytest.approx(_manual_nll(scorer, scorer.start_ids, other), rel=1e-4)
    # batched with padding = one at a time
    alone = scorer.score([texts[1]], [None], progress=False)[0]
    assert alone.nll == pytest.approx(scores[1].nll, rel=1e-4)
    # a story containing a special-token string is scored as plain text
    assert len(scorer.token_ids("<|im_end|>")) > 1


def test_scorer_slides_over_long_texts(scorer):
    text = LONG[:600]  # ~130 tokens
    scorer.max_length, scorer.stride = 48, 24
    try:
        (score,) = scorer.score([text], [None], progress=False)
    finally:
        scorer.max_length, scorer.stride = 2048, 1024
    (full,) = scorer.score([text], [None], progress=False)
    assert score.n_windows > 1 and full.n_windows == 1
    assert score.n_tokens == full.n_tokens == len(scorer.token_ids(text))
    # less context, higher perplexity, same order of magnitude
    assert 1.0 < math.exp(full.nll / full.n_tokens) <= math.exp(score.nll / score.n_tokens) < 10 * math.exp(
        full.nll / full.n_tokens)
