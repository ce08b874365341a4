"""The training tests' shared fixtures: a few token blocks and a tiny teacher."""

import pytest
import torch

from potstill.data import Blocks
from tests.conftest import make_llama

VOCAB = 64


@pytest.fixture
def blocks():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (16, 12), generator=g)
    labels = ids.clone()
    labels[::3, :5] = -100  # uneven valid-token counts across samples
    return Blocks(ids, labels)


@pytest.fixture
def teacher():
    return make_llama(VOCAB, layers=3, seed=1).eval()
