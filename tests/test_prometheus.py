"""The operator's kit against Prometheus' own tools: a running daemon's exposition has
every family from the start and passes `promtool check metrics`; the alert rules pass
`promtool check rules` and their unit tests; every dashboard expression parses; every
metric the rules and the dashboard name is exported; and a real Prometheus server
scrapes a running daemon and answers for its series.

The promtool and prometheus binaries come from Debian's `prometheus` package (.ci/run
installs it); the tests that need them skip, saying so, where they are absent."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from execd.app import Daemon
from execd.domain.orders import OrderState
from execd.domain.risk import TradingState
from execd.obs import metrics
from tests.conftest import OpenDaemon, connect

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
SAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "execd.json"
OPERATIONS = ROOT / "docs" / "operations.md"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
_INSTALL = "install Debian's `prometheus` package (apt-get install prometheus; .ci/run does)"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"no promtool on PATH: {_INSTALL}")

# Grafana's variables, as Prometheus would receive them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$account": ".*"}
# Prometheus' own series for every target, not the daemon's.
SYNTHETIC = {"up"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}


# ------------------------------------------------------------------ helpers
def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=30, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges and label lists are gone, minus functions and keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", e)
    return {n for n in names if n.lower() not in _KEYWORDS}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> dict[str, str]:
    """Every PromQL expression in the dashboard, by where it is, variables replaced."""
    out: dict[str, str] = {}
    d = dashboard()
    for p in d["panels"]:
        for t in p.get("targets", []):
            out[f"panel {p['id']} ({p['title']}) {t['refId']}"] = t["expr"]
    for v in d["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["definition"])
        assert m, f"variable {v['name']}: expected label_values(selector, label)"
        out[f"variable {v['name']}"] = m.group(1)
    for where, expr in out.items():
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr}"
        out[where] = expr
    return out


def exported_names(exposition: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in exposition.splitlines()
            if line and not line.startswith("#")}


def rfc3339(ts: str) -> float:
    """Prometheus' timestamps (nanoseconds, Z) as epoch seconds."""
    whole, _, frac = ts.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (frac or "0"))


def github_anchor(heading: str) -> str:
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


async def scrape(d: Daemon) -> str:
    url = f"http://{d.config.metrics.host}:{d.config.metrics.port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    return await anyio.to_thread.run_sync(get)


@asynccontextmanager
async def daemon_with_metrics(daemon_factory: OpenDaemon) -> AsyncIterator[Daemon]:
    async with daemon_factory(metrics={"enabled": True, "port": free_port()}) as d:
        yield d


async def busy_exposition(d: Daemon) -> str:
    """After an accepted order, a refused one and a halt: more series than at start."""
    async with connect(d) as c:
        await c.submit(strategy_id="m", symbol="AAPL", side="buy", qty="1")
        await c.request("halt", reason="checking metrics")
        await c.request("resume")
    return await scrape(d)


# ------------------------------------------------------------- the metrics
@pytest.mark.parametrize(("reason", "category"), [
    ("reconcile_mismatch: AAPL local=5 broker=3", "reconcile"),
    ("broker_failures: 10 failed attempts in a row (timeout)", "broker_failures"),
    ("storage_unavailable: disk full", "storage"),
    ("operator", "operator"),
    ("operator halt", "operator"),
    ("lunch", "operator"),
    ("maintenance: upgrading to 0.2", "operator"),
    ("Reconcile: by hand", "operator"),  # machine tokens are lower-case identifiers
    ("", "other"),
])
def test_halt_reasons_fall_into_a_fixed_set_of_categories(reason: str, category: str) -> None:
    assert metrics.halt_category(reason) == category
    assert category in metrics.HALT_CATEGORIES


def test_known_label_values_cover_the_code() -> None:
    assert {s.value for s in OrderState} <= set(metrics.ORDER_STATES)
    assert {s.value for s in TradingState} == set(metrics.TRADING_STATES)


