#!/usr/bin/env python3
"""Userspace WireGuard datapath benchmark for wireseal (see bench/README.md).

Two network namespaces joined by a veth pair; iperf3 (TCP x1, TCP x4, UDP) and ping
from namespace a to namespace b over plain veth, wireseal-tunnel, Debian's
wireguard-go and boringtun-cli. Rounds alternate the datapaths with a rotating order;
the summary reports medians over rounds and the median of per-round ratios.

Root only, Python 3 standard library only.
"""

import argparse
import datetime
import fcntl
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "wsb"
NS_A, NS_B = f"{PREFIX}-a", f"{PREFIX}-b"
VETH_A, VETH_B = f"{PREFIX}-va", f"{PREFIX}-vb"
UNDERLAY = "10.97.0"  # 10.97.0.1 (a) <-> 10.97.0.2 (b)
UAPI_DIR = "/var/run/wireguard"  # where `wg` looks for userspace sockets
LOCK = f"/run/{PREFIX}-bench.lock"
IPERF_PORT = 5201
TUNNEL_MTU = 1420
UDP_LEN = 1392  # 1392 + 28 = 1420-byte packets, the tunnel MTU
CLK_TCK = os.sysconf("SC_CLK_TCK")

# name -> (interface prefix, listen port, tunnel /24)
TUNNELS = {
    "wireseal": ("wsb-ws", 51821, "10.96.1"),
    "wggo": ("wsb-wg", 51822, "10.96.2"),
    "boringtun": ("wsb-bt", 51823, "10.96.3"),
}
IMPLS = ["veth", "wireseal", "wggo", "boringtun"]
TESTS = ["ping", "tcp1", "tcp4", "udp"]
LABEL = {
    "veth": "plain veth",
    "wireseal": "wireseal-tunnel",
    "wggo": "wireguard-go (Debian)",
    "boringtun": "boringtun-cli",
    "ping": "ping RTT",
    "tcp1": "TCP x1",
    "tcp4": "TCP x4",
    "udp": "UDP",
}

NOTES = "## Observations (hand-written)"  # kept by --report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, capture=True, timeout=60, **kw):
    res = subprocess.run(
        cmd, check=False, text=True, timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}): {res.stderr}")
    return res


def nsx(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


def first_line(cmd):
    try:
        res = run(cmd, check=False, timeout=10)
        out = (res.stdout or res.stderr or "").strip()
        return out.splitlines()[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---------------------------------------------------------------- /proc readers

def proc_cpu_ticks(pid):
    """utime+stime of the whole process (all threads) in clock ticks."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def proc_mem_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(val.split()[0])
    return out


def machine_cpu():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals[:8]) - idle, sum(vals[:8])


def loadavg():
    with open("/proc/loadavg", encoding="ascii") as f:
        return [float(v) for v in f.read().split()[:3]]


def ns_udp_counters(ns, port):
    """RcvbufErrors of the namespace (UDP over IPv4 + IPv6) and the summed `drops`
    of every UDP socket bound to `port` (the tunnel's sockets)."""
    out = run(nsx(ns, "sh", "-c",
                  "cat /proc/net/snmp; echo @@; cat /proc/net/snmp6; echo @@; "
                  "cat /proc/net/udp /proc/net/udp6")).stdout
    snmp, snmp6, socks = out.split("@@\n")
    rcvbuf = 0
    lines = snmp.splitlines()
    for head, vals in zip(lines, lines[1:]):
        if head.startswith("Udp:") and vals.startswith("Udp:"):
            rcvbuf += dict(zip(head.split()[1:], map(int, vals.split()[1:])))["RcvbufErrors"]
            break
    for line in snmp6.splitlines():
        if line.startswith("Udp6RcvbufErrors"):
            rcvbuf += int(line.split()[1])
    drops = 0
    for line in socks.splitlines():
        f = line.split()
        if len(f) > 12 and ":" in f[1] and f[0] != "sl" and port:
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                drops += int(f[-1])
    return rcvbuf, drops


def link_drops(ns, dev):
    """rx/tx dropped of a device and the drops of its qdiscs."""
    out = {"rx": 0, "tx": 0, "qdisc": 0}
    res = run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev], check=False)
    if res.returncode == 0:
        st = json.loads(res.stdout)[0].get("stats64", {})
        out["rx"] = st.get("rx", {}).get("dropped", 0)
        out["tx"] = st.get("tx", {}).get("dropped", 0)
    res = run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev], check=False)
    if res.returncode == 0 and res.stdout.strip():
        out["qdisc"] = sum(q.get("drops", 0) for q in json.loads(res.stdout))
    return out


# ---------------------------------------------------------------- the lab

