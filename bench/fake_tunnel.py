#!/usr/bin/env python3
"""A stand-in for `wireseal-tunnel` for the control-plane benchmark.

It does what the agent needs from a userspace datapath and nothing else:

* the TUN link (`--interface`, as `wireseal-tunnel` opens it: IFF_TUN |
  IFF_NO_PI, set up), so the agent's real netlink code can set its MTU and put
  routes through it;
* WireGuard's cross-platform UAPI on `DIR/IFACE.sock` (`get=1`, `set=1`,
  https://www.wireguard.com/xplatform/), keeping the device and its peers in
  memory.

It never sends a packet. Every peer reports a handshake completed the moment
it was added, as if every remote node answered at once: the agent's
make-before-break gate (a peer's routes wait for its first handshake) opens on
the agent's next pass, so routes and the policy rule are installed for real.
After that each peer behaves as an idle WireGuard peer does: without a
persistent keepalive its handshake only ages and its byte counters stay; with
one it handshakes again every 120 s (REKEY_AFTER_TIME) and both counters grow
by a keepalive (32 bytes on the wire) per interval. So the agent's steady
state, idle sessions expiring included, is what it would be on real nodes.

Each `set=1` is appended to `--events` as one JSON line (CLOCK_MONOTONIC time,
the state of every peer it touched, the peers it removed), and each `get=1` as
its duration. So the benchmark learns when the device was programmed without
polling `get=1`, which would cost this process (and the machine's two cores)
far more than the agent.

Python 3 standard library only; needs CAP_NET_ADMIN (for the TUN).
"""

import argparse
import fcntl
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI, IFF_UP = 0x0001, 0x1000, 0x1
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
EINVAL = 22
ZERO_KEY = "0" * 64
REKEY_AFTER = 120.0  # WireGuard's REKEY_AFTER_TIME, s
KEEPALIVE_BYTES = 32  # a keepalive: an empty data message