async def test_a_fresh_daemon_exports_every_family_and_every_metric_kit_uses(
    daemon_factory: OpenDaemon,
) -> None:
    """Before any order: every family has its samples, and every metric the alert rules
    and the dashboard name is there."""
    async with daemon_with_metrics(daemon_factory) as d:
        text = await scrape(d)
        actors = set(d.supervisor.statistics().as_dict())
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    samples = exported_names(text)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",), "summary": ("_count", "_sum")}
    for name, kind in families:
        for suffix in suffixes[kind]:
            full = name if name.endswith(suffix) else name + suffix
            assert full in samples, f"{full} has no sample before any event"
    assert actors <= set(metrics.ACTORS)
    for actor in metrics.ACTORS:
        assert f'execd_actor_restarts_total{{actor="{actor}"}} 0.0' in text
    for config_gauge in ("execd_submit_timeout_seconds 3.0",
                         'execd_poll_interval_seconds{account="default"} 0.05',
                         'execd_broker_budget_requests_per_window{account="default"} 10000.0',
                         'execd_broker_budget_window_seconds{account="default"} 60.0'):
        assert config_gauge in text  # tests/conftest.py's daemon_config
    exported = exported_names(text) | SYNTHETIC
    used = {f"alert {r['alert']}": metric_names(r["expr"]) for r in alert_rules()}
    used |= {where: metric_names(expr) for where, expr in dashboard_exprs().items()}
    for where, names in used.items():
        assert names, f"{where}: no metric found in its expression"
        assert names <= exported, f"{where} uses {sorted(names - exported)}, not exported"


async def test_halt_category_is_published_with_the_trading_state(
    daemon_factory: OpenDaemon,
) -> None:
    async with daemon_with_metrics(daemon_factory) as d, connect(d) as c:
        await c.request("halt", reason="lunch")
        halted = await scrape(d)
        await c.request("resume")
        resumed = await scrape(d)
    assert 'execd_trading_state{state="HALTED"} 1.0' in halted
    assert 'execd_trading_halted{reason="operator"} 1.0' in halted
    assert 'execd_trading_halted{reason="reconcile"} 0.0' in halted
    assert 'execd_trading_state{state="ACTIVE"} 1.0' in resumed
    assert 'execd_trading_halted{reason="operator"} 0.0' in resumed


@needs_promtool
async def test_exposition_passes_promtool_check_metrics(daemon_factory: OpenDaemon) -> None:
    async with daemon_with_metrics(daemon_factory) as d:
        text = await busy_exposition(d)
    assert PROMTOOL is not None
    result = await anyio.run_process([PROMTOOL, "check", "metrics"], input=text.encode(),
                                     check=False)
    problems = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, problems
    assert not problems.strip(), problems


def test_metric_names_are_read_out_of_expressions() -> None:
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x", le=~"1|b"}[5m])))'
            ' > on (job) 2 * b_seconds unless up{job="c"} == bool 0')
    assert metric_names(expr) == {"a_bucket", "b_seconds", "up"}


