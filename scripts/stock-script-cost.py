#!/usr/bin/env python3
"""What `apply_stock.lua` costs Redis per fact, without NATS or the worker.

Starts its own redis-server on a free port (a temporary directory, no persistence), loads
`shared/src/lua/prelude.lua` + `workers/stock/lua/apply_stock.lua` exactly as the worker does
(`stockflow_shared::script`), and sends batches shaped like the worker's: each call holds the
applies of new facts and the marks of the previous call's facts (a fact's mark rides in a later
call). It then reports Redis's own figures from `INFO commandstats` (µs per call and per fact of
EVALSHA) and, with --callgrind, the instructions redis-server executed per fact (counters zeroed
after the set-up, dumped after the run; stable on a busy machine, unlike µs).

Usage (from the repository root):
    scripts/stock-script-cost.py [--scenario plain|channels|duplicates|all]
                                 [--facts N] [--applies-per-call N] [--callgrind]
                                 [--rev REV | --prelude PATH --script PATH] [--keep-dump PATH]

Before/after: run it once with `--rev <the commit before>` and once without, both with
--callgrind (instruction counts do not move with the machine's load; µs do).

Scenarios:
  plain       receipts of 1 unit at one location over 1,000 SKUs, no channels (the bench's
              `stock` scenario);
  channels    the same with four channels in the worker's book, one of them drawing from the
              location the facts change (its quantity is recomputed with every fact);
  duplicates  the plain facts delivered a second time, after their marks.

Needs only python3 and redis-server (valgrind for --callgrind). No third-party modules.
"""

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
US, RS, GS = "\x1f", "\x1e", "\x1d"
PREFIX = "sf"


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Conn:
    """A minimal RESP2 client: enough for EVALSHA, INFO and SCRIPT LOAD."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        self.sock.sendall(resp(*args))
        return self._read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keys(sku):
    tag = "%s:{%s}" % (PREFIX, sku)
    return tag + ":stock", tag + ":policy", tag + ":ats"


def channel_specs(n_channels):
    """The channels argument as `ChannelBook::specs_for` builds it: `id US spec`, RS-separated."""
    records = []
    for i in range(n_channels):
        # Channel 0 draws from the location the facts change; the others from elsewhere.
        locs = "wh" if i == 0 else GS.join(["store-%d" % i, "store-%d" % (i + 10)])
        rules = US.join(["2", "", "", "", ""])  # a buffer of 2
        records.append("ch%d" % i + US + US.join(["%d" % (i + 1), "p", rules, locs]))
    return RS.join(records)


def apply_item(sku, event_id, specs):
    stock, policy, ats = keys(sku)
    dedup = "%s:{%s}:evt:%s" % (PREFIX, sku, event_id)
    args = ["received", "wh", "1", "", "", "received|wh|1|||||", "300", "", "", "", "", specs, ""]
    return [dedup, stock, policy, ats], args, dedup


def run(conn, sha, facts, per_call, specs, skus=1000, tag="e", mark=True):
    """Sends `facts` receipts, `per_call` applies a call plus the marks of the call before (none
    with `mark` false: a duplicate already published is not marked again)."""
    pending_marks = []
    i = 0
    calls = 0
    while i < facts or pending_marks:
        ks, av, marks = [], [], []
        for k in pending_marks:
            ks.append(k)
            av.append("mark")
        for _ in range(min(per_call, facts - i)):
            item_keys, item_args, dedup = apply_item("SKU-%d" % (i % skus), "%s-%d" % (tag, i), specs)
            ks += item_keys
            av += item_args
            marks.append(dedup)
            i += 1
        replies = conn.call("EVALSHA", sha, len(ks), *ks, *av)
        for r in replies:
            if r[0] not in ("applied", "duplicate", "marked"):
                raise RuntimeError("unexpected reply %r" % (r,))
        pending_marks = marks if mark else []
        calls += 1
    return calls


def evalsha_stats(conn):
    for line in conn.call("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            return int(fields["calls"]), int(fields["usec"])
    return 0, 0


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in " + path)


def measure(scenario, facts, per_call, use_callgrind, sources, keep_dump=None):
    workdir = tempfile.mkdtemp(prefix="stock-script-cost-")
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", workdir]
    if use_callgrind:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s/cg.%%p" % workdir] + cmd
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                conn = Conn(port)
                conn.call("PING")
                break
            except (ConnectionError, OSError, RuntimeError):
                if time.time() > deadline:
                    raise RuntimeError("redis-server did not start on port %d" % port)
                time.sleep(0.1)
        prelude, body = sources
        sha = conn.call("SCRIPT", "LOAD", prelude + "\n" + body)
        specs = channel_specs(4) if scenario == "channels" else ""
        if scenario == "duplicates":
            run(conn, sha, facts, per_call, specs)
        # Warm-up: the SKUs' keys exist, as they do in a running system.
        run(conn, sha, 1000, per_call, specs, tag="warm")
        conn.call("CONFIG", "RESETSTAT")
        if use_callgrind:
            subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.time()
        calls = run(conn, sha, facts, per_call, specs, mark=scenario != "duplicates")
        wall = time.time() - started
        n_calls, usec = evalsha_stats(conn)
        instructions = None
        if use_callgrind:
            before = set(glob.glob(workdir + "/cg.*"))
            subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dumps = sorted(set(glob.glob(workdir + "/cg.*")) - before)
            instructions = callgrind_total(dumps[-1])
            if keep_dump:
                shutil.copy(dumps[-1], "%s.%s" % (keep_dump, scenario))
        return {"calls": n_calls or calls, "usec": usec, "wall": wall, "ir": instructions}
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def read_source(path, rev, repo_path):
    """A script's text: from `path`, else from git revision `rev`, else from the working tree."""
    if path:
        with open(path) as f:
            return f.read()
    if rev:
        return subprocess.run(["git", "-C", ROOT, "show", "%s:%s" % (rev, repo_path)], check=True,
                              capture_output=True, text=True).stdout
    with open(os.path.join(ROOT, repo_path)) as f:
        return f.read()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all", choices=["plain", "channels", "duplicates", "all"])
    p.add_argument("--facts", type=int, default=None,
                   help="facts measured (default 20,000; 4,000 with --callgrind)")
    p.add_argument("--applies-per-call", type=int, default=32,
                   help="new facts per call; each call also marks the previous call's (default 32)")
    p.add_argument("--callgrind", action="store_true", help="also count instructions (valgrind)")
    p.add_argument("--rev", metavar="REV",
                   help="measure the prelude and apply_stock.lua of this git revision instead of the "
                        "working tree's (before/after comparisons)")
    p.add_argument("--prelude", metavar="PATH", help="this prelude.lua instead (overrides --rev)")
    p.add_argument("--script", metavar="PATH", help="this apply_stock.lua instead (overrides --rev)")
    p.add_argument("--keep-dump", metavar="PATH",
                   help="with --callgrind: keep each profile as PATH.<scenario> (callgrind_annotate)")
    a = p.parse_args()
    facts = a.facts or (4000 if a.callgrind else 20000)
    sources = [read_source(a.prelude, a.rev, "shared/src/lua/prelude.lua"),
               read_source(a.script, a.rev, "workers/stock/lua/apply_stock.lua")]
    scenarios = ["plain", "channels", "duplicates"] if a.scenario == "all" else [a.scenario]
    print("%-11s %7s %7s %10s %10s %14s" % ("scenario", "facts", "calls", "µs/call", "µs/fact",
                                            "instr/fact"))
    for s in scenarios:
        r = measure(s, facts, a.applies_per_call, a.callgrind, sources, a.keep_dump)
        ir = "%d" % (r["ir"] / facts) if r["ir"] is not None else "-"
        print("%-11s %7d %7d %10.1f %10.2f %14s" % (s, facts, r["calls"], r["usec"] / r["calls"],
                                                   r["usec"] / facts, ir))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
