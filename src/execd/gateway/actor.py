"""The gateway under the supervisor: app.py binds its listener before anything starts
(a port in use stops the daemon there, with one line) and hands it here; a restarted
gateway serves the same listener."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from anyio.abc import ByteStream, Listener, SocketAttribute, SocketStream, TaskStatus

from execd.fatal import address_problem
from execd.gateway import http
from execd.gateway import stream as stream_mod
from execd.gateway.forward import Forwarder, Upstream
from execd.gateway.keys import KeyTable
from execd.gateway.routes import Routes
from execd.gateway.settings import GatewayConfig
from execd.intake.services import Services


async def bind(config: GatewayConfig) -> Listener[SocketStream] | None:
    """The gateway's listener, or None: off (listen = "") or no key to let anyone in."""
    if not config.enabled:
        return None
    host, port = config.address()
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port,
                                               reuse_port=False)
    except OSError as e:
        raise address_problem("gateway.listen", config.listen, e) from e


def port_of(listener: Listener[SocketStream]) -> int:
    port: int = listener.extra(SocketAttribute.local_port)
    return port


async def run(*, listener: Listener[SocketStream], config: GatewayConfig, services: Services,
              accounts: Mapping[str, Upstream], default_account: str,
              task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    keys = KeyTable(config.keys)
    routes = Routes(services, keys, Forwarder(accounts, default_account, services.clock))

    async def websocket(stream: ByteStream, raw: bytes) -> None:
        await stream_mod.Session(stream, services, keys).run(raw)

    task_status.started()
    await http.serve(listener, routes.handle, websocket)