def open_tun(name):
    """Creates the TUN link and returns its fd; the link lives as long as the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    # wireseal-tunnel sets its link up itself; doing the same keeps the agent's
    # netlink writes what they are in production.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
        flags = struct.unpack("16sH22x", req)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
    return fd


class BadRequest(Exception):
    """A request the real tunnel would refuse with EINVAL."""


def check_key(value):
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise BadRequest("bad key")
    return value


def check_uint(value, limit):
    if not value.isdigit() or int(value) > limit:
        raise BadRequest("bad number")
    return int(value)


def check_cidr(value):
    addr, _, bits = value.partition("/")
    try:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        socket.inet_pton(family, addr)
    except OSError:
        raise BadRequest("bad allowed_ip") from None
    check_uint(bits, 128 if family == socket.AF_INET6 else 32)
    return value


class Device:
    """The WireGuard device as UAPI sees it: interface keys and a peer table."""

    def __init__(self, events):
        self.lock = threading.Lock()
        self.private_key = None
        self.listen_port = 0
        self.fwmark = 0
        # public key (hex) -> {"endpoint": str | None, "keepalive": int, "allowed": [cidr]}
        self.peers = {}
        # each allowed IP belongs to one peer, as in WireGuard's routing trie
        self.owner = {}
        # public key -> the peer's get=1 text before and after its handshake
        # lines; kept up to date by apply(), so a get=1 of 5,000 peers is one join
        self.text = {}
        self.events = events

    def record(self, event):
        with self.lock:
            self.events.write(json.dumps(event) + "\n")
            self.events.flush()

    def get(self):
        started = time.monotonic()
        now = time.time()
        out = []
        with self.lock:
            if self.private_key:
                out.append(f"private_key={self.private_key}\n")
            if self.listen_port:
                out.append(f"listen_port={self.listen_port}\n")
            if self.fwmark:
                out.append(f"fwmark={self.fwmark}\n")
            out.extend(before + self.live(key, now) + after
                       for key, (before, after) in self.text.items())
            peers = len(self.peers)
        out.append("errno=0\n\n")
        answer = "".join(out)
        # each agent pass starts with a get=1: its cost is part of every change measured
        self.record({"t": time.monotonic(), "get_ms": (time.monotonic() - started) * 1e3,
                     "peers": peers})
        return answer

    def set(self, lines):
        """Parses the whole request first, so a bad one changes nothing (as the real one)."""
        device, ops, peer = {}, [], None
        for line in lines:
            key, sep, value = line.partition("=")
            if not sep:
                raise BadRequest("not key=value")
            if key == "public_key":
                peer = {"key": check_key(value), "allowed": []}
                ops.append(peer)
            elif peer is None:
                if key == "private_key":
                    device[key] = check_key(value)
                elif key == "listen_port":
                    device[key] = check_uint(value, 65535)
                elif key == "fwmark":
                    device[key] = check_uint(value, 2**32 - 1)
                elif key == "replace_peers":
                    device[key] = value == "true"
                else:
                    raise BadRequest(f"unknown interface key {key}")
            elif key in ("remove", "update_only", "replace_allowed_ips"):
                peer[key] = value == "true"
            elif key == "endpoint":
                peer[key] = value
            elif key == "persistent_keepalive_interval":
                peer[key] = check_uint(value, 65535)
            elif key == "allowed_ip":
                peer["allowed"].append(check_cidr(value))
            elif key in ("preshared_key", "protocol_version"):
                pass  # accepted, not needed by the benchmark
            else:
                raise BadRequest(f"unknown peer key {key}")
        with self.lock:
            touched, removed = self.apply(device, ops)
            event = {
                "t": time.monotonic(),
                "device": {k: v for k, v in device.items() if k != "private_key"},
                "private_key": "private_key" in device,
                "upsert": {k: {"endpoint": self.peers[k]["endpoint"],
                               "allowed_ips": sorted(self.peers[k]["allowed"])}
                           for k in sorted(touched) if k in self.peers},
                "remove": sorted(removed),
                "peers": len(self.peers),
            }
        self.record(event)

    def apply(self, device, ops):
        touched, removed = set(), set()
        if "private_key" in device:
            self.private_key = None if device["private_key"] == ZERO_KEY else device["private_key"]
        self.listen_port = device.get("listen_port", self.listen_port)
        self.fwmark = device.get("fwmark", self.fwmark)
        if device.get("replace_peers"):
            removed.update(self.peers)
            self.peers.clear()
            self.owner.clear()
            self.text.clear()
        for op in ops:
            key = op["key"]
            if op.get("remove"):
                gone = self.peers.pop(key, None)
                if gone is not None:
                    removed.add(key)
                    del self.text[key]
                    for ip in gone["allowed"]:
                        self.owner.pop(ip, None)
                continue
            if op.get("update_only") and key not in self.peers:
                continue
            peer = self.peers.setdefault(key, {"endpoint": None, "keepalive": 0, "allowed": [],
                                               "added": time.time()})
            removed.discard(key)
            touched.add(key)
            if "endpoint" in op:
                peer["endpoint"] = op["endpoint"]
            peer["keepalive"] = op.get("persistent_keepalive_interval", peer["keepalive"])
            if op.get("replace_allowed_ips"):
                for ip in peer["allowed"]:
                    self.owner.pop(ip, None)
                peer["allowed"] = []
            for ip in op["allowed"]:
                other = self.owner.get(ip)
                if other == key:
                    continue
                if other is not None:  # moved from another peer, as WireGuard does
                    self.peers[other]["allowed"].remove(ip)
                    touched.add(other)
                self.owner[ip] = key
                peer["allowed"].append(ip)
        for key in touched:
            self.text[key] = self.render(key, self.peers[key])
        return touched, removed

    def live(self, key, now):
        """The lines that change with time: the last handshake and the counters."""
        peer = self.peers[key]
        age = max(0.0, now - peer["added"])
        keepalive = peer["keepalive"]
        if keepalive:
            handshake = peer["added"] + (age // REKEY_AFTER) * REKEY_AFTER
            moved = KEEPALIVE_BYTES * int(age // keepalive)
        else:
            handshake, moved = peer["added"], 0
        return (f"last_handshake_time_sec={int(handshake)}\n"
                f"last_handshake_time_nsec={int((handshake % 1) * 1e9)}\n"
                f"tx_bytes={moved}\nrx_bytes={moved}\n")

    @staticmethod
    def render(key, peer):
        before = f"public_key={key}\nprotocol_version=1\n"
        if peer["endpoint"]:
            before += f"endpoint={peer['endpoint']}\n"
        after = (f"persistent_keepalive_interval={peer['keepalive']}\n"
                 + "".join(f"allowed_ip={ip}\n" for ip in peer["allowed"]))
        return before, after


class Handler(socketserver.StreamRequestHandler):
    """One connection: requests (lines up to an empty line) until the client closes."""

    def handle(self):
        device = self.server.device
        while True:
            lines = []
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\n")
                if not line:
                    break
                lines.append(line)
            if not lines:
                continue
            try:
                if lines == ["get=1"]:
                    answer = device.get()
                elif lines[0] == "set=1":
                    device.set(lines[1:])
                    answer = "errno=0\n\n"
                else:
                    raise BadRequest("unknown operation")
            except BadRequest as err:
                print(f"fake-tunnel: refused: {err}", file=sys.stderr, flush=True)
                answer = f"errno=-{EINVAL}\n\n"
            self.wfile.write(answer.encode())
            self.wfile.flush()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interface", default="wireseal0")
    ap.add_argument("--uapi-dir", default="/var/run/wireguard")
    ap.add_argument("--events", required=True, help="JSON lines, one per set=1")
    args = ap.parse_args()

    tun = open_tun(args.interface)
    os.makedirs(args.uapi_dir, mode=0o700, exist_ok=True)
    path = os.path.join(args.uapi_dir, f"{args.interface}.sock")
    if os.path.exists(path):
        os.unlink(path)
    events = open(args.events, "a")
    server = Server(path, Handler)
    os.chmod(path, 0o600)
    server.device = Device(events)

    def stop(*_):
        # shutdown() waits for serve_forever(), which runs in this thread: end it from another.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"fake-tunnel: {args.interface} up, UAPI on {path}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        os.unlink(path)
        os.close(tun)  # the TUN link goes with its last fd
        events.close()


if __name__ == "__main__":
    main()
