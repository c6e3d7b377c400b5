"""What the benchmarks read of processes and cores: /proc (CPU ticks, RSS, write syscalls)
and a free local port. One copy, used by every phase, so all figures count alike."""

from __future__ import annotations

import asyncio
import os
import socket

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int | str) -> tuple[int, int]:
    """(utime, stime) of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)


def cpu_ticks(pid: int | str) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    user, system = cpu_split(pid)
    return user + system


def cpu_seconds(pid: int | str) -> float:
    return cpu_ticks(pid) / CLK_TCK


def core_ticks(core: int | None) -> tuple[int, int]:
    """(busy, total) clock ticks of one CPU (or all, for None) from /proc/stat."""
    label = b"cpu " if core is None else f"cpu{core} ".encode()
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(label):
                ticks = [int(x) for x in line.split()[1:]]
                idle = ticks[3] + ticks[4]  # idle + iowait
                return sum(ticks[:8]) - idle, sum(ticks[:8])
    return 0, 0


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


async def machine_busy(seconds: float = 1.0) -> float:
    """How busy the whole machine is with nothing of ours running: other work on these
    cores (a build, a test run) steals from the server and makes every figure noisy."""
    before = core_ticks(None)
    await asyncio.sleep(seconds)
    return busy_fraction(before, core_ticks(None))


def write_syscalls(pid: int) -> int:
    """write-family syscalls so far (`syscw` in /proc/<pid>/io): with one send per
    delivery the kernel's loopback path, not Python, dominates the per-delivery cost."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"syscw:"):
                    return int(line.split()[1])
    except OSError:  # /proc/<pid>/io needs ptrace access; the figure is optional
        pass
    return 0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise ProcessLookupError(f"no VmRSS for pid {pid}: the process has ended")


def free_port() -> int:
    """A port free now, for a child (broker, server) that takes its port on the command
    line; a benchmark that loses the race fails loudly, and is run again."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
