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
from execd.domain.decimals import canonical, places, plain
from execd.intake.ops import FIELDS
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
    ({"qty": "abc"}, "qty is not a plain decimal: 'abc'"),
    ({"qty": True}, "qty must be a decimal"),
    ({"qty": [1]}, "qty must be a decimal"),
    ({"qty": "1e30"}, "qty is not a plain decimal"),
    ({"qty": "1" + "0" * 13}, "out of range"),
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


# ------------------------------------------------- the decimal grammar (issue 26)
def _line_submit(**fields: str) -> bytes:
    """A submit line whose fields are given as raw JSON text (numbers as written)."""
    members = {"strategy_id": '"s1"', "symbol": '"AAPL"', "side": '"buy"', "qty": '"1"',
               **fields}
    return ('{"id":1,"op":"submit",' + ",".join(f'"{k}":{v}' for k, v in members.items())
            + "}").encode()


def _refusal(line: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        protocol.submit_spec(protocol.parse_line(line, FIELDS).args, now=1.0)
    assert info.value.code == "invalid_request"
    return info.value.message


NOT_PLAIN = ["1E-999999999", "1e3", "1E+1", "1.5e0", "1_0", " 1", "1 ", "\u0661\u0662",
             "\uff11", "+1", ".5", "5.", "0x10", "1,5", "NaN", "Infinity", "", "1e-1000030"]


@pytest.mark.parametrize("text", NOT_PLAIN)
def test_a_decimal_string_must_be_written_plainly(text: str) -> None:
    message = _refusal(_line_submit(qty=json.dumps(text)))
    assert message.startswith(f"qty is not a plain decimal: {text!r}")
    assert "ASCII digits with an optional fraction" in message


@pytest.mark.parametrize("text", ["1e3", "1E-999999999", "1.5e0", "10E0", "1e-1000030"])
def test_a_json_number_with_an_exponent_is_refused_by_its_text(text: str) -> None:
    assert _refusal(_line_submit(qty=text)).startswith(f"qty is not a plain decimal: {text!r}")
    message = _refusal(_line_submit(type='"limit"', limit_price=text))
    assert message.startswith(f"limit_price is not a plain decimal: {text!r}")


@pytest.mark.parametrize(("fields", "text"), [
    ({"qty": '"0"'}, "qty must be greater than 0"),
    ({"qty": '"0.000"'}, "qty must be greater than 0"),
    ({"qty": "0"}, "qty must be greater than 0"),
    ({"qty": "0.0"}, "qty must be greater than 0"),
    ({"qty": "-1"}, "qty must be greater than 0 (got -1)"),
    ({"qty": '"-2.5"'}, "qty must be greater than 0 (got -2.5)"),
    ({"type": '"limit"', "limit_price": '"1E-1000030"'}, "limit_price is not a plain decimal"),
    ({"type": '"limit"', "limit_price": '"0.00"'}, "limit_price must be greater than 0"),
    ({"order_class": '"bracket"', "type": '"limit"', "limit_price": '"10"',
      "take_profit": '{"limit_price":"1e2"}', "stop_loss": '{"stop_price":"9"}'},
     "take_profit.limit_price is not a plain decimal: '1e2'"),
    ({"order_class": '"bracket"', "type": '"limit"', "limit_price": '"10"',
      "take_profit": '{"limit_price":"11"}', "stop_loss": '{"stop_price":9e0}'},
     "stop_loss.stop_price is not a plain decimal: '9e0'"),
    ({"notional": '"1_000"', "qty": "null"}, "notional is not a plain decimal"),
    ({"type": '"trailing_stop"', "trail_percent": '"\u0665"'}, "trail_percent is not a plain"),
])
def test_zero_sign_and_nested_decimals_are_refused_naming_the_field(
    fields: dict[str, str], text: str
) -> None:
    assert text in _refusal(_line_submit(**fields))


@pytest.mark.parametrize(("written", "read"), [
    ('"10"', "10"), ("10", "10"), ('"0.5"', "0.5"), ("0.5", "0.5"), ('"10.50"', "10.5"),
    ("187.50", "187.5"), ('"007"', "7"), ('"0.000000001"', "0.000000001"),
])
def test_plain_decimals_as_strings_or_json_numbers_are_read_exactly(
    written: str, read: str
) -> None:
    spec, _ = protocol.submit_spec(protocol.parse_line(_line_submit(qty=written), FIELDS).args,
                                   now=1.0)
    assert spec.qty == Decimal(read)
    assert plain(spec.qty) == read


def test_replace_close_and_session_decimals_keep_the_same_grammar() -> None:
    """Every decimal a request carries goes through decimal_field."""
    for name in ("qty", "percentage", "heartbeat_s", "trail"):
        for bad in ("1E+1", "1_0", " 1", "\u0661"):
            with pytest.raises(ProtocolError) as info:
                protocol.decimal_field({name: bad}, name)
            assert info.value.message.startswith(f"{name} is not a plain decimal")


# ------------------------------------------------------------ duplicate keys
@pytest.mark.parametrize(("line", "key"), [
    (b'{"id":1,"op":"ping","strategy_id":"s1","op":"submit"}', '"op"'),
    (b'{"id":1,"op":"submit","strategy_id":"s1","symbol":"AAPL","side":"sell","qty":"1",'
     b'"side":"buy"}', '"side"'),
    (b'{"id":1,"id":2,"op":"ping"}', '"id"'),
    (b'{"id":1,"op":"submit","stop_loss":{"stop_price":"9","stop_price":"1"}}',
     '"stop_price" in "stop_loss"'),
    (b'{"id":1,"op":"ping","x":[{"a":{"b":1,"b":2}}]}', '"b" in "x"'),
])
def test_a_duplicate_key_at_any_depth_is_refused_naming_it(line: bytes, key: str) -> None:
    assert protocol._whole(line.decode()) is None  # the one-decode path steps aside
    with pytest.raises(protocol.IdentifiedError) as info:
        protocol.parse_line(line, FIELDS)
    assert info.value.code == "invalid_request"
    assert info.value.message.startswith(f"duplicate key {key}")
    assert info.value.raw_id == "1"


_NUMBERS = st.sampled_from(["10", "1.5", "1e3", "1E-999999999", "-1", "0", "0.0", "187.50",
                            "1.5e0", "-0"]) | st.from_regex(
    r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,3})?([eE][-+]?[0-9]{1,3})?", fullmatch=True)
