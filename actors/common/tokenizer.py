"""Tokenizer: a Hugging Face checkpoint's tokenizer.json plus its chat template, no transformers.

Encoding follows `tokenizer.json` (its post-processor decides special tokens, as transformers 5
does); only when the file has no post-processor and tokenizer_config.json says `add_bos_token`
is the BOS prepended by hand. `clean_up_tokenization_spaces` is not applied: transformers skips
it for BPE models too, and a streaming detokenizer could not apply it consistently.

Chat templates render with jinja2 in an immutable sandbox configured as transformers configures
it (trim_blocks, lstrip_blocks, loopcontrols, `raise_exception`, a non-escaping `tojson`,
`strftime_now`, the `{% generation %}` tag), with the special tokens as template variables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the printable character standing for each
    byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_BYTE_LEVEL = _byte_level_alphabet()


class Tokenizer:
    def __init__(
        self,
        backend: HFTokenizer,
        *,
        special_tokens: Mapping[str, str | None] | None = None,
        add_bos_token: bool = False,
        chat_template: str | None = None,
        extra_eos_token_ids: Sequence[int] = (),
        name: str = "",
    ) -> None:
        self._tok = backend
        self.name = name
        self.special_tokens: dict[str, str | None] = {k: None for k in _SPECIAL_NAMES}
        self.special_tokens.update(special_tokens or {})
        self.chat_template = chat_template
        self._template: jinja2.Template | None = None
        vocab = backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.bos_token_id = self._id_of("bos_token")
        self.pad_token_id = self._id_of("pad_token")
        eos = [i for i in (self._id_of("eos_token"), *extra_eos_token_ids) if i is not None]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos))
        # Without a post-processor nothing else adds the BOS the config asks for.
        self._prepend_bos = (
            add_bos_token and backend.post_processor is None and self.bos_token_id is not None
        )
        added = backend.get_added_tokens_decoder()
        self.all_special_ids = frozenset(i for i, t in added.items() if t.special)
        self._byte_level = "ByteLevel" in repr(backend.decoder)  # GPT-2 style byte alphabet

    def __getstate__(self) -> dict[str, Any]:
        # Ray may ship a tokenizer to another process; a compiled jinja template does not pickle.
        return {**self.__dict__, "_template": None}

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load from a checkpoint directory; errors name the file and what is wrong with it."""
        path = Path(path)
        return cls.from_files(read_tokenizer_files(path), name=str(path))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], name: str = "") -> Tokenizer:
        """Build from the contents of a checkpoint's TOKENIZER_FILES (file name -> bytes), as
        a replica hands them to the ingress; errors name the file."""
        where = Path(name or ".")
        if "tokenizer.json" not in files:
            missing = where / "tokenizer.json"
            raise ValueError(f"{missing}: missing (fleetlm reads tokenizers from tokenizer.json)")
        try:
            backend = HFTokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
        except Exception as exc:
            raise ValueError(
                f"{where / 'tokenizer.json'}: not a valid tokenizers file: {exc}"
            ) from exc
        cfg = _json_file(files, where, "tokenizer_config.json")
        specials = {k: _token_content(cfg.get(k)) for k in _SPECIAL_NAMES}
        return cls(
            backend,
            special_tokens=specials,
            add_bos_token=bool(cfg.get("add_bos_token", False)),
            chat_template=_load_chat_template(files, where, cfg),
            extra_eos_token_ids=_config_eos_ids(files, where),
            name=name,
        )

    # ---- special tokens --------------------------------------------------------------------

    @property
    def eos_token_id(self) -> int | None:
        """The primary EOS (tokenizer_config's, else generation_config's first)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens["eos_token"]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for: a byte token's own byte (where decoding it alone
        gives U+FFFD), a SentencePiece piece's leading space. What logprobs' `bytes` carry."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.all_special_ids:
            return piece.encode("utf-8")
        byte = _BYTE_PIECE.fullmatch(piece)
        if byte is not None:
            return bytes([int(byte[1], 16)])
        if self._byte_level and all(c in _BYTE_LEVEL for c in piece):
            return bytes(_BYTE_LEVEL[c] for c in piece)
        return piece.replace("\u2581", " ").encode("utf-8")

    def _id_of(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return self._tok.token_to_id(token) if token is not None else None

    # ---- text <-> ids ----------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text: must be a string, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Render a conversation to the prompt text (encode it with encode() afterwards)."""
        if self.chat_template is None:
            raise ValueError(
                f"messages: the model {self.name or ''} has no chat template; "
                "send a plain prompt (completions) instead"
            )
        chat = _check_messages(messages)
        template = self._compiled_template()
        variables = {k: v for k, v in self.special_tokens.items() if v is not None}
        variables.update(_plain(template_kwargs, "template_kwargs"))
        variables.setdefault("tools", None)
        variables.setdefault("documents", None)
        try:
            return template.render(
                messages=chat, add_generation_prompt=add_generation_prompt, **variables
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"messages: the chat template rejected them: {exc}") from exc

    def _compiled_template(self) -> jinja2.Template:
        if self._template is None:
            try:
                self._template = _chat_environment().from_string(self.chat_template or "")
            except jinja2.TemplateError as exc:
                raise ValueError(f"chat_template: does not compile: {exc}") from exc
        return self._template


# ---- chat template helpers -----------------------------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask markers): render the body as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _chat_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson HTML-escapes; chat templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ValueError(f"messages: must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages: must not be empty")
    chat = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ValueError(f"messages[{i}]: must be an object, got {type(msg).__name__}")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}].role: must be a non-empty string, got {role!r}")
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise ValueError(
                f"messages[{i}].content: must be a string or a list of parts, "
                f"got {type(content).__name__}"
            )
        chat.append(_plain(msg, f"messages[{i}]"))
    return chat


def _plain(value: Any, where: str) -> Any:
    """Rebuild from plain JSON types so the sandbox only ever sees inert data."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, str, int, float):  # subclasses (enums...) lose their methods
        if isinstance(value, base):
            return base(value) if base is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where}: unsupported value of type {type(value).__name__}")


# ---- file helpers --------------------------------------------------------------------------

# What a tokenizer is built from, when the checkpoint has them (only tokenizer.json is required).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "config.json",
)


def read_tokenizer_files(path: Path) -> dict[str, bytes]:
    """The TOKENIZER_FILES a checkpoint directory has, by name."""
    out: dict[str, bytes] = {}
    for name in TOKENIZER_FILES:
        file = path / name
        if file.is_file():
            try:
                out[name] = file.read_bytes()
            except OSError as exc:
                raise ValueError(f"{file}: cannot read: {exc}") from exc
    return out


def _json_file(files: Mapping[str, bytes], where: Path, name: str) -> dict[str, Any]:
    raw = files.get(name)
    if raw is None:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where / name}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{where / name}: must hold a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    # tokenizer_config stores special tokens as strings or as serialized AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _load_chat_template(
    files: Mapping[str, bytes], where: Path, cfg: Mapping[str, Any]
) -> str | None:
    jinja = files.get("chat_template.jinja")
    if jinja is not None:
        return jinja.decode("utf-8")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{where / 'tokenizer_config.json'}: chat_template must be a string")
    return template


def _config_eos_ids(files: Mapping[str, bytes], where: Path) -> list[int]:
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        value = _json_file(files, where, name).get("eos_token_id")
        values = value if isinstance(value, list) else [value]
        ids.extend(v for v in values if isinstance(v, int))
    return ids
