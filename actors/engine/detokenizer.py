"""Streaming detokenization with stop strings, one IncrementalDetokenizer per request.

Text is produced with the prefix/read-offset method (as in TGI and vLLM): each step decodes a
short window of tokens twice, once without and once with the new tokens, and emits the
difference. Decoding a window rather than single tokens keeps decoders that look at neighbours
(SentencePiece's leading space, byte fallback, byte-level BPE) correct; a window that ends in
U+FFFD is an incomplete UTF-8 sequence, so nothing is emitted until a later token completes it.

Stop strings are searched in the output text only (never the prompt). Until the request ends,
the last len(longest stop) - 1 characters are held back so a stop string that is still being
generated is never half-emitted.

Per step the common case is one new token whose previous window is a single token: that window's
text comes from a TokenTexts cache shared by the engine's detokenizers, and a longer window's text
is kept until the offsets move, so a step costs one decode call; a request without stop strings
skips the stop scan and holdback entirely.
"""

from __future__ import annotations

from collections.abc import Sequence

from actors.common.migration import DetokenizerState
from actors.common.tokenizer import Tokenizer

# Prompt tokens decoded in front of the first output token, so the first token decodes in context
# (e.g. SentencePiece drops the leading space of a window's first token).
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class TokenTexts:
    """decode([token]) per token id: one tokenizer's single-token windows, computed once each.

    Decoding is a pure function of the ids, so sharing these between requests is exact; the
    cache is bounded by the vocabulary.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._texts: dict[int, str] = {}

    def get(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=self.skip_special_tokens)
            self._texts[token_id] = text
        return text


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: Sequence[int],
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
        token_texts: TokenTexts | None = None,
    ) -> None:
        """`token_texts`: a cache shared with other detokenizers of the same tokenizer."""
        if any(not s for s in stop):
            raise ValueError("stop: stop strings must be non-empty")
        if token_texts is not None and (
            token_texts.tokenizer is not tokenizer
            or token_texts.skip_special_tokens != skip_special_tokens
        ):
            raise ValueError("token_texts: must cache the same tokenizer and skip_special_tokens")
        if token_texts is None:
            token_texts = TokenTexts(tokenizer, skip_special_tokens)
        self._texts = token_texts
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._include_stop = include_stop_str_in_output
        self._skip_special = skip_special_tokens
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        # Only the prompt's tail matters as decoding context; long prompts are not copied.
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        # Text of ids[prefix_offset:read_offset]; it only changes when the offsets move, so a
        # window waiting on an incomplete UTF-8 sequence is not decoded again every step.
        self._prefix_text: str | None = None
        self.output_text = ""  # all decoded output text (truncated at a stop string)
        self._num_emitted = 0  # characters of output_text handed out so far
        self.stop_reason: str | None = None  # the stop string that matched, once one has

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def export_state(self) -> DetokenizerState:
        """Where this detokenizer stands, for a request that migrates to another replica."""
        return DetokenizerState(
            ids=tuple(self._ids),
            prefix_offset=self._prefix_offset,
            read_offset=self._read_offset,
            output_text=self.output_text,
            num_emitted=self._num_emitted,
            stop_reason=self.stop_reason,
        )

    def import_state(self, state: DetokenizerState) -> None:
        """Continue from an exported state: the next delta is exactly what the source's next
        delta would have been."""
        if not 0 <= state.prefix_offset <= state.read_offset <= len(state.ids):
            raise ValueError("detokenizer: offsets outside the exported window")
        self._ids = list(state.ids)
        self._prefix_offset, self._read_offset = state.prefix_offset, state.read_offset
        self._prefix_text = None
        self.output_text = state.output_text
        self._num_emitted = state.num_emitted
        self.stop_reason = state.stop_reason

    def update(self, new_token_ids: Sequence[int], final: bool = False) -> tuple[str, str | None]:
        """Add sampled tokens; return (text delta, stop string that matched now or None).

        `final` flushes everything held back (the request ends for another reason: EOS, length).
        After a stop string matched, further calls return ("", None).
        """
        if self.stopped:
            return "", None
        if not self._stop:  # nothing to scan or hold back: the new text is the delta
            new_text = "".join(self._decode_new(new_token_ids, final))
            self.output_text += new_text
            self._num_emitted = len(self.output_text)
            return new_text, None
        before = len(self.output_text)
        self.output_text += "".join(self._decode_new(new_token_ids, final))
        matched = self._find_stop(before)
        if matched is not None:
            return self._emit(len(self.output_text)), matched
        limit = len(self.output_text) if final else len(self.output_text) - self._holdback
        return self._emit(limit), None

    def _decode_new(self, new_token_ids: Sequence[int], final: bool) -> list[str]:
        pieces = []
        for token_id in new_token_ids:
            self._ids.append(token_id)
            pieces.append(self._decode_step(final=False))
        if final:
            pieces.append(self._decode_step(final=True))
        return pieces

    def _decode_step(self, final: bool) -> str:
        """Text newly completed by the tokens after the read offset ('' while UTF-8 is partial)."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._prefix_text
        if prefix_text is None:
            prefix_text = self._prefix_text = self._window_text()
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text):
            return ""  # e.g. only skipped special tokens so far
        if full_text.endswith(_REPLACEMENT_CHAR) and not final:
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = None
        return full_text[len(prefix_text) :]

    def _window_text(self) -> str:
        if self._read_offset - self._prefix_offset == 1:
            return self._texts.get(self._ids[self._prefix_offset])
        return self._decode(self._ids[self._prefix_offset : self._read_offset])

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _find_stop(self, before: int) -> str | None:
        """Find the earliest stop string that ends in the new text; truncate the output there."""
        if not self._stop or len(self.output_text) == before:
            return None
        best: tuple[int, str] | None = None
        for stop in self._stop:
            # A match that ended before `before` would have been found on an earlier step.
            start = self.output_text.find(stop, max(before - len(stop) + 1, 0))
            if start != -1 and (best is None or start < best[0]):
                best = (start, stop)
        if best is None:
            return None
        start, stop = best
        end = start + len(stop) if self._include_stop else start
        self.output_text = self.output_text[:end]
        self.stop_reason = stop
        return stop

    def _emit(self, limit: int) -> str:
        if limit <= self._num_emitted:
            return ""
        delta = self.output_text[self._num_emitted : limit]
        self._num_emitted = limit
        return delta