_VALUES = _NUMBERS | st.text(max_size=6).map(json.dumps) | st.sampled_from([
    '{"a":1,"a":2}', '{"stop_price":"1","stop_price":2}', '{"stop_price":1e2}', "true",
    "null", '[1,{"x":1,"x":1}]', '"1_0"', '" 1"', '"\u0661"'])
_KEYS = st.sampled_from(["id", "op", "qty", "limit_price", "side", "strategy_id", "symbol",
                         "stop_loss", "type"])


@given(st.lists(st.tuples(_KEYS, _VALUES), max_size=8), st.sampled_from(["ping", "submit"]))
@settings(max_examples=400, deadline=None)
def test_the_one_decode_and_the_member_walk_agree_on_numbers_and_keys(
    members: list[tuple[str, str]], op: str
) -> None:
    """Numbers (with their text) and duplicate keys read the same both ways: the
    one-decode path either gives the member walk's answer or steps aside, so the
    decimal grammar and the duplicate rule hold on both."""
    text = "{" + ",".join(f'"{k}":{v}' for k, v in [("op", json.dumps(op)), *members]) + "}"
    try:
        walked: Any = protocol._walked(text)
    except ProtocolError as e:
        walked = e
    quick = protocol._whole(text)
    if quick is not None:
        assert quick == walked
    keys = [k for k, _ in members]
    if len(set(keys)) != len(keys) or "op" in keys:
        assert isinstance(walked, ProtocolError)
        assert walked.message.startswith("duplicate key")
    if isinstance(walked, tuple) and op == "submit":
        for name in ("qty", "limit_price"):
            outcome = _decimal_outcome(walked[0], name)
            raw = walked[0].get(name)
            if isinstance(raw, protocol.Number) and not protocol.PLAIN_DECIMAL.fullmatch(
                    raw.text.lstrip("-")):
                assert isinstance(outcome, ProtocolError)
            if isinstance(outcome, Decimal):
                assert outcome > 0


def _decimal_outcome(args: dict[str, Any], name: str) -> Any:
    try:
        return protocol.decimal_field(args, name)
    except ProtocolError as e:
        return e


@pytest.mark.parametrize("text", [
    "1.000000000000000000000000000001", "0.1000000000000000000000000000009",
    "99999999999.9999999999999999999"])
def test_more_digits_than_a_decimal_context_holds_are_refused_not_rounded(text: str) -> None:
    """Trimming in the default context rounds to 28 digits: these were read as 1, 0.1
    and 100000000000."""
    with pytest.raises(ProtocolError) as info:
        protocol.decimal_field({"qty": text}, "qty")
    assert "out of range (at most 9 decimal places" in info.value.message


@pytest.mark.parametrize(("value", "trimmed", "used"), [
    ("1.0000000000000000000000000000001", "1.0000000000000000000000000000001", 31),
    ("99999999999.9999999999999999999", "99999999999.9999999999999999999", 19),
    ("1E-999999999", "0." + "0" * 999999998 + "1", 999999999), ("1E+40", "1" + "0" * 40, 0),
    ("10.0", "10", 0), ("187.50", "187.5", 1),
])
def test_plain_canonical_and_places_round_nothing(value: str, trimmed: str, used: int) -> None:
    d = Decimal(value)
    assert places(d) == used
    assert canonical(d) == d
    if len(trimmed) < 100:
        assert plain(d) == trimmed
        assert plain(canonical(d)) == trimmed


@pytest.mark.parametrize(("text", "rule"), [
    ("190.29010000000001", "at most 2 for a price at or above $1"),  # a float's digits
    ("190.2901", "at most 2 for a price at or above $1"),
    ("0.12345678901", "at most 4 for a price below $1"),
])
def test_a_price_with_too_many_places_names_the_price_rule(text: str, rule: str) -> None:
    """Not the general limit of 9 places, which is not the rule a price breaks."""
    with pytest.raises(ProtocolError) as info:
        protocol.price_field({"limit_price": text}, "limit_price")
    assert rule in info.value.message
