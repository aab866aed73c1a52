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

Two BPE back ends do step 3 with identical ids (``backend=``): ``"python"``, the reference
implementation below, and ``"tokenizers"``, Hugging Face's Rust BPE over the same vocabulary and
merges (converted once to a ``tokenizer.json`` cached under CACHE/tokenizers/, keyed by the
vocabulary file's sha256; CACHE as in engine/cache.py). Steps 1, 2 and 4 are this module's in both,
because the Rust pre-tokenizer's Unicode tables and case folding are not ``regex``'s
(``'\u017f`` folds to ``'s`` under ``regex.IGNORECASE``). :func:`load_tokenizer` (and so
``BundleRuntime``) uses :data:`DEFAULT_BACKEND`; ``"tokenizers"`` falls back to ``"python"``
when the package is not installed.

Why the default is ``"python"`` (bench/cli_latency.py, docs/benchmarks.md "CLI latency"): a CLI
search tokenizes one query in a fresh process, so what counts is the time to get a tokenizer,
and there Hugging Face's ``Tokenizer.from_file`` (0.09-0.13 s CPU plus 0.01-0.03 s to import:
parsing 49k vocabulary entries and 48k merges) loses to this module's tables: the 48,894 merge
lines CLIP uses, decompressed and checked once and cached, and a hashed merge table
(:class:`_MergeTable`: sorted 64-bit hashes of the merge lines, their ranks and the ids they make,
one cached ``.npy`` array, ~1 ms to load) instead of two dicts of 49k strings (0.018-0.04 s to
build in each process; they are still built when the cache is unusable, and for ``decode``).
Encoding is ~10 % faster with Rust BPE, which only matters for batches of thousands of captions.

Cold-start costs are also why ftfy and regex are imported only for text that needs them: a text
of printable ASCII without ``&`` is left unchanged by ``ftfy.fix_text`` and by HTML unescaping,
and on it ``regex``'s classes equal the stdlib's ``[a-z]`` / ``[0-9]`` (checked in
tests/engine/test_tokenizer.py against the full path), so a plain English query costs neither
import (~0.13 s).

``tests/engine/test_tokenizer.py`` checks ids against ``open_clip.tokenize`` on thousands of
generated strings (emoji, CJK, accents, HTML entities, mojibake, very long, empty), for both back
ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["Tokenizer", "default_vocab_path", "get_tokenizer", "load_tokenizer", "tokenizers_available",
           "BACKENDS", "DEFAULT_BACKEND", "DEFAULT_CONTEXT_LENGTH"]

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 77
SOT = "<start_of_text>"
EOT = "<end_of_text>"
# Number of merge rules CLIP uses from the vocabulary file: 49408 ids = 256 bytes + 256 end-of-word
# bytes + merges + 2 specials.
_N_MERGES = 49152 - 256 - 2
_CACHE_LIMIT = 200_000
BACKENDS = ("python", "tokenizers")
#: What load_tokenizer / BundleRuntime use (module docstring: why).
DEFAULT_BACKEND = "python"
_PIECES = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
# Printable ASCII without '&': ftfy and HTML unescaping leave it as it is (module docstring).
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e]*")
#: Merge lines as _build_tables reads them: "left right", two non-blank symbols and one space.
_MERGE_LINES = re.compile(r"[^\s]+ [^\s]+(?:\n[^\s]+ [^\s]+)*")
_PLAIN_SPLITTER = re.compile(rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def default_vocab_path() -> Path:
    """The BPE merges file shipped in ``probret.engine``'s assets."""
    return Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"


def tokenizers_available() -> bool:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


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


def _clean_full(text: str) -> str:
    import html  # with ftfy: only for text that needs them (module docstring)

    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _is_plain(text: str) -> bool:
    return _PLAIN.fullmatch(text) is not None


def _clean(text: str) -> str:
    if _is_plain(text):
        return " ".join(text.split()).lower()
    return _clean_full(text)


@lru_cache(maxsize=1)
def _unicode_splitter():
    import regex

    return regex.compile(rf"{SOT}|{EOT}|{_PIECES}", regex.IGNORECASE)


def _pieces(text: str) -> list[str]:
    """Step 2 of the module docstring on the cleaned ``text``."""
    if _is_plain(text):
        return _PLAIN_SPLITTER.findall(" ".join(text.split()).lower())
    return _unicode_splitter().findall(_clean_full(text))


def _merge_text(path: Path, raw: bytes | None = None, cached: Path | None | bool = False) -> str:
    """:func:`_merge_lines` joined by newlines and checked to be merge rules, read from
    CACHE/tokenizers/clip-merges-<sha256 of the vocabulary file>.txt when an earlier call left
    them there (CACHE as in engine/cache.py). Why: decompressing, splitting and checking the
    rules costs ~13 ms of a fresh process, reading them back ~1 ms. The cache file starts with
    the CRC32 of the rest; one that fails it is written again, and an unwritable cache only costs
    the decompression."""
    raw = path.read_bytes() if raw is None else raw
    cached = _merges_cache(raw) if cached is False else cached
    if cached is not None:
        try:
            crc, _, body = cached.read_bytes().partition(b"\n")
            if crc == b"%08x" % zlib.crc32(body):
                return body.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            pass
    text = "\n".join(_merge_lines(path, raw))
    if _MERGE_LINES.fullmatch(text) is None:
        raise ValueError(f"{path}: not a CLIP BPE merges file")
    if cached is not None:
        body = text.encode("utf-8")
        try:
            from probret.engine.fsutil import atomic_write_bytes

            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cached, b"%08x\n" % zlib.crc32(body) + body)
        except OSError as exc:
            log.info("cannot cache the merge rules at %s (%s)", cached, exc)
    return text


