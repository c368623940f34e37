#!/usr/bin/env python3
"""Control-plane benchmark for wireseal (see bench/README.md).

Per size N: one network namespace `wscp-N` holding the fake apiserver with N
remote Nodes (+ this node, `self`), a userspace datapath and one real
`wireseal agent --datapath userspace`.

The datapath is, by default (`--tunnel fake`), bench/fake_tunnel.py: the TUN
link and the WireGuard UAPI in memory, where every peer reports a handshake.
The agent's make-before-break gate (a peer's routes wait for its first
handshake) then opens, and the agent installs the real routes and the real
policy rule through its real netlink code. With `--tunnel real`, the real
`wireseal-tunnel`: its peers never complete a handshake, so no route is ever
installed and only the device is measured (the setup of the runs before
2026-11-23-controlplane-routes).

Measured:
* initial sync: agent start -> N peers in the device, N routes in table 51830
  and the rule in the kernel, N peers in the agent's /status;
* per change (public key, pod CIDR or endpoint of one Node; a Node added; a Node
  deleted): time from the API request to the device being programmed (fake
  tunnel: its own record of the `set=1`; real tunnel: `get=1` polled) and to
  the route being in the kernel (the kernel's notifications, recorded by
  bench/netlink_events.py); the agent's passes and plans, the netlink writes
  it logged, the kernel's route/rule notifications, its CPU;
* VmRSS/VmHWM of the agent, the apiserver and the tunnel; idle CPU.

Every time compared is CLOCK_MONOTONIC (this script, the fake tunnel and the
netlink listener read the same clock), except "plan logged", which compares
the agent's wall-clock log timestamps with the wall-clock time of the request.

Root only, Python 3 standard library only.
"""

import argparse
import base64
import ctypes
import datetime
import http.client
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "wscp"
IFACE = "wireseal0"
TABLE, RULE_PRIORITY = 51830, 90  # the agent's defaults
API_PORT, ADMIN_PORT, STATUS_PORT, METRICS_PORT = 6443, 6444, 9830, 9831
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000
BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
KEY_ANN, EP_ANN = "wireseal.dev/public-key", "wireseal.dev/endpoint"
CIDR_ANN = "wireseal.dev/pod-cidrs"
NOTES = "## Observations (hand-written)"
KINDS = ["key", "cidr", "endpoint", "add", "delete"]
KIND_TEXT = {"key": "public key of one node", "cidr": "pod CIDR of one node",
             "endpoint": "endpoint of one node", "add": "node added",
             "delete": "node deleted"}

_libc = ctypes.CDLL(None, use_errno=True)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, timeout=60):
    res = subprocess.run(cmd, check=False, text=True, timeout=timeout,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}): {res.stderr}")
    return res


def setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


# --- X25519 (RFC 7748), to make real public keys without extra packages -------

P = 2**255 - 19
A24 = 121665


def x25519_base(k):
    k = bytearray(k)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    n = int.from_bytes(k, "little")
    x1, x2, z2, x3, z3, swap = 9, 1, 0, 9, 1, 0
    for t in reversed(range(255)):
        kt = (n >> t) & 1
        swap ^= kt
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = kt
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3 = (da + cb) ** 2 % P
        z3 = x1 * (da - cb) ** 2 % P
        x2 = aa * bb % P
        z2 = e * (aa + A24 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def new_public_key(rng):
    return base64.b64encode(x25519_base(rng.randbytes(32))).decode()


def b64_to_hex(key):
    return base64.b64decode(key).hex()


# --- the cluster ----------------------------------------------------------------

def node_ip(i):  # node i (0-based); self is 198.18.0.1
    return f"198.18.{i // 250}.{i % 250 + 2}"


def pod_cidr(i):  # i < 5,000 stays in 10.0.0.0-10.19.255.0; self has 10.250.0.0/24
    return f"10.{i // 256}.{i % 256}.0/24"


def node_object(name, ip, cidr, annotations):
    obj = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                 {"type": "Hostname", "address": name}]},
    }
    if annotations:
        obj["metadata"]["annotations"] = annotations
    return obj


class Cluster:
    """What the remote Nodes say, as this script last wrote it."""

    def __init__(self, n, rng):
        self.rng = rng
        self.nodes = {}  # name -> {"key": b64, "ip", "cidr", "endpoint"}
        for i in range(n):
            self.nodes[f"node-{i}"] = {"key": new_public_key(rng), "ip": node_ip(i),
                                       "cidr": pod_cidr(i), "endpoint": f"{node_ip(i)}:51830"}

    def node_list(self):
        items = [node_object("self", "198.18.0.1", "10.250.0.0/24", None)]
        for name, node in self.nodes.items():
            items.append(node_object(name, node["ip"], node["cidr"],
                                     {KEY_ANN: node["key"], EP_ANN: node["endpoint"]}))
        return {"apiVersion": "v1", "kind": "NodeList", "items": items}

    def cidrs(self):
        return {node["cidr"] for node in self.nodes.values()}


# --- probes ------------------------------------------------------------------------

