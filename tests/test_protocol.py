"""The request parser: every bad input is a clear ProtocolError, never anything else."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from execd import protocol
from execd.intake.requests import FIELDS
from execd.protocol import ProtocolError


def submit(**fields: Any) -> dict[str, Any]:
    base = {"strategy_id": "s1", "symbol": "AAPL", "side": "buy", "qty": "1"}
    return {**base, **fields}


@pytest.mark.parametrize(("line", "code", "text"), [
    (b"\xff\xfe", "invalid_request", "UTF-8"),
    (b"{not json", "invalid_request", "not valid JSON"),
    (b"[1, 2]", "invalid_request", "JSON object"),
    (b'{"id": 1}', "invalid_request", "op is required"),
    (b'{"id": 1, "op": "fly"}', "unknown_op", "fly"),
    (b'{"op": "ping", "x": NaN}', "invalid_request", "NaN"),
    (b'{"op": "ping", "x": Infinity}', "invalid_request", "Infinity"),
    (b'{"op": "ping", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_request", "nested"),
    (b'{"op": "ping", "x": [[[[[[1]]]]]]}', "invalid_request", "nested"),
])
def test_bad_lines(line: bytes, code: str, text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_line(line, FIELDS)
    assert info.value.code == code
    assert text in info.value.message


def test_the_id_comes_back_with_an_unknown_op() -> None:
    with pytest.raises(protocol.IdentifiedError) as info:
        protocol.parse_line(b'{"id": "abc", "op": "nope"}', FIELDS)
    assert info.value.raw_id == '"abc"'  # the id's JSON, echoed as sent


@pytest.mark.parametrize(("fields", "text"), [
    ({"qty": "0"}, "qty must be greater than 0"),
    ({"qty": "-3"}, "qty must be greater than 0"),
    ({"qty": "abc"}, "qty is not a decimal"),
    ({"qty": True}, "qty must be a decimal"),
    ({"qty": [1]}, "qty must be a decimal"),
    ({"qty": "1e30"}, "out of range"),
    ({"qty": "0.0000000001"}, "out of range"),
    ({"qty": "9" * 10_000}, "too long"),
    ({"qty": None}, "qty is required"),
    ({"side": "short"}, "side must be"),
    ({"symbol": "aapl"}, "symbol must be"),
    ({"symbol": "A" * 17}, "symbol must be"),
    ({"strategy_id": "x" * 33}, "strategy_id"),
    ({"strategy_id": 5}, "strategy_id must be a string"),
    ({"type": "iceberg"}, "type must be"),
    ({"type": "limit"}, "limit_price is required"),
    ({"limit_price": "1"}, "limit_price does not belong to a market order"),
    ({"time_in_force": "forever"}, "time_in_force"),
    ({"wait": "never"}, "wait must be"),
    ({"client_order_id": "has space"}, "client_order_id"),
])
def test_bad_submits_name_their_field(fields: dict[str, Any], text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.submit_spec(submit(**fields), now=1.0)
    assert info.value.code == "invalid_request"
    assert text in info.value.message


def test_a_good_submit_keeps_decimals_exact() -> None:
    spec, wait = protocol.submit_spec(submit(qty=Decimal("0.123456789"), type="limit",
                                             limit_price="0.1234"), now=1.0)
    assert spec.qty == Decimal("0.123456789")
    assert spec.limit_price == Decimal("0.1234")
    assert wait == "submitted"
    assert spec.client_order_id.startswith("s1-1000-")
    spec2, _ = protocol.submit_spec(submit(qty=10), now=1.0)
    assert spec2.qty == 10


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_protocol_errors(line: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.parse_line(line, FIELDS)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["strategy_id", "symbol", "side", "qty", "type",
                                        "limit_price", "time_in_force", "client_order_id",
                                        "wait", "extra"]), json_values))
def test_random_submit_fields_are_accepted_or_refused_clearly(fields: dict[str, Any]) -> None:
    line = json.dumps({"id": 1, "op": "submit", **fields}).encode()
    outcome = _submit_outcome(line)
    if isinstance(outcome, ProtocolError):
        assert outcome.code in ("invalid_request", "unknown_op")
        assert outcome.message
    else:
        assert outcome.qty > 0
        assert outcome.side in ("buy", "sell")


def _submit_outcome(line: bytes) -> Any:
    try:
        return protocol.submit_spec(protocol.parse_line(line, FIELDS).args, now=1.0)[0]
    except ProtocolError as e:
        return e


_IDS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12),
                 st.decimals(allow_nan=False, allow_infinity=False, places=3),
                 st.lists(st.integers(), max_size=2))


@given(_IDS, st.booleans(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_the_whole_line_decode_agrees_with_the_member_walk(
    rid: Any, ascii_only: bool, spaced: bool
) -> None:
    """The one-decode path (`_whole`) gives the id's text exactly as the member walk
    reads it from the line, or steps aside."""
    sep = (", ", ": ") if spaced else (",", ":")
    text = json.dumps({"id": rid, "op": "ping"}, ensure_ascii=ascii_only, separators=sep,
                      default=str)
    walked = protocol._walked(text)
    quick = protocol._whole(text)
    if quick is not None:
        assert quick == walked
    assert protocol.parse_line(text.encode(), FIELDS).raw_id == walked[1]


@pytest.mark.parametrize("line", [
    b'{"id": -0, "op": "ping"}', b'{"id": 1.50, "op": "ping"}', b'{"id": 1e400, "op": "ping"}',
    b'{"id": "a\\u0062", "op": "ping"}', b'{"id":  7 , "op": "ping"}',
])
def test_ids_that_only_the_member_walk_can_echo_are_echoed_as_sent(line: bytes) -> None:
    text = line.decode()
    sent = text.split(":", 1)[1].rsplit(",", 1)[0].strip()
    assert protocol.parse_line(line, FIELDS).raw_id == sent


def test_a_plain_submit_line_takes_the_one_decode_path() -> None:
    line = json.dumps({"id": 17, "op": "submit", **submit(client_order_id="c-1")})
    assert protocol._whole(line) == ({"id": 17, "op": "submit", **submit(client_order_id="c-1")},
                                     "17")
