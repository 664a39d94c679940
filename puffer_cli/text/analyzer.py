"""The one text analyzer of puffer.

Filters (``ContainsAllTokens`` & co.), the exact BM25 scorer and the tantivy
FTS index all tokenize through :func:`analyzer`, so a term means the same thing
everywhere.  :func:`tokenize` is literally ``analyzer(opts).analyze(text)``.

turbopuffer's ``full_text_search`` schema option is ``true`` or a dict::

    tokenizer         "word_v1" (default) | "word_v0" | "word_v2" | "word_v3" | "word_v4"
                      | "pre_tokenized_array"
    language          "english" (default) or any tantivy stemmer language (LANGUAGES)
    stemming          false (default)
    remove_stopwords  true (default); a no-op for languages tantivy has no list for
    case_sensitive    false (default)
    ascii_folding     false (default)
    max_token_length  39 (default): tokens longer than this many UTF-8 *bytes* are dropped
    k1, b             1.2, 0.75: BM25 parameters (do not affect tokens)

Pipeline (tantivy ``TextAnalyzerBuilder``), in this order:

    tokenizer -> remove_long(max_token_length + 1) -> lowercase (unless case_sensitive)
              -> ascii_fold (if ascii_folding) -> stopword(language) (if remove_stopwords)
              -> stemmer(language) (if stemming)

Tokenizers:

* ``word_v1``: tantivy regex tokenizer ``\\w+`` (Unicode word characters: letters,
  marks, digits, connector punctuation, so ``foo_bar`` is one token and combining
  accents stay attached to their letter).
* ``word_v0``: tantivy ``simple`` tokenizer (splits on anything that is not
  ``char::is_alphanumeric``; ``foo_bar`` -> ``foo``, ``bar``).
* ``word_v2`` (turbopuffer: "tokens from ideographic codepoints, contiguous sequences
  of alphanumeric codepoints, and sequences of emoji codepoints that form a single
  glyph; other codepoints are discarded"): each ideograph is one token, runs of
  alphanumerics (with combining marks) one token, an emoji glyph (with modifiers,
  variation selectors, ZWJ sequences, flag pairs) one token.  Unicode tables are the
  regex crate's, not exactly turbopuffer's Unicode 16.0.
* ``word_v3``: turbopuffer does not document how it differs from word_v2; puffer
  tokenizes it as word_v2.
* ``word_v4`` (turbopuffer's current default, UAX #29 word segmentation): approximated
  by a regex: letters/digits/connector punctuation joined by the mid-word marks
  ``' ’ . : ·`` (``can't``, ``3.14``, ``a.b``), digit groups joined by ``,`` ``;``
  (``1,000``), each ideograph and each hiragana one token, katakana runs one token,
  emoji glyphs one token.  It differs from full UAX #29 at the edges (e.g. Hebrew
  letter rules, ``WSegSpace``, mid-number marks after letters).  puffer's default
  stays ``word_v1`` (existing schemas store their tokenizer explicitly either way).
* ``pre_tokenized_array``: the attribute is a ``[]string``; every element is one
  token, used as-is except for lowercasing (unless case_sensitive).  No length
  limit, stopwords or stemming.  The tantivy analyzer is ``raw`` + lowercase, so
  index each element as a separate value of a multi-valued text field.

Stemming is off by default (as in turbopuffer); note that with stemming on, the
stemmer sees lowercased tokens only when case_sensitive is false.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from puffer_cli import caches
from puffer_cli.errors import SchemaError, show

if TYPE_CHECKING:
    import tantivy  # imported where an analyzer is built: a query without text need not load it

__all__ = [
    "DEFAULT_FTS_OPTIONS",
    "LANGUAGES",
    "STOPWORD_LANGUAGES",
    "TOKENIZERS",
    "analyzer",
    "analyzer_name",
    "ascii_pattern",
    "normalize_fts_options",
    "normalizer",
    "register",
    "tokenize",
    "tokenize_many",
]

TOKENIZERS = ("word_v1", "word_v0", "word_v2", "word_v3", "word_v4", "pre_tokenized_array")

#: Languages tantivy ships a Snowball stemmer for.
LANGUAGES = (
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
)
#: Languages tantivy ships a stop word list for (others: remove_stopwords is a no-op).
STOPWORD_LANGUAGES = frozenset(
    {
        "danish",
        "dutch",
        "english",
        "finnish",
        "french",
        "german",
        "hungarian",
        "italian",
        "norwegian",
        "portuguese",
        "russian",
        "spanish",
        "swedish",
    }
)

DEFAULT_FTS_OPTIONS: dict[str, Any] = {
    "tokenizer": "word_v1",
    "language": "english",
    "stemming": False,
    "remove_stopwords": True,
    "case_sensitive": False,
    "ascii_folding": False,
    "max_token_length": 39,
    "k1": 1.2,
    "b": 0.75,
}

_BOOL_KEYS = ("stemming", "remove_stopwords", "case_sensitive", "ascii_folding")
# Keys that change the produced tokens (k1/b only change scoring).
_TOKEN_KEYS = (
    "tokenizer",
    "language",
    "stemming",
    "remove_stopwords",
    "case_sensitive",
    "ascii_folding",
    "max_token_length",
)

_WORD_V1_PATTERN = r"\w+"
# one emoji glyph: a pictograph or regional indicator with its modifiers / variation
# selectors / keycap mark, and ZWJ sequences of them
_EMOJI = (
    r"(?:\p{Extended_Pictographic}|\p{Regional_Indicator})[\x{FE0F}\p{Emoji_Modifier}\x{20E3}]*"
    r"(?:\x{200D}\p{Extended_Pictographic}[\x{FE0F}\p{Emoji_Modifier}]*)*"
)
# word_v2: each ideograph a token, runs of alphanumerics (+ combining marks), emoji glyphs
_WORD_V2_PATTERN = r"\p{Ideographic}|[\p{Alphabetic}\p{M}\p{N}--\p{Ideographic}]+|" + _EMOJI
# word_v4: UAX #29 word segments, approximated: letters/digits/connectors joined by the
# mid-word marks ' ’ . : · (can't, 3.14, a.b), digit groups by , ; (1,000); each
# ideograph and each hiragana its own token; emoji glyphs
_W4 = r"[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}--\p{Ideographic}--\p{Hiragana}]"
_WORD_V4_PATTERN = rf"\p{{Ideographic}}|\p{{Hiragana}}|{_W4}+(?:['’.:·]{_W4}+)*(?:[,;]\p{{Nd}}+)*|" + _EMOJI
_PATTERNS = {
    "word_v1": _WORD_V1_PATTERN,
    "word_v2": _WORD_V2_PATTERN,
    "word_v3": _WORD_V2_PATTERN,
    "word_v4": _WORD_V4_PATTERN,
}


def normalize_fts_options(opts: Any) -> dict[str, Any]:
    """Return the full option dict for a ``full_text_search`` value.

    ``True`` / ``{}`` -> all defaults.  An already-normalized dict is returned
    equal (idempotent).  Unknown keys, wrong types and unknown values raise
    :class:`SchemaError`.  ``False``/``None`` are not FTS options: callers
    should treat them as "no full-text search" before calling this.
    """
    if opts is True:
        return dict(DEFAULT_FTS_OPTIONS)
    if not isinstance(opts, Mapping):
        raise SchemaError(f"full_text_search must be true or an object, got {show(opts, 80)}")
    unknown = sorted(set(opts) - set(DEFAULT_FTS_OPTIONS))
    if unknown:
        raise SchemaError(
            f"full_text_search: unknown option {show(unknown[0], 80)}; known options: " + ", ".join(DEFAULT_FTS_OPTIONS)
        )
    out = dict(DEFAULT_FTS_OPTIONS)
    out.update(opts)

    tok = out["tokenizer"]
    if tok not in TOKENIZERS:
        raise SchemaError(
            f"full_text_search: unknown tokenizer {show(tok, 80)}; expected one of " + ", ".join(TOKENIZERS)
        )
    lang = out["language"]
    if not isinstance(lang, str) or lang.lower() not in LANGUAGES:
        raise SchemaError(
            f"full_text_search: unsupported language {show(lang, 80)}; expected one of " + ", ".join(LANGUAGES)
        )
    out["language"] = lang.lower()
    for key in _BOOL_KEYS:
        if not isinstance(out[key], bool):
            raise SchemaError(f"full_text_search: {key} must be a boolean, got {show(out[key], 80)}")
    mtl = out["max_token_length"]
    if isinstance(mtl, bool) or not isinstance(mtl, int) or not 1 <= mtl <= 65535:
        raise SchemaError(
            f"full_text_search: max_token_length must be an integer between 1 and 65535, got {show(mtl, 80)}"
        )
    for key, lo in (("k1", 0.0), ("b", 0.0)):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= lo or not math.isfinite(v):
            raise SchemaError(f"full_text_search: {key} must be a finite non-negative number, got {show(v, 80)}")
        out[key] = float(v)
    if out["b"] > 1.0:
        raise SchemaError(f"full_text_search: b must be between 0 and 1, got {show(out['b'], 80)}")
    return out


def _token_key(opts: Any) -> tuple:
    n = normalize_fts_options(opts)
    return tuple(n[k] for k in _TOKEN_KEYS)


def _key_of(opts: Any) -> tuple:
    # Fast path: an already normalized dict (the common case on hot paths).
    if isinstance(opts, dict) and len(opts) == len(DEFAULT_FTS_OPTIONS):
        try:
            key = tuple(opts[k] for k in _TOKEN_KEYS)
        except KeyError:
            key = None
        if key is not None and key in _ANALYZERS:
            return key
    return _token_key(opts)


#: built analyzers per token-relevant options (pure, process-wide, not per namespace; a
#: handful of distinct option sets in practice, 256 bounds a pathological mix)
_ANALYZERS = caches.lru("text.analyzers", 256)


def _build(key: tuple) -> tantivy.TextAnalyzer:
    import tantivy

    tok, lang, stem, stop, cs, fold, mtl = key
    if tok == "pre_tokenized_array":
        b = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.raw())
        if not cs:
            b = b.filter(tantivy.Filter.lowercase())
        return b.build()
    tokenizer = tantivy.Tokenizer.regex(_PATTERNS[tok]) if tok in _PATTERNS else tantivy.Tokenizer.simple()
    return _filters(tantivy.TextAnalyzerBuilder(tokenizer), key).build()


def _filters(b: tantivy.TextAnalyzerBuilder, key: tuple) -> tantivy.TextAnalyzerBuilder:
    """The token filters of a word tokenizer's pipeline (each maps one token to at most one)."""
    import tantivy  # local: main imports tantivy lazily (a query without text need not load it)

    tok, lang, stem, stop, cs, fold, mtl = key
    b = b.filter(tantivy.Filter.remove_long(mtl + 1))
    if not cs:
        b = b.filter(tantivy.Filter.lowercase())
    if fold:
        b = b.filter(tantivy.Filter.ascii_fold())
    if stop and lang in STOPWORD_LANGUAGES:
        b = b.filter(tantivy.Filter.stopword(lang))
    if stem:
        b = b.filter(tantivy.Filter.stemmer(lang))
    return b