def uapi_get(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    try:
        s.connect(sock_path)
        s.sendall(b"get=1\n\n")
        chunks = []
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
            if data.endswith(b"\n\n") or b"".join(chunks[-2:]).endswith(b"\n\n"):
                break
        return b"".join(chunks)
    finally:
        s.close()


def uapi_peer(answer, hexkey):
    """One peer of a `get=1` answer as {"endpoint", "allowed_ips"}, or None."""
    marker = b"public_key=" + hexkey.encode() + b"\n"
    at = answer.find(marker)
    if at < 0:
        return None
    end = answer.find(b"public_key=", at + len(marker))
    section = answer[at:end if end >= 0 else len(answer)].decode()
    peer = {"endpoint": None, "allowed_ips": []}
    for line in section.splitlines():
        key, _, value = line.partition("=")
        if key == "endpoint":
            peer["endpoint"] = value
        elif key == "allowed_ip":
            peer["allowed_ips"].append(value)
    return peer


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the agent's root-only status.sock)."""

    def __init__(self, socket_path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def http_req(target, method, path, body=None, ctype=None, timeout=30):
    """A request to a TCP port on 127.0.0.1, or to a unix socket given by its path."""
    if isinstance(target, str):
        conn = UnixHTTPConnection(target, timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", target, timeout=timeout)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return data
    finally:
        conn.close()


def agent_status(state_dir):
    return json.loads(http_req(os.path.join(state_dir, "status.sock"), "GET", "/status"))


def reconciles():
    total = 0
    for line in http_req(METRICS_PORT, "GET", "/metrics").decode().splitlines():
        if line.startswith("wireseal_reconciles_total"):
            total += int(float(line.split()[-1]))
    return total


def proc_mem(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])  # kB
    except OSError:
        pass
    return out


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, s


def machine_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def qemu_processes():
    """How many qemu processes run on the machine (other people's VMs load it)."""
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    count += f.read().startswith("qemu")
            except OSError:
                pass
    return count


class JsonLines:
    """The JSON lines appended to a file since the last call."""

    def __init__(self, path):
        self.file = open(path, "rb")
        self.partial = b""

    def read(self):
        data = self.partial + self.file.read()
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        out = []
        for line in data[:cut].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # the agent's non-JSON lines (none expected)
        return out

    def close(self):
        self.file.close()


def fields(entry):
    return entry.get("fields", entry)


def msg(entry):
    return fields(entry).get("message", "")


PLAN_KEYS = ["changes", "peers_upserted", "peers_removed", "routes_written",
             "routes_removed", "rules_added", "rules_removed", "awaiting_handshake"]


def epoch(ts):
    # "2026-11-23T14:15:09.029816Z" -> seconds since the epoch
    day, frac = ts.rstrip("Z").split(".") if "." in ts else (ts.rstrip("Z"), "0")
    base = datetime.datetime.strptime(day, "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return base + float("0." + frac)


def summarize_logs(entries, wall0=None):
    """What the agent's log says about the passes that changed something."""
    plans = [e for e in entries if msg(e) == "applying plan"]
    applied = [fields(e) for e in entries if msg(e) == "applied plan"]
    return {
        "plans": len(plans),
        "plan": {k: sum(int(fields(p).get(k, 0)) for p in plans) for k in PLAN_KEYS},
        # the agent's own count of rtnetlink write requests (link, routes, rules)
        "netlink_writes": sum(int(a.get("netlink_writes", 0)) for a in applied),
        "apply_ms": round(sum(float(a.get("apply_ms", 0)) for a in applied), 2),
        "apply_failed": sum(1 for a in applied if not a.get("ok", True)),
        "warnings": [fields(e).get("message") for e in entries
                     if e.get("level") in ("WARN", "ERROR")][:5],
        # when the agent logged its first plan, after the request was sent
        "plan_logged_ms": round((epoch(plans[0]["timestamp"]) - wall0) * 1e3, 1)
        if plans and wall0 is not None else None,
    }


class Observer:
    """Follows the agent's log, the kernel's notifications and (fake tunnel) the
    device's record, keeping the routes, rules and peers they add up to."""

    def __init__(self, agent_log, netlink_log, tunnel_log):
        self.agent = JsonLines(agent_log)
        self.netlink = JsonLines(netlink_log)
        self.tunnel = JsonLines(tunnel_log) if tunnel_log else None
        self.routes = {}  # dst -> time it appeared, in wireseal's table
        self.rules = set()  # (family, priority) of rules pointing at wireseal's table
        self.peers = {}  # hex key -> {"endpoint", "allowed_ips"} (fake tunnel only)
        self.last_activity = time.monotonic()

    def poll(self):
        """New (agent entries, kernel events, device events) since the last call.
        Applying the events to the state is left to the caller, event by event,
        so it can tell which event completed a change."""
        new = (self.agent.read(), self.netlink.read(),
               self.tunnel.read() if self.tunnel else [])
        if any(new):
            self.last_activity = time.monotonic()
        return new

    def apply_kernel(self, ev):
        if ev["ev"] in ("route+", "route-") and ev["table"] == TABLE:
            if ev["ev"] == "route+":
                self.routes.setdefault(ev["dst"], ev["t"])
            else:
                self.routes.pop(ev["dst"], None)
        elif ev["ev"] in ("rule+", "rule-") and ev["table"] == TABLE:
            (self.rules.add if ev["ev"] == "rule+" else self.rules.discard)(
                (ev["family"], ev["priority"]))

    def drain(self):
        """Reads and applies everything that happened so far."""
        agent, kernel, device = self.poll()
        for ev in kernel:
            self.apply_kernel(ev)
        for ev in device:
            self.apply_device(ev)
        return agent, kernel, device

    def apply_device(self, ev):
        if "upsert" not in ev:
            return  # a get=1 record
        for key in ev["remove"]:
            self.peers.pop(key, None)
        self.peers.update(ev["upsert"])

    def close(self):
        for tail in (self.agent, self.netlink, self.tunnel):
            if tail:
                tail.close()


def device_matches(expect, lookup):
    """`expect`: hex key -> None (must be absent) or the attributes it must have."""
    for key, want in expect.items():
        have = lookup(key)
        if want is None:
            if have is not None:
                return False
        elif have is None or any(
                sorted(have[k]) != sorted(v) if isinstance(v, list) else have[k] != v
                for k, v in want.items()):
            return False
    return True


def kernel_counts(events):
    out = {"route+": 0, "route-": 0, "rule+": 0, "rule-": 0, "link": 0, "overrun": 0}
    for ev in events:
        kind = ev["ev"]
        if kind in ("route+", "route-", "rule+", "rule-") and ev["table"] == TABLE:
            out[kind] += 1
        elif kind in ("link+", "link-") and ev["name"] == IFACE:
            out["link"] += 1
        elif kind == "overrun":
            out["overrun"] += 1
    return out


# --- one size ------------------------------------------------------------------------

class Procs:
    def __init__(self):
        self.procs = {}

    def start(self, name, cmd, logfile, ns):
        with open(logfile, "wb") as f:
            # `ip netns exec` execs the program: the Popen pid is the program's.
            p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

    def pid(self, name):
        return self.procs[name].pid

    def stop(self, name, timeout=10):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def stop_all(self):
        for name in ["agent", "tunnel", "netlink", "apiserver"]:
            self.stop(name)

    def alive(self, name):
        return self.procs[name].poll() is None


def wait_for(what, timeout, check, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        res = check()
        if res:
            return res
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kernel_routes(ns):
    """The routes in wireseal's table and its rules, read back from the kernel."""
    res = run(["ip", "-n", ns, "-j", "route", "show", "table", str(TABLE)], check=False)
    if res.returncode != 0 and "table does not exist" not in res.stderr:  # no route ever
        raise RuntimeError(f"ip route show table {TABLE}: {res.stderr}")
    routes = json.loads(res.stdout or "[]") if res.returncode == 0 else []
    rules = [r for r in json.loads(run(["ip", "-n", ns, "-j", "rule", "show"]).stdout or "[]")
             if str(r.get("table")) == str(TABLE)]
    return {r["dst"] for r in routes}, rules


class SizeRun:
    """Everything about one size: processes, state, measurements."""

    def __init__(self, n, args, outdir):
        self.n, self.args = n, args
        self.fake = args.tunnel == "fake"
        self.ns = f"{PREFIX}-{n}"
        self.rng = random.Random(n)
        self.work = tempfile.mkdtemp(prefix=f"{PREFIX}-{n}-")
        self.uapi_dir = os.path.join(self.work, "uapi")
        self.sock = os.path.join(self.uapi_dir, f"{IFACE}.sock")
        self.logdir = os.path.join(outdir, "runs", f"n{n}")
        os.makedirs(self.logdir, exist_ok=True)
        for name in os.listdir(self.logdir):  # a size run again starts clean
            os.remove(os.path.join(self.logdir, name))
        self.procs = Procs()
        self.obs = None
        self.res = {"nodes": n, "tunnel": args.tunnel}

    def path(self, name):
        return os.path.join(self.logdir, name)

    def setup(self, host_ns):
        t = time.monotonic()
        self.cluster = Cluster(self.n, self.rng)
        with open(os.path.join(self.work, "nodes.json"), "w") as f:
            json.dump(self.cluster.node_list(), f)
        log(f"N={self.n}: {self.n} Node objects generated in {time.monotonic() - t:.1f}s")
        ns = self.ns
        run(["ip", "netns", "del", ns], check=False)
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # the underlay: a veth pair inside the namespace (no dummy module here);
        # every node's endpoint is reachable through it, so --mtu auto finds 1500
        run(["ip", "-n", ns, "link", "add", f"{PREFIX}-ul", "type", "veth", "peer",
             "name", f"{PREFIX}-ul2"])
        run(["ip", "-n", ns, "addr", "add", "198.18.0.1/15", "dev", f"{PREFIX}-ul"])
        run(["ip", "-n", ns, "link", "set", f"{PREFIX}-ul2", "up"])
        run(["ip", "-n", ns, "link", "set", f"{PREFIX}-ul", "up"])
        # this process's probes (HTTP to 127.0.0.1) run in the namespace too
        setns(f"/run/netns/{ns}")

        bins = self.args.bin_dir
        self.kubeconfig = os.path.join(self.work, "kubeconfig")
        self.procs.start("apiserver", [
            os.path.join(bins, "fake-apiserver"), "--listen", f"127.0.0.1:{API_PORT}",
            "--admin-listen", f"127.0.0.1:{ADMIN_PORT}", "--nodes",
            os.path.join(self.work, "nodes.json"), "--kubeconfig-out", self.kubeconfig,
            "--log", "warn"], self.path("apiserver.log"), ns)
        wait_for("fake-apiserver", 120,
                 lambda: b"listening on" in open(self.path("apiserver.log"), "rb").read())
        # the listener starts before anything touches wireseal's table
        self.procs.start("netlink", [sys.executable, os.path.join(BENCH, "netlink_events.py"),
                                     "--out", self.path("netlink-events.jsonl")],
                         self.path("netlink-events.log"), ns)
        wait_for("netlink listener", 30, lambda: os.path.exists(
            self.path("netlink-events.jsonl")) and os.path.getsize(
            self.path("netlink-events.jsonl")) > 0)
        tunnel_events = self.path("tunnel-events.jsonl") if self.fake else None
        if self.fake:
            cmd = [sys.executable, os.path.join(BENCH, "fake_tunnel.py"), "--interface", IFACE,
                   "--uapi-dir", self.uapi_dir, "--events", tunnel_events]
            open(tunnel_events, "w").close()
        else:
            cmd = [os.path.join(bins, "wireseal-tunnel"), "--interface", IFACE,
                   "--uapi-dir", self.uapi_dir]
        self.procs.start("tunnel", cmd, self.path("tunnel.log"), ns)
        wait_for("tunnel UAPI socket", 30, lambda: os.path.exists(self.sock))
        wait_for("tunnel UAPI answer", 30, lambda: b"errno=0" in uapi_get(self.sock))
        open(self.path("agent.log"), "w").close()
        self.obs = Observer(self.path("agent.log"), self.path("netlink-events.jsonl"),
                            tunnel_events)

    def cpu(self, name):
        return proc_cpu(self.procs.pid(name))

    def mem(self):
        return {k: proc_mem(self.procs.pid(k)) for k in ["agent", "tunnel", "apiserver"]}

    # -- initial sync --

    def initial_sync(self):
        n, obs = self.n, self.obs
        t0, wall0 = time.monotonic(), time.time()
        self.procs.start("agent", [
            os.path.join(self.args.bin_dir, "wireseal"), "--log-format", "json", "agent",
            "--datapath", "userspace", "--uapi-dir", self.uapi_dir,
            "--kubeconfig", self.kubeconfig, "--node-name", "self",
            "--state-dir", os.path.join(self.work, "state"),
            "--status-addr", f"127.0.0.1:{STATUS_PORT}",
            "--metrics-addr", f"127.0.0.1:{METRICS_PORT}", "--resync-interval", str(self.args.resync),
            # The pod-cidrs changes below are overrides, honoured only inside
            # the cluster's pod networks (bounded claims).
            "--cluster-cidrs", "10.0.0.0/8",
            "--persistent-keepalive", str(self.args.keepalive)],
            self.path("agent.log"), self.ns)
        entries, kernel_all = [], []
        # real tunnel: no handshake, so no route to wait for
        t = {"peers": None, "routes": None if self.fake else "-", "status": None}
        deadline = t0 + self.args.sync_timeout
        while None in t.values():
            if not self.procs.alive("agent"):
                raise RuntimeError(f"agent exited; see {self.path('agent.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"initial sync of {n} nodes not done: {t}")
            new_entries, kernel, device = obs.poll()
            entries += new_entries
            kernel_all += kernel
            for ev in device:
                obs.apply_device(ev)
                if t["peers"] is None and len(obs.peers) >= n:
                    t["peers"] = ev["t"] - t0
            for ev in kernel:
                obs.apply_kernel(ev)
                if (self.fake and t["routes"] is None and len(obs.routes) >= n
                        and (4, RULE_PRIORITY) in obs.rules):
                    t["routes"] = ev["t"] - t0
            if not self.fake:
                if t["peers"] is None:
                    try:
                        if uapi_get(self.sock).count(b"public_key=") >= n:
                            t["peers"] = time.monotonic() - t0
                    except OSError:
                        pass
            if t["status"] is None:
                try:
                    st = agent_status(os.path.join(self.work, "state"))
                    # fake tunnel: every peer counts as encrypted; real: only keyed
                    good = sum(1 for p in st["peers"]
                               if (p.get("encrypted") if self.fake else p.get("publicKey")))
                    if st.get("synced") and good >= n:
                        t["status"] = time.monotonic() - t0
                except (OSError, RuntimeError, ValueError):
                    pass
            # the kernel's and the tunnel's events carry their own times; only
            # /status (1-2 MB at 5,000 nodes, built by the agent) is polled
            time.sleep(0.05 if n <= 1000 else 0.2)
        # Follow-up passes (the agent reacts to its own netlink changes too).
        more = self.wait_quiet()
        entries += more[0]
        kernel_all += more[1]
        routes, rules = kernel_routes(self.ns)
        want = self.cluster.cidrs() if self.fake else set()
        sync = {"peers_s": round(t["peers"], 3),
                "routes_s": round(t["routes"], 3) if self.fake else None,
                "status_s": round(t["status"], 3),
                "logs": summarize_logs(entries, wall0),
                "kernel": kernel_counts(kernel_all),
                "passes": reconciles(),
                "routes_in_table": len(routes), "routes_expected": len(want),
                "routes_exact": routes == want, "rules": rules,
                "agent_cpu_s": self.cpu("agent"), "tunnel_cpu_s": self.cpu("tunnel")}
        if self.fake:
            sync["peers_exact"] = set(obs.peers) == {
                b64_to_hex(node["key"]) for node in self.cluster.nodes.values()}
        self.res["initial_sync"] = sync
        self.res["mem_after_sync_kB"] = self.mem()
        log(f"N={n}: initial sync: peers {t['peers']:.2f}s, routes {sync['routes_s'] or '-'} s, "
            f"/status {t['status']:.2f}s; {sync['routes_in_table']} routes in table "
            f"(expected {len(want)}, exact: {sync['routes_exact']}), {len(rules)} rule(s), "
            f"{sync['logs']['plans']} plans {sync['logs']['plan']}, "
            f"netlink writes {sync['logs']['netlink_writes']}")
        if not sync["routes_exact"]:
            log(f"N={n}: WARNING: the routes in table {TABLE} are not the expected ones")

    def wait_quiet(self, until=None):
        """Reads everything until nothing new came for --quiet seconds (and `until`,
        if given, holds). Returns what was read; the caller applies the events."""
        got = ([], [], [])
        deadline = time.monotonic() + self.args.timeout
        while True:
            for have, more in zip(got, self.obs.drain()):
                have += more
            now = time.monotonic()
            done = until is None or until()
            if done and now - self.obs.last_activity >= self.args.quiet:
                return got
            if now > deadline:
                log(f"N={self.n}: WARNING: not settled within {self.args.timeout}s")
                return got
            time.sleep(0.01)

    # -- idle --

    def idle(self):
        """CPU and passes of an agent with nothing to do, after the handshake-poll
        back-off (100 ms doubling to 5 s) has reached its maximum (real tunnel)."""
        time.sleep(self.args.idle_wait)
        self.obs.drain()
        r0, c0, w0 = reconciles(), self.cpu("agent"), time.monotonic()
        tc0 = self.cpu("tunnel")
        time.sleep(self.args.idle)
        entries = self.obs.drain()[0]
        self.res["idle"] = {"seconds": round(time.monotonic() - w0, 1),
                            "agent_cpu_s": round(self.cpu("agent") - c0, 3),
                            "tunnel_cpu_s": round(self.cpu("tunnel") - tc0, 3),
                            "passes": reconciles() - r0, "log_lines": len(entries)}
        log(f"N={self.n}: idle {self.args.idle}s: agent CPU {self.res['idle']['agent_cpu_s']}s, "
            f"{self.res['idle']['passes']} passes")

    # -- steady-state Node writes --

    def node_writes(self):
        """Successful writes (PATCH, PUT) to the agent's own Node so far."""
        log_entries = json.loads(http_req(ADMIN_PORT, "GET", "/__fake/log"))
        return sum(1 for e in log_entries
                   if e["method"] in ("PATCH", "PUT") and 200 <= e["status"] < 300
                   and e["path"].split("?")[0] in ("/api/v1/nodes/self",
                                                   "/api/v1/nodes/self/status"))

    def steady(self):
        """Writes to its own Node by an agent with nothing to do, for longer than a
        WireGuard session lives (its idle peers' sessions expire inside the window),
        with periodic resyncs: every such write is a watch event for every agent in
        the cluster. Expressed per hour."""
        if self.args.steady <= 0:
            return
        # The agent resyncs every --resync seconds (the default, 30 s, as in
        # production), so the window holds passes that would write if any did.
        w0, c0 = self.node_writes(), time.monotonic()
        r0 = reconciles()
        deadline = c0 + self.args.steady
        while time.monotonic() < deadline:
            if not self.procs.alive("agent"):
                raise RuntimeError(f"agent exited; see {self.path('agent.log')}")
            time.sleep(1)
        seconds = time.monotonic() - c0
        writes = self.node_writes() - w0
        self.res["steady"] = {"seconds": round(seconds, 1), "keepalive": self.args.keepalive,
                              "writes": writes, "passes": reconciles() - r0,
                              "per_hour": round(writes * 3600 / seconds, 2)}
        log(f"N={self.n}: steady {seconds:.0f}s, keepalive {self.args.keepalive}s: "
            f"{writes} Node writes ({self.res['steady']['per_hour']}/h), "
            f"{self.res['steady']['passes']} passes")

    # -- changes --

    def plan_change(self, kind, rnd):
        """The API request of one change, what the device must then show, and the
        pod CIDRs whose routes must be present / absent afterwards."""
        nodes, rng = self.cluster.nodes, self.rng
        originals = [name for name in nodes if name.startswith("node-")]
        if kind == "add":
            name, i = f"extra-{rnd}", self.n + rnd
            node = {"key": new_public_key(rng), "ip": node_ip(i), "cidr": pod_cidr(i),
                    "endpoint": f"{node_ip(i)}:51830"}
            body = node_object(name, node["ip"], node["cidr"],
                               {KEY_ANN: node["key"], EP_ANN: node["endpoint"]})
            request = ("POST", "/api/v1/nodes", body, "application/json")
            expect = {b64_to_hex(node["key"]): {"allowed_ips": [node["cidr"]]}}
            nodes[name] = node
            return name, request, expect, {node["cidr"]}, set()
        if kind == "delete":
            name = f"extra-{rnd}"
            node = nodes.pop(name)
            request = ("DELETE", f"/api/v1/nodes/{name}", None, None)
            return name, request, {b64_to_hex(node["key"]): None}, set(), {node["cidr"]}
        name = rng.choice(originals)
        node = nodes[name]
        old_hex = b64_to_hex(node["key"])
        if kind == "key":
            node["key"] = new_public_key(rng)
            patch = {KEY_ANN: node["key"]}
            expect = {b64_to_hex(node["key"]): {"allowed_ips": [node["cidr"]]}, old_hex: None}
            present, absent = {node["cidr"]}, set()
        elif kind == "cidr":
            old = node["cidr"]
            # 10.200.x.0/24 overlaps no node's CIDR (see pod_cidr)
            node["cidr"] = f"10.{200 + rnd // 256}.{rnd % 256}.0/24"
            patch = {CIDR_ANN: node["cidr"]}
            expect = {old_hex: {"allowed_ips": [node["cidr"]]}}
            present, absent = {node["cidr"]}, {old}
        else:
            node["endpoint"] = f"{node['ip']}:{40000 + rnd}"
            patch = {EP_ANN: node["endpoint"]}
            expect = {old_hex: {"endpoint": node["endpoint"]}}
            present, absent = {node["cidr"]}, set()
        request = ("PATCH", f"/api/v1/nodes/{name}",
                   {"metadata": {"annotations": patch}}, "application/merge-patch+json")
        return name, request, expect, present, absent

    def change(self, kind, rnd):
        obs = self.obs
        name, (method, path, body, ctype), expect, present, absent = self.plan_change(kind, rnd)
        if not self.fake:
            present = set()  # no handshake, so never a route
        time.sleep(self.args.gap)
        obs.drain()  # whatever happened before belongs to no change
        passes0, cpu0 = reconciles(), self.cpu("agent")
        t0, wall0 = time.monotonic(), time.time()
        http_req(API_PORT, method, path, json.dumps(body).encode() if body else None, ctype)
        request_ms = (time.monotonic() - t0) * 1e3
        t_device, polls, get_s = None, 0, 0.0
        entries, kernel, device = [], [], []

        def routes_ok():
            return (present <= obs.routes.keys() and not absent & obs.routes.keys()
                    and (not self.fake or len(obs.routes) == len(self.cluster.cidrs())))

        deadline = t0 + self.args.timeout
        while t_device is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} change of {name} not in the device "
                                   f"after {self.args.timeout}s")
            new = obs.poll()
            entries += new[0]
            kernel += new[1]
            device += new[2]
            for ev in new[1]:
                obs.apply_kernel(ev)
            for ev in new[2]:
                obs.apply_device(ev)
                if t_device is None and device_matches(expect, obs.peers.get):
                    t_device = ev["t"]
            if not self.fake:
                g0 = time.monotonic()
                answer = uapi_get(self.sock)
                get_s += time.monotonic() - g0
                polls += 1
                if device_matches(expect, lambda key: uapi_peer(answer, key)):
                    t_device = g0
                time.sleep(self.args.poll)
            else:
                time.sleep(0.002)
        more = self.wait_quiet(routes_ok)
        entries += more[0]
        kernel += more[1]
        device += more[2]
        touched = present | absent
        route_events = [[round((ev["t"] - t0) * 1e3, 1), ev["ev"][-1], ev["dst"]]
                        for ev in kernel if ev["ev"] in ("route+", "route-")
                        and ev["table"] == TABLE and ev["dst"] in touched]
        gap = None  # how long the node's pod CIDR had no route in wireseal's table
        for (t_del, op_del, dst), (t_add, op_add, dst2) in zip(route_events, route_events[1:]):
            if op_del == "-" and op_add == "+" and dst == dst2:
                gap = round(t_add - t_del, 1)
        gets = [ev["get_ms"] for ev in device if "get_ms" in ev]
        rec = {"round": rnd, "kind": kind, "node": name,
               "request_ms": round(request_ms, 1),
               "device_ms": round((t_device - t0) * 1e3, 1),
               "route_ms": route_events[-1][0] if route_events else None,
               "route_events": route_events, "route_gap_ms": gap,
               "routes_ok": routes_ok(),
               "passes": reconciles() - passes0,
               "kernel": kernel_counts(kernel),
               "agent_cpu_ms": round((self.cpu("agent") - cpu0) * 1e3),
               "device_gets": len(gets),
               "device_get_ms_mean": round(statistics.mean(gets), 2) if gets else None,
               **summarize_logs(entries, wall0)}
        if not self.fake:
            rec["uapi_polls"], rec["uapi_get_ms_mean"] = polls, round(get_s / polls * 1e3, 2)
        log(f"N={self.n}: {kind} {name}: device {rec['device_ms']} ms, route {rec['route_ms']} ms "
            f"{route_events}, plan logged {rec['plan_logged_ms']} ms, passes {rec['passes']}, "
            f"plans {rec['plans']}, netlink writes {rec['netlink_writes']}, "
            f"kernel {rec['kernel']}, ok {rec['routes_ok']}")
        if not rec["routes_ok"]:
            log(f"N={self.n}: WARNING: routes not as expected after the {kind} change of {name}")
        return rec

    def changes(self):
        out = []
        for rnd in range(self.args.rounds):
            for kind in KINDS:
                out.append(self.change(kind, rnd))
        self.res["changes"] = out

    def finish(self):
        routes, rules = kernel_routes(self.ns)
        want = self.cluster.cidrs() if self.fake else set()
        self.res["end"] = {"routes_in_table": len(routes), "routes_expected": len(want),
                           "routes_exact": routes == want, "rules": rules,
                           "mem_kB": self.mem(),
                           "reconciles": [ln for ln in http_req(METRICS_PORT, "GET", "/metrics")
                                          .decode().splitlines()
                                          if ln.startswith("wireseal_reconciles")]}

    def teardown(self, host_ns):
        if self.obs:
            self.obs.close()
        self.procs.stop_all()
        setns(host_ns)
        run(["ip", "netns", "del", self.ns], check=False)
        subprocess.run(["rm", "-rf", self.work], check=False)
        # the real tunnel logs a WARN per lost handshake; the event records of the
        # 5,000-node sync hold every peer and route
        for name in os.listdir(self.logdir):
            path = os.path.join(self.logdir, name)
            if not name.endswith(".gz") and os.path.getsize(path) > 256 << 10:
                subprocess.run(["gzip", "-f", path], check=False)


def run_size(n, args, outdir, host_ns):
    size = SizeRun(n, args, outdir)
    load0, busy0 = loadavg(), machine_cpu()
    size.res["machine_before"] = {"loadavg": load0, "qemu_processes": qemu_processes()}
    try:
        size.setup(host_ns)
        size.initial_sync()
        size.idle()
        size.steady()
        size.changes()
        size.finish()
    finally:
        size.teardown(host_ns)
    busy1 = machine_cpu()
    size.res["machine"] = {
        "loadavg_before": load0, "loadavg_after": loadavg(),
        "qemu_processes": size.res.pop("machine_before")["qemu_processes"],
        # of all cores, over the whole size (this benchmark included)
        "busy_pct": round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1)}
    return size.res


# --- report --------------------------------------------------------------------------

def pct(values, q):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return round(v[lo] + (v[hi] - v[lo]) * (k - lo), 1)


def spread(values):
    """median / p90 / max, or '-'."""
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    return f"{pct(v, .5):g} / {pct(v, .9):g} / {max(v):g}"


def counts(values):
    """A count that should not vary: '2', else 'min–max (median m)'."""
    v = sorted(values)
    if not v:
        return "-"
    if v[0] == v[-1]:
        return f"{v[0]:g}"
    return f"{v[0]:g}–{v[-1]:g} (median {statistics.median(v):g})"


def mib(kb):
    return f"{kb / 1024:.1f}" if kb else "-"


def render(summary, outdir):
    meta = summary["meta"]
    fake = meta.get("tunnel", "fake") == "fake"
    lines = ["# Control-plane benchmark" + (": routes and rules" if fake else ""), "",
             f"Run {meta['date']} on {meta['machine']}; binaries: `{meta['bin_dir']}` "
             f"({meta['profile']}), commit `{meta['commit']}`.", "",
             "Datapath: " + ("the fake tunnel (`bench/fake_tunnel.py`): every peer reports a "
                             "handshake, so the agent installs its routes and rule through "
                             "its real netlink code." if fake else
                             "the real `wireseal-tunnel`; no peer ever completes a handshake, "
                             "so no route or rule is installed."), "",
             "Command: `" + meta["command"] + "`", "",
             "## Load on the machine", "",
             "| nodes | load average before → after | busy, all cores (%) | qemu processes "
             "| kernel notifications lost by the listener |",
             "|---|---|---|---|---|"]
    for r in summary["sizes"]:
        m = r["machine"]
        lost = r["initial_sync"]["kernel"]["overrun"] + sum(
            c["kernel"]["overrun"] for c in r["changes"])
        lines.append(f"| {r['nodes']} | {' '.join(map(str, m['loadavg_before']))} → "
                     f"{' '.join(map(str, m['loadavg_after']))} | {m['busy_pct']} "
                     f"| {m['qemu_processes']} | {'none' if not lost else f'{lost} overrun(s)'} |")
    lines += ["", "## Initial sync and memory", "",
              "| nodes | all peers in the device (s) | all routes + rule in the kernel (s) "
              "| /status complete (s) | plans | peer upserts | routes / rules added "
              "| netlink writes logged | kernel route+rule events | routes in table after sync "
              "/ at the end (expected) | agent CPU for the sync (s) | agent RSS / HWM at the end "
              "(MiB) | apiserver RSS (MiB) " + ("" if fake else "| tunnel RSS / HWM (MiB) ")
              + "| idle: agent CPU (% of a core), passes |",
              "|" + "---|" * (13 if fake else 14)]
    for r in summary["sizes"]:
        s, end, idle = r["initial_sync"], r["end"], r["idle"]
        lg, mem = s["logs"], end["mem_kB"]
        kernel = s["kernel"]["route+"] + s["kernel"]["rule+"]
        exact = "exact" if s["routes_exact"] and end["routes_exact"] else "NOT exact"
        lines.append(
            f"| {r['nodes']} | {s['peers_s']} | {s['routes_s'] if s['routes_s'] is not None else '-'} "
            f"| {s['status_s']} | {lg['plans']} | {lg['plan']['peers_upserted']} "
            f"| {lg['plan']['routes_written']} / {lg['plan']['rules_added']} "
            f"| {lg['netlink_writes']} | {kernel} "
            f"| {s['routes_in_table']} / {end['routes_in_table']} ({s['routes_expected']}, {exact}) "
            f"| {s['agent_cpu_s']:.2f} "
            f"| {mib(mem['agent'].get('VmRSS'))} / {mib(mem['agent'].get('VmHWM'))} "
            f"| {mib(mem['apiserver'].get('VmRSS'))} "
            + ("" if fake else f"| {mib(mem['tunnel'].get('VmRSS'))} / "
                               f"{mib(mem['tunnel'].get('VmHWM'))} ")
            + f"| {100 * idle['agent_cpu_s'] / idle['seconds']:.1f}, {idle['passes']} |")
    steady = [r for r in summary["sizes"] if "steady" in r]
    if steady:
        lines += ["", "## Steady-state Node writes", "",
                  "The agent's writes to its own Node with nothing changing but time "
                  "(idle sessions expire after 180 s without a keepalive; with one, the "
                  "peers handshake every 120 s). Each is a watch event for every agent.", "",
                  "| nodes | keepalive (s) | window (s) | passes | Node writes | per hour |",
                  "|---|---|---|---|---|---|"]
        for r in steady:
            st = r["steady"]
            lines.append(f"| {r['nodes']} | {st['keepalive']} | {st['seconds']} "
                         f"| {st['passes']} | {st['writes']} | {st['per_hour']} |")
    lines += ["", "## Changes", "",
              "Times in ms from the API request (median / p90 / max). \"device\": the "
              "change is in the datapath; \"route\": the last kernel notification for the "
              "node's pod CIDR(s) in wireseal's table; \"no route\": how long a pod CIDR "
              "had no route there (deleted, then added again). Counts are per change, "
              "a single number when every change had the same.", "",
              "| nodes | change | n | device (ms) | route (ms) | no route (ms) "
              "| plan logged, median (ms) | passes | plans | peers upserted / removed "
              "| routes added / removed | netlink writes logged | kernel route events +/− "
              "| agent CPU, median (ms) |",
              "|" + "---|" * 14]
    for r in summary["sizes"]:
        for kind in KINDS:
            cs = [c for c in r["changes"] if c["kind"] == kind]
            if not cs:
                continue
            ok = "" if all(c["routes_ok"] for c in cs) else " (routes NOT as expected)"
            lines.append(
                f"| {r['nodes']} | {KIND_TEXT[kind]}{ok} | {len(cs)} "
                f"| {spread([c['device_ms'] for c in cs])} "
                f"| {spread([c['route_ms'] for c in cs])} "
                f"| {spread([c['route_gap_ms'] for c in cs])} "
                f"| {pct([c['plan_logged_ms'] for c in cs], .5)} "
                f"| {counts([c['passes'] for c in cs])} | {counts([c['plans'] for c in cs])} "
                f"| {counts([c['plan']['peers_upserted'] for c in cs])} / "
                f"{counts([c['plan']['peers_removed'] for c in cs])} "
                f"| {counts([c['plan']['routes_written'] for c in cs])} / "
                f"{counts([c['plan']['routes_removed'] for c in cs])} "
                f"| {counts([c['netlink_writes'] for c in cs])} "
                f"| {counts([c['kernel']['route+'] for c in cs])} / "
                f"{counts([c['kernel']['route-'] for c in cs])} "
                f"| {pct([c['agent_cpu_ms'] for c in cs], .5)} |")
    lines += ["", "Per-change records: `summary.json`; logs and event records of every "
              "process: `runs/n<N>/`.", "", NOTES, ""]
    path = os.path.join(outdir, "README.md")
    notes = ""
    if os.path.exists(path):
        old = open(path).read()
        if NOTES in old:
            notes = old.split(NOTES, 1)[1].lstrip("\n")
    with open(path, "w") as f:
        f.write("\n".join(lines) + ("\n" + notes if notes else ""))


def meta(args):
    def out(cmd):
        try:
            return run(cmd, check=False).stdout.strip()
        except OSError:
            return "?"
    model = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} x {model}, {mem} MiB RAM, kernel {platform.release()} "
                   "(shared machine)",
        "bin_dir": os.path.relpath(args.bin_dir, REPO),
        "profile": "release" if "release" in args.bin_dir else "debug",
        "commit": out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
        "command": shlex.join(["bench/controlplane.py", *sys.argv[1:]]),
        "tunnel": args.tunnel,
        "python": platform.python_version(),
    }


