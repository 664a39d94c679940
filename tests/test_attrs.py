"""puffer_cli.schema.types: the one RFC 3339 parser and base64 vector decoder, used by writes,
filters and queries alike."""

from __future__ import annotations

import base64
from fractions import Fraction

import numpy as np
import pytest
from puffer_cli import filters
from puffer_cli.errors import InvalidFilter, SchemaError
from puffer_cli.schema import frames
from puffer_cli.schema import types as attrs

DAY = 86_400_000
OK = [
    ("2020-01-01", 18262 * DAY),
    ("2020-01-01T00:00:00Z", 18262 * DAY),
    ("2020-01-01t00:00:00z", 18262 * DAY),
    ("2020-01-01 00:00:00", 18262 * DAY),
    ("2019-12-31T19:00:00-05:00", 18262 * DAY),
    ("2020-01-01T00:00:00.0005Z", 18262 * DAY + Fraction(1, 2)),
    ("1970-01-01T00:00:00.001+00:00", 1),
    ("0001-01-01T00:00:00Z", attrs.DATETIME_MS[0]),
    # ISO 8601 extended-format reduced forms (turbopuffer.com/docs/schema: "optional time and time zone")
    ("2020-01-01T00:00", 18262 * DAY),
    ("2019-12-31T19:00-05", 18262 * DAY),
    ("2020-01-01T01:00:00+01", 18262 * DAY),
]
BAD = [
    "",
    " 2020-01-01",
    "2020-01-01 ",
    "20200101",
    "2020-W01-1",
    "2020-01-01T00",
    "2020-01-01T00:00.5",
    "2020-01-01T00:00:00+0100",
    "2020-01-01T00:00:00+1",
    "2020-01-01T00:00:00+24:00",
    "2020-02-30",
    "99999-01-01",
    "0000-01-01",
    "yesterday",
]


@pytest.mark.parametrize("s,ms", OK)
def test_rfc3339_accepted(s, ms):
    assert attrs.parse_datetime_ms(s) == ms


@pytest.mark.parametrize("s", BAD)
def test_rfc3339_refused_by_writes_and_filters(s):
    assert attrs.parse_datetime_ms(s) is None
    with pytest.raises(SchemaError, match="RFC 3339"):
        frames.check_scalar(s, "datetime", "d", 0)
    with pytest.raises(InvalidFilter, match="RFC 3339"):
        filters.validate_filter(["d", "Eq", s], {"d": {"type": "datetime"}})


def test_offset_beyond_year_9999_is_out_of_range():
    ms = attrs.parse_datetime_ms("9999-12-31T23:59:59-01:00")
    assert ms is not None and ms > attrs.DATETIME_MS[1]
    with pytest.raises(SchemaError, match="out of range"):
        frames.check_scalar("9999-12-31T23:59:59-01:00", "datetime", "d", 0)


def test_base64_vectors():
    v = np.array([1.0, -2.5], dtype="<f4")
    assert attrs.decode_vector_b64(base64.b64encode(v.tobytes()).decode()).tolist() == [1.0, -2.5]
    for bad, msg in [("!!", "not valid base64"), ("AAA=", "multiple of 4")]:
        with pytest.raises(ValueError, match=msg):
            attrs.decode_vector_b64(bad)
