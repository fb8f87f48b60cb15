"""Error codes have one home: the ErrorCode enum. docs/protocol.md, the client's error
classes and the metrics' label values all follow it."""

from __future__ import annotations

import re
from pathlib import Path

from execd.client.errors import BY_CODE
from execd.obs import metrics
from execd.protocol import ErrorCode

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _documented_codes() -> set[str]:
    text = DOCS.read_text()
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


def test_docs_protocol_lists_exactly_the_enums_codes() -> None:
    assert _documented_codes() == {c.value for c in ErrorCode}


def test_every_code_has_its_client_error_class_and_metric_label() -> None:
    assert {c.value for c in ErrorCode} <= set(BY_CODE)
    assert set(BY_CODE) - {c.value for c in ErrorCode} == {"connection_lost", "unreachable"}
    assert set(metrics.INTAKE_ERROR_CODES) == {c.value for c in ErrorCode}


def test_the_gateway_answers_every_code_a_verb_can_refuse_with_as_alpaca_would() -> None:
    """A code missing here was answered 500 by the gateway (no_route was, once)."""
    from execd.gateway.routes import REFUSALS

    socket_only = {ErrorCode.IDLE, ErrorCode.UNKNOWN_OP, ErrorCode.LINE_TOO_LONG}
    assert set(ErrorCode) - set(REFUSALS) == socket_only