def cleanup():
    """Kills whatever runs in a namespace of ours and removes it (leftovers of a
    run that was killed, and this run's at the end)."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{PREFIX}-"):
            for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            run(["ip", "netns", "del", name], check=False)
            log(f"removed leftover namespace {name}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,1000,5000")
    ap.add_argument("--tunnel", choices=["fake", "real"], default="fake",
                    help="fake: bench/fake_tunnel.py, handshakes, routes (default); "
                         "real: wireseal-tunnel, no handshake, no routes")
    ap.add_argument("--rounds", type=int, default=10,
                    help="rounds per size; each makes one change of every kind")
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "release"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--idle", type=float, default=20.0, help="idle CPU window, s")
    ap.add_argument("--idle-wait", type=float, default=12.0,
                    help="wait after the sync before the idle window, s")
    ap.add_argument("--keepalive", type=int, default=0,
                    help="the agent's --persistent-keepalive, s (the fake tunnel's peers "
                         "then handshake every 120 s)")
    ap.add_argument("--resync", type=int, default=30,
                    help="the agent's --resync-interval, s (runs before 2026-12-03 used 3600)")
    ap.add_argument("--steady", type=float, default=240.0,
                    help="window in which the agent's own Node writes are counted, s "
                         "(longer than a session lives, 180 s); 0: skip")
    ap.add_argument("--gap", type=float, default=1.0, help="pause before each change, s")
    ap.add_argument("--quiet", type=float, default=1.0,
                    help="a change is over when nothing happened for this long, s")
    ap.add_argument("--poll", type=float, default=0.01,
                    help="UAPI poll interval with --tunnel real, s")
    ap.add_argument("--timeout", type=float, default=30.0, help="per change, s")
    ap.add_argument("--sync-timeout", type=float, default=900)
    ap.add_argument("--report", metavar="DIR", help="only re-render DIR/README.md")
    args = ap.parse_args()
    if args.report:
        render(json.load(open(os.path.join(args.report, "summary.json"))), args.report)
        return
    if os.geteuid() != 0:
        sys.exit("run as root")
    args.bin_dir = os.path.abspath(args.bin_dir)
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    suffix = "controlplane-routes" if args.tunnel == "fake" else "controlplane"
    outdir = args.out or os.path.join(REPO, "bench", "results", f"{day}-{suffix}")
    os.makedirs(outdir, exist_ok=True)
    summary = {"meta": meta(args), "sizes": []}
    spath = os.path.join(outdir, "summary.json")
    if os.path.exists(spath):  # keep sizes measured by an earlier invocation
        old = json.load(open(spath))
        if old["meta"].get("tunnel", "real") != args.tunnel:
            sys.exit(f"{outdir} holds --tunnel {old['meta'].get('tunnel', 'real')} results")
        summary["sizes"] = old.get("sizes", [])
        summary["meta"]["earlier_runs"] = old["meta"].get("earlier_runs", []) + [
            {k: v for k, v in old["meta"].items() if k != "earlier_runs"}]
    host_ns = "/proc/self/ns/net"
    host_fd_path = f"/proc/{os.getpid()}/fd/{os.open(host_ns, os.O_RDONLY)}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cleanup()
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            res = run_size(n, args, outdir, host_fd_path)
            res["profile"] = summary["meta"]["profile"]
            summary["sizes"] = [s for s in summary["sizes"] if s["nodes"] != n] + [res]
            summary["sizes"].sort(key=lambda s: s["nodes"])
            with open(spath, "w") as f:
                json.dump(summary, f, indent=1)
            render(summary, outdir)
    except KeyboardInterrupt:
        sys.exit(130)  # cleanup already ran in the finally blocks
    finally:
        cleanup()
    log(f"results in {outdir}")


if __name__ == "__main__":
    main()