class Lab:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.daemons = {}  # impl -> [(side, Popen)]
        self.others = []  # iperf3 servers etc.
        self.settings = {}

    # -- topology
    def setup_underlay(self):
        self.teardown_netns()
        for ns in (NS_A, NS_B):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "add", VETH_A, "netns", NS_A, "type", "veth",
             "peer", "name", VETH_B, "netns", NS_B])
        run(["ip", "-n", NS_A, "addr", "add", f"{UNDERLAY}.1/24", "dev", VETH_A])
        run(["ip", "-n", NS_B, "addr", "add", f"{UNDERLAY}.2/24", "dev", VETH_B])
        run(["ip", "-n", NS_A, "link", "set", VETH_A, "up"])
        run(["ip", "-n", NS_B, "link", "set", VETH_B, "up"])
        run(nsx(NS_A, "ping", "-c", "1", "-W", "5", f"{UNDERLAY}.2"))

    def daemon_cmd(self, impl, ifname):
        a = self.args
        if impl == "wireseal":
            return [a.wireseal, "--interface", ifname, "--uapi-dir", UAPI_DIR,
                    *shlex.split(a.wireseal_args)], {"WIRESEAL_LOG": "error"}
        if impl == "wggo":
            return [a.wireguard_go, "-f", ifname], {"LOG_LEVEL": "error"}
        if impl == "boringtun":
            return [a.boringtun, ifname, "--foreground", "--disable-drop-privileges",
                    "--threads", str(a.boringtun_threads), "-v", "error",
                    "-l", os.path.join(self.tmp, f"{ifname}.log")], {}
        raise ValueError(impl)

    def start_tunnel(self, impl):
        ifp, port, net = TUNNELS[impl]
        procs = []
        for side, ns in (("a", NS_A), ("b", NS_B)):
            ifname = f"{ifp}{side}"
            sock = os.path.join(UAPI_DIR, f"{ifname}.sock")
            if os.path.exists(sock):
                os.unlink(sock)  # stale socket of an earlier run of this script
            cmd, env = self.daemon_cmd(impl, ifname)
            logf = open(os.path.join(self.tmp, f"{ifname}.stderr"), "w", encoding="utf-8")
            p = subprocess.Popen(nsx(ns, *cmd), env={**os.environ, **env},
                                 stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            logf.close()
            procs.append((side, p))
            self.settings[impl] = shlex.join(cmd).replace(ifname, "<if>").replace(
                self.tmp, "<tmpdir>")
        self.daemons[impl] = procs
        keys = {}
        for side, ns in (("a", NS_A), ("b", NS_B)):
            ifname = f"{ifp}{side}"
            for _ in range(100):
                if run(nsx(ns, "wg", "show", ifname), check=False).returncode == 0:
                    break
                if any(p.poll() is not None for _, p in procs):
                    raise RuntimeError(f"{impl} daemon exited: {self.daemon_log(impl)}")
                time.sleep(0.1)
            else:
                raise RuntimeError(f"{impl}: UAPI of {ifname} did not come up")
            key = os.path.join(self.tmp, f"{ifname}.key")
            with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                           "w", encoding="ascii") as f:
                f.write(run(["wg", "genkey"]).stdout)
            with open(key, encoding="ascii") as f:
                keys[side] = (key, run(["wg", "pubkey"], input=f.read()).stdout.strip())
        for side, ns, other, peer_ip in (("a", NS_A, "b", "2"), ("b", NS_B, "a", "1")):
            ifname = f"{ifp}{side}"
            own_ip = "1" if side == "a" else "2"
            under = f"{UNDERLAY}.{peer_ip}"
            run(nsx(ns, "wg", "set", ifname, "listen-port", str(port),
                    "private-key", keys[side][0], "peer", keys[other][1],
                    "allowed-ips", f"{net}.{peer_ip}/32", "endpoint", f"{under}:{port}"))
            run(["ip", "-n", ns, "addr", "add", f"{net}.{own_ip}/32", "dev", ifname])
            run(["ip", "-n", ns, "link", "set", ifname, "mtu", str(TUNNEL_MTU), "up"])
            run(["ip", "-n", ns, "route", "add", f"{net}.{peer_ip}/32", "dev", ifname])
        for _ in range(5):
            if run(nsx(NS_A, "ping", "-c", "1", "-W", "2", f"{net}.2"),
                   check=False).returncode == 0:
                return
        raise RuntimeError(f"{impl}: no ping through the tunnel; {self.daemon_log(impl)}")

    def daemon_log(self, impl):
        out = []
        ifp = TUNNELS[impl][0]
        for side in "ab":
            for suffix in (".stderr", ".log"):
                path = os.path.join(self.tmp, f"{ifp}{side}{suffix}")
                if os.path.exists(path):
                    with open(path, encoding="utf-8", errors="replace") as f:
                        out.append(f"{ifp}{side}{suffix}: {f.read()[-2000:]}")
        return "\n".join(out)

    def dst(self, impl):
        return f"{UNDERLAY}.2" if impl == "veth" else f"{TUNNELS[impl][2]}.2"

    def pids(self, impl):
        return [(side, p.pid) for side, p in self.daemons.get(impl, [])]

    def check_alive(self, impl):
        for side, p in self.daemons.get(impl, []):
            if p.poll() is not None:
                raise RuntimeError(f"{impl} daemon {side} exited ({p.returncode}): "
                                   f"{self.daemon_log(impl)}")

    # -- teardown
    def stop(self):
        procs = [p for ps in self.daemons.values() for _, p in ps] + self.others
        for p in procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ifp, _, _ in TUNNELS.values():
            for side in "ab":
                sock = os.path.join(UAPI_DIR, f"{ifp}{side}.sock")
                if os.path.exists(sock):
                    os.unlink(sock)
        self.teardown_netns()

    @staticmethod
    def teardown_netns():
        for ns in (NS_A, NS_B):
            if os.path.exists(f"/var/run/netns/{ns}"):
                run(["ip", "netns", "del", ns], check=False)


