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


# Four threads, all alive at once, each allocating from glibc; malloc_stats(3) then lists on
# stderr one "Arena N:" per arena the process has.
ARENAS = """
import ctypes, sys, threading
from mailrouter.daemon import one_heap_for_every_thread

if sys.argv[1] == "set":
    one_heap_for_every_thread()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
together = threading.Barrier(4)

def allocate():
    libc.malloc(4096)
    together.wait()

threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
"""


def arenas(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True)
    return done.stderr.count("Arena ")


def test_every_thread_allocates_from_the_one_heap() -> None:
    assert arenas("default") > 1  # glibc's default: an arena per thread, what the setting is for
    assert arenas("set") == 1


# 40 MiB in small blocks freed below one block still in use, as a load's scratch space is: the
# heap cannot shrink past that block by itself. Prints how much the call gave back.
GIVEN_BACK = """
import ctypes, re
from pathlib import Path
from mailrouter.daemon import give_back_free_memory

def resident_mib():
    return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(1024) for _ in range(40 * 1024)]
for block in blocks:
    ctypes.memset(block, 1, 1024)
pinned = libc.malloc(1024)
for block in blocks:
    libc.free(block)
before = resident_mib()
give_back_free_memory()
print(before - resident_mib())
"""


def test_the_free_space_of_a_load_goes_back_to_the_system() -> None:
    done = subprocess.run([sys.executable, "-c", GIVEN_BACK], capture_output=True, text=True, check=True)
    assert float(done.stdout) > 30
