"""Token vocabularies as {canonical key: token id}.

Two tokenizers "share" a token when it stands for the same text. Tokenizers spell the same
bytes differently (byte-level BPE writes a leading space as 'Ġ', SentencePiece as '▁',
tiktoken stores raw bytes), so every ordinary token is keyed by the exact bytes it decodes
to; control tokens (``<s>``, ``<|endoftext|>``) are keyed by their name as a ``str``, which
can never equal a ``bytes`` key. Distinct byte strings always stay distinct keys.
"""
import base64
import collections
import json
import os
import re

from awm.errors import CheckpointError

BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
METASPACE = "\u2581"


def _byte_level_alphabet():
    """The printable stand-in character byte-level BPE uses for each of the 256 bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    stand_ins, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            stand_ins[byte] = chr(byte)
        else:
            stand_ins[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in stand_ins.items()}


BYTE_OF_CHAR = _byte_level_alphabet()


def byte_level_key(token):
    if all(char in BYTE_OF_CHAR for char in token):
        return bytes(BYTE_OF_CHAR[char] for char in token)
    return token.encode("utf-8")          # an added token written as plain text


def metaspace_key(token):
    match = BYTE_TOKEN.match(token)
    if match:
        return bytes([int(match.group(1), 16)])
    return token.replace(METASPACE, " ").encode("utf-8")


def plain_key(token):
    return token.encode("utf-8")


def _add(vocab, key, token_id):
    if isinstance(token_id, int) and token_id >= 0:
        vocab.setdefault(key, token_id)    # the first (lowest-priority-free) id wins on duplicates


# ----------------------------------------------------------------------------- tokenizer.json
def _mentions(node, type_name):
    """True when a tokenizer.json component (possibly a Sequence) contains a part of that type."""
    if isinstance(node, dict):
        if node.get("type") == type_name:
            return True
        return any(_mentions(v, type_name) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_mentions(v, type_name) for v in node)
    return False


def spelled_key(token):
    """The published implementation's rule: a token is its vocabulary spelling, nothing more."""
    return token


# How tokens are matched across tokenizers: by the bytes they stand for (default), or by the
# spelling in the vocabulary file, as the published implementation does (exact parity).
VOCAB_MATCHES = ("bytes", "spelling")


def from_tokenizer_json(path, match="bytes"):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        model = data["model"]
        raw_vocab = model["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(path, f"tokenizer.json does not parse ({err.__class__.__name__})") from None
    byte_level = _mentions(data.get("decoder"), "ByteLevel") or _mentions(data.get("pre_tokenizer"), "ByteLevel")
    to_key = byte_level_key if byte_level else metaspace_key if model.get("type") != "WordPiece" else plain_key
    if match == "spelling":
        to_key = spelled_key
    special = {t.get("content"): t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict) and t.get("special")}
    vocab = {}
    if isinstance(raw_vocab, dict):
        pairs = raw_vocab.items()
    elif isinstance(raw_vocab, list):          # Unigram: [[piece, score], ...], id = position
        pairs = ((entry[0], i) for i, entry in enumerate(raw_vocab) if isinstance(entry, list) and entry)
    else:
        raise CheckpointError(path, "tokenizer.json has no usable vocab")
    for token, token_id in pairs:
        if isinstance(token, str):
            _add(vocab, token if token in special else to_key(token), token_id)
    for entry in data.get("added_tokens") or []:
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            content = entry["content"]
            _add(vocab, content if entry.get("special") or match == "spelling" else content.encode("utf-8"), entry.get("id"))
    return vocab


# ----------------------------------------------------------------------------- sentencepiece
def from_sentencepiece(path, match="bytes"):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(path)
    except Exception as err:
        raise CheckpointError(path, f"sentencepiece model does not parse ({str(err).splitlines()[0][:100] if str(err) else err.__class__.__name__})") from None
    vocab = {}
    for token_id in range(processor.GetPieceSize()):
        piece = processor.IdToPiece(token_id)
        if processor.IsControl(token_id) or processor.IsUnknown(token_id) or match == "spelling":
            _add(vocab, piece, token_id)
        else:
            _add(vocab, metaspace_key(piece), token_id)
    return vocab


# ----------------------------------------------------------------------------- tiktoken
def from_tiktoken(path, match="bytes"):
    """Qwen-1 style: one 'base64-bytes id' pair per line; keys are the raw bytes (which are
    also the spelling: its tokenizer's vocabulary is keyed by bytes)."""
    vocab = {}
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                token, token_id = line.split()
                _add(vocab, base64.b64decode(token, validate=True), int(token_id))
    except (OSError, ValueError) as err:
        raise CheckpointError(path, f"tiktoken vocabulary does not parse at line {number} ({err.__class__.__name__})") from None
    return vocab


def from_vocab_json(path, match="bytes"):
    """GPT-2 era checkpoints: vocab.json maps byte-level tokens to ids."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        vocab = {}
        for token, token_id in raw.items():
            _add(vocab, token if match == "spelling" else byte_level_key(token), token_id)
        return vocab
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(path, f"vocab.json does not parse ({err.__class__.__name__})") from None


# ----------------------------------------------------------------------------- GGUF
GGUF_CONTROL_TYPES = {2, 3}   # unknown, control
GGUF_TOKENIZER_KEYS = {"gpt2": byte_level_key, "llama": metaspace_key}


def from_gguf_metadata(tokens, token_types, tokenizer_model, match="bytes"):
    to_key = spelled_key if match == "spelling" else GGUF_TOKENIZER_KEYS.get(tokenizer_model, plain_key)
    types = token_types if token_types is not None and len(token_types) == len(tokens) else [1] * len(tokens)
    vocab = {}
    for token_id, (token, kind) in enumerate(zip(tokens, types)):
        _add(vocab, token if kind in GGUF_CONTROL_TYPES else to_key(token), token_id)
    return vocab


# Files in order of preference: the first one present in a checkpoint directory is used.
VOCAB_FILES = (
    ("tokenizer.json", from_tokenizer_json),
    ("tokenizer.model", from_sentencepiece),
    ("ice_text.model", from_sentencepiece),
    ("qwen.tiktoken", from_tiktoken),
    ("vocab.json", from_vocab_json),
)


def load_directory_vocab(directory, match="bytes"):
    """Return (vocab, source file name), or (None, None) when the directory has no tokenizer."""
    for name, parser in VOCAB_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return dict(_parsed(path, parser, match)), name
    return None, None


# A library map opens each entry's model again for every batch it is in, and parsing a large
# tokenizer takes a quarter of a second: the latest parsed vocabularies are kept, up to this many
# tokens in all (a few hundred MB at most), each under its file's size and modification time.
PARSED_TOKENS = 2_000_000
_parsed_vocabularies = collections.OrderedDict()


def _parsed(path, parser, match):
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, match)
    if key in _parsed_vocabularies:
        _parsed_vocabularies.move_to_end(key)
        return _parsed_vocabularies[key]
    vocab = _parsed_vocabularies[key] = parser(path, match)
    while sum(len(v) for v in _parsed_vocabularies.values()) > PARSED_TOKENS and len(_parsed_vocabularies) > 1:
        _parsed_vocabularies.popitem(last=False)
    return vocab
