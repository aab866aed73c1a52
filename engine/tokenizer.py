"""CLIP's byte-level BPE tokenizer, torch-free.

A from-scratch port of open_clip's ``SimpleTokenizer`` (itself OpenAI CLIP's) that gives the same
ids for every input, so a deployed search tokenizes queries exactly as the model saw captions in
training. It uses the same vocabulary file (``assets/bpe_simple_vocab_16e6.txt.gz``, MIT, see
``assets/NOTICE``) and the same text cleaning, which needs ``ftfy`` (``fix_text``) and
``regex`` (Unicode ``\\p{L}`` / ``\\p{N}`` classes); numpy is the only other dependency.

Pipeline, per text:

1. clean: ``ftfy.fix_text``, HTML-unescape twice, collapse every run of whitespace to one space,
   strip, lowercase;
2. split into pieces: the two special-token spellings, English contractions (``'s``, ``'t``,
   ``'re``, ``'ve``, ``'m``, ``'ll``, ``'d``), runs of letters, single digits, runs of anything
   else that is neither space, letter nor digit;
3. map each piece's UTF-8 bytes to printable characters (GPT-2's reversible byte table), mark the
   last one as end-of-word, and merge adjacent symbols by lowest merge rank until none applies;
4. ``[<start_of_text>] + ids + [<end_of_text>]``, zero-padded to ``context_length``; a longer
   sequence is cut to ``context_length`` and its last position set to ``<end_of_text>``.

``tests/engine/test_tokenizer.py`` checks ids against ``open_clip.tokenize`` on thousands of
generated strings (emoji, CJK, accents, HTML entities, mojibake, very long, empty).
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import ftfy
import numpy as np
import regex

__all__ = ["Tokenizer", "default_vocab_path", "get_tokenizer", "DEFAULT_CONTEXT_LENGTH"]

DEFAULT_CONTEXT_LENGTH = 77
SOT = "<start_of_text>"
EOT = "<end_of_text>"
# Number of merge rules CLIP uses from the vocabulary file: 49408 ids = 256 bytes + 256 end-of-word
# bytes + merges + 2 specials.
_N_MERGES = 49152 - 256 - 2
_CACHE_LIMIT = 200_000


def default_vocab_path() -> Path:
    """The BPE merges file shipped in ``probret.engine``'s assets."""
    return Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"


def _byte_alphabet() -> list[str]:
    """For byte value b, the character that stands for it in the vocabulary.

    Bytes that are printable Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves;
    the remaining 68 (controls, space, soft hyphen, ...) take code points 256, 257, ... in byte order.
    """
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table = []
    extra = 0
    for b in range(256):
        if b in printable:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


def _clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class Tokenizer:
    """``Tokenizer(vocab_path=None, context_length=77)``; ``tok(texts) -> int64 (N, context_length)``.

    Same ids as ``open_clip.tokenize(texts, context_length)`` / open_clip's ``SimpleTokenizer``.
    """

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        self.context_length = int(context_length)

        raw = self.vocab_path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        lines = raw.decode("utf-8").split("\n")
        # line 0 is the "#version" header; CLIP uses the first _N_MERGES rules after it
        merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{self.vocab_path}: not a CLIP BPE merges file")

        self._byte_table = _byte_alphabet()
        # bytes -> vocabulary characters in one str.translate over the latin-1 view of the bytes
        self._byte_trans = {b: ch for b, ch in enumerate(self._byte_table)}

        # base symbols ordered by code point: the printable bytes first, then the 68 remapped ones
        base = sorted(self._byte_table)
        symbols = base + [ch + "</w>" for ch in base]
        symbols += [a + b for a, b in merges]
        symbols += [SOT, EOT]
        self._encoder = {s: i for i, s in enumerate(symbols)}
        self._decoder = symbols
        self._ranks = {pair: r for r, pair in enumerate(merges)}
        self.vocab_size = len(symbols)
        self.sot_token_id = self._encoder[SOT]
        self.eot_token_id = self._encoder[EOT]
        self.pad_token_id = 0
        self._specials = {SOT: (self.sot_token_id,), EOT: (self.eot_token_id,)}
        self._cache: dict[str, tuple[int, ...]] = {}
        self._splitter = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )

    # -- BPE -------------------------------------------------------------------------------------
    def _merge(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-token (already mapped to vocabulary characters)."""
        special = self._specials.get(piece)
        if special is not None:
            return special
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        ranks = self._ranks
        parts = list(piece[:-1])
        parts.append(piece[-1] + "</w>")
        while len(parts) > 1:
            best = None
            best_rank = _N_MERGES
            for pair in zip(parts, parts[1:]):
                r = ranks.get(pair)
                if r is not None and r < best_rank:
                    best, best_rank = pair, r
            if best is None:
                break
            left, right = best
            joined = left + right
            out = []
            i, n = 0, len(parts)
            while i < n:
                if i + 1 < n and parts[i] == left and parts[i + 1] == right:
                    out.append(joined)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        ids = tuple(self._encoder[p] for p in parts)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of one text without start/end tokens and without truncation."""
        ids: list[int] = []
        trans = self._byte_trans
        for piece in self._splitter.findall(_clean(text)):
            mapped = piece.encode("utf-8").decode("latin-1").translate(trans)
            ids.extend(self._merge(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ids (special and padding ids dropped); the inverse of ``encode`` up to cleaning."""
        inverse = {ch: b for b, ch in enumerate(self._byte_table)}
        skip = {self.sot_token_id, self.eot_token_id}
        text = "".join(self._decoder[int(i)] for i in ids if int(i) not in skip and int(i) != self.pad_token_id)
        data = bytearray()
        for chunk in text.split("</w>"):
            data.extend(inverse[c] for c in chunk)
            data.extend(b" ")
        return data.decode("utf-8", errors="replace").strip()

    # -- batches ---------------------------------------------------------------------------------
    def encode_batch(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (N, L), truncated bool (N,)) in one pass."""
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length < 2:
            raise ValueError(f"context_length must be >= 2, got {length}")
        out = np.zeros((len(texts), length), dtype=np.int64)
        cut = np.zeros(len(texts), dtype=bool)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] is {type(text).__name__}, not str")
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
                cut[row] = True
            out[row, : len(ids)] = ids
        return out, cut

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """int64 array (N, context_length): same ids as ``open_clip.tokenize``."""
        return self.encode_batch(texts, context_length)[0]

    def truncated(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """bool (N,): True where a text does not fit (its tokens beyond the context are dropped)."""
        if isinstance(texts, str):
            texts = [texts]
        limit = int(context_length or self.context_length) - 2
        return np.array([len(self.encode(t)) > limit for t in texts], dtype=bool)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_path={str(self.vocab_path)!r}, context_length={self.context_length})"


@lru_cache(maxsize=8)
def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH, vocab_path: str | None = None) -> Tokenizer:
    """A shared tokenizer per (context_length, vocab_path): loading the vocabulary takes ~0.3 s."""
    return Tokenizer(vocab_path, context_length)
