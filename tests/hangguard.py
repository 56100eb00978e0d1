"""A proof that a call does not hang, which is not a claim about its speed (bench/ measures that).

The call runs in a child process, where a regex stuck in C code can still be killed, and the test
fails if it has not returned after HANG_GUARD seconds. The inputs are sized so that the algorithm
the call replaced (an exponential regex, a quadratic scan) would run for hours or for ever, while
the call itself needs a few seconds at most: the bound is far from both, so neither a slow nor a
busy machine decides the outcome.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import pytest

HANG_GUARD = 60.0

P = ParamSpec("P")
T = TypeVar("T")


def without_hanging(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """What call(*args, **kwargs) returns; the call and its arguments must pickle."""
    # spawn: a fork would copy locks that the test process's other threads (parse pools, servers) hold.
    with multiprocessing.get_context("spawn").Pool(1) as child:  # leaving it kills the child
        pending = child.apply_async(call, args, kwargs)
        try:
            return pending.get(HANG_GUARD)
        except multiprocessing.TimeoutError:
            pytest.fail(f"{call.__qualname__} had not returned after {HANG_GUARD:g} s: it hangs")
