"""docs/budgets.md, "Operating t2serve": its bash block runs verbatim (curl, a real shell)
against the real app over HTTP, on the shipped default config (SQLite ledger in a temp dir, a
scripted engine instead of vLLM), and every step does what the text says."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from server.api.admin import ADMIN_KEY_ENV
from server.app import create_app, serve_in_loop
from server.config import load_config
from tests.fakes import ScriptedEngine, cycle
from tests.support import ROOT, doc_section, fenced_blocks, need

DOCS = ROOT / "docs"
ADMIN_KEY = "readme-operating-admin"


def operating_block() -> str:
    blocks = fenced_blocks(doc_section(DOCS / "budgets.md", "Operating t2serve"), ("bash",))
    assert len(blocks) == 1
    return blocks[0][1]


async def test_the_operating_examples_run_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need(shutil.which("curl") is not None, "curl")
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY)
    config = load_config(ROOT / "configs" / "default.yaml")
    config.ledger.path = str(tmp_path / "ledger.sqlite")
    # pooling={}: the default config's reward model is not built (these steps never use it; it
    # would start a vLLM pooling engine in the background of a test that needs none)
    engine = ScriptedEngine(cycle("7+8=15;15-9=6;A: 6"))
    app = create_app(config, engine=engine, pooling={})
    code = operating_block()
    async with serve_in_loop(app) as live:
        env = {
            **os.environ,
            "T2": live.base_url,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            code,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout=120)
        out, err = out_b.decode(), err_b.decode()
        assert proc.returncode == 0, f"{code}\n{out}\n{err}"
        state = app.state.t2
        demo = state.config.tenants[0]
        assert demo.budgets.day.limit == 2.0  # the PUTs
        assert demo.rate_limits is not None and (demo.rate_limits.rpm, demo.rate_limits.tpm) == (
            60,
            20000,
        )
        assert demo.user_budgets is not None and demo.user_budgets.day.limit == 0.5
        keys = await state.admin.keys("demo")
        assert len(keys) == 2  # the new key and its rotated successor
        old, new = keys
        assert old.status(state.admin.clock()) == "revoked"  # DELETE beat the grace period
        assert new.status(state.admin.clock()) == "active" and new.label == old.label
        assert (
            new.budgets
            == old.budgets
            == {"day": {"limit": 0.1, "unit": "currency", "hard": True, "rolling": False}}
        )
        assert new.rate_limits == old.rate_limits == {"rpm": 20}  # the key's PUT, inherited
    # the printed answers, in order: budgets, rate limits, user budgets, the completion (with
    # its HTTP head: curl -i), the key list, the key's rate limits, the rotation, the
    # revocation, the spend log, the CSV report
    head = re.search(r"HTTP/1\.1 200 OK\r\n(.*?)\r\n\r\n", out, flags=re.S)
    assert head, out
    headers = dict(line.lower().split(": ", 1) for line in head.group(1).split("\r\n"))
    out = out[: head.start()] + out[head.end() :]
    assert headers["x-ratelimit-limit-requests"] == "10"  # the key's rpm is the tighter
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "20000"
    decoder = json.JSONDecoder()
    docs, rest = [], out.strip()
    while rest.startswith("{"):
        doc, end = decoder.raw_decode(rest)
        docs.append(doc)
        rest = rest[end:].strip()
    budgets, rates, users, completion, listed, key_rates, rotated, revoked, logs = docs
    assert rates["rate_limits"]["rpm"] == 60 and rates["rate_limits"]["tpm"] == 20000
    assert users["user_budgets"]["day"]["limit"] == 0.5
    assert key_rates["rate_limits"] == {"rpm": 20}
    assert int(headers["x-ratelimit-remaining-tokens"]) == 20000 - (
        completion["t2"]["billed_prompt_tokens"] + completion["t2"]["billed_completion_tokens"]
    )
    assert budgets["windows"][0]["limit"] == 2.0
    assert completion["t2"]["samples"] == 2 and completion["choices"][0]["message"]["content"]
    assert [k["prefix"] for k in listed["data"]] == [old.prefix]
    assert rotated["revokes"]["prefix"] == old.prefix and rotated["key"].startswith("t2-")
    assert revoked["status"] == "revoked"
    [record] = logs["data"]
    assert record["user"] == "alice" and record["key_prefix"] == old.prefix
    assert record["completion_tokens"] == completion["usage"]["completion_tokens"]
    report = list(csv.DictReader(io.StringIO(rest)))
    assert report == [
        {
            "key": old.prefix,
            "requests": "1",
            "samples": "2",
            "waves": "1",
            "prompt_tokens": str(record["prompt_tokens"]),
            "completion_tokens": str(record["completion_tokens"]),
            "money": str(record["money"]),
            "flops": str(record["flops"]),
        }
    ]
