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
from execd.gateway.status import GatewayStatus
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


def status_of(config: GatewayConfig, listener: Listener[SocketStream]) -> GatewayStatus:
    """For `status`: made once with the listener, so a restarted gateway counts on."""
    host = config.address()[0]
    host = f"[{host}]" if ":" in host else host
    return GatewayStatus(listen=f"{host}:{port_of(listener)}", keys=config.keys)


async def run(*, listener: Listener[SocketStream], config: GatewayConfig, services: Services,
              accounts: Mapping[str, Upstream], default_account: str,
              status: GatewayStatus | None = None,
              task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    keys = KeyTable(config.keys)
    shown = status or status_of(config, listener)
    routes = Routes(services, keys, Forwarder(accounts, default_account, services.clock,
                                              status=shown), shown)

    async def websocket(stream: ByteStream, raw: bytes) -> None:
        await stream_mod.Session(stream, services, keys, shown).run(raw)

    task_status.started()
    await http.serve(listener, routes.handle, websocket)