# ---------------------------------------------------------------- one measurement

def measure(lab, impl, test, rnd, secs, outdir, ping_count):
    dst = lab.dst(impl)
    lab.check_alive(impl)
    # warm-up packet: an expired session re-handshakes here, not inside the measurement
    run(nsx(NS_A, "ping", "-c", "1", "-W", "2", dst), check=False)
    port = TUNNELS[impl][1] if impl in TUNNELS else 0
    tun = (f"{TUNNELS[impl][0]}a", f"{TUNNELS[impl][0]}b") if impl in TUNNELS else None

    server = None
    if test == "ping":
        cmd = nsx(NS_A, "ping", "-c", str(ping_count), "-i", "0.01", "-q", dst)
    else:
        server = subprocess.Popen(nsx(NS_B, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        lab.others.append(server)
        for _ in range(100):
            if f":{IPERF_PORT} " in run(nsx(NS_B, "ss", "-ltnH")).stdout:
                break
            time.sleep(0.05)
        cmd = nsx(NS_A, "iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(secs), "-J")
        if test == "tcp1":
            cmd += ["-O", "1"]
        elif test == "tcp4":
            cmd += ["-O", "1", "-P", "4"]
        elif test == "udp":
            cmd += ["-u", "-b", "0", "-l", str(UDP_LEN)]

    before = {
        "load": loadavg(),
        "cpu": {s: proc_cpu_ticks(pid) for s, pid in lab.pids(impl)},
        "machine": machine_cpu(),
        "udp": {s: ns_udp_counters(ns, port) for s, ns in (("a", NS_A), ("b", NS_B))},
        "tun": {s: link_drops(ns, dev) for s, ns, dev in
                (("a", NS_A, tun[0]), ("b", NS_B, tun[1]))} if tun else {},
    }
    t0 = time.monotonic()
    res = run(cmd, check=False, timeout=secs + 60)
    wall = time.monotonic() - t0
    after_cpu = {s: proc_cpu_ticks(pid) for s, pid in lab.pids(impl)}
    after_machine = machine_cpu()
    mem = {s: proc_mem_kib(pid) for s, pid in lab.pids(impl)}
    after_udp = {s: ns_udp_counters(ns, port) for s, ns in (("a", NS_A), ("b", NS_B))}
    after_tun = {s: link_drops(ns, dev) for s, ns, dev in
                 (("a", NS_A, tun[0]), ("b", NS_B, tun[1]))} if tun else {}
    load_after = loadavg()
    if server is not None:
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        lab.others.remove(server)

    rec = {
        "round": rnd, "impl": impl, "test": test, "cmd": shlex.join(cmd),
        "returncode": res.returncode, "wall_s": round(wall, 3),
        "loadavg_before": before["load"], "loadavg_after": load_after,
        "machine_cpu_pct": round(100 * nproc() * (after_machine[0] - before["machine"][0])
                                 / max(1, after_machine[1] - before["machine"][1]), 1),
        "daemon_cpu_pct": {s: round(100 * (after_cpu[s] - before["cpu"][s]) / CLK_TCK / wall, 1)
                           for s in after_cpu},
        "daemon_mem_kib": mem,
        "udp_rcvbuf_errors": sum(after_udp[s][0] - before["udp"][s][0] for s in "ab"),
        "tunnel_socket_drops": (sum(after_udp[s][1] - before["udp"][s][1] for s in "ab")
                                if port else None),
        "tun_drops": (sum(after_tun[s][k] - before["tun"][s][k] for s in "ab"
                          for k in ("rx", "tx")) if tun else None),
        "tun_drops_detail": ({s: {k: after_tun[s][k] - before["tun"][s][k]
                                  for k in ("rx", "tx", "qdisc")} for s in "ab"}
                             if tun else None),
        "tunnel_socket_drops_detail": ({s: after_udp[s][1] - before["udp"][s][1] for s in "ab"}
                                       if port else None),
    }
    base = os.path.join(outdir, "runs", f"r{rnd}-{test}-{impl}")
    if test == "ping":
        rec.update(parse_ping(res.stdout))
        with open(base + ".ping.txt", "w", encoding="utf-8") as f:
            f.write(res.stdout + res.stderr)
    else:
        try:
            ij = json.loads(res.stdout)
        except json.JSONDecodeError:
            ij = {"error": "no JSON from iperf3", "stdout": res.stdout, "stderr": res.stderr}
        with open(base + ".iperf3.json", "w", encoding="utf-8") as f:
            json.dump(ij, f, indent=1)
        rec.update(parse_iperf(ij, test))
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1)
    return rec


def nproc():
    return os.cpu_count() or 1


def parse_ping(out):
    rec = {"rtt_ms": None, "loss_pct": None}
    for line in out.splitlines():
        if "packet loss" in line:
            for part in line.split(","):
                if "packet loss" in part:
                    rec["loss_pct"] = float(part.split("%")[0])
        if line.startswith("rtt ") or line.startswith("round-trip"):
            vals = line.split("=")[1].split()[0].split("/")
            rec["rtt_ms"] = dict(zip(["min", "avg", "max", "mdev"], map(float, vals)))
    return rec


def parse_iperf(ij, test):
    if "error" in ij:
        return {"error": ij["error"], "mbps": None}
    end = ij.get("end", {})
    rec = {"cpu_iperf3": end.get("cpu_utilization_percent")}
    if test == "udp":
        s = end.get("sum_received") or end.get("sum", {})
        sent = end.get("sum_sent") or end.get("sum", {})
        rec["mbps"] = round(s.get("bits_per_second", 0) / 1e6, 1)
        rec["sent_mbps"] = round(sent.get("bits_per_second", 0) / 1e6, 1)
        rec["lost_percent"] = end.get("sum", {}).get("lost_percent", s.get("lost_percent"))
        rec["packets"] = end.get("sum", {}).get("packets")
    else:
        rec["mbps"] = round(end["sum_received"]["bits_per_second"] / 1e6, 1)
        rec["retransmits"] = end["sum_sent"].get("retransmits")
    return rec


# ---------------------------------------------------------------- environment

def describe_machine():
    model = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    flags = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                fl = line.split(":", 1)[1].split()
                flags = " ".join(x for x in ("avx2", "avx512f", "aes", "sha_ni") if x in fl)
                break
    return {"nproc": nproc(), "cpu_model": model, "cpu_flags": flags, "mem_total": mem,
            "kernel": platform.release(), "loadavg_start": loadavg()}


def versions(args):
    dpkg = run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "iperf3",
                "wireguard-tools", "wireguard-go", "iproute2", "iputils-ping"],
               check=False).stdout.split("\n")
    paths = ["tunnel", "Cargo.lock", "Cargo.toml"]
    git = first_line(["git", "-C", REPO, "log", "-1", "--format=%H", "--", *paths])
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", *paths],
                check=False).stdout.strip()
    return {
        "iperf3": first_line(["iperf3", "--version"]),
        "wg": first_line(["wg", "--version"]),
        "wireguard-go": first_line([args.wireguard_go, "--version"]),
        "boringtun-cli": first_line([args.boringtun, "--version"]),
        "rustc": first_line(["rustc", "--version"]),
        "wireseal-tunnel": f"{args.wireseal}, release build of the last commit touching "
                           f"tunnel or Cargo.* {git}{' (dirty)' if dirty else ''}",
        "debian-packages": [d for d in dpkg if d],
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- summary

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "–"
    if nd == 0:
        return f"{x:,.0f}"
    return f"{x:,.{nd}f}"


def tun_cell(e):
    if e.get("tun_a") is None:
        return fmt(e["tun_drops"])
    return f"{fmt(e['tun_drops'])} ({fmt(e['tun_a'])} / {fmt(e['tun_b'])})"


def loss(x):
    return "–" if x is None else f"{x:.1f} %"


def summarize(outdir):
    runs = []
    rdir = os.path.join(outdir, "runs")
    for name in sorted(os.listdir(rdir)):
        if name.endswith(".json") and not name.endswith(".iperf3.json"):
            with open(os.path.join(rdir, name), encoding="utf-8") as f:
                runs.append(json.load(f))
    with open(os.path.join(outdir, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    impls = [i for i in IMPLS if any(r["impl"] == i for r in runs)]
    tests = [t for t in TESTS if any(r["test"] == t for r in runs)]
    by = {(r["round"], r["impl"], r["test"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})

    def metric(r):
        if r is None:
            return None
        if r["test"] == "ping":
            return (r.get("rtt_ms") or {}).get("avg")
        return r.get("mbps") or None

    def series(impl, test):
        return [metric(by.get((n, impl, test))) for n in rounds]

    def ratios(num, den, test):
        out = []
        for n in rounds:
            a, b = metric(by.get((n, num, test))), metric(by.get((n, den, test)))
            if a and b:
                out.append(a / b)
        return out

    summary = {"tests": {}, "pairs": {}, "efficiency": {}, "goals": {}}
    for t in tests:
        for i in impls:
            xs = [x for x in series(i, t) if x is not None]
            rs = ratios(i, "veth", t)
            diff = [metric(by.get((n, i, t))) - metric(by.get((n, "veth", t))) for n in rounds
                    if metric(by.get((n, i, t))) and metric(by.get((n, "veth", t)))]
            summary["tests"][f"{t}/{i}"] = {
                "median": med(xs), "min": min(xs) if xs else None, "max": max(xs) if xs else None,
                "n": len(xs), "ratio_to_veth": med(rs),
                "minus_veth": med(diff) if t == "ping" else None,
            }
    pairs = [("wireseal", "wggo"), ("wireseal", "boringtun"), ("boringtun", "wggo")]
    for a, b in pairs:
        if a in impls and b in impls:
            for t in tests:
                if t == "ping":
                    continue
                rs = ratios(a, b, t)
                summary["pairs"][f"{t}/{a}/{b}"] = {
                    "median": med(rs), "min": min(rs) if rs else None,
                    "max": max(rs) if rs else None, "per_round": [round(x, 3) for x in rs]}
    for i in impls:
        if i == "veth":
            continue
        for t in tests:
            rs = [r for r in runs if r["impl"] == i and r["test"] == t]
            ca = med([r["daemon_cpu_pct"].get("a") for r in rs])
            cb = med([r["daemon_cpu_pct"].get("b") for r in rs])
            per_core = med([r["mbps"] / ((r["daemon_cpu_pct"]["a"] + r["daemon_cpu_pct"]["b"]) / 100)
                            for r in rs if r.get("mbps") and
                            r["daemon_cpu_pct"]["a"] + r["daemon_cpu_pct"]["b"] > 0])
            summary["efficiency"][f"{t}/{i}"] = {
                "cpu_a": ca, "cpu_b": cb, "mbps_per_core": per_core,
                "machine_cpu": med([r["machine_cpu_pct"] for r in rs]),
                "rss_a": med([r["daemon_mem_kib"]["a"]["VmRSS"] for r in rs]),
                "rss_b": med([r["daemon_mem_kib"]["b"]["VmRSS"] for r in rs]),
                "hwm": max([max(r["daemon_mem_kib"][s]["VmHWM"] for s in "ab") for r in rs],
                           default=None),
                "retransmits": med([r.get("retransmits") for r in rs]),
                "udp_loss": med([r.get("lost_percent") for r in rs]),
                "rcvbuf": med([r.get("udp_rcvbuf_errors") for r in rs]),
                "sock_drops": med([r.get("tunnel_socket_drops") for r in rs]),
                "tun_drops": med([r.get("tun_drops") for r in rs]),
                "tun_a": med([r["tun_drops_detail"]["a"]["rx"] + r["tun_drops_detail"]["a"]["tx"]
                              for r in rs if r.get("tun_drops_detail")]),
                "tun_b": med([r["tun_drops_detail"]["b"]["rx"] + r["tun_drops_detail"]["b"]["tx"]
                              for r in rs if r.get("tun_drops_detail")]),
            }
    veth_eff = {}
    for t in tests:
        rs = [r for r in runs if r["impl"] == "veth" and r["test"] == t]
        veth_eff[t] = {"retransmits": med([r.get("retransmits") for r in rs]),
                       "udp_loss": med([r.get("lost_percent") for r in rs]),
                       "rcvbuf": med([r.get("udp_rcvbuf_errors") for r in rs]),
                       "machine_cpu": med([r["machine_cpu_pct"] for r in rs])}

    # goals of the issue
    g = summary["goals"]
    hwm = max([v["hwm"] for k, v in summary["efficiency"].items()
               if k.endswith("/wireseal") and v["hwm"]], default=None)
    for t in ("tcp1", "tcp4"):
        p = summary["pairs"].get(f"{t}/wireseal/wggo")
        if p and p["median"] is not None:
            g[f"{t}: >= 2x wireguard-go"] = {"value": p["median"], "met": p["median"] >= 2,
                                              "all_rounds": p["min"] >= 2}
        p = summary["pairs"].get(f"{t}/wireseal/boringtun")
        if p and p["median"] is not None:
            g[f"{t}: ahead of boringtun-cli"] = {"value": p["median"], "met": p["median"] > 1,
                                                 "all_rounds": p["min"] > 1}
    if hwm is not None:
        g["datapath RSS < 32 MiB"] = {"value": hwm / 1024, "met": hwm < 32 * 1024,
                                      "all_rounds": hwm < 32 * 1024}
    summary["meta"] = meta
    with open(os.path.join(outdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)

    loads = [r["loadavg_before"][0] for r in runs] + [r["loadavg_after"][0] for r in runs]
    mcpu_idle = med([r["machine_cpu_pct"] for r in runs if r["test"] == "ping"])
    L = []
    L.append(f"# Userspace datapath benchmark, {meta['date']}\n")
    L.append(f"`{meta['command']}` — {len(rounds)} round(s) × {meta['seconds']} s per iperf3 "
             f"test, order rotated every round. Generated by `bench/userspace.py`; "
             f"raw data in `runs/` (`*.iperf3.json` = iperf3's own JSON, `*.json` = one "
             f"record per run with CPU, memory and drop counters), aggregates in "
             f"`summary.json`.\n")
    L.append("## Goals (issue: 2-core machine)\n")
    L.append("| goal | this run | met? |\n|---|---:|---|")
    for k, v in g.items():
        val = f"{v['value']:.1f} MiB (max VmHWM)" if "RSS" in k else \
            f"{v['value']:.2f}× (median of per-round ratios)"
        met = "**yes**" if v["met"] else "**no**"
        if v["met"] and not v["all_rounds"]:
            met += " (not in every round)"
        L.append(f"| {k} | {val} | {met} |")
    L.append("")
    L.append("## Throughput (receiver goodput, Mbit/s: median [min–max]; ratio = median of "
             "per-round impl / plain veth)\n")
    head = "| datapath |" + "".join(f" {LABEL[t]} | ratio |" for t in tests if t != "ping")
    L.append(head)
    L.append("|---|" + "---:|---:|" * len([t for t in tests if t != "ping"]))
    for i in impls:
        row = f"| {LABEL[i]} |"
        for t in tests:
            if t == "ping":
                continue
            s = summary["tests"][f"{t}/{i}"]
            row += f" {fmt(s['median'])} [{fmt(s['min'])}–{fmt(s['max'])}] | " \
                   f"{fmt(s['ratio_to_veth'], 3)} |"
        L.append(row)
    L.append("")
    if summary["pairs"]:
        L.append("Pairwise, same round (median of per-round ratios [min–max]):\n")
        L.append("| pair |" + "".join(f" {LABEL[t]} |" for t in tests if t != "ping"))
        L.append("|---|" + "---:|" * len([t for t in tests if t != "ping"]))
        for a, b in pairs:
            if f"tcp1/{a}/{b}" not in summary["pairs"] and f"udp/{a}/{b}" not in summary["pairs"]:
                continue
            row = f"| {LABEL[a]} / {LABEL[b]} |"
            for t in tests:
                if t == "ping":
                    continue
                p = summary["pairs"].get(f"{t}/{a}/{b}")
                row += f" {fmt(p['median'], 2)} [{fmt(p['min'], 2)}–{fmt(p['max'], 2)}] |" \
                    if p and p["median"] else " – |"
            L.append(row)
        L.append("")
    if "ping" in tests:
        L.append(f"## Latency (`ping -c {meta['ping_count']} -i 0.01`, idle path, ms, medians "
                 "over rounds)\n")
        L.append("| datapath | min | avg | max | mdev | avg − veth (same round) | loss |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for i in impls:
            rs = [r for r in runs if r["impl"] == i and r["test"] == "ping" and r.get("rtt_ms")]
            s = summary["tests"][f"ping/{i}"]
            row = f"| {LABEL[i]} |" + "".join(
                f" {fmt(med([r['rtt_ms'][k] for r in rs]), 3)} |"
                for k in ("min", "avg", "max", "mdev"))
            row += f" {'+' if (s['minus_veth'] or 0) >= 0 else ''}{fmt(s['minus_veth'], 3)} |"
            row += f" {fmt(med([r['loss_pct'] for r in rs]), 0)} % |"
            L.append(row)
        L.append("")
    L.append("## Datapath CPU, memory, drops (medians over rounds)\n")
    L.append("CPU = utime+stime of each datapath process (all threads, `/proc/PID/stat`) over "
             "the iperf3 run, in % of one core; machine = whole machine busy in % "
             f"(max {100 * meta['machine']['nproc']} %). Mbit/s per core = goodput / "
             "(CPU a + CPU b). RSS = `VmRSS` after the run (a / b); HWM = max `VmHWM` of both "
             "processes since start. Retransmits from iperf3 (sender); RcvbufErrors = "
             "`Udp`+`Udp6` `RcvbufErrors` of both namespaces (includes iperf3's own UDP "
             "socket); socket drops = `drops` column of `/proc/net/udp{,6}` for the tunnel's "
             "UDP port only; UDP loss = iperf3's lost datagrams; TUN drops = rx+tx dropped "
             "of both TUN devices (a / b in brackets; a's are packets the sending datapath "
             "did not read in time; qdisc drops are in the raw records).\n")
    L.append("| datapath | test | CPU a (sender) | CPU b (receiver) | machine | Mbit/s per "
             "core | RSS a / b (MiB) | HWM (MiB) | TCP retr | UDP loss | RcvbufErrors | "
             "tunnel socket drops | TUN drops (a / b) |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in tests:
        if t == "ping":
            continue
        v = veth_eff.get(t, {})
        L.append(f"| {LABEL['veth']} | {LABEL[t]} | – | – | {fmt(v.get('machine_cpu'))} % | – | "
                 f"– | – | {fmt(v.get('retransmits'))} | {loss(v.get('udp_loss'))} | "
                 f"{fmt(v.get('rcvbuf'))} | – | – |")
        for i in impls:
            if i == "veth":
                continue
            e = summary["efficiency"][f"{t}/{i}"]
            L.append(f"| {LABEL[i]} | {LABEL[t]} | {fmt(e['cpu_a'])} % | {fmt(e['cpu_b'])} % | "
                     f"{fmt(e['machine_cpu'])} % | {fmt(e['mbps_per_core'])} | "
                     f"{fmt(e['rss_a'] / 1024 if e['rss_a'] else None, 1)} / "
                     f"{fmt(e['rss_b'] / 1024 if e['rss_b'] else None, 1)} | "
                     f"{fmt(e['hwm'] / 1024 if e['hwm'] else None, 1)} | "
                     f"{fmt(e['retransmits'])} | {loss(e['udp_loss'])} | {fmt(e['rcvbuf'])} | "
                     f"{fmt(e['sock_drops'])} | "
                     f"{tun_cell(e)} |")
    L.append("")
    L.append("## Machine and load\n")
    m = meta["machine"]
    L.append(f"* {m['nproc']} CPUs, `{m['cpu_model']}` ({m['cpu_flags']}), {m['mem_total']} "
             f"RAM, kernel {m['kernel']}, no WireGuard kernel module used")
    L.append(f"* load average (1 min) over the runs: median {fmt(med(loads), 2)}, "
             f"min {fmt(min(loads), 2)}, max {fmt(max(loads), 2)}; at start "
             f"{m['loadavg_start']}, at end {meta.get('loadavg_end')}")
    L.append(f"* whole-machine CPU busy during the idle ping tests (median): "
             f"{fmt(mcpu_idle)} % of {100 * m['nproc']} % (other tenants)")
    L.append(f"* started {meta['started']}, finished {meta.get('finished')}")
    L.append("")
    L.append("## Versions\n")
    for k, v in meta["versions"].items():
        L.append(f"* {k}: {', '.join(v) if isinstance(v, list) else v}")
    L.append("")
    L.append("## Settings and exact commands\n")
    L.append("```")
    L.append(f"netns {NS_A}: {VETH_A} {UNDERLAY}.1/24 --veth (MTU 1500, offloads on)-- "
             f"{VETH_B} {UNDERLAY}.2/24 :netns {NS_B}")
    for i in impls:
        if i in TUNNELS:
            ifp, port, net = TUNNELS[i]
            L.append(f"{ifp}a {net}.1/32 (TUN, MTU {TUNNEL_MTU}) == {i} over "
                     f"{UNDERLAY}.x:{port} == {ifp}b {net}.2/32")
    L.append("```\n")
    L.append("Datapath daemons (one per namespace, foreground, started once and kept for "
             "the whole run):\n")
    for i, c in meta["settings"].items():
        note = " (its defaults otherwise: `--threads 1 --tun-offload true`)" \
            if i == "wireseal" else ""
        L.append(f"* {LABEL[i]}: `ip netns exec <ns> {c}`{note}")
    L.append("\nConfiguration with Debian's `wg` through each daemon's UAPI socket in "
             f"`{UAPI_DIR}`: `wg set <if> listen-port <port> private-key <key> peer <pub> "
             "allowed-ips <peer>/32 endpoint <peer underlay>:<port>`; `ip addr add <own>/32 dev "
             f"<if>; ip link set <if> mtu {TUNNEL_MTU} up; ip route add <peer>/32 dev <if>`.\n")
    L.append("Traffic, always a → b, a fresh `iperf3 -s -1` in b per test, one "
             "`ping -c 1` warm-up before each test (a handshake never falls inside a "
             "measurement):\n")
    seen = set()
    for r in sorted(runs, key=lambda r: TESTS.index(r["test"])):
        if r["test"] in seen or r["impl"] != "wireseal" and "wireseal" in impls:
            continue
        seen.add(r["test"])
        L.append(f"* {LABEL[r['test']]}: `{r['cmd']}`")
    L.append("")
    readme = os.path.join(outdir, "README.md")
    notes = ""
    if os.path.exists(readme):  # keep hand-written notes when re-rendering (--report)
        with open(readme, encoding="utf-8") as f:
            old = f.read()
        if NOTES in old:
            notes = "\n" + NOTES + old.split(NOTES, 1)[1]
    with open(readme, "w", encoding="utf-8") as f:
        f.write("\n".join(L) + notes)
    return "\n".join(L)


# ---------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=6, help="iperf3 -t per test")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, 2 s")
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help=f"comma-separated subset of {','.join(IMPLS)}")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help=f"comma-separated subset of {','.join(TESTS)}")
    ap.add_argument("--wireseal", default=os.path.join(REPO, "target/release/wireseal-tunnel"))
    ap.add_argument("--wireseal-args", default="", help="extra wireseal-tunnel arguments")
    ap.add_argument("--wireguard-go", default=shutil.which("wireguard-go") or "wireguard-go")
    ap.add_argument("--boringtun", default=os.path.join(REPO, "target/boringtun/bin/boringtun-cli"))
    ap.add_argument("--boringtun-threads", type=int, default=1)
    ap.add_argument("--out", help="result folder (default bench/results/<date>-userspace)")
    ap.add_argument("--report", metavar="DIR", help="only regenerate README.md/summary.json of DIR")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.seconds = 1, 2
    a.impls = [i for i in a.impls.split(",") if i]
    a.tests = [t for t in a.tests.split(",") if t]
    for i in a.impls:
        if i not in IMPLS:
            ap.error(f"unknown impl {i}")
    for t in a.tests:
        if t not in TESTS:
            ap.error(f"unknown test {t}")
    if "veth" not in a.impls:
        a.impls.insert(0, "veth")  # every ratio needs it
    return a


def preflight(a):
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces): sudo bench/userspace.py")
    missing = [t for t in ("ip", "iperf3", "ping", "wg", "ss") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing {missing}: apt-get install -y --no-install-recommends iperf3 "
                 "wireguard-tools wireguard-go iproute2 iputils-ping")
    need = {"wireseal": (a.wireseal, "cargo build --release -p wireseal-tunnel"),
            "wggo": (a.wireguard_go, "apt-get install -y wireguard-go"),
            "boringtun": (a.boringtun, "cargo install --locked boringtun-cli --version 0.7.1 "
                          "--root target/boringtun")}
    for i, (path, how) in need.items():
        if i in a.impls and not (shutil.which(path) or os.access(path, os.X_OK)):
            sys.exit(f"{i}: {path} not found; build it: {how}")


def main():
    a = parse_args()
    if a.report:
        print(summarize(a.report))
        return
    preflight(a)
    lockf = open(LOCK, "w", encoding="ascii")
    try:
        fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another run holds {LOCK}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    outdir = a.out or os.path.join(REPO, "bench", "results",
                                   f"{date}-userspace{'-quick' if a.quick else ''}")
    os.makedirs(os.path.join(outdir, "runs"), exist_ok=True)
    for name in os.listdir(os.path.join(outdir, "runs")):
        os.unlink(os.path.join(outdir, "runs", name))

    def on_signal(signum, _frame):
        raise SystemExit(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    os.chmod(tmp, 0o700)
    lab = Lab(a, tmp)
    meta = {
        "date": date, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(["bench/userspace.py", *sys.argv[1:]]),
        "rounds": a.rounds, "seconds": a.seconds, "impls": a.impls, "tests": a.tests,
        "ping_count": 20 if a.quick else 50,
        "machine": describe_machine(), "versions": versions(a),
    }
    try:
        log(f"topology up; impls {a.impls}; tests {a.tests}; {a.rounds} rounds × {a.seconds} s")
        lab.setup_underlay()
        for i in a.impls:
            if i in TUNNELS:
                lab.start_tunnel(i)
        meta["settings"] = lab.settings
        for rnd in range(1, a.rounds + 1):
            order = a.impls[(rnd - 1) % len(a.impls):] + a.impls[:(rnd - 1) % len(a.impls)]
            log(f"round {rnd}/{a.rounds}: order {order}, load {loadavg()}")
            for t in a.tests:
                for i in order:
                    r = measure(lab, i, t, rnd, a.seconds, outdir, meta["ping_count"])
                    val = (r.get("rtt_ms") or {}).get("avg") if t == "ping" else r.get("mbps")
                    log(f"  {t:5} {i:10} {val} {'ms' if t == 'ping' else 'Mbit/s'} "
                        f"cpu {r['daemon_cpu_pct']} machine {r['machine_cpu_pct']} %")
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta["loadavg_end"] = loadavg()
        for i in a.impls:
            if i in TUNNELS:
                lab.check_alive(i)
        with open(os.path.join(outdir, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
    finally:
        lab.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(summarize(outdir))
    log(f"results in {outdir}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; namespaces and daemons removed")
