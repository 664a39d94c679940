"""puffer_cli.text.analyzer: options, analyzer pipeline, and consistency with a tantivy index."""

from __future__ import annotations

import random

import pytest
import tantivy
from puffer_cli.errors import SchemaError
from puffer_cli.text import analyzer as text

N = text.normalize_fts_options


# ----------------------------------------------------------------------------- options


def test_defaults():
    d = N(True)
    assert d == {
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
    assert N({}) == d
    assert N(d) == d  # idempotent
    assert N({"language": "French"})["language"] == "french"
    assert N({"k1": 2})["k1"] == 2.0


@pytest.mark.parametrize(
    "opts, needle",
    [
        ({"tokeniser": "word_v1"}, "tokeniser"),
        ({"tokenizer": "word_v9"}, "word_v9"),
        ({"language": "klingon"}, "klingon"),
        ({"stemming": "yes"}, "stemming"),
        ({"remove_stopwords": 1}, "remove_stopwords"),
        ({"max_token_length": 0}, "max_token_length"),
        ({"max_token_length": 3.5}, "max_token_length"),
        ({"k1": -1}, "k1"),
        ({"b": 2}, "b"),
        ("yes", "full_text_search"),
        (None, "full_text_search"),
    ],
)
def test_bad_options(opts, needle):
    with pytest.raises(SchemaError) as e:
        N(opts)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------- tokens


def test_default_pipeline():
    # lowercase, stopwords removed, no stemming, word characters
    assert text.tokenize("The Quick brown FOXES are jumping!", True) == ["quick", "brown", "foxes", "jumping"]
    assert text.tokenize("", True) == []
    assert text.tokenize(None, True) == []


def test_stemming_and_stopwords():
    o = N({"stemming": True})
    assert text.tokenize("The running foxes jumped", o) == ["run", "fox", "jump"]
    o = N({"remove_stopwords": False})
    assert text.tokenize("the fox", o) == ["the", "fox"]
    assert text.tokenize("les renards courent", N({"language": "french", "stemming": True})) == ["renard", "courent"]


def test_language_without_stopword_list_is_accepted():
    o = N({"language": "greek"})  # tantivy has a stemmer but no stop words for greek
    assert text.tokenize("the fox", o) == ["the", "fox"]


def test_case_sensitive_and_folding():
    assert text.tokenize("Hello WORLD", N({"case_sensitive": True})) == ["Hello", "WORLD"]
    assert text.tokenize("Crème Brûlée", True) == ["crème", "brûlée"]
    assert text.tokenize("Crème Brûlée", N({"ascii_folding": True})) == ["creme", "brulee"]


def test_max_token_length_counts_bytes():
    o = N({"max_token_length": 5})
    assert text.tokenize("abcde abcdef ééé", o) == ["abcde"]  # ééé is 6 bytes
    assert text.tokenize("x" * 39 + " " + "y" * 40, True) == ["x" * 39]


def test_word_v0_vs_word_v1():
    assert text.tokenize("foo_bar baz", True) == ["foo_bar", "baz"]
    assert text.tokenize("foo_bar baz", N({"tokenizer": "word_v0"})) == ["foo", "bar", "baz"]


def test_pre_tokenized_array():
    o = N({"tokenizer": "pre_tokenized_array"})
    assert text.tokenize(["New York", "The", "ÉTÉ"], o) == ["new york", "the", "été"]
    assert text.tokenize("One Token", o) == ["one token"]
    cs = N({"tokenizer": "pre_tokenized_array", "case_sensitive": True})
    assert text.tokenize(["New York"], cs) == ["New York"]


def test_tokenize_many_matches_tokenize():
    o = N({"stemming": True})
    texts = ["the running dogs", None, "the running dogs", "", "Cats!"]
    many = text.tokenize_many(texts, o)
    assert many == [text.tokenize(t, o) for t in texts]
    many[0].append("mutated")  # results are independent lists
    assert text.tokenize_many(texts, o)[2] == ["run", "dog"]
    pre = N({"tokenizer": "pre_tokenized_array"})
    assert text.tokenize_many([["A", "b"], None], pre) == [["a", "b"], []]


def test_analyzer_cache_and_names():
    a = N(True)
    assert text.analyzer(a) is text.analyzer(True)
    assert text.analyzer(N({"k1": 2.0})) is text.analyzer(a)  # k1/b do not change tokens
    assert text.analyzer_name({"k1": 2.0, "b": 0.1}) == text.analyzer_name(True)
    names = {
        text.analyzer_name(o)
        for o in [
            True,
            {"stemming": True},
            {"remove_stopwords": False},
            {"case_sensitive": True},
            {"ascii_folding": True},
            {"max_token_length": 10},
            {"language": "french"},
            {"tokenizer": "word_v0"},
            {"tokenizer": "pre_tokenized_array"},
        ]
    }
    assert len(names) == 9
    assert text.analyzer_name(True) == "puffer_word_v1_english_w_39"


# ----------------------------------------------------------------------------- tantivy

WORDS = [
    "The",
    "running",
    "Runs",
    "fox",
    "Foxes",
    "jumped",
    "jumping",
    "over",
    "lazy",
    "dogs",
    "crème",
    "brûlée",
    "naïve",
    "café",
    "a",
    "is",
    "x" * 45,
    "don't",
    "foo_bar",
    "42",
    "Ünïcode",
]


def _index(opts, docs, tmp_path):
    name = text.analyzer_name(opts)
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("body", stored=False, tokenizer_name=name)
    sb.add_integer_field("doc", stored=True, indexed=True, fast=True)
    idx = tantivy.Index(sb.build(), path=str(tmp_path))
    assert text.register(idx, opts) == name
    w = idx.writer(15_000_000, 1)
    for i, d in enumerate(docs):
        doc = tantivy.Document(doc=i)
        if isinstance(d, list):
            for part in d:
                doc.add_text("body", part)
        else:
            doc.add_text("body", d)
        w.add_document(doc)
    w.commit()
    w.wait_merging_threads()
    idx.reload()
    return idx


def _hits(idx, term):
    q = tantivy.Query.term_query(idx.schema, "body", term)
    s = idx.searcher()
    return {s.doc(a)["doc"][0] for _, a in s.search(q, 1000).hits}


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"stemming": True},
        {"case_sensitive": True, "remove_stopwords": False},
        {"ascii_folding": True, "stemming": True, "max_token_length": 6},
        {"tokenizer": "word_v0", "language": "french", "stemming": True},
    ],
)
def test_tantivy_index_uses_the_same_tokens(opts, tmp_path):
    opts = N(opts)
    rng = random.Random(7)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8))) for _ in range(40)]
    idx = _index(opts, docs, tmp_path)
    toks = text.tokenize_many(docs, opts)
    vocab = {t for ts in toks for t in ts}
    for term in vocab:
        assert _hits(idx, term) == {i for i, ts in enumerate(toks) if term in ts}, term
    # raw words that the analyzer rewrites are not terms of the index
    for w in WORDS:
        if w not in vocab:
            assert _hits(idx, w) == set(), w


