"""engine/tokenizer.py: same ids as open_clip's SimpleTokenizer, torch-free."""

from __future__ import annotations

import random
import subprocess
import sys
import time

import numpy as np
import pytest

from probret.engine import tokenizer as tokenizer_module
from probret.engine.tokenizer import Tokenizer, default_vocab_path, get_tokenizer, load_tokenizer

N_GENERATED = 3000

# Ids computed with open_clip 3.3.0's open_clip.tokenize (context 77), so these run without torch.
GOLDEN = {
    "a man playing guitar": [49406, 320, 786, 1629, 5084, 49407],
    "": [49406, 49407],
    "Hello &amp; World!!! \U0001F600": [49406, 3306, 261, 1002, 995, 7334, 49407],
    "it's I'LL": [49406, 585, 568, 328, 1342, 49407],
    "caf\u00c3\u00a9 na\u00efve": [49406, 15304, 1097, 35689, 563, 49407],
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """The reference: the pure-Python BPE."""
    return Tokenizer()


@pytest.fixture(scope="module")
def rust_tok(tmp_path_factory) -> Tokenizer:
    """Hugging Face tokenizers' BPE, converted into a cache of this module's own."""
    pytest.importorskip("tokenizers")
    mp = pytest.MonkeyPatch()
    mp.setenv("PROBRET_CACHE", str(tmp_path_factory.mktemp("tok-cache")))
    try:
        yield Tokenizer(backend="tokenizers")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def dict_tok() -> Tokenizer:
    """The pure-Python BPE over its dict tables (no hashed merge table: engine/tokenizer.py's
    _MergeTable), the path taken when the cache is unusable."""
    t = Tokenizer()
    t._table = None
    return t


@pytest.fixture(scope="module", params=["python", "python-dicts", "tokenizers"])
def any_tok(request, tok) -> Tokenizer:
    if request.param == "python":
        assert tok._table is not None  # the hashed merge table
        return tok
    return request.getfixturevalue({"python-dicts": "dict_tok", "tokenizers": "rust_tok"}[request.param])


# ---------------------------------------------------------------------------------------------
# string generator
# ---------------------------------------------------------------------------------------------
_WORDS = (
    "a man woman dog playing guitar red blue ball video of the is running jumping cooking in on "
    "kitchen street night day car boat bird singing dancing person people two three children "
    "tennis soccer basketball NBA U.S.A. McDonald's rock'n'roll e-mail x-ray iPhone GPU 4K 3D"
).split()
_PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "!!", "?!", "’", "‘", "“", "”", "«", "»", "…", "—", "–", "·", "•", "¿", "¡", "§", "©", "®", "™", "°", "±", "×", "÷", "€", "£", "¥", "¢"]
_ACCENTS = ["é", "è", "ê", "ë", "ñ", "ü", "ö", "ä", "å", "ø", "æ", "ç", "ß", "œ", "e\u0301", "a\u0308", "n\u0303",
            "İ", "ı", "ſ", "Ω", "µ", "ﬁ", "ﬀ", "Ǆ", "ǅ", "ẞ", "Å", "K", "ª", "º", "ˆ", "ˇ", "¨"]
_SCRIPTS = [(0x0391, 0x03C9), (0x0410, 0x044F), (0x05D0, 0x05EA), (0x0627, 0x064A), (0x0905, 0x0939),
            (0x0E01, 0x0E2E), (0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
            (0xFF01, 0xFF5E), (0x2160, 0x2188), (0x0660, 0x0669), (0x2460, 0x24FF), (0x1D400, 0x1D7FF)]
_EMOJI = ["😀", "👍", "👍🏽", "🎸", "🐶", "❤️", "❤", "✨", "🇫🇷", "🇯🇵", "1️⃣", "#️⃣", "👨\u200d👩\u200d👧\u200d👦",
          "🏳️\u200d🌈", "🧑🏿\u200d🚀", "☕", "⚽", "🀄", "🫠", "🪿"]
_ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&apos;", "&nbsp;", "&#x1F600;", "&#128512;", "&eacute;",
             "&amp;amp;", "&amp;amp;amp;", "&amp;lt;", "&#xD800;", "&#0;", "&bogus;", "&amp", "&copy", "&#65",
             "&hellip;", "&mdash;", "&#x2028;"]
