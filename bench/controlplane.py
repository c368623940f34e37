#!/usr/bin/env python3
"""Control-plane benchmark for wireseal (see bench/README.md).

Per size N: one network namespace `wscp-n`, the fake apiserver holding N remote
Nodes (+ this node, `self`), one `wireseal-tunnel` and one real `wireseal agent
--datapath userspace`, all inside it. Measures:

* initial full sync: agent start -> all N peers in the tunnel (UAPI `get=1`) and in
  the agent's /status;
* change latency: merge-PATCH one Node's `wireseal.dev/public-key` (or endpoint)
  -> the tunnel's UAPI shows the new key and no longer the old one (endpoint: the
  new endpoint);
* per change: the agent's "applying plan" / "applied routing plan" log fields and
  the kernel's route/rule/link events (`ip monitor`) in the namespace;
* VmRSS/VmHWM of agent, tunnel and fake apiserver; agent CPU.

The fake peers never answer, so no handshake completes and (make-before-break) no
route is ever installed: route programming is not measured, only peers.

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
API_PORT, ADMIN_PORT, STATUS_PORT = 6443, 6444, 9830
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_ANN, EP_ANN = "wireseal.dev/public-key", "wireseal.dev/endpoint"
NOTES = "## Observations (hand-written)"

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

def node_ip(i):  # remote node i (0-based); self is 198.18.0.1
    return f"198.18.{i // 250}.{i % 250 + 2}"


def pod_cidr(i):
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


def make_nodes(n, rng):
    keys = [new_public_key(rng) for _ in range(n)]
    items = [node_object("self", "198.18.0.1", "10.250.0.0/24", None)]
    for i in range(n):
        items.append(node_object(f"node-{i}", node_ip(i), pod_cidr(i),
                                 {KEY_ANN: keys[i], EP_ANN: f"{node_ip(i)}:51830"}))
    return {"apiVersion": "v1", "kind": "NodeList", "items": items}, keys


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


def uapi_peer_section(answer, hexkey):
    """The `public_key=` section of one peer, or None."""
    marker = b"public_key=" + hexkey.encode() + b"\n"
    at = answer.find(marker)
    if at < 0:
        return None
    end = answer.find(b"public_key=", at + len(marker))
    return answer[at:end if end >= 0 else len(answer)]


def http_req(port, method, path, body=None, ctype=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
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


def agent_status():
    return json.loads(http_req(STATUS_PORT, "GET", "/status"))


def reconciles():
    total = 0
    for line in http_req(STATUS_PORT, "GET", "/metrics").decode().splitlines():
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


class LogTail:
    """Reads the JSON lines an agent appended to its log since the last call."""

    def __init__(self, path):
        self.path, self.offset = path, 0

    def skip(self):
        self.offset = os.path.getsize(self.path)

    def read(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        out = []
        for line in data[:cut].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def fields(entry):
    return entry.get("fields", entry)


def msg(entry):
    return fields(entry).get("message", "")


PLAN_KEYS = ["changes", "peers_upserted", "peers_removed", "routes_added",
             "routes_removed", "rules_added", "rules_removed", "awaiting_handshake"]


def epoch(ts):
    # "2026-11-23T14:15:09.029816Z" -> seconds since the epoch
    day, frac = ts.rstrip("Z").split(".") if "." in ts else (ts.rstrip("Z"), "0")
    base = datetime.datetime.strptime(day, "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return base + float("0." + frac)


def summarize_logs(entries, wall0=None):
    plans = [fields(e) for e in entries if msg(e) == "applying plan"]
    first = [e for e in entries if msg(e) == "applying plan"][:1]
    routing = [fields(e) for e in entries if msg(e) == "applied routing plan"]
    return {
        "plans": len(plans),
        "plan": {k: sum(int(p.get(k, 0)) for p in plans) for k in PLAN_KEYS},
        "routing_applies": len(routing),
        "netlink_writes_logged": sum(int(r.get("writes", 0)) for r in routing),
        "warnings": [fields(e).get("message") for e in entries
                     if e.get("level") in ("WARN", "ERROR")][:5],
        # when the agent logged its plan, after the PATCH was sent
        "plan_logged_ms": round((epoch(first[0]["timestamp"]) - wall0) * 1e3, 1)
        if first and wall0 is not None else None,
    }


def count_lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# --- one size ------------------------------------------------------------------------

class Procs:
    def __init__(self):
        self.procs = {}

    def start(self, name, cmd, logfile, ns):
        f = open(logfile, "wb")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

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
        for name in ["agent", "ipmon", "tunnel", "apiserver"]:
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


def run_size(n, args, outdir, host_ns):
    ns = f"{PREFIX}-{n}"
    rng = random.Random(n)
    work = tempfile.mkdtemp(prefix=f"{PREFIX}-{n}-")
    uapi_dir, state_dir = os.path.join(work, "uapi"), os.path.join(work, "state")
    os.makedirs(uapi_dir, mode=0o700)
    os.makedirs(state_dir, mode=0o700)
    sock = os.path.join(uapi_dir, f"{IFACE}.sock")
    logdir = os.path.join(outdir, "runs", f"n{n}")
    os.makedirs(logdir, exist_ok=True)
    res = {"nodes": n}

    t = time.monotonic()
    nodes, keys = make_nodes(n, rng)
    with open(os.path.join(work, "nodes.json"), "w") as f:
        json.dump(nodes, f)
    log(f"N={n}: {n} Node objects generated in {time.monotonic() - t:.1f}s")

    run(["ip", "netns", "del", ns], check=False)
    run(["ip", "netns", "add", ns])
    procs = Procs()
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # the underlay: a veth pair inside the namespace (no dummy module here)
        run(["ip", "-n", ns, "link", "add", f"{PREFIX}-ul", "type", "veth", "peer",
             "name", f"{PREFIX}-ul2"])
        run(["ip", "-n", ns, "addr", "add", "198.18.0.1/15", "dev", f"{PREFIX}-ul"])
        run(["ip", "-n", ns, "link", "set", f"{PREFIX}-ul2", "up"])
        run(["ip", "-n", ns, "link", "set", f"{PREFIX}-ul", "up"])
        setns(f"/run/netns/{ns}")

        bins = args.bin_dir
        kubeconfig = os.path.join(work, "kubeconfig")
        api = procs.start("apiserver", [
            os.path.join(bins, "fake-apiserver"), "--listen", f"127.0.0.1:{API_PORT}",
            "--admin-listen", f"127.0.0.1:{ADMIN_PORT}", "--nodes",
            os.path.join(work, "nodes.json"), "--kubeconfig-out", kubeconfig,
            "--log", "warn"], os.path.join(logdir, "apiserver.log"), ns)
        wait_for("fake-apiserver", 120, lambda: b"listening on" in open(
            os.path.join(logdir, "apiserver.log"), "rb").read())
        procs.start("tunnel", [os.path.join(bins, "wireseal-tunnel"), "--interface", IFACE,
                               "--uapi-dir", uapi_dir],
                    os.path.join(logdir, "tunnel.log"), ns)
        wait_for("tunnel UAPI socket", 30, lambda: os.path.exists(sock))
        wait_for("tunnel UAPI answer", 30, lambda: b"errno=0" in uapi_get(sock))

        # (1) initial sync
        agent_log = os.path.join(logdir, "agent.log")
        t0 = time.monotonic()
        agent = procs.start("agent", [
            os.path.join(bins, "wireseal"), "--log-format", "json", "agent",
            "--datapath", "userspace", "--uapi-dir", uapi_dir, "--kubeconfig", kubeconfig,
            "--node-name", "self", "--state-dir", state_dir,
            "--status-addr", f"127.0.0.1:{STATUS_PORT}", "--resync-interval", "3600"],
            agent_log, ns)
        # `ip netns exec` execs the program: the Popen pid is the agent's.
        tail = LogTail(agent_log)
        t_uapi = t_status = None
        peak = {"agent": 0, "tunnel": 0}
        deadline = t0 + args.sync_timeout
        while t_uapi is None or t_status is None:
            if not procs.alive("agent"):
                raise RuntimeError(f"agent exited; see {agent_log}")
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"initial sync of {n} peers not done in {args.sync_timeout}s")
            if t_uapi is None:
                try:
                    if uapi_get(sock).count(b"public_key=") >= n:
                        t_uapi = time.monotonic() - t0
                except OSError:
                    pass
            if t_status is None:
                try:
                    st = agent_status()
                    if st.get("synced") and sum(
                            1 for p in st["peers"] if p.get("publicKey")) >= n:
                        t_status = time.monotonic() - t0
                except (OSError, RuntimeError, ValueError):
                    pass
            time.sleep(0.05 if n <= 1000 else 0.2)
        sync_logs = summarize_logs(tail.read())
        res["initial_sync"] = {"uapi_s": round(t_uapi, 3), "status_s": round(t_status, 3),
                               "logs": sync_logs,
                               "agent_cpu_s": proc_cpu(agent.pid),
                               "tunnel_cpu_s": proc_cpu(procs.procs["tunnel"].pid)}
        log(f"N={n}: initial sync: UAPI {t_uapi:.2f}s, /status {t_status:.2f}s, "
            f"{sync_logs['plans']} plan(s) {sync_logs['plan']}")
        res["mem_after_sync_kB"] = {k: proc_mem(procs.procs[k].pid)
                                    for k in ["agent", "tunnel", "apiserver"]}

        # idle: what the agent spends with N peers that never handshake, after the
        # handshake-poll back-off (100 ms doubling to 5 s) has reached its maximum
        time.sleep(args.idle_wait)
        tail.read()
        r0 = reconciles()
        tun_pid = procs.procs["tunnel"].pid
        c0, w0, tc0 = proc_cpu(agent.pid), time.monotonic(), proc_cpu(tun_pid)
        time.sleep(args.idle)
        idle_logs = tail.read()
        res["idle"] = {"seconds": round(time.monotonic() - w0, 1),
                       "agent_cpu_s": round(proc_cpu(agent.pid) - c0, 3),
                       "tunnel_cpu_s": round(proc_cpu(tun_pid) - tc0, 3),
                       "passes": reconciles() - r0,
                       "logs": summarize_logs(idle_logs),
                       "log_lines": len(idle_logs)}
        log(f"N={n}: idle {args.idle}s: agent CPU {res['idle']['agent_cpu_s']}s, "
            f"tunnel CPU {res['idle']['tunnel_cpu_s']}s, {res['idle']['passes']} passes")

        # (2)+(3) changes
        ipmon_path = os.path.join(logdir, "ip-monitor.txt")
        procs.start("ipmon", ["ip", "-t", "monitor", "route", "rule", "link", "address"],
                    ipmon_path, ns)
        time.sleep(0.5)
        changes = []
        for rep in range(args.reps):
            kind = "key" if rep < args.reps - args.endpoint_reps else "endpoint"
            i = rng.randrange(n)
            name = f"node-{i}"
            old_hex = b64_to_hex(keys[i])
            if kind == "key":
                new = new_public_key(rng)
                patch = {KEY_ANN: new}
                new_hex = b64_to_hex(new)
            else:
                port = 40000 + rep
                patch = {EP_ANN: f"{node_ip(i)}:{port}"}
                want_ep = f"endpoint={node_ip(i)}:{port}\n".encode()
            time.sleep(args.gap)
            tail.read()
            mon0 = count_lines(ipmon_path)
            c0 = proc_cpu(agent.pid)
            t0, wall0 = time.monotonic(), time.time()
            http_req(API_PORT, "PATCH", f"/api/v1/nodes/{name}",
                     json.dumps({"metadata": {"annotations": patch}}).encode(),
                     "application/merge-patch+json")
            t_patch = time.monotonic() - t0
            t_new = t_old = None
            polls, get_s = 0, 0.0
            while t_new is None or t_old is None:
                if time.monotonic() - t0 > 60:
                    raise TimeoutError(f"change {rep} ({kind} of {name}) not programmed in 60s")
                g0 = time.monotonic()
                ans = uapi_get(sock)
                get_s += time.monotonic() - g0
                polls += 1
                now = time.monotonic() - t0
                if kind == "key":
                    if t_new is None and uapi_peer_section(ans, new_hex) is not None:
                        t_new = now
                    if t_old is None and uapi_peer_section(ans, old_hex) is None:
                        t_old = now
                else:
                    sec = uapi_peer_section(ans, old_hex)
                    if sec is not None and want_ep in sec:
                        t_new = t_old = now
                time.sleep(args.poll)
            if kind == "key":
                keys[i] = new
            time.sleep(args.settle)  # let follow-up passes show in the log
            cl = summarize_logs(tail.read(), wall0)
            rec = {"rep": rep, "kind": kind, "node": name,
                   "patch_rtt_ms": round(t_patch * 1e3, 1),
                   "programmed_ms": round(max(t_new, t_old) * 1e3, 1),
                   "new_present_ms": round(t_new * 1e3, 1),
                   "old_gone_ms": round(t_old * 1e3, 1), "uapi_polls": polls,
                   "uapi_get_ms_mean": round(get_s / polls * 1e3, 2),
                   "agent_cpu_ms": round((proc_cpu(agent.pid) - c0) * 1e3),
                   "kernel_events": count_lines(ipmon_path) - mon0, **cl}
            changes.append(rec)
            log(f"N={n}: change {rep} {kind} {name}: {rec['programmed_ms']} ms "
                f"(plan logged at {cl['plan_logged_ms']} ms, UAPI get {rec['uapi_get_ms_mean']} ms), "
                f"plans {cl['plans']} {cl['plan']}, netlink writes {cl['netlink_writes_logged']}, "
                f"kernel events {rec['kernel_events']}")
        res["changes"] = changes
        res["mem_end_kB"] = {k: proc_mem(procs.procs[k].pid)
                             for k in ["agent", "tunnel", "apiserver"]}
        res["routes_in_table"] = len(run(["ip", "route", "show", "table", "51830"], check=False)
                                     .stdout.splitlines())
        res["rules"] = [r for r in run(["ip", "rule"], check=False).stdout.splitlines() if "51830" in r]
        res["reconciles"] = [ln for ln in http_req(STATUS_PORT, "GET", "/metrics")
                             .decode().splitlines() if ln.startswith("wireseal_reconciles")]
    finally:
        procs.stop_all()
        setns(host_ns)
        run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", work], check=False)
        for name in os.listdir(logdir):  # the tunnel logs a WARN per unanswered handshake
            path = os.path.join(logdir, name)
            if not name.endswith(".gz") and os.path.getsize(path) > 1 << 20:
                subprocess.run(["gzip", "-f", path], check=False)
    return res


# --- report --------------------------------------------------------------------------

def pct(values, q):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return round(v[lo] + (v[hi] - v[lo]) * (k - lo), 1)


def mib(kb):
    return f"{kb / 1024:.1f}" if kb else "-"


def render(summary, outdir):
    lines = ["# Control-plane benchmark", "",
             f"Run {summary['meta']['date']} on {summary['meta']['machine']}; "
             f"binaries: `{summary['meta']['bin_dir']}` ({summary['meta']['profile']}), "
             f"commit `{summary['meta']['commit']}`.", "",
             "Command: `" + summary["meta"]["command"] + "`", "",
             "| nodes | initial sync: UAPI / status (s) | key change: median / p90 / max (ms) "
             "| of which until the plan is logged, median (ms) "
             "| endpoint change: median / max (ms) | plans per change | peer upserts / removals "
             "per key change | netlink writes per change (logged / kernel events) "
             "| agent RSS / HWM (MiB) | tunnel RSS / HWM (MiB) | apiserver RSS (MiB) "
             "| idle CPU, agent / tunnel (% of a core) | idle passes / agent CPU per pass (s) |",
             "|" + "---|" * 13]
    for r in summary["sizes"]:
        key = [c["programmed_ms"] for c in r["changes"] if c["kind"] == "key"]
        ep = [c["programmed_ms"] for c in r["changes"] if c["kind"] == "endpoint"]
        kc = [c for c in r["changes"] if c["kind"] == "key"]
        plans = sorted({c["plans"] for c in r["changes"]})
        ups = sorted({(c["plan"]["peers_upserted"], c["plan"]["peers_removed"]) for c in kc})
        nl = sorted({c["netlink_writes_logged"] for c in r["changes"]})
        ke = sorted({c["kernel_events"] for c in r["changes"]})
        m = r["mem_end_kB"]
        idle = r["idle"]
        lines.append(
            f"| {r['nodes']} | {r['initial_sync']['uapi_s']} / {r['initial_sync']['status_s']} "
            f"| {pct(key, .5)} / {pct(key, .9)} / {max(key) if key else '-'} "
            f"| {pct([c['plan_logged_ms'] for c in kc if c['plan_logged_ms'] is not None], .5)} "
            f"| {pct(ep, .5)} / {max(ep) if ep else '-'} | {plans} | {ups} | {nl} / {ke} "
            f"| {mib(m['agent'].get('VmRSS'))} / {mib(m['agent'].get('VmHWM'))} "
            f"| {mib(m['tunnel'].get('VmRSS'))} / {mib(m['tunnel'].get('VmHWM'))} "
            f"| {mib(m['apiserver'].get('VmRSS'))} "
            f"| {100 * idle['agent_cpu_s'] / idle['seconds']:.1f} / "
            f"{100 * idle.get('tunnel_cpu_s', 0) / idle['seconds']:.1f} "
            f"| {idle.get('passes', '-')} / "
            f"{idle['agent_cpu_s'] / idle['passes'] if idle.get('passes') else 0:.2f} |")
    lines += ["", "Per-change records: `summary.json`; logs of every process: `runs/n<N>/`.",
              "", NOTES, ""]
    path = os.path.join(outdir, "README.md")
    notes = ""
    if os.path.exists(path):
        old = open(path).read()
        if NOTES in old:
            notes = old.split(NOTES, 1)[1].lstrip("\n")
    with open(path, "w") as f:
        f.write("\n".join(lines) + notes)


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
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }


def cleanup():
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{PREFIX}-"):
            run(["ip", "netns", "pids", name], check=False)
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
    ap.add_argument("--reps", type=int, default=20, help="changes per size")
    ap.add_argument("--endpoint-reps", type=int, default=4,
                    help="how many of --reps change the endpoint instead of the key")
    ap.add_argument("--bin-dir", default=os.path.join(REPO, "target", "release"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--idle", type=float, default=20.0, help="idle CPU window, s")
    ap.add_argument("--idle-wait", type=float, default=12.0,
                    help="wait after the sync before the idle window, s")
    ap.add_argument("--gap", type=float, default=1.0, help="pause before each change, s")
    ap.add_argument("--poll", type=float, default=0.01, help="UAPI poll interval, s")
    ap.add_argument("--settle", type=float, default=1.0, help="wait after a change, s")
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
    outdir = args.out or os.path.join(REPO, "bench", "results", f"{day}-controlplane")
    os.makedirs(outdir, exist_ok=True)
    summary = {"meta": meta(args), "sizes": []}
    spath = os.path.join(outdir, "summary.json")
    if os.path.exists(spath):  # keep sizes measured by an earlier invocation
        old = json.load(open(spath))
        summary["sizes"] = old.get("sizes", [])
        summary["meta"]["earlier_runs"] = old["meta"].get("earlier_runs", []) + [old["meta"]]
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
    finally:
        cleanup()
    log(f"results in {outdir}")


if __name__ == "__main__":
    main()
