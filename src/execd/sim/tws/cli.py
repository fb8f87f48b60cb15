"""`execd sim --broker ib`: the TWS front on --port, the same market's Alpaca REST (and
its /_sim control routes) on --control-port."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import fields, replace

from execd.sim.alpaca.server import SimServer
from execd.sim.settings import SimConfig
from execd.sim.tws.faults import TwsFaults
from execd.sim.tws.server import TwsServer


def parse_faults(items: list[str]) -> TwsFaults:
    """`NAME=VALUE` pairs as TwsFaults; ValueError names a bad one."""
    types = {f.name: f.type for f in fields(TwsFaults)}
    values: dict[str, bool | int | float] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in types:
            raise ValueError(f"unknown TWS fault {item!r} (known: {', '.join(types)})")
        kind = str(types[name])
        if kind == "bool":
            values[name] = raw.lower() in ("1", "true", "yes", "on")
        elif kind == "int":
            values[name] = int(raw)
        else:
            values[name] = float(raw)
    faults = TwsFaults(**values)  # type: ignore[arg-type]
    faults.check()
    return faults


def run_ib_sim(config: SimConfig, *, control_port: int, faults: list[str]) -> int:
    try:
        tws_faults = parse_faults(faults)
    except ValueError as e:
        print(f"execd sim: {e}", file=sys.stderr)
        return 2
    generated = not config.key_id
    try:
        control = SimServer(replace(config, port=control_port))
        tws = TwsServer(config, faults=tws_faults, market=control.market)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        print(f"execd sim: cannot listen on {config.host}:{config.port} or --control-port "
              f"{control_port}: {reason}", file=sys.stderr)
        return 2
    control.attach_front("tws", tws)  # its faults live: POST /_sim/faults {"tws": {...}}
    with control, tws:
        print(f"execd sim listening on {tws.host}:{tws.port}  (IB TWS API, server versions "
              f"176-178; Ctrl-C stops)")
        print(f"  IB().connectAsync({tws.host!r}, {tws.port}, clientId=1)")
        print(f"  account {tws.desk.account}; the same market's REST and /_sim/ control "
              f"routes (prices; faults, the TWS side's live as POST /_sim/faults "
              f"{{\"tws\": {{...}}}}; stats): {control.url}")
        if generated:  # a throwaway pair for this run, as `execd sim` prints it
            print(f"  APCA_API_KEY_ID={control.config.key_id}")
            print(f"  APCA_API_SECRET_KEY={control.config.secret_key}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping")
            print(json.dumps(tws.stats_json(), indent=2))
    return 0