def analyzer(opts: Any) -> tantivy.TextAnalyzer:
    """The tantivy ``TextAnalyzer`` for these options (cached per token-relevant options)."""
    key = _key_of(opts)
    a = _ANALYZERS.get(key)
    if a is None:
        a = _build(key)
        _ANALYZERS.put(key, a)
    return a


_NORMALIZERS = caches.lru("text.normalizers", 256)


def normalizer(opts: Any) -> tantivy.TextAnalyzer:
    """The filters of a word tokenizer's analyzer behind a ``whitespace`` tokenizer:
    ``normalizer(opts).analyze(w)`` is what :func:`analyzer` makes of a word ``w`` (no
    whitespace) when its tokenizer emits ``w`` as one token (``[]`` when a filter drops
    it).  Every filter maps one token to at most one, so a text's tokens are its normalised
    words (:mod:`puffer_cli.text.batch` normalises a column's distinct words this way, many
    words per call)."""
    key = _key_of(opts)
    if key[0] == "pre_tokenized_array":
        raise ValueError("normalizer: pre_tokenized_array has no word tokenizer")
    a = _NORMALIZERS.get(key)
    if a is None:
        import tantivy

        a = _filters(tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()), key).build()
        _NORMALIZERS.put(key, a)
    return a


def ascii_pattern(opts: Any) -> str | None:
    """A regex (Rust ``regex`` syntax, as polars runs it) whose matches in an ASCII-only
    text are the tokens this analyzer's tokenizer emits for it, before filtering; ``None``
    for ``pre_tokenized_array``.  On ASCII the Unicode classes of the patterns have no
    version-dependent members, so polars' regex crate and tantivy's agree exactly."""
    tok = _key_of(opts)[0]
    if tok == "pre_tokenized_array":
        return None
    return _PATTERNS.get(tok, "[0-9A-Za-z]+")  # word_v0: tantivy's simple tokenizer (char::is_alphanumeric)


