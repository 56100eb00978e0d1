"""The daemon's process-wide settings."""

from __future__ import annotations

import subprocess
import sys

# Frees a 30 MiB buffer (which raises glibc's own threshold to that size), then makes and frees a
# 20 MiB one, as the copies of successive big mails do, and prints how much of it the process kept.
KEPT_AFTER_FREE = """
import re, sys
from pathlib import Path
from mailrouter.daemon import return_big_buffers_to_the_system

def resident_mib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

if sys.argv[1] == "set":
    return_big_buffers_to_the_system()
first = b"a" * (30 << 20)
del first
before = resident_mib()
second = b"b" * (20 << 20)
del second
print(resident_mib() - before)
"""


def kept_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", KEPT_AFTER_FREE, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def test_a_freed_big_mail_buffer_goes_back_to_the_system_after_a_bigger_one() -> None:
    assert kept_mib("default") > 15  # glibc's default keeps it: what the setting is for
    assert kept_mib("set") < 5
