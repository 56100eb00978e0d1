"""The sender's pure parts: the DATA payload it writes by hand, and its backoff."""

import random

from mailrouter.send import backoff, dot_stuffed


def test_dot_stuffing_and_line_endings():
    assert dot_stuffed(b"a\n.b\r\n..c\rd") == b"a\r\n..b\r\n...c\r\nd\r\n"
    assert dot_stuffed(b".\r\n") == b"..\r\n"  # a lone dot line must not end the message early
    assert dot_stuffed(b"x\r\n") == b"x\r\n"


def test_backoff_doubles_with_jitter_and_is_capped():
    random.seed(5)
    for attempts in range(1, 12):
        ceiling = min(900, 30 * 2 ** (attempts - 1))
        delays = [backoff(attempts, 30, 900) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter: instances that failed together do not retry together