_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u200b", "\x0b", "\x0c", "\u2028", "\u1680"]
_CONTROL = ["\x00", "\x07", "\x1b", "\x7f", "\u0085", "\ufeff", "\u00ad", "\u200d", "\u202e", "\ufffd", "\ud800", "\udcff"]
_MOJIBAKE = ["cafÃ©", "Ã¼ber", "â€™", "â€œquotedâ€\x9d", "Ã\xa0 la", "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "æ—¥æœ¬", "ðŸ˜€", "Ã©tÃ©"]
_SPECIAL = ["<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "<ſtart_of_text>", "<|endoftext|>", "</w>", "<end_of_text"]
_CONTRACTIONS = ["'s", "'S", "'t", "'re", "'VE", "'m", "'ll", "'d", "'D", "’s", "n't", "'", "''", "'ſ"]


def _random_codepoint(rng: random.Random) -> str:
    while True:
        cp = rng.choice([rng.randrange(0x20, 0x250), rng.randrange(0x250, 0x3000),
                         rng.randrange(0x3000, 0x10000), rng.randrange(0x10000, 0x110000)])
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def _fragment(rng: random.Random) -> str:
    kind = rng.randrange(14)
    if kind == 0:
        w = rng.choice(_WORDS)
        return rng.choice([w, w.upper(), w.capitalize()])
    if kind == 1:
        return "".join(rng.choice(_PUNCT) for _ in range(rng.randint(1, 4)))
    if kind == 2:
        return rng.choice([str(rng.randrange(10 ** rng.randint(1, 8))), f"{rng.random() * 100:.2f}", "1,000", "2024-01-31", "½", "²", "٣"])
    if kind == 3:
        return "".join(rng.choice(_ACCENTS + ["a", "e", "o"]) for _ in range(rng.randint(1, 6)))
    if kind == 4:
        lo, hi = rng.choice(_SCRIPTS)
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12)))
    if kind == 5:
        return "".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 3)))
    if kind == 6:
        return rng.choice(_ENTITIES)
    if kind == 7:
        return rng.choice(_SPACES)
    if kind == 8:
        return rng.choice(_CONTROL)
    if kind == 9:
        return rng.choice(_MOJIBAKE)
    if kind == 10:
        return rng.choice(_SPECIAL)
    if kind == 11:
        return rng.choice(_WORDS) + rng.choice(_CONTRACTIONS)
    if kind == 12:
        return "".join(_random_codepoint(rng) for _ in range(rng.randint(1, 6)))
    return rng.choice(_WORDS) * rng.randint(2, 6)  # long repeated runs (BPE on long words)


def generate_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "\n\t ", "&amp;", "<start_of_text>", "😀" * 40, "a " * 200, "x" * 500]
    while len(out) < n:
        r = rng.random()
        if r < 0.03:
            out.append("")
        elif r < 0.08:  # very long: always truncated at 77
            out.append(" ".join(_fragment(rng) for _ in range(rng.randint(80, 250))))
        else:
            sep = rng.choice(["", " ", " ", " ", rng.choice(_SPACES)])
            out.append(sep.join(_fragment(rng) for _ in range(rng.randint(1, 18))))
    return out


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
def test_golden_ids(any_tok):
    tok = any_tok
    for text, ids in GOLDEN.items():
        row = tok([text])[0]
        assert row.dtype == np.int64 and row.shape == (77,)
        assert row[: len(ids)].tolist() == ids
        assert not row[len(ids):].any()


