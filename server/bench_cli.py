"""`sensorcast bench`: runs bench/run.py (Sensorcast vs a websockets reference server).

The bench lives in bench/ beside the package (an editable install keeps it there). It runs
in its own process: it pins itself to one core and the servers under test to another, and
it raises its file-descriptor limit for thousands of sockets; none of that should leak into
the CLI process. Output (table, JSON under bench/results/) comes from that process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def run_bench(argv: list[str], config_path: str | None) -> int:
    """Run the benchmark with `argv` (e.g. ["--quick"], ["--only", "memory"]); exit code.

    `config_path` is accepted for symmetry with the other subcommands but not passed on:
    the bench generates its own server config (limits, rate limits and heartbeats off) so
    figures do not depend on the local config.yaml.
    """
    del config_path
    script = BENCH_DIR / "run.py"
    if not script.is_file():
        print(f"sensorcast bench: {script} not found (bench/ ships with a source checkout)")
        return 2
    proc = subprocess.Popen([sys.executable, str(script), *argv])
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The child got the same Ctrl-C and stops its servers; give it time to do so.
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return 130
