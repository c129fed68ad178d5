"""Tokenizer and IncrementalDetokenizer vs transformers' PreTrainedTokenizerFast on the same files.

Three tokenizers, each built in milliseconds: the embedded byte-level one (no merges), a trained
byte-level BPE with merges (GPT-2/Llama-3 style) and a trained SentencePiece-style BPE with byte
fallback (Llama-2 style: leading-space handling, bytes as <0xNN> tokens).
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from actors.common.tokenizer import Tokenizer
from actors.engine.detokenizer import IncrementalDetokenizer
from actors.models.embedded import write_embedded_model

CORPUS = [
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog. Hello again!",
    "Ünïcödé text: héllo wörld, naïve café, 日本語のテキスト.",
    "def main():\n    return 42  # code with    spaces\n",
] * 20
TEXTS = [
    "Hello world",
    "  leading spaces and trailing  ",
    "naïve café 🙂 日本語 — done.",
    "emoji 🤖🦙 and <|end|> inline special",
    "line one\nline two\n\ttabbed",
    "",
]
# Exercises what HF's environment provides: namespace, loop controls, tojson without HTML
# escaping, raise_exception, the {% generation %} tag, trim/lstrip of blocks, special tokens.
RICH_TEMPLATE = """{%- set ns = namespace(system='') -%}
{%- if messages[0]['role'] == 'system' -%}
    {%- set ns.system = messages[0]['content'] -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{{ bos_token }}
{%- if ns.system %}<<SYS>>{{ ns.system | trim }}<</SYS>>
{% endif %}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant') }}
    {% endif %}
    {% if message['role'] == 'user' %}
[INST] {{ message['content'] | trim }} [/INST]
    {% else %}
{% generation %}{{ message['content'] }}{% endgeneration %}{{ eos_token }}
    {% endif %}
    {% if message.get('meta') %}{{ message['meta'] | tojson }}{% endif %}
    {% if loop.index > 6 %}{% break %}{% endif %}
{% endfor %}
{% if tools %}{{ tools | tojson(indent=2) }}{% endif %}
{% if add_generation_prompt %}[ASSISTANT]{% endif %}"""


def _save(tok: HFTokenizer, path: Path, config: dict, extra: dict[str, object]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    for name, content in extra.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (path / name).write_text(text)
    return path


def _byte_bpe(path: Path) -> Path:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|begin|>", "<|end|>", "<|eot|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    begin = tok.token_to_id("<|begin|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", special_tokens=[("<|begin|>", begin)]
    )
    config = {"bos_token": "<|begin|>", "eos_token": "<|eot|>", "pad_token": None}
    gen = {"eos_token_id": [tok.token_to_id("<|end|>"), tok.token_to_id("<|eot|>")]}
    extra = {"chat_template.jinja": RICH_TEMPLATE, "generation_config.json": gen}
    return _save(tok, path, config, extra)


def _sentencepiece_bpe(path: Path) -> Path:
    """Llama-2 layout: '▁' for spaces, byte fallback tokens, strip one leading space on decode."""
    trained = HFTokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    trained.train_from_iterator(CORPUS, trainer)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token in sorted(trained.get_vocab(), key=trained.token_to_id):
        vocab.setdefault(token, len(vocab))
    merges = json.loads(trained.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = HFTokenizer(
        models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = trained.normalizer
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    config = {
        "bos_token": {"__type": "AddedToken", "content": "<s>", "special": True},
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "chat_template": [{"name": "default", "template": RICH_TEMPLATE}],
    }
    return _save(tok, path, config, {})


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    embedded = root / "embedded"
    embedded.mkdir()
    write_embedded_model(embedded)
    return {
        "embedded": embedded,
        "byte_bpe": _byte_bpe(root / "byte_bpe"),
        "sentencepiece": _sentencepiece_bpe(root / "sentencepiece"),
    }


@pytest.fixture(scope="module", params=["embedded", "byte_bpe", "sentencepiece"])
def pair(request: pytest.FixtureRequest, dirs: dict[str, Path]) -> tuple[Tokenizer, object]:
    path = dirs[request.param]
    return Tokenizer.from_dir(path), PreTrainedTokenizerFast.from_pretrained(str(path))


def test_encode_decode_match_hf(pair: tuple[Tokenizer, PreTrainedTokenizerFast]) -> None:
    ours, hf = pair
    assert ours.vocab_size == len(hf)
    assert ours.bos_token_id == hf.bos_token_id
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == hf.encode(text, add_special_tokens=special), (text, special)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(
                    ids, skip_special_tokens=skip
                )


CHATS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "meta": {"ü": "<b>&</b>", "n": [1, 2]}},
        {"role": "user", "content": "And 3+3? 🙂"},
    ],
]


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_matches_hf(
    pair: tuple[Tokenizer, PreTrainedTokenizerFast], generation_prompt: bool
) -> None:
    ours, hf = pair
    tools = [{"type": "function", "function": {"name": "add", "description": "a<b"}}]
    for chat in CHATS:
        expected = hf.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=generation_prompt
        )
        assert ours.apply_chat_template(chat, add_generation_prompt=generation_prompt) == expected
    expected = hf.apply_chat_template(CHATS[0], tokenize=False, tools=tools)
    assert ours.apply_chat_template(CHATS[0], add_generation_prompt=False, tools=tools) == expected


def test_embedded_chat_template_renders_turns_and_pickles(dirs: dict[str, Path]) -> None:
    tok = Tokenizer.from_dir(dirs["embedded"])
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|user|>\nhi</s>\n<|assistant|>\n"
    clone = pickle.loads(pickle.dumps(tok))  # Ray ships objects by pickle
    assert clone.apply_chat_template([{"role": "user", "content": "hi"}]) == text
    assert clone.encode("hi") == tok.encode("hi")


@pytest.mark.parametrize(
    "messages, match",
    [
        ("hello", "messages: must be a list"),
        ([], "messages: must not be empty"),
        (["hi"], r"messages\[0\]: must be an object"),
        ([{"content": "hi"}], r"messages\[0\].role"),
        ([{"role": "user", "content": 3}], r"messages\[0\].content"),
        ([{"role": "user", "content": object()}], r"messages\[0\].content"),
        ([{"role": "assistant", "content": "x"}], "messages: the chat template rejected them"),
    ],
)
def test_malformed_messages_raise_value_error(
    dirs: dict[str, Path], messages: object, match: str
) -> None:
    tok = Tokenizer.from_dir(dirs["byte_bpe"])
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(messages)


def test_missing_template_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    tok = HFTokenizer(models.BPE({"a": 0, "b": 1}, []))
    path = _save(tok, tmp_path / "plain", {}, {})
    plain = Tokenizer.from_dir(path)
    with pytest.raises(ValueError, match="messages: .*no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="tokenizer.json: missing"):
        Tokenizer.from_dir(tmp_path)
    (path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        Tokenizer.from_dir(path)


def test_eos_ids_from_tokenizer_and_generation_config(dirs: dict[str, Path]) -> None:
    tok = Tokenizer.from_dir(dirs["byte_bpe"])
    eot, end = tok.token_to_id("<|eot|>"), tok.token_to_id("<|end|>")
    assert tok.eos_token_id == eot  # tokenizer_config's comes first
    assert set(tok.eos_token_ids) == {eot, end}
    assert Tokenizer.from_dir(dirs["embedded"]).eos_token_ids == (257,)


def test_bos_prepended_by_config_when_no_post_processor(tmp_path: Path) -> None:
    tok = HFTokenizer(models.BPE({"<s>": 0, "a": 1}, []))
    tok.add_special_tokens(["<s>"])
    path = _save(tok, tmp_path / "nopp", {"bos_token": "<s>", "add_bos_token": True}, {})
    ours = Tokenizer.from_dir(path)
    assert ours.encode("aa") == [0, 1, 1]
    assert ours.encode("aa", add_special_tokens=False) == [1, 1]


# ---- streaming detokenization ----------------------------------------------------------------


def _stream(
    tok: Tokenizer, prompt: list[int], ids: list[int], **kwargs: object
) -> tuple[list[str], str | None]:
    detok = IncrementalDetokenizer(tok, prompt, **kwargs)
    deltas, hit = [], None
    for i, token in enumerate(ids):
        delta, hit = detok.update([token], final=i == len(ids) - 1)
        deltas.append(delta)
        if hit is not None:
            break
    return deltas, hit


def test_stream_concat_equals_full_decode(dirs: dict[str, Path]) -> None:
    for name in ("embedded", "byte_bpe", "sentencepiece"):
        tok = Tokenizer.from_dir(dirs[name])
        prompt = tok.encode("Question: say something nice.")
        for text in TEXTS[:5]:
            out = tok.encode(text, add_special_tokens=False)
            deltas, _ = _stream(tok, prompt, out)
            full = tok.decode(prompt + out)
            assert "".join(deltas) == full[len(tok.decode(prompt)) :], (name, text)
            assert all("\ufffd" not in d for d in deltas), (name, text, deltas)


def test_stream_of_random_bytes_matches_lossy_decode(dirs: dict[str, Path]) -> None:
    """Arbitrary byte tokens (broken UTF-8 included) + specials: deltas add up to decode()."""
    tok = Tokenizer.from_dir(dirs["embedded"])
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.choice([rng.randrange(256), rng.randrange(256), 0xF0, 257]) for _ in range(30)]
        deltas, _ = _stream(tok, [256], ids)
        assert "".join(deltas) == tok.decode(ids)


def test_multibyte_chars_are_held_until_complete(dirs: dict[str, Path]) -> None:
    tok = Tokenizer.from_dir(dirs["embedded"])
    ids = list("a🙂".encode())  # byte tokens: 'a', then the emoji's 4 bytes one by one
    deltas, _ = _stream(tok, [256], ids)
    assert deltas == ["a", "", "", "", "🙂"]


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens_is_never_half_emitted(
    dirs: dict[str, Path], include: bool
) -> None:
    for name in ("embedded", "byte_bpe", "sentencepiece"):
        tok = Tokenizer.from_dir(dirs[name])
        ids = tok.encode("Hello world, the quick brown fox jumps", add_special_tokens=False)
        deltas, hit = _stream(
            tok, [], ids, stop=("brown fox", "zzz"), include_stop_str_in_output=include
        )
        expected = "Hello world, the quick " + ("brown fox" if include else "")
        assert hit == "brown fox"
        assert "".join(deltas) == expected, name
        so_far = ""
        for delta in deltas:  # every prefix handed out is a prefix of the final text
            so_far += delta
            assert expected.startswith(so_far)


def test_earliest_stop_wins_and_later_updates_are_empty(dirs: dict[str, Path]) -> None:
    tok = Tokenizer.from_dir(dirs["embedded"])
    detok = IncrementalDetokenizer(tok, [256], stop=("world", "lo"))
    text, hit = detok.update(tok.encode("hello world", add_special_tokens=False))
    assert (text, hit) == ("hel", "lo")
    assert detok.update(tok.encode("more", add_special_tokens=False)) == ("", None)
    assert detok.stop_reason == "lo" and detok.output_text == "hel"


def test_holdback_is_flushed_on_final(dirs: dict[str, Path]) -> None:
    tok = Tokenizer.from_dir(dirs["embedded"])
    detok = IncrementalDetokenizer(tok, [256], stop=("xyz",))
    assert detok.update(tok.encode("abc", add_special_tokens=False)) == ("a", None)
    assert detok.update([257]) == ("", None)  # EOS: a skipped special token adds no text
    assert detok.update([], final=True) == ("bc", None)


def test_empty_stop_string_rejected(dirs: dict[str, Path]) -> None:
    tok = Tokenizer.from_dir(dirs["embedded"])
    with pytest.raises(ValueError, match="stop"):
        IncrementalDetokenizer(tok, [256], stop=("",))


@pytest.mark.parametrize("kind", ["embedded", "byte_bpe", "sentencepiece"])
def test_token_bytes_are_each_tokens_own_bytes(dirs: dict[str, Path], kind: str) -> None:
    """Joined, the tokens' raw bytes are the text: byte tokens give their byte (not U+FFFD),
    SentencePiece pieces their space. (Logprobs' `bytes` and "bytes:..." tokens use them.)"""
    tok = Tokenizer.from_dir(dirs[kind])
    for text in TEXTS[:-1]:
        ids = tok.encode(text, add_special_tokens=False)
        raw = b"".join(tok.token_bytes(i) for i in ids)
        expected = text.encode("utf-8")
        if kind == "sentencepiece":
            expected = b" " + expected  # the piece's own leading space, which decode strips
        assert raw == expected, (kind, text)
    partial = [i for i in range(tok.vocab_size) if _not_utf8(tok.token_bytes(i))]
    assert partial  # every byte-capable tokenizer here has tokens that are part of a character
    assert len({tok.token_bytes(i) for i in partial}) == len(partial)  # none collide


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
