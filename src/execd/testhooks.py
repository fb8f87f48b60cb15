"""Test-only fault hooks: die by SIGKILL at chosen points, so crash tests can reach the
narrow windows deterministically (e.g. after the broker took an order, before we record
it), or make an actor crash on every run ("crash=poller"). Inert unless EXECD_TEST_HOOKS
is set, e.g. "after_submit=0.05,after_commit=0.02,seed=3".
"""

from __future__ import annotations

import os
import random
import signal

from execd.obs import logging

log = logging.get("execd.testhooks")
POINTS = ("after_commit", "after_submit")


class Hooks:
    def __init__(self, spec: str) -> None:
        self.p: dict[str, float] = {}
        self.crashing: set[str] = set()
        seed = 0
        for part in filter(None, (x.strip() for x in spec.split(","))):
            name, _, value = part.partition("=")
            if name == "seed":
                seed = int(value)
            elif name == "crash":
                self.crashing.add(value)
            elif name in POINTS:
                self.p[name] = float(value)
            else:
                raise ValueError(f"EXECD_TEST_HOOKS: unknown point {name!r}")
        self._rng = random.Random(seed + os.getpid())
        self.armed = False  # kill points fire only once start-up recovery is over

    def arm(self) -> None:
        self.armed = True

    def point(self, name: str) -> None:
        p = self.p.get(name)
        if p and self.armed and self._rng.random() < p:
            log.warning("test hook: killing the daemon", point=name)
            os.kill(os.getpid(), signal.SIGKILL)


    def crash(self, actor: str) -> None:
        if actor in self.crashing:
            raise RuntimeError(f"test hook: {actor} made to crash")


HOOKS = Hooks(os.environ.get("EXECD_TEST_HOOKS", ""))
