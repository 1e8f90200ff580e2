#!/usr/bin/env python3
"""A Game Gateway backend in Python (asyncio, standard library only).

The reference for backend teams outside Rust: it speaks frame protocol v1
(docs/protocol.md) with every gateway that connects, and keeps sessions
across gateways as the protocol requires. tests/e2e/examples.rs runs it
behind a real gateway.

    python3 backend.py --listen 127.0.0.1:7101 --name py-1

DATA commands (UTF-8): `whoami` (this backend's --name), `count` (DATA
frames this session sent), `kick[:reason]` (CLOSE 3506), `push:TEXT`
(an unprompted DATA with seq 0, then the reply `pushed`); anything else is
echoed back.
"""

import argparse
import asyncio
import json
import struct
import sys
import time

VERSION = 1
HELLO, WELCOME, OPEN, DATA, CLOSE, PING, PONG, GOAWAY, ERROR = range(1, 10)
HEADER = struct.Struct(">IBBHIQQI")  # len, version, kind, service_type, realm_id, user_id, session_id, seq
AFTER_LEN = HEADER.size - 4  # 28: what `len` counts besides the payload
CLOSE_MOVED, CLOSE_KICKED = 3006, 3506
ERROR_BAD_STATE = 103
IDLE_TIMEOUT = 30.0  # gateways PING every 5 s by default
DETACHED_TTL = 60.0  # how long a moved session waits for its resumed OPEN


class Frame:
    __slots__ = ("kind", "service_type", "realm_id", "user_id", "session_id", "seq", "payload")

    def __init__(self, kind, service_type=0, realm_id=0, user_id=0, session_id=0, seq=0, payload=b""):
        self.kind, self.service_type, self.realm_id = kind, service_type, realm_id
        self.user_id, self.session_id, self.seq, self.payload = user_id, session_id, seq, payload

    def encode(self):
        return HEADER.pack(AFTER_LEN + len(self.payload), VERSION, self.kind, self.service_type,
                           self.realm_id, self.user_id, self.session_id, self.seq) + self.payload

    def reply(self, kind, payload):
        return Frame(kind, self.service_type, self.realm_id, self.user_id, self.session_id, self.seq, payload)

    def json(self):
        try:
            value = json.loads(self.payload or b"{}")
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}


class ProtocolError(Exception):
    pass


async def read_frame(reader, max_frame_bytes):
    """One frame; the length is checked before its body is read."""
    head = await reader.readexactly(HEADER.size)
    length, version, kind, st, realm, user, sid, seq = HEADER.unpack(head)
    if length < AFTER_LEN or length > max_frame_bytes:
        raise ProtocolError(f"bad frame length {length}")
    payload = await reader.readexactly(length - AFTER_LEN)
    if version != VERSION:
        raise ProtocolError(f"unsupported version {version}")
    return Frame(kind, st, realm, user, sid, seq, payload)


class Session:
    def __init__(self, sid, owner):
        self.sid, self.owner, self.count, self.detached_at = sid, owner, 0, None


class Backend:
    def __init__(self, name, max_frame_bytes):
        self.name, self.max_frame_bytes = name, max_frame_bytes
        self.sessions = {}  # session id -> Session; ids are cluster-unique
        self.next_conn = 0

    async def serve(self, reader, writer):
        self.next_conn += 1
        conn = self.next_conn
        try:
            first = await asyncio.wait_for(read_frame(reader, self.max_frame_bytes), IDLE_TIMEOUT)
            if first.kind != HELLO:
                raise ProtocolError("the first frame was not HELLO")
            print(f"gateway {first.json().get('gateway_id')} connected", file=sys.stderr)
            while True:
                f = await asyncio.wait_for(read_frame(reader, self.max_frame_bytes), IDLE_TIMEOUT)
                for out in self.handle(conn, f):
                    writer.write(out.encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except ProtocolError as e:
            print(f"closing a gateway connection: {e}", file=sys.stderr)
        finally:
            # Sessions of a lost connection wait for the gateway's next OPEN.
            for s in self.sessions.values():
                if s.owner == conn and s.detached_at is None:
                    s.detached_at = time.monotonic()
            writer.close()

    def handle(self, conn, f):
        if f.kind == OPEN:
            now = time.monotonic()
            for sid in [k for k, s in self.sessions.items()
                        if s.detached_at is not None and now - s.detached_at > DETACHED_TTL]:
                del self.sessions[sid]
            s = self.sessions.get(f.session_id)
            if s is None:
                self.sessions[f.session_id] = Session(f.session_id, conn)
            else:  # resumed, or opened again after a lost connection: keep the state
                s.owner, s.detached_at = conn, None
            return []
        if f.kind == CLOSE:
            s = self.sessions.get(f.session_id)
            # Only the owning connection ends or detaches a session: the next
            # gateway's OPEN may have arrived first.
            if s is not None and s.owner == conn:
                if f.json().get("code") == CLOSE_MOVED:
                    s.detached_at = time.monotonic()
                else:
                    del self.sessions[f.session_id]
            return []
        if f.kind == PING:
            return [f.reply(PONG, b"")]
        if f.kind == DATA:
            s = self.sessions.get(f.session_id)
            if s is None:
                body = json.dumps({"code": ERROR_BAD_STATE, "message": "session not open on this backend"})
                return [f.reply(ERROR, body.encode())]
            s.count += 1
            return self.command(s, f)
        return []  # PONG, and kinds this backend does not know

    def command(self, s, f):
        text = f.payload.decode("utf-8", "replace")
        if text == "whoami":
            return [f.reply(DATA, self.name.encode())]
        if text == "count":
            return [f.reply(DATA, str(s.count).encode())]
        if text.startswith("kick"):
            reason = text[5:] if text.startswith("kick:") else "kicked by the python backend"
            del self.sessions[s.sid]
            body = json.dumps({"code": CLOSE_KICKED, "reason": reason}).encode()
            return [Frame(CLOSE, session_id=s.sid, user_id=f.user_id, payload=body)]
        if text.startswith("push:"):
            pushed = f.reply(DATA, text[5:].encode())
            pushed.seq = 0
            return [pushed, f.reply(DATA, b"pushed")]
        return [f.reply(DATA, f.payload)]


async def main():
    p = argparse.ArgumentParser(description="Game Gateway backend in Python (asyncio)")
    p.add_argument("--listen", default="127.0.0.1:7101", help="HOST:PORT (port 0 picks one; printed)")
    p.add_argument("--name", default="python-backend", help="answer to `whoami`")
    p.add_argument("--max-frame-bytes", type=int, default=1 << 20)
    args = p.parse_args()
    host, port = args.listen.rsplit(":", 1)
    backend = Backend(args.name, args.max_frame_bytes)
    server = await asyncio.start_server(backend.serve, host, int(port))
    addr = server.sockets[0].getsockname()
    print(f"listening {addr[0]}:{addr[1]}", flush=True)  # scripts and tests read this line
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