def _merges_cache(raw: bytes) -> Path | None:
    try:
        from probret.engine.cache import cache_dir

        return cache_dir() / "tokenizers" / f"clip-merges-{hashlib.sha256(raw).hexdigest()[:32]}.txt"
    except Exception:  # noqa: BLE001 - no usable cache (no home directory): decompress every time
        return None


def _merge_lines(path: Path, raw: bytes | None = None) -> list[str]:
    """The first _N_MERGES merge rules of a CLIP vocabulary file (gzip or plain), one "a b" each.
    Decompresses only as far as those lines go (the file holds 262k, CLIP uses 48,894)."""
    raw = path.read_bytes() if raw is None else raw
    if raw[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(wbits=31)
        data, pos, step = b"", 0, 1 << 16  # CLIP's lines end ~300 kB into its 1.3 MB: 2.5 ms, not 8
        while data.count(b"\n") <= _N_MERGES and pos < len(raw):
            data += inflate.decompress(raw[pos:pos + step])
            pos += step
        raw = data
    lines = raw.decode("utf-8", errors="replace").split("\n", _N_MERGES + 1)
    merges = lines[1:_N_MERGES + 1]  # line 0 is the "#version" header
    if len(merges) != _N_MERGES:
        raise ValueError(f"{path}: not a CLIP BPE merges file")
    return merges


def _key_hash(key: bytes) -> int:
    """The 64-bit hash a merge line is looked up by (:class:`_MergeTable`); stable across
    processes, unlike ``hash(str)``."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


class _MergeTable:
    """The BPE tables of the fast path as four numpy arrays instead of two dicts of 49k strings.

    Why: building ``{"left right": rank}`` and ``{symbol: id}`` costs 18-40 ms of every fresh
    process (the strings, their hashes, the dicts; bench/cli_latency.py); loading these arrays
    from CACHE/tokenizers/ costs ~1 ms. ``hashes`` holds the sorted 64-bit hashes
    (:func:`_key_hash`) of the merge lines and ``ranks`` their ranks; a lookup bisects the
    hashes and then compares the merge line itself (``text[starts[r]:starts[r + 1] - 1]``), so a
    query whose hash happens to equal a merge line's is never taken for it: the ids are exact,
    not probably right. Two merge lines with one hash would make the table refuse to build (the
    dict tables are used then). ``ids[r]`` is the id of the symbol merge ``r`` makes and
    ``base[k]`` that of base symbol ``k`` (the byte symbols, then with ``</w>``), both taken
    from the dict tables at build time, so every id equals the reference path's."""

    FORMAT = 1

    def __init__(self, text: str, packed: np.ndarray):
        n = _N_MERGES
        self.text = text
        self.hashes = packed[0, :n].view(np.uint64)
        self.ranks, self.starts, self.ids = packed[1, :n], packed[2], packed[3, :n]
        self.base = packed[4, :512].tolist()

    @classmethod
    def pack(cls, text: str, encoder: dict, symbols: list) -> np.ndarray:
        """The (6, n + 1) int64 array of a table (row 5: format and the CRC32 of rows 0-4)."""
        lines = text.split("\n")
        hashes = np.array([_key_hash(line.encode("utf-8")) for line in lines], dtype=np.uint64)
        order = np.argsort(hashes, kind="stable")
        if np.any(np.diff(hashes[order]) == 0):
            raise ValueError("two merge lines share a 64-bit hash")
        lengths = np.array([len(line) + 1 for line in lines], dtype=np.int64)
        out = np.zeros((6, _N_MERGES + 1), dtype=np.int64)
        out[0, :-1] = hashes[order].view(np.int64)
        out[1, :-1] = order
        out[2] = np.concatenate([[0], np.cumsum(lengths)])
        out[3, :-1] = [encoder[line.replace(" ", "")] for line in lines]
        out[4, :512] = [encoder[sym] for sym in symbols[:512]]
        out[5, :2] = cls.FORMAT, zlib.crc32(out[:5].tobytes())
        return out

    @classmethod
    def check(cls, text: str, packed) -> bool:
        """Whether ``packed`` is an intact table of ``text`` (dtype, shape, CRC, offsets)."""
        return (isinstance(packed, np.ndarray) and packed.dtype == np.int64 and packed.shape == (6, _N_MERGES + 1)
                and packed[5, 0] == cls.FORMAT and packed[5, 1] == zlib.crc32(packed[:5].tobytes())
                and packed[2, -1] == len(text) + 1)

    def lookup(self, keys: list[str]) -> list[int]:
        """The merge rank of each "left right" key (``_N_MERGES`` where it is no merge rule)."""
        want = np.array([_key_hash(k.encode("utf-8")) for k in keys], dtype=np.uint64)
        pos = np.minimum(np.searchsorted(self.hashes, want), len(self.hashes) - 1)
        out = []
        for key, p, hit in zip(keys, pos.tolist(), (self.hashes[pos] == want).tolist()):
            r = int(self.ranks[p]) if hit else -1
            out.append(r if r >= 0 and self.text[self.starts[r]:self.starts[r + 1] - 1] == key else _N_MERGES)
        return out


def _load_table(path: Path, encoder_symbols) -> _MergeTable | None:
    """The :class:`_MergeTable` of the vocabulary at ``path``, from
    CACHE/tokenizers/clip-merge-table-<sha256>.npy, built and cached there when it is missing or
    fails its checks (``encoder_symbols()`` gives the dict tables it is built from). None when
    there is no usable cache (the caller uses the dict tables)."""
    raw = path.read_bytes()
    merges = _merges_cache(raw)
    if merges is None:
        return None
    text = _merge_text(path, raw, merges)
    cached = merges.with_name(merges.stem.replace("merges", "merge-table") + ".npy")
    try:
        packed = np.load(cached, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        packed = None
    if _MergeTable.check(text, packed):
        return _MergeTable(text, packed)
    try:
        packed = _MergeTable.pack(text, *encoder_symbols())
    except ValueError as exc:  # a hash collision: the dict tables do it
        log.info("no hashed merge table for %s (%s)", path, exc)
        return None
    try:
        import io

        from probret.engine.fsutil import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, packed, allow_pickle=False)
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, buf.getvalue())
    except OSError as exc:
        log.info("cannot cache the merge table at %s (%s)", cached, exc)
    return _MergeTable(text, packed)