def test_tantivy_stemmed_search(tmp_path):
    opts = N({"stemming": True})
    idx = _index(opts, ["The Running Foxes jumped", "a lazy dog"], tmp_path)
    assert _hits(idx, "run") == {0}
    assert _hits(idx, "running") == set()
    q = idx.parse_query("runs AND fox", ["body"])  # query side goes through the analyzer
    assert idx.searcher().search(q, 10).count == 1


def test_tantivy_pre_tokenized(tmp_path):
    opts = N({"tokenizer": "pre_tokenized_array"})
    docs = [["New York", "Paris"], ["new york city"]]
    idx = _index(opts, docs, tmp_path)
    assert _hits(idx, "new york") == {0}
    assert _hits(idx, "new york city") == {1}
    assert text.tokenize(docs[0], opts) == ["new york", "paris"]


def test_word_v2_v3_v4_tokenizers():
    from puffer_cli.text import analyzer as text

    s = "Hello can't 3.14 東京 タワー 👍🏽 foo_bar"
    v2 = text.tokenize(s, {"tokenizer": "word_v2", "remove_stopwords": False})
    assert v2 == ["hello", "can", "t", "3", "14", "東", "京", "タワー", "👍🏽", "foo", "bar"]
    assert text.tokenize(s, {"tokenizer": "word_v3", "remove_stopwords": False}) == v2
    v4 = text.tokenize(s, {"tokenizer": "word_v4", "remove_stopwords": False})
    assert v4 == ["hello", "can't", "3.14", "東", "京", "タワー", "👍🏽", "foo_bar"]
    assert text.normalize_fts_options({"tokenizer": "word_v4"})["tokenizer"] == "word_v4"


def test_word_v4_through_bm25_and_filters(db):
    ns = db.open_namespace("v4")
    ns.write(
        {
            "upsert_rows": [{"id": 1, "t": "I can't stop"}, {"id": 2, "t": "you can stop"}],
            "schema": {"t": {"type": "string", "full_text_search": {"tokenizer": "word_v4"}, "filterable": True}},
        }
    )
    from puffer_cli.search import engine

    r = engine.run_query(ns, {"rank_by": ["t", "BM25", "can't"], "top_k": 5})
    assert [row["id"] for row in r["rows"]] == [1]  # "can't" is one token, "can" another
    r = engine.run_query(ns, {"filters": ["t", "ContainsAllTokens", "can't"], "rank_by": ["id", "asc"], "top_k": 5})
    assert [row["id"] for row in r["rows"]] == [1]
