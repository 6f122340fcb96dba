import math

import numpy as np
import pytest

from metrics.perplexity import perplexity_from_logprobs, perplexity_from_nll


def test_perplexity_is_exp_of_mean_negative_log_prob():
    # mean NLL = (1 + 2 + 3) / 3 = 2
    assert perplexity_from_logprobs([-1.0, -2.0, -3.0]) == pytest.approx(math.exp(2.0))
    # four tokens of probability 1/2: perplexity 2
    assert perplexity_from_logprobs([math.log(0.5)] * 4) == pytest.approx(2.0)
    # a certain token: perplexity 1
    assert perplexity_from_logprobs([0.0]) == 1.0


def test_perplexity_edge_cases():
    assert math.isnan(perplexity_from_logprobs([]))
    assert perplexity_from_logprobs([-1.0, -math.inf]) == math.inf
    assert math.isnan(perplexity_from_nll(3.0, 0))
    assert perplexity_from_nll(6.0, 3) == pytest.approx(math.exp(2.0))
    assert perplexity_from_logprobs(np.array([-0.5, -1.5])) == pytest.approx(math.exp(1.0))