# ---------------------------------------------------------- the alert rules
@needs_promtool
def test_alert_rules_pass_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_alert_rules_pass_their_unit_tests() -> None:
    r = promtool("test", "rules", str(ALERT_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no case fires it"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no quiet case"


def test_every_alert_says_how_bad_what_and_where_the_runbook_is() -> None:
    doc = OPERATIONS.read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", doc, re.MULTILINE)}
    rules = alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"], rule["alert"]
        assert notes["description"], rule["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        # the base: metrics.runbook_base as the daemon exports it, else the installed docs
        assert page.endswith("{{ end }}/operations.md"), rule["alert"]
        assert "execd_runbook_info" in page, rule["alert"]
        assert "file:///opt/execd/docs" in page, rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"
        for name in metric_names(rule["expr"]):
            assert re.search(rf'{name}\{{[^}}]*job="execd"', rule["expr"]), (
                f"{rule['alert']}: {name} without job=\"execd\"")


def test_the_runbooks_own_links_lead_somewhere() -> None:
    doc = OPERATIONS.read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", doc, re.MULTILINE)}
    for target in re.findall(r"\]\(#([^)]+)\)", doc):
        assert target in anchors, f"docs/operations.md links to #{target}, which is no heading"
    for path in re.findall(r"`((?:deploy|docs)/[\w./-]+)`", doc):
        assert (ROOT / path).exists(), f"docs/operations.md names {path}, which does not exist"


@needs_promtool
def test_sample_prometheus_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(SAMPLE_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "execd-alerts.yml")  # where the config expects it
    r = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------- the dashboard
def test_dashboard_is_importable_with_a_datasource_input() -> None:
    d = dashboard()
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for subject in ("orders by state", "submits by outcome", "budget", "broker latency",
                    "broker answers", "fill lag", "trading state", "actor restarts",
                    "reconcile results"):
        assert subject in titles, subject
    for p in d["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def per_account_names() -> set[str]:
    """The sample names that carry the `account` label."""
    m = metrics.Metrics()
    m.for_account("x")
    return {s.name for f in m.registry.collect() for s in f.samples if "account" in s.labels}


def test_per_account_panels_follow_the_account_variable() -> None:
    d = dashboard()
    assert "account" in [v["name"] for v in d["templating"]["list"]]
    per_account = per_account_names()
    for p in d["panels"]:
        for t in p.get("targets", []):
            for name in metric_names(t["expr"]) & per_account:
                assert re.search(rf'{name}\{{[^}}]*account=~"\$account"', t["expr"]), (
                    f"panel {p['title']}: {name} without account=~\"$account\"")


def test_per_account_alerts_name_the_account() -> None:
    per_account = per_account_names()
    for rule in alert_rules():
        if metric_names(rule["expr"]) & per_account:
            assert "$labels.account" in rule["annotations"]["summary"], rule["alert"]


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    r = promtool("check", "rules", str(path))
    where = "\n".join(f"dashboard:expr_{i} = {w}" for i, w in enumerate(exprs))
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{where}"


# ------------------------------------------------------- a real Prometheus
class PromAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")

        def fetch() -> Any:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read()
            return json.loads(body) if path.startswith("/api/") else body.decode()

        return await anyio.to_thread.run_sync(fetch)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        answer = await self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])


@dataclass(frozen=True, slots=True, kw_only=True)
class Prometheus:
    api: PromAPI
    target_port: int  # where it scrapes /metrics: each test's daemon serves there
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


@pytest.fixture(scope="module", autouse=True)
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus | None]:
    """One server for the module (None without the binary), scraping one fixed port
    twice a second. A new target is first scraped only after Prometheus' 5 s
    target-update tick: started with the module, that tick passes while the other tests
    run, and with one fixed target it is paid once, not once per backend."""
    if PROMETHEUS is None:
        yield None
        return
    d = tmp_path_factory.mktemp("prometheus")
    target, port = free_port(), free_port()
    shutil.copy(ALERTS, d / "alerts.yml")
    (d / "prometheus.yml").write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "execd",
                            "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}],
    }))
    log = d / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        yield Prometheus(api=PromAPI(port), target_port=target, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def until(what: str, check: Callable[[], Awaitable[Any]], prom: Prometheus,
                within: float = 15.0) -> Any:
    """Ask again until `check()` returns something truthy; fail with the last answer
    and the server's log."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except (OSError, urllib.error.URLError) as e:
            last = e
        else:
            if last:
                return last
        await anyio.sleep(0.1)
    pytest.fail(f"Prometheus: {what} not seen within {within} s; last answer: {last!r}\n"
                f"its log:\n{prom.log_tail()}")


async def test_a_real_prometheus_scrapes_a_running_daemon(
    daemon_factory: OpenDaemon, prometheus: Prometheus | None
) -> None:
    if prometheus is None:
        pytest.skip(f"no prometheus server on PATH: {_INSTALL}")
    api = prometheus.api
    await until("/-/ready", lambda: api.get("/-/ready"), prometheus)
    async with daemon_factory(metrics={"enabled": True, "port": prometheus.target_port}) as d:

        def accepted(n: int) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
            return lambda: api.query(f'execd_submits_total{{job="execd", outcome="accepted"}} == {n}')

        # 0 first: this daemon's series (not the last test's), there before any order.
        await until("this daemon's execd_submits_total{outcome=accepted} at 0", accepted(0),
                    prometheus)
        async with connect(d) as c:
            for _ in range(3):
                await c.submit(strategy_id="prom", symbol="AAPL", side="buy", qty="1")
        await until("execd_submits_total{outcome=accepted} at 3", accepted(3), prometheus)
        seen_at = time.time()
        assert await api.query('up{job="execd"} == 1')

        async def rules_evaluated() -> list[dict[str, Any]]:
            """Every rule evaluated, without error, since this daemon was scraped."""
            groups = (await api.get("/api/v1/rules"))["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            done = all(r["health"] == "ok" and rfc3339(r["lastEvaluation"]) > seen_at
                       for r in rules)
            return rules if rules and done else []

        rules = await until("every alert rule evaluated without error", rules_evaluated, prometheus)
        assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
        firing = [r["name"] for r in rules if r["state"] == "firing"]
        assert not firing, firing  # a healthy daemon raises no alert
