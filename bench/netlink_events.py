#!/usr/bin/env python3
"""Records the kernel's route, rule and link notifications of the current network
namespace as JSON lines, for the control-plane benchmark.

Why not `ip -ts monitor`: its timestamps are wall-clock strings and its socket
buffer is small; the initial sync of a 5,000-node cluster writes 5,000 routes in
well under a second and a listener that overflows loses events silently. This
one asks for a 64 MiB receive buffer, records an explicit "overrun" line if the
kernel still drops notifications (ENOBUFS), and stamps each batch with
CLOCK_MONOTONIC, the clock the benchmark and the fake tunnel use.

The stamp is the time the notification was read, a few microseconds after the
kernel sent it when this process keeps up.

Output, one object per line: {"t": s, "ev": "route+"|"route-", "table", "dst",
"oif"}, {"t", "ev": "rule+"|"rule-", "family", "priority", "table"},
{"t", "ev": "link+"|"link-", "index", "name", "mtu", "up"}, {"t", "ev":
"overrun"}; the first line is {"t", "ev": "ready"}.

Python 3 standard library only.
"""

import argparse
import errno
import json
import signal
import socket
import struct
import sys
import time

NETLINK_ROUTE = 0
SO_RCVBUFFORCE = 33
# multicast groups (bit = 1 << (RTNLGRP_* - 1))
GROUPS = (1 << 0)      # RTNLGRP_LINK
GROUPS |= (1 << 6)     # RTNLGRP_IPV4_ROUTE
GROUPS |= (1 << 7)     # RTNLGRP_IPV4_RULE
GROUPS |= (1 << 10)    # RTNLGRP_IPV6_ROUTE
GROUPS |= (1 << 18)    # RTNLGRP_IPV6_RULE
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWRULE, RTM_DELRULE = 32, 33
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
FRA_PRIORITY, FRA_TABLE = 6, 15
IFLA_IFNAME, IFLA_MTU = 3, 4
IFF_UP = 1


def attributes(data, start, end):
    """The rtattrs of one message as {type: payload}."""
    out = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return out


def u32(raw, default=None):
    return struct.unpack("=I", raw[:4])[0] if raw is not None else default


def decode(kind, data, body, end):
    if kind in (RTM_NEWROUTE, RTM_DELROUTE):
        family, dst_len, _, _, table = struct.unpack_from("=BBBBB", data, body)
        attrs = attributes(data, body + 12, end)
        af = socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET
        dst = attrs.get(RTA_DST)
        addr = socket.inet_ntop(af, dst) if dst else ("::" if af == socket.AF_INET6 else "0.0.0.0")
        return {"ev": "route+" if kind == RTM_NEWROUTE else "route-",
                "table": u32(attrs.get(RTA_TABLE), table), "dst": f"{addr}/{dst_len}",
                "oif": u32(attrs.get(RTA_OIF))}
    if kind in (RTM_NEWRULE, RTM_DELRULE):
        family, _, _, _, table = struct.unpack_from("=BBBBB", data, body)
        attrs = attributes(data, body + 12, end)
        return {"ev": "rule+" if kind == RTM_NEWRULE else "rule-",
                "family": 6 if family == socket.AF_INET6 else 4,
                "priority": u32(attrs.get(FRA_PRIORITY), 0),
                "table": u32(attrs.get(FRA_TABLE), table)}
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        _, _, index, flags = struct.unpack_from("=BxHiI", data, body)
        attrs = attributes(data, body + 16, end)
        name = attrs.get(IFLA_IFNAME, b"").split(b"\0")[0].decode(errors="replace")
        return {"ev": "link+" if kind == RTM_NEWLINK else "link-", "index": index,
                "name": name, "mtu": u32(attrs.get(IFLA_MTU)), "up": bool(flags & IFF_UP)}
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    sock.bind((0, GROUPS))
    with open(args.out, "a") as out:
        out.write(json.dumps({"t": time.monotonic(), "ev": "ready"}) + "\n")
        out.flush()
        while True:
            try:
                data = sock.recv(1 << 20)
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                out.write(json.dumps({"t": time.monotonic(), "ev": "overrun"}) + "\n")
                out.flush()
                continue
            t = time.monotonic()
            at = 0
            # one flush per datagram: a burst of routes costs few writes
            while at + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                if length < 16:
                    break
                event = decode(kind, data, at + 16, at + length)
                if event is not None:
                    out.write(json.dumps({"t": t, **event}) + "\n")
                at += (length + 3) & ~3
            out.flush()


if __name__ == "__main__":
    main()