class Tokenizer:
    """``Tokenizer(vocab_path=None, context_length=77, backend="python")``;
    ``tok(texts) -> int64 (N, context_length)``.

    Same ids as ``open_clip.tokenize(texts, context_length)`` / open_clip's ``SimpleTokenizer``,
    with either BPE back end (module docstring). ``backend="tokenizers"`` needs the package.
    """

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH, *,
                 backend: str = "python"):
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown tokenizer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.vocab_path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        self.context_length = int(context_length)
        self.backend = backend
        self._byte_table = _byte_alphabet()
        # bytes -> vocabulary characters in one str.translate over the latin-1 view of the bytes
        self._byte_trans = {b: ch for b, ch in enumerate(self._byte_table)}
        # base symbol -> its position among the 256 (code point order, as _build_tables lists them)
        self._base_pos = {ch: k for k, ch in enumerate(sorted(self._byte_table))}
        self.vocab_size = 2 * 256 + _N_MERGES + 2
        self.sot_token_id, self.eot_token_id = self.vocab_size - 2, self.vocab_size - 1
        self.pad_token_id = 0
        self._specials = {SOT: (self.sot_token_id,), EOT: (self.eot_token_id,)}
        self._cache: dict[str, tuple[int, ...]] = {}
        self._tables: tuple[dict, list, dict] | None = None
        self._hf = None
        self._table: _MergeTable | None = None
        if backend == "python":
            self._table = _load_table(self.vocab_path, lambda: self._build_tables()[:2])
            if self._table is None:
                self._build_tables()
        else:
            self._hf = _rust_bpe(self)

    def _build_tables(self) -> tuple[dict, list, dict]:
        """(symbol -> id, id -> symbol, "left right" -> merge rank) from the vocabulary file.

        Built with whole-string operations (one split of the merge lines, one ``replace`` of
        their spaces for the merged symbols) rather than a Python loop over 48,894 lines (with
        the cached merge rules, :func:`_merge_text`: 0.021 s of CPU against 0.039, best of 15,
        bench/cli_latency.py). The ranks are keyed by the merge line itself (a mapped piece never
        holds a space, so "left right" is unambiguous)."""
        if self._tables is None:
            text = _merge_text(self.vocab_path)
            lines = text.split("\n")
            # base symbols ordered by code point: the printable bytes first, then the 68 remapped ones
            base = sorted(self._byte_table)
            symbols = base + [ch + "</w>" for ch in base]
            symbols += text.replace(" ", "").split("\n")
            symbols += [SOT, EOT]
            self._tables = (dict(zip(symbols, range(len(symbols)))), symbols, dict(zip(lines, range(len(lines)))))
        return self._tables

    @property
    def _encoder(self) -> dict:
        return self._build_tables()[0]

    @property
    def _decoder(self) -> list:
        return self._build_tables()[1]

    @property
    def _ranks(self) -> dict:
        return self._build_tables()[2]

    # -- BPE -------------------------------------------------------------------------------------
    def _merge(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-token (already mapped to vocabulary characters)."""
        special = self._specials.get(piece)
        if special is not None:
            return special
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        ids = self._merge_hashed(piece) if self._table is not None else self._merge_dicts(piece)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def _merge_hashed(self, piece: str) -> tuple[int, ...]:
        """:meth:`_merge_dicts` over the :class:`_MergeTable`: the same merges in the same order,
        each merged symbol's id carried along instead of looked up at the end."""
        table, base = self._table, self._table.base
        parts = list(piece[:-1])
        parts.append(piece[-1] + "</w>")
        ids = [base[self._base_pos[c]] for c in piece[:-1]]
        ids.append(base[256 + self._base_pos[piece[-1]]])
        while len(parts) > 1:
            ranks = table.lookup([f"{a} {b}" for a, b in zip(parts, parts[1:])])
            best = min(ranks)
            if best == _N_MERGES:
                break
            at = ranks.index(best)
            left, right = parts[at], parts[at + 1]
            joined, new_id = left + right, int(table.ids[best])
            out, out_ids = [], []
            i, n = 0, len(parts)
            while i < n:
                if i + 1 < n and parts[i] == left and parts[i + 1] == right:
                    out.append(joined)
                    out_ids.append(new_id)
                    i += 2
                else:
                    out.append(parts[i])
                    out_ids.append(ids[i])
                    i += 1
            parts, ids = out, out_ids
        return tuple(ids)

    def _merge_dicts(self, piece: str) -> tuple[int, ...]:
        """Ids of one mapped pre-token with the dict tables: the reference BPE."""
        encoder, _, ranks = self._build_tables()
        parts = list(piece[:-1])
        parts.append(piece[-1] + "</w>")
        while len(parts) > 1:
            best = None
            best_rank = _N_MERGES
            for pair in zip(parts, parts[1:]):
                r = ranks.get(f"{pair[0]} {pair[1]}")
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
        return tuple(encoder[p] for p in parts)

    def encode(self, text: str) -> list[int]:
        """Ids of one text without start/end tokens and without truncation."""
        trans = self._byte_trans
        mapped = [piece.encode("utf-8").decode("latin-1").translate(trans) for piece in _pieces(text)]
        if self._hf is None:
            return [i for piece in mapped for i in self._merge(piece)]
        ids: list[int] = []
        run: list[str] = []  # pieces between special tokens go to the Rust BPE together
        for piece in mapped + [EOT]:
            special = self._specials.get(piece)
            if special is None:
                run.append(piece)
                continue
            if run:
                ids.extend(self._hf.encode(run, is_pretokenized=True, add_special_tokens=False).ids)
                run = []
            ids.extend(special)
        return ids[:-1]

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
        return (f"Tokenizer(vocab_path={str(self.vocab_path)!r}, context_length={self.context_length}, "
                f"backend={self.backend!r})")


def _rust_bpe(tok: Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` doing ``tok``'s BPE: pre-split, byte-mapped pieces
    in, ids out. Loaded from CACHE/tokenizers/clip-bpe-<sha256 of the vocabulary file>.json,
    written there from ``tok``'s own tables the first time (in memory only when CACHE is not
    writable)."""
    import tokenizers
    from tokenizers.models import BPE

    digest = hashlib.sha256(tok.vocab_path.read_bytes()).hexdigest()[:32]
    try:
        from probret.engine.cache import cache_dir

        path = cache_dir() / "tokenizers" / f"clip-bpe-{digest}.json"
    except Exception:  # noqa: BLE001 - an unusable cache only costs the conversion
        path = None
    if path is not None and path.is_file():
        try:
            return tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt
            log.warning("%s: unreadable (%s); converting the vocabulary again", path, exc)
    encoder, _, ranks = tok._build_tables()
    merges = [tuple(line.split(" ")) for line in sorted(ranks, key=ranks.__getitem__)]
    bpe = tokenizers.Tokenizer(BPE(vocab=encoder, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            bpe.save(str(tmp))
            os.replace(tmp, path)
        except OSError as exc:
            log.info("cannot cache the tokenizer at %s (%s); it is converted again next time", path, exc)
    return bpe


def load_tokenizer(vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH, *,
                   backend: str | None = None) -> Tokenizer:
    """A tokenizer with ``backend`` (default :data:`DEFAULT_BACKEND`); ``"tokenizers"`` without
    the package installed gives the ``"python"`` back end (same ids), saying so at INFO level."""
    backend = backend or DEFAULT_BACKEND
    if backend == "tokenizers" and not tokenizers_available():
        log.info("the tokenizers package is not installed; tokenizing with the pure-Python BPE (same ids)")
        backend = "python"
    return Tokenizer(vocab_path, context_length, backend=backend)


@lru_cache(maxsize=8)
def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH, vocab_path: str | None = None) -> Tokenizer:
    """A shared tokenizer per (context_length, vocab_path)."""
    return load_tokenizer(vocab_path, context_length)
