"""A scripted IMAP server for the one thing Dovecot will not do on request: refuse to FETCH one
message, and lose another between SEARCH and FETCH. It speaks just enough IMAP4rev1 for the
fetch worker (no IDLE, no MOVE: it polls and flags), on a thread of its own."""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field

_UID_RANGE = re.compile(r"UID (\d+)(?::(\*|\d+))?")


@dataclass
class Script:
    messages: dict[int, bytes]  # UID -> bytes
    refuse: set[int] = field(default_factory=set)  # FETCH of the body (or header) answers NO
    vanish: set[int] = field(default_factory=set)  # gone after the first SEARCH that listed them
    unsized: set[int] = field(default_factory=set)  # FETCH RFC822.SIZE answers without the size
    searched: set[int] = field(default_factory=set)
    commands: list[str] = field(default_factory=list)


class ScriptedImap:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ScriptedImap:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def _present(self) -> list[int]:
        return sorted(
            u for u in self.script.messages if not (u in self.script.vanish and u in self.script.searched)
        )

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caps = "IMAP4rev1 UIDPLUS"  # UIDPLUS without MOVE: COPY + EXPUNGE
        writer.write(f"* OK [CAPABILITY {caps}] scripted\r\n".encode())
        while line := await reader.readline():
            tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            self.script.commands.append(rest)
            if command == "UID":
                command, _, args = args.partition(" ")
                command = "UID " + command.upper()
            out = self._answer(command, args)
            writer.write(
                b"".join(out) + f"{tag} OK done\r\n".encode()
                if out is not None
                else f"{tag} NO [SERVERBUG] cannot read the message\r\n".encode()
            )
            await writer.drain()
            if command == "LOGOUT":
                break
        writer.close()

    def _answer(self, command: str, args: str) -> list[bytes] | None:
        """The untagged lines; None for a NO."""
        present = self._present()
        if command == "CAPABILITY":
            return [b"* CAPABILITY IMAP4rev1 UIDPLUS\r\n"]
        if command == "SELECT":
            return [
                f"* {len(present)} EXISTS\r\n".encode(),
                b"* OK [UIDVALIDITY 7] ok\r\n",
                f"* OK [UIDNEXT {max(self.script.messages) + 1}] ok\r\n".encode(),
                b"* OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] ok\r\n",
            ]
        if command == "UID SEARCH":
            found = _UID_RANGE.search(args)
            low = int(found[1]) if found else 1
            high = found[2] if found else "*"
            top = int(high) if high and high != "*" else (low if high is None else 10**9)
            uids = [u for u in present if low <= u <= top]
            self.script.searched.update(uids)
            return [("* SEARCH " + " ".join(map(str, uids))).rstrip().encode() + b"\r\n"]
        if command == "UID FETCH":
            uid_set, _, items = args.partition(" ")
            wanted = [int(u) for u in uid_set.split(",") if int(u) in present]
            body = "BODY.PEEK[" in items
            if body and any(u in self.script.refuse for u in wanted):
                return None
            out = []
            for uid in wanted:
                seq = present.index(uid) + 1
                data = self.script.messages[uid]
                if not body:
                    date = '"01-Dec-2026 10:00:00 +0000"'
                    size = "" if uid in self.script.unsized else f" RFC822.SIZE {len(data)}"
                    out.append(f"* {seq} FETCH (UID {uid}{size} INTERNALDATE {date})\r\n".encode())
                    continue
                if "HEADER" in items:
                    data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                out.append(f"* {seq} FETCH (UID {uid} BODY[] {{{len(data)}}}\r\n".encode() + data + b")\r\n")
            return out
        if command == "LOGOUT":
            return [b"* BYE\r\n"]
        return []  # LOGIN, CREATE, NOOP, UID STORE, UID COPY, UID EXPUNGE: fine