def test_shape_padding_truncation(tok):
    out = tok(["", "a b c", "word " * 100])
    assert out.shape == (3, 77) and out.dtype == np.int64
    assert out[0, :2].tolist() == [tok.sot_token_id, tok.eot_token_id] and not out[0, 2:].any()
    assert out[2, 0] == tok.sot_token_id and out[2, -1] == tok.eot_token_id  # truncated: EOT at the end
    assert (out[2, 1:-1] != 0).all()
    assert tok.truncated(["", "a b c", "word " * 100]).tolist() == [False, False, True]
    # exactly filling the context is not truncation: 75 single-token words + SOT + EOT
    assert tok.truncated(["a " * 75, "a " * 76]).tolist() == [False, True]
    ids, cut = tok.encode_batch(["a " * 75, "a " * 76])
    assert cut.tolist() == [False, True] and ids[0, -1] == ids[1, -1] == tok.eot_token_id
    short = Tokenizer(context_length=8)
    assert short(["a b c d e f g h i"]).tolist() == [[49406, 320, 321, 322, 323, 324, 325, 49407]]
    assert tok("single string").shape == (1, 77)
    assert tok(["x"], context_length=5).shape == (1, 5)
    with pytest.raises(TypeError):
        tok([None])


def test_decode_roundtrip(tok):
    text = "a man playing guitar, café 日本 😀!"
    assert tok.decode(tok(text)[0]) == "a man playing guitar , café 日本 😀!"


def test_vocab_file_and_cache():
    assert default_vocab_path().is_file()
    assert get_tokenizer(77) is get_tokenizer(77)
    assert get_tokenizer(32).context_length == 32
    assert Tokenizer().vocab_size == 49408


def test_no_torch_import():
    code = "import sys, probret.engine.tokenizer as t; t.Tokenizer()(['hi']); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_matches_open_clip_on_generated_strings(any_tok):
    tok = any_tok
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    texts = generate_strings(N_GENERATED, seed=1234)
    t0 = time.perf_counter()
    ref77 = open_clip_tokenizer.tokenize(texts).numpy()
    t1 = time.perf_counter()
    ours77, cut77 = tok.encode_batch(texts)
    t2 = time.perf_counter()
    bad = [i for i in range(len(texts)) if not np.array_equal(ref77[i], ours77[i])]
    assert not bad, f"{len(bad)} mismatches, first: {texts[bad[0]]!r}: {ref77[bad[0]].tolist()} vs {ours77[bad[0]].tolist()}"

    # truncation flags agree with open_clip's own token counts (a full row is either exactly
    # 77 tokens or truncated: only those need open_clip's untruncated length)
    simple = open_clip_tokenizer._tokenizer
    full = np.flatnonzero(ref77[:, -1] != 0)
    expect_cut = np.zeros(len(texts), dtype=bool)
    expect_cut[full] = [len(simple.encode(texts[i])) + 2 > 77 for i in full]
    assert np.array_equal(cut77, expect_cut)
    assert cut77.sum() > 100 and (~cut77).sum() > 1000  # the generator covers both cases

    # short context (the test-vit-* configs use 32): truncation puts EOT at the last position
    sub = texts[:1000]
    ref32 = open_clip_tokenizer.tokenize(sub, context_length=32).numpy()
    ours32, cut32 = tok.encode_batch(sub, context_length=32)
    assert np.array_equal(ref32, ours32)
    assert np.array_equal(cut32, tok.truncated(sub, context_length=32))
    assert cut32.sum() > cut77[:1000].sum()
    print(f"open_clip {t1 - t0:.2f}s, probret ({tok.backend}) {t2 - t1:.2f}s for {len(texts)} strings")


def test_matches_open_clip_get_tokenizer(any_tok):
    tok = any_tok
    open_clip = pytest.importorskip("open_clip")
    texts = generate_strings(300, seed=7)
    ref = open_clip.get_tokenizer("ViT-B-32")(texts).numpy()
    assert np.array_equal(ref, tok(texts))


