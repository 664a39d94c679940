"""Request JSON: integers beyond 64 bits are parsed exactly; floats take orjson's fast path."""

import pytest
from puffer_cli.server import wire


@pytest.mark.parametrize(
    "raw,exact",
    [
        (b'{"a": 18446744073709551616}', True),
        (b'{"a": -18446744073709551616}', True),
        (b'{"v": [0.5, 1234567890123456789]}', True),
        (b'{"v": [0.0012345678901234567, -0.00098765432109876543]}', False),  # query-vector floats
        (b'{"a": 1.2345678901234567e-05}', False),
        (b'{"a": 12345678901234567890.5}', False),
    ],
)
def test_long_integer_literals_and_only_they_take_the_exact_parse(raw, exact):
    assert bool(wire._LONG_DIGITS.search(raw)) is exact


def test_integers_beyond_64_bits_stay_integers():
    assert wire.parse_json(b'{"a": 18446744073709551616}') == {"a": 2**64}
    assert wire.parse_json(b'{"a": [0.001234567890123456789, 2]}') == {"a": [0.001234567890123456789, 2]}
