"""The benchmark harness (benchmarks/) keeps working: its smoke mode, a few seconds long.

Functional checks only (files written, keys present, the burst all answered):
never a timing assertion, since a loaded CI machine may be slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import env, report

REPO = Path(__file__).resolve().parent.parent


def test_smoke_run_writes_markdown_and_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--no-install", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    markdown = (tmp_path / "smoke.md").read_text()
    assert "| figure | direct | tunnel |" in markdown
    result = json.loads((tmp_path / "smoke.json").read_text())

    for key in ("date", "mode", "machine", "setup", "rounds", "idle_pool", "figures", "errors"):
        assert key in result, key
    assert result["mode"] == "smoke"
    assert result["errors"] == []
    for key in ("cores", "cpu", "python", "loop", "revgw_commit", "conntrack_drops"):
        assert key in result["machine"], key

    (only_round,) = result["rounds"]
    for side in ("direct", "tunnel"):
        for phase in ("burst", "keepalive", "fresh", "download"):
            assert "error" not in only_round[side][phase], only_round[side][phase]
        burst = only_round[side]["burst"]
        assert burst["ok"] == burst["sent"] == result["setup"]["burst"], burst
        assert only_round[side]["keepalive"]["requests"] > 0
    assert set(only_round["tunnel"]["peak_rss_kib"]) == {"gateway", "client"}

    (pool,) = result["setup"]["idle_pools"]
    assert result["idle_pool"][str(pool)]["held"] is True
    # A smoke run judges nothing: its sizes are too small for the targets to mean anything.
    assert all(figure["passed"] is None for figure in result["figures"])


def test_hot_path_harness_runs_the_gateways_own_code() -> None:
    """``python -m benchmarks.hotpath``: real gateway objects, fake transports, no sockets."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.hotpath", "--requests", "200", "--repeat", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["keep-alive", "fresh connection"]
    assert all(line.endswith("us of the gateway's Python per request") for line in lines)


# /proc/net/stat/nf_conntrack: a header, then one hex row per CPU (most columns left out here).
CONNTRACK_STATS = """\
entries  clashres found new invalid insert_failed drop early_drop icmp_error
0001e255 00000000 00000000 00000000 00000004 00000000 00000069 00000000 00000000
0001e255 00000000 00000000 00000000 00000000 00000000 0000003f 00000000 00000000
"""


def test_conntrack_drops_are_counted_and_reported(tmp_path: Path) -> None:
    """A full connection-tracking table drops SYNs: the report must say so, not just read low."""
    stats = tmp_path / "nf_conntrack"
    stats.write_text(CONNTRACK_STATS)
    assert env.conntrack_drops(stats) == 0x69 + 0x3F
    assert env.conntrack_drops(tmp_path / "absent") is None  # not loaded: nothing to say
    (line,) = report._conntrack_warning(168)
    assert "connection tracking dropped 168 packets during this run" in line
    assert report._conntrack_warning(0) == report._conntrack_warning(None) == []
