"""A smoke run of the stream benchmarks (bench/streaming.py) at tiny sizes, on both
backends, so they cannot rot. The goals themselves are not asserted (a 2-core box under
test load): only that every figure is a measured, sane number, that the stream beats
polling, and that the budget holds."""

from __future__ import annotations

import math

from bench import streaming


def _one(rows: dict[str, streaming.Row], *words: str) -> streaming.Row:
    found = [r for f, r in rows.items() if all(w in f for w in words)]
    assert len(found) == 1, (words, list(rows))
    return found[0]


def test_the_stream_figures_are_measured() -> None:
    """On one backend (the stream's behaviour on both is tested in test_stream.py; this
    keeps the benchmark from rotting). At 15x scaled time, not 30x: the limiter's 1%
    window slack is 40 ms of real time then, which a loaded 2-core box's thread hand-off
    did exceed once at 30x (20 ms), for one 429 the real 60 s window never sees."""
    measured, notes = streaming.run(quick=True, backend="asyncio")
    assert notes
    rows = {r.figure: r for r in measured}
    sizes = streaming.QUICK
    for r in measured:
        assert math.isfinite(r.median), r
        assert math.isfinite(r.worst), r
        assert r.median >= 0, r
        assert len(r.runs) == sizes.runs

    stream_p99 = _one(rows, "fill -> strategy event p99", "stream").median
    poll_p50 = _one(rows, "fill -> strategy event p50", "polling").median
    assert 0 < stream_p99 < poll_p50  # the stream beats polling
    assert poll_p50 < sizes.latency_poll * 1e3 * 3  # which waits about one interval

    n = sizes.open_orders
    idle_stream = rows[f"idle REST requests/min, {n} open orders, stream healthy"].median
    idle_poll = _one(rows, "idle REST", "polling every 5 s").median
    assert 0 < idle_stream < idle_poll  # the safety net polls less often

    submits = _one(rows, "sustained submits/min", "stream healthy").median
    assert 100 < submits <= 200  # the budget is used, never exceeded
    assert _one(rows, "429s", "stream healthy").median == 0

    k = sizes.outage_orders[0]
    outage = _one(rows, "accepted again -> consistent book", f"{k} orders").median
    assert 0 < outage < 30
    assert _one(rows, "look-ups by client_order_id", f"{k} filled").median >= k