def test_backends_agree_on_captions_and_long_texts(tok, rust_tok):
    """Without open_clip (a torch-free install): the Rust back end against the reference on the
    generated set, whole (untruncated) id lists included."""
    texts = generate_strings(2000, seed=99) + ["a man playing guitar on a stage " * 30, "<start_of_text>!!<end_of_text>x",
                                                "!!<start_of_text>", "&lt;start_of_text&gt;", "'ſ<ſtart_of_text>"]
    for text in texts:
        assert rust_tok.encode(text) == tok.encode(text), repr(text)
    assert np.array_equal(rust_tok.encode_batch(texts)[0], tok.encode_batch(texts)[0])
    assert rust_tok.decode(rust_tok("café 😀")[0]) == tok.decode(tok("café 😀")[0])


def test_plain_ascii_shortcut_equals_the_full_cleaning():
    """Printable ASCII without '&' skips ftfy and regex (module docstring); on such text the
    shortcut's pieces must be the full path's."""
    rng = random.Random(5)
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    texts += [" ".join(rng.choice(_WORDS) + rng.choice(["", *_CONTRACTIONS[:9], "!", "..."]) for _ in range(12))
              for _ in range(1000)]
    texts += ["<START_OF_TEXT> it's", "<end_of_text>", "  Padded   ", "I'LL 'VE 'Re"]
    full = tokenizer_module._unicode_splitter()
    for text in texts:
        assert tokenizer_module._is_plain(text)
        assert tokenizer_module._pieces(text) == full.findall(tokenizer_module._clean_full(text)), repr(text)
    for text in ["&amp;", "caf\u00e9", "tab\there", "\x7f", "\x1b[0m"]:
        assert not tokenizer_module._is_plain(text)


def test_plain_query_imports_neither_ftfy_nor_regex():
    code = ("import sys, probret.engine.tokenizer as t; tok = t.Tokenizer(); tok(['a man playing guitar']); "
            "assert 'ftfy' not in sys.modules and 'regex' not in sys.modules, 'imported'; "
            "tok(['caf\u00e9 &amp; 😀']); assert 'ftfy' in sys.modules and 'regex' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_rust_tokenizer_cache_is_keyed_by_the_vocabulary(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    first = Tokenizer(backend="tokenizers")
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("clip-bpe-*.json")
    stamp = cached.stat().st_mtime_ns
    assert Tokenizer(backend="tokenizers")("a dog")[0].tolist() == first("a dog")[0].tolist()
    assert cached.stat().st_mtime_ns == stamp  # loaded, not converted again
    # another vocabulary file (same merges, other bytes: not gzipped) gets a cache file of its own
    import gzip

    plain = tmp_path / "bpe.txt"
    plain.write_bytes(gzip.decompress(default_vocab_path().read_bytes()))
    other = Tokenizer(plain, backend="tokenizers")
    assert len(list((tmp_path / "cache" / "tokenizers").glob("clip-bpe-*.json"))) == 2
    assert other.encode("a man playing guitar") == first.encode("a man playing guitar")
    # a damaged cache file is converted again, with a warning, not an exception
    cached.write_text("{not json")
    assert Tokenizer(backend="tokenizers").encode("a dog") == first.encode("a dog")
    assert cached.read_text().startswith("{") and '"merges"' in cached.read_text()


def test_merge_rules_cache_is_checked_and_keyed_by_the_vocabulary(tmp_path, monkeypatch):
    """engine/tokenizer.py's _merge_text: the decompressed, checked merge rules are cached once,
    read back with the same ids as decompressing them, written again when damaged, and an
    unusable cache only costs the decompression."""
    from probret.engine.tokenizer import _merge_lines

    texts = generate_strings(300, seed=5)
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    first = Tokenizer()
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("clip-merges-*.txt")
    crc, body = cached.read_bytes().split(b"\n", 1)
    assert body.decode("utf-8").split("\n") == _merge_lines(default_vocab_path())
    stamp = cached.stat().st_mtime_ns
    again = Tokenizer()
    assert cached.stat().st_mtime_ns == stamp  # read back, not written again
    np.testing.assert_array_equal(again(texts), first(texts))
    cached.write_bytes(crc + b"\n" + body.replace(b"a", b"b", 1))  # fails its CRC
    np.testing.assert_array_equal(Tokenizer()(texts), first(texts))
    assert cached.read_bytes() == crc + b"\n" + body
    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "blocked"))
    np.testing.assert_array_equal(Tokenizer()(texts), first(texts))
    broken = tmp_path / "broken.txt"
    broken.write_text("#version: 0.2\n" + "a b c\n" * 49000)
    with pytest.raises(ValueError, match="not a CLIP BPE merges file"):
        Tokenizer(broken)
    assert len(list((tmp_path / "cache" / "tokenizers").glob("clip-merges-*.txt"))) == 1  # nothing cached for it


