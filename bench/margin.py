"""`python -m bench.margin [--quick]`: the limiter's jitter margin, measured. For each
candidate margin, the sustained-submit run of bench/streaming.py (1,000 resting orders,
the stream trusted, 250 submits/min offered, scaled time: jitter weighs `scale` times
more against the window than in real time, so a margin that holds here holds there):
submits per minute, 429s, and the most requests the simulator counted in any sliding
window of its own (exact: every arrival's time). The margin execd uses is the smallest
that gave no 429 and no window over the limit."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import anyio

from bench import streaming
from execd import limiter

CANDIDATES = (0.0, 0.0025, 0.005, 0.01, 0.03)


async def measure(margins: tuple[float, ...], sizes: streaming.Sizes,
                  slack: float = limiter.WINDOW_SLACK) -> list[str]:
    lines = ["| margin | submits/min | 429s | most requests in a window (limit 200) |",
             "|---|---|---|---|"]
    saved = limiter.JITTER_MARGIN, limiter.WINDOW_SLACK
    try:
        for m in margins:
            limiter.JITTER_MARGIN = m
            limiter.WINDOW_SLACK = slack
            for _ in range(sizes.runs):
                r = await streaming._sustained(sizes, stream=True)
                lines.append(f"| {m:g} | {r['submits_per_minute']:.1f} | {r['429s']:g} | "
                             f"{r['max_in_window']:g} |")
                routes = ", ".join(f"{k[6:]} {v:.3g}" for k, v in sorted(r.items())
                                   if k.startswith("route "))
                print(lines[-1], f"(per minute: {routes})", file=sys.stderr, flush=True)
    finally:
        limiter.JITTER_MARGIN, limiter.WINDOW_SLACK = saved
    return lines


def main() -> int:
    from execd.obs import logging

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--margins", type=float, nargs="*", default=list(CANDIDATES))
    p.add_argument("--slack", type=float, default=limiter.WINDOW_SLACK,
                   help="the log's window over the broker's, a fraction of it")
    a = p.parse_args()
    logging.configure("error")
    sizes = replace(streaming.QUICK if a.quick else streaming.FULL, runs=a.runs, minutes=3)
    print("\n".join(anyio.run(measure, tuple(a.margins), sizes, a.slack)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
