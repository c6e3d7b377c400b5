"""Shared by the hostile-input tests: fuzz case counters, reported at the end of the run."""

from __future__ import annotations

from collections import Counter
from typing import Any

# fuzzer name -> examples run (each test adds what it ran; printed in the summary).
FUZZ_CASES: Counter[str] = Counter()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FUZZ_CASES:
        terminalreporter.write_sep("-", "fuzz cases run")
        for name, count in sorted(FUZZ_CASES.items()):
            terminalreporter.write_line(f"{name}: {count}")