@functools.lru_cache(maxsize=256)
def _name_of(key: tuple) -> str:
    tok, lang, stem, stop, cs, fold, mtl = key
    flags = "".join(ch for ch, on in (("s", stem), ("w", stop), ("c", cs), ("a", fold)) if on)
    return f"puffer_{tok}_{lang}_{flags or 'x'}_{mtl}"


def analyzer_name(opts: Any) -> str:
    """A stable name for the analyzer, e.g. ``puffer_word_v1_english_w_39``.

    Depends only on the options that change tokens (not k1/b), so it can be
    persisted in a tantivy schema (``add_text_field(..., tokenizer_name=...)``).
    """
    return _name_of(_key_of(opts))


def register(index: tantivy.Index, opts: Any) -> str:
    """Register the analyzer in ``index`` under :func:`analyzer_name`; return the name.

    tantivy does not persist custom analyzers: call this every time an index is
    created *or opened*, before writing or searching.
    """
    name = analyzer_name(opts)
    index.register_tokenizer(name, analyzer(opts))
    return name


def tokenize(text: Any, opts: Any) -> list[str]:
    """Tokens of one value.

    ``text`` is a string, or for ``pre_tokenized_array`` a list of strings (a
    plain string is then one token).  A list given to a word tokenizer is
    tokenized element by element and the tokens concatenated.  ``None`` -> ``[]``.
    """
    if text is None:
        return []
    a = analyzer(opts)
    if isinstance(text, str):
        return a.analyze(text)
    out: list[str] = []
    for part in text:
        if part is not None:
            out.extend(a.analyze(part))
    return out


def tokenize_many(texts: Iterable[Any], opts: Any) -> list[list[str]]:
    """``[tokenize(t, opts) for t in texts]``, faster: the analyzer is looked up
    once and repeated values are analyzed once.  Cost: one Rust call per distinct
    string (~1-3 us for short strings)."""
    analyze = analyzer(opts).analyze
    memo: dict[str, list[str]] = {}
    out: list[list[str]] = []
    append = out.append
    for t in texts:
        if t is None:
            append([])
        elif isinstance(t, str):
            toks = memo.get(t)
            if toks is None:
                toks = analyze(t)
                if len(memo) < 65536:
                    memo[t] = toks
            append(list(toks))
        else:
            toks = []
            for part in t:
                if part is not None:
                    toks.extend(analyze(part))
            append(toks)
    return out
