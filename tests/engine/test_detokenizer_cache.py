"""The detokenizer's per-step cost: shared single-token texts, kept prefix text, no-stop path.

Streams must be exactly what the uncached detokenizer produced (deltas add up to decode()), and
a steady ASCII stream must cost one tokenizer decode per token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from actors.common.tokenizer import Tokenizer
from actors.engine.detokenizer import IncrementalDetokenizer, TokenTexts
from actors.models.embedded import write_embedded_model

EOS = 257


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path: Path = tmp_path_factory.mktemp("embedded")
    write_embedded_model(path)
    return Tokenizer.from_dir(path)


class FakeCountingTokenizer(Tokenizer):
    """The real tokenizer, counting decode calls (the seam the detokenizer calls)."""

    def __init__(self, inner: Tokenizer) -> None:
        self.__dict__.update(inner.__dict__)
        self.decodes = 0

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.decodes += 1
        return super().decode(ids, skip_special_tokens=skip_special_tokens)


def _stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.update([t], final=i == len(ids) - 1)[0] for i, t in enumerate(ids)]


def test_shared_texts_stream_equals_full_decode(tok: Tokenizer) -> None:
    """Random bytes (broken UTF-8, long held windows) and specials, one cache for all streams."""
    texts = TokenTexts(tok)
    rng = random.Random(3)
    for i in range(30):
        ids = [rng.choice([rng.randrange(256), rng.randrange(128), 0xE2, EOS]) for _ in range(40)]
        stop = ("zz",) if i % 3 == 0 else ()
        shared = IncrementalDetokenizer(tok, [256], stop, token_texts=texts)
        alone = IncrementalDetokenizer(tok, [256], stop)
        deltas = _stream(shared, ids)
        assert deltas == _stream(alone, ids)
        if not stop or shared.stop_reason is None:
            assert "".join(deltas) == tok.decode(ids)


def test_ascii_stream_costs_one_decode_per_token(tok: Tokenizer) -> None:
    counting = FakeCountingTokenizer(tok)
    texts = TokenTexts(counting)
    ids = list(b"the quick brown fox jumps over the lazy dog " * 4)
    IncrementalDetokenizer(counting, [256], token_texts=texts).update(ids)  # warms the texts
    detok = IncrementalDetokenizer(counting, [256, 116], token_texts=texts)
    detok.update([104])  # the first step decodes the prompt context as its prefix
    counting.decodes = 0
    deltas = [detok.update([t])[0] for t in ids]
    assert "".join(deltas) == bytes(ids).decode()
    assert counting.decodes == len(ids)


def test_token_texts_must_match_the_tokenizer(tok: Tokenizer) -> None:
    other = FakeCountingTokenizer(tok)
    with pytest.raises(ValueError, match="token_texts"):
        IncrementalDetokenizer(tok, [256], token_texts=TokenTexts(other))
    with pytest.raises(ValueError, match="token_texts"):
        IncrementalDetokenizer(tok, [256], token_texts=TokenTexts(tok, skip_special_tokens=False))
