"""Every command block of README.md and docs/ runs as printed, in order, against a daemon
on the embedded simulator. A block that cannot run here (sudo, systemctl, real keys, a
server that runs until Ctrl-C) says so just above it: `<!-- not-run: reason -->`."""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from execd import cli
from tests.conftest import OpenDaemon

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- not-run: (?P<why>[^>]*?) -->\n)?(?P<indent>[ ]*)```sh\n"
                   r"(?P<body>.*?)\n(?P=indent)```", re.S)
EXECD = (".venv/bin/execd", "execd")


@dataclass(frozen=True, slots=True)
class Block:
    where: str  # page:line
    skipped: str | None  # the not-run reason
    commands: tuple[tuple[str, ...], ...]  # argv after `execd`


def blocks() -> list[Block]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            where = f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start('body'))}"
            body = m.group("body").replace("\\\n", " ")
            argvs = [shlex.split(line, comments=True) for line in body.splitlines()]
            commands = tuple(tuple(a[1:]) for a in argvs if a)
            if m.group("why") is None:
                strangers = [" ".join(a) for a in argvs if a and a[0] not in EXECD]
                assert not strangers, (
                    f"{where}: a block runs {strangers[0]!r}, which this test cannot: "
                    "mark the block <!-- not-run: reason --> or make it an execd command")
            out.append(Block(where, m.group("why"), commands))
    return out


def test_every_block_runs_or_says_why_not() -> None:
    found = blocks()
    assert any(b.skipped is None for b in found)
    for b in found:
        if b.skipped is not None:
            assert b.skipped.strip(), f"{b.where}: not-run needs a reason"


async def test_the_blocks_run_as_printed(
    daemon_factory: OpenDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    runnable = [b for b in blocks() if b.skipped is None]
    async with daemon_factory() as d:
        sock = str(d.config.socket_path)
        ran = 0
        for block in runnable:
            for argv in block.commands:
                code = await anyio.to_thread.run_sync(cli.main, [*argv, "--socket", sock])
                out, err = capsys.readouterr()
                assert code == 0, f"{block.where}: execd {shlex.join(argv)}\n{out}{err}"
                ran += 1
    with capsys.disabled():
        sys.stdout.write(f"\n{len(runnable)} command blocks run ({ran} commands), "
                         f"{len(blocks()) - len(runnable)} skipped as marked not-run\n")


CLIENT_DOC = ROOT / "docs" / "client.md"
PYTHON = re.compile(r"(?:<!-- not-run: (?P<why>[^>]*?) -->\n)?```python\n(?P<body>.*?)\n```", re.S)


async def test_the_client_guide_runs_as_printed(
    daemon_factory: OpenDaemon, anyio_backend: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Every python block of docs/client.md, in order, each in a thread of its own (a
    block may call anyio.run: on the test's backend)."""
    text = CLIENT_DOC.read_text()
    found = list(PYTHON.finditer(text))
    runnable = [m for m in found if m.group("why") is None]
    assert len(runnable) >= 4
    real_run = anyio.run
    monkeypatch.setattr(anyio, "run", lambda fn, *a, **kw: real_run(
        fn, *a, **{**kw, "backend": anyio_backend}))
    async with daemon_factory() as d:
        monkeypatch.setenv("EXECD_SOCKET", str(d.config.socket_path))
        for m in runnable:
            line = text.count("\n", 0, m.start("body")) + 1
            code = compile(m.group("body"), f"docs/client.md:{line}", "exec")
            await anyio.to_thread.run_sync(exec, code, {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "replaced by doc-" in out
    assert "closed: FILLED" in out
    with capsys.disabled():
        sys.stdout.write(f"\ndocs/client.md: {len(runnable)} python blocks run, "
                         f"{len(found) - len(runnable)} skipped as marked not-run\n")
