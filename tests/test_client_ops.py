"""The two clients' ops have one source: ops_sync.py is generated from ops_async.py."""

from __future__ import annotations

import inspect

from tools import unasync

from execd.client import AsyncClient, Client
from execd.client.ops_async import AsyncOps
from execd.client.ops_sync import SyncOps


def test_the_sync_ops_are_generated_from_the_async_ones() -> None:
    assert unasync.TARGET.read_text() == unasync.generate(unasync.SOURCE.read_text()), (
        "ops_sync.py is out of date: run python -m tools.unasync")


def test_both_clients_offer_the_same_ops_with_the_same_signatures() -> None:
    def ops(cls: type) -> dict[str, inspect.Signature]:
        return {name: inspect.signature(f) for name, f in vars(cls).items()
                if inspect.isfunction(f) and not name.startswith("_")}

    assert ops(AsyncOps) == ops(SyncOps)
    assert len(ops(AsyncOps)) >= 15
    for name in ops(AsyncOps):
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
        assert not inspect.iscoroutinefunction(getattr(Client, name)), name