def test_load_tokenizer_falls_back_without_the_package():
    code = ("import sys; sys.modules['tokenizers'] = None; import probret.engine.tokenizer as t; "
            "tok = t.load_tokenizer(backend='tokenizers'); assert tok.backend == 'python', tok; "
            "assert tok(['a man playing guitar'])[0, :6].tolist() == [49406, 320, 786, 1629, 5084, 49407]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert load_tokenizer().backend == tokenizer_module.DEFAULT_BACKEND
    with pytest.raises(ValueError, match="unknown tokenizer backend"):
        Tokenizer(backend="sentencepiece")


def test_hashed_merge_table_is_cached_checked_and_rebuilt(tmp_path, monkeypatch, dict_tok):
    """engine/tokenizer.py's _MergeTable in CACHE/tokenizers/: built once, read back with the
    same ids as the dict tables, rebuilt (same ids, no error) when damaged, truncated, of
    another dtype or shape; an unwritable cache still gives the table for this process."""
    texts = generate_strings(300, seed=7)
    want = dict_tok(texts)
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    first = Tokenizer()
    assert first._table is not None
    np.testing.assert_array_equal(first(texts), want)
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("clip-merge-table-*.npy")
    good, stamp = cached.read_bytes(), cached.stat().st_mtime_ns
    np.testing.assert_array_equal(Tokenizer()(texts), want)
    assert cached.stat().st_mtime_ns == stamp  # read back, not written again
    packed = np.load(cached)
    flipped = packed.copy()
    flipped[0, 100] ^= 1  # one hash: its CRC no longer matches
    damaged = {"flipped": flipped, "int32": packed.astype(np.int32), "short": packed[:, :-1],
               "3 rows": packed[:3], "object": None}
    for name, arr in damaged.items():
        if arr is None:
            np.save(cached, np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
        else:
            np.save(cached, arr)
        again = Tokenizer()
        assert again._table is not None, name
        np.testing.assert_array_equal(again(texts), want, err_msg=name)
        assert cached.read_bytes() == good, name  # written again
    for cut in (0, 10, 200, len(good) // 2, len(good) - 1):
        cached.write_bytes(good[:cut])
        np.testing.assert_array_equal(Tokenizer()(texts), want, err_msg=str(cut))
    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "blocked"))
    np.testing.assert_array_equal(Tokenizer()(texts), want)


def test_hashed_merge_table_never_takes_a_hash_match_for_a_merge(tmp_path, monkeypatch, tok):
    """A key whose 64-bit hash equals a merge line's is compared with that line: no false merge.
    And merge lines that share a hash make the table refuse to build (the dict tables are used)."""
    table = tok._table
    real = tokenizer_module._key_hash
    member = "t h"
    assert table.lookup([member]) == [tok._ranks[member]]
    monkeypatch.setattr(tokenizer_module, "_key_hash", lambda b: real(member.encode()) if b == b"zq xv" else real(b))
    assert table.lookup(["zq xv", member]) == [tokenizer_module._N_MERGES, tok._ranks[member]]
    monkeypatch.setattr(tokenizer_module, "_key_hash", lambda b: len(b))  # collisions everywhere
    monkeypatch.setenv("PROBRET_CACHE", str(tmp_path / "cache"))
    fallback = Tokenizer()
    assert fallback._table is None
    monkeypatch.undo()  # tok's own table looks keys up with the real hash
    texts = generate_strings(100, seed=8)
    np.testing.assert_array_equal(fallback(texts), tok(texts))
