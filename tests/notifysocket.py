"""A systemd NOTIFY_SOCKET stand-in for tests: a real AF_UNIX datagram socket that records what arrives."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class Listener:
    """A bound SOCK_DGRAM socket that timestamps every datagram as it arrives."""

    def __init__(self, address: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self.socket.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def wait_for(self, predicate: Callable[[list[tuple[float, str]]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            assert time.monotonic() < deadline, f"timed out; received {self.received}"
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()

    def texts(self) -> list[str]:
        return [text for _, text in self.received]
