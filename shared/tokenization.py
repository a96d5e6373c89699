"""Pure-Python BERT WordPiece tokenizer (numpy only), for edges without ``transformers``/``tokenizers``.

Reproduces the ids of Hugging Face's ``BertTokenizer``/``BertTokenizerFast`` for uncased BERT vocabularies
(e.g. all-MiniLM-L6-v2): the *basic* step cleans the text (drops NUL, U+FFFD and control characters, maps
whitespace to spaces), puts spaces around CJK ideographs, lower-cases and strips accents (NFD, drop
combining marks, category ``Mn``) when ``do_lower_case``, and splits on whitespace and punctuation
(Unicode category ``P*`` plus the ASCII symbol ranges ``!``-``/``, ``:``-``@``, ``[``-`````, ``{``-``~``);
the *WordPiece* step splits each word greedily, longest match first, continuation pieces prefixed with
``##``; a word longer than 100 characters, or one with no segmentation, becomes ``[UNK]``.

``BertTokenizer.encode_batch(texts, max_length)`` returns int64 arrays ``input_ids``, ``attention_mask``
and ``token_type_ids``, each ``[B, L]``: ``[CLS] tokens [SEP]``, truncated to ``max_length`` (special
tokens included), right-padded with ``[PAD]`` to the longest row of the batch.

Runs on Python 3.6 (the Jetson TX2 tier): stdlib ``unicodedata`` and numpy only; no I/O at import time.
"""
import os
import unicodedata
from typing import Dict, List, Sequence

import numpy as np

from .errors import ConfigError

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


def _is_whitespace(ch: str) -> bool:
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs" or ch.isspace()


def _is_control(ch: str) -> bool:
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-letter/number ASCII symbol as punctuation ("$", "^", "`" are not P* in Unicode)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    """CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana), as in BERT."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class BasicTokenizer(object):
    """Cleaning, CJK spacing, optional lower-casing + accent stripping, whitespace/punctuation split."""

    def __init__(self, do_lower_case: bool = True, tokenize_chinese_chars: bool = True) -> None:
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def _clean(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif self.tokenize_chinese_chars and _is_cjk(cp):
                out.append(" " + ch + " ")
            else:
                out.append(ch)
        return "".join(out)

    @staticmethod
    def _strip_accents(text: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    @staticmethod
    def _split_punctuation(word: str) -> List[str]:
        pieces = []  # type: List[str]
        current = []  # type: List[str]
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    pieces.append("".join(current))
                    current = []
                pieces.append(ch)
            else:
                current.append(ch)
        if current:
            pieces.append("".join(current))
        return pieces

    def tokenize(self, text: str) -> List[str]:
        words = []  # type: List[str]
        for word in self._clean(text).split():
            if self.do_lower_case:
                word = self._strip_accents(word.lower())
            for part in word.split():  # NFD can expose no new spaces, but lower() on odd chars might
                words.extend(self._split_punctuation(part))
        return words


class WordpieceTokenizer(object):
    """Greedy longest-match-first WordPiece over a fixed vocabulary."""

    def __init__(self, vocab: Dict[str, int], unk_token: str = "[UNK]", max_input_chars_per_word: int = 100,
                 prefix: str = "##") -> None:
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        self.prefix = prefix

    def tokenize(self, word: str) -> List[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces = []  # type: List[str]
        start = 0
        while start < len(word):
            end = len(word)
            piece = None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = self.prefix + sub
                if sub in self.vocab:
                    piece = sub
                    break
                end -= 1
            if piece is None:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces


def load_vocab(path: str) -> Dict[str, int]:
    """``vocab.txt`` (one token a line, id = line number) -> ``{token: id}``; errors name the file."""
    if not os.path.isfile(path):
        raise ConfigError("vocabulary file {} does not exist".format(path))
    vocab = {}  # type: Dict[str, int]
    with open(path, "r", encoding="utf-8") as f:
        for i, line in enumerate(f):
            token = line.rstrip("\r\n")
            if token and token not in vocab:
                vocab[token] = i
    if not vocab:
        raise ConfigError("vocabulary file {} is empty".format(path))
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ConfigError("vocabulary file {} lacks the special token(s) {}".format(path, ", ".join(missing)))
    return vocab


class BertTokenizer(object):
    """BERT tokenizer (basic + WordPiece) with batch encoding to int64 numpy arrays.

    ``vocab``: ``{token: id}`` holding ``[CLS]``, ``[SEP]``, ``[PAD]`` and ``[UNK]``.
    """

    def __init__(self, vocab: Dict[str, int], do_lower_case: bool = True, tokenize_chinese_chars: bool = True,
                 max_input_chars_per_word: int = 100) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ConfigError("BertTokenizer: vocabulary lacks the special token(s) {}".format(", ".join(missing)))
        self.vocab = vocab
        self.do_lower_case = do_lower_case
        self.basic = BasicTokenizer(do_lower_case, tokenize_chinese_chars)
        self.wordpiece = WordpieceTokenizer(vocab, "[UNK]", max_input_chars_per_word)
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.pad_id = vocab["[PAD]"]
        self.unk_id = vocab["[UNK]"]

    @classmethod
    def from_vocab(cls, path: str, do_lower_case: bool = True) -> "BertTokenizer":
        """Load ``vocab.txt`` at ``path``; errors (missing, empty, no special tokens) name the file."""
        return cls(load_vocab(path), do_lower_case=do_lower_case)

    def tokenize(self, text: str) -> List[str]:
        """``text`` -> WordPiece tokens, without ``[CLS]``/``[SEP]``."""
        tokens = []  # type: List[str]
        for word in self.basic.tokenize(text):
            tokens.extend(self.wordpiece.tokenize(word))
        return tokens

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> List[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def encode(self, text: str, max_length: int = 0) -> List[int]:
        """``[CLS] ids [SEP]``; truncated to ``max_length`` ids in all when ``max_length > 0``."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if max_length > 0:
            if max_length < 2:
                raise ConfigError("max_length {} leaves no room for [CLS] and [SEP]".format(max_length))
            ids = ids[:max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def count_tokens(self, text: str) -> int:
        """Number of ids ``text`` encodes to, ``[CLS]``/``[SEP]`` included, before any truncation."""
        return len(self.tokenize(text)) + 2

    def encode_batch(self, texts: Sequence[str], max_length: int) -> Dict[str, np.ndarray]:
        """``texts`` -> ``{"input_ids", "attention_mask", "token_type_ids"}``, int64 ``[B, L]``.

        Each row is ``[CLS] ... [SEP]`` truncated to ``max_length``; rows are right-padded with ``[PAD]``
        (mask 0) to the longest row; ``token_type_ids`` are all 0 (single segment).
        """
        if isinstance(texts, str):
            raise ConfigError("encode_batch() takes a list of texts, not one string")
        rows = [self.encode(t, max_length) for t in texts]
        width = max([len(r) for r in rows]) if rows else 0
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
