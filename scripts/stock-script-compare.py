#!/usr/bin/env python3
"""Do two versions of `apply_stock.lua` (with their prelude) answer and store the same?

Runs one fixed sequence of stock facts — receipts, sales at a location and through channels (a
priority channel, a most-available one with rules, a removed one), a policy at a location and
SKU-wide, counts with and without a matching expectation, a transfer, a redelivered fact,
adjustments — in batches shaped like the worker's (each call also marks the previous call's
facts; then marks of a record that is gone and of one without a `published` field), once against
the scripts of git revision REV and once against the working tree's, each on its own fresh
redis-server. Compares every reply and every key left behind (fields, values, TTL), with the
applied-at timestamps blanked. Exit status 1 when they differ, printing both.

Usage (from the repository root):
    scripts/stock-script-compare.py REV

A speed change to the scripts must leave this output identical (see BENCHMARKS.md, *Profiling
and optimisations*); a change of behaviour shows here first.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("cost", os.path.join(HERE, "stock-script-cost.py"))
cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cost)
US, RS, GS = cost.US, cost.RS, cost.GS

SPECS = RS.join([
    "web" + US + US.join(["3", "p", US.join(["1", "", "", "", ""]), GS.join(["wh", "st"])]),
    "mkt" + US + US.join(["5", "m", US.join(["", "50", "10", "2", ""]), GS.join(["st", "wh"])]),
    "old" + US + US.join(["7", "x", "", "", "", "", "", ""]),
])


def item(sku, eid, op, loc="", qty="", exp="", to="", thr="", ss="", prio="", ch="", specs=SPECS):
    stock, policy, ats = cost.keys(sku)
    fingerprint = "|".join([op, loc, qty, exp, to, thr, ss, prio, ch])
    return ([cost.PREFIX + ":{%s}:evt:%s" % (sku, eid), stock, policy, ats],
            [op, loc, qty, exp, to, fingerprint, "300", thr, ss, prio, ch, specs, ""])


FACTS = [
    item("A", "1", "received", "wh", "10"), item("A", "2", "received", "st", "4"),
    item("A", "3", "policy_set", "wh", thr="5", ss="1"), item("A", "4", "sold", "wh", "7"),
    item("A", "5", "sold", "", "3", ch="web"), item("A", "6", "sold", "", "20", ch="mkt"),
    item("A", "7", "counted", "st", "9", exp="2"), item("A", "8", "counted", "st", "9"),
    item("A", "9", "transferred", "wh", "2", to="st"), item("A", "1", "received", "wh", "10"),
    item("A", "10", "returned", "", "1", ch="web"), item("B", "1", "received", "wh", "1", specs=""),
    item("B", "2", "sold", "wh", "3", specs=""), item("A", "11", "adjusted", "wh", "-100"),
    item("A", "12", "policy_set", "", thr="-1", ss="-1"),
]


def with_server(sources, scenario):
    """Runs `scenario(conn, sha)` against a fresh redis-server with `sources` loaded."""
    workdir = tempfile.mkdtemp(prefix="stock-script-compare-")
    port = cost.free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", workdir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                conn = cost.Conn(port)
                conn.call("PING")
                break
            except (ConnectionError, OSError, RuntimeError):
                if time.time() > deadline:
                    raise RuntimeError("redis-server did not start on port %d" % port)
                time.sleep(0.1)
        return scenario(conn, conn.call("SCRIPT", "LOAD", sources[0] + "\n" + sources[1]))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def run(sources):
    def scenario(conn, sha):
        out, previous = [], []
        for i in range(0, len(FACTS), 4):
            ks, av = [], []
            for k in previous:
                ks.append(k)
                av.append("mark")
            previous = []
            for fk, fa in FACTS[i:i + 4]:
                ks += fk
                av += fa
                previous.append(fk[0])
            out += conn.call("EVALSHA", sha, len(ks), *ks, *av)
        conn.call("HSET", cost.PREFIX + ":{A}:evt:nop", "o", "x", "f", "y")
        out += conn.call("EVALSHA", sha, 3, cost.PREFIX + ":{A}:evt:gone",
                         cost.PREFIX + ":{A}:evt:nop", cost.PREFIX + ":{A}:evt:1",
                         "mark", "mark", "mark")
        for k in sorted(conn.call("KEYS", "*")):
            kind = conn.call("TYPE", k)
            value = sorted(conn.call("HGETALL", k)) if kind == "hash" else conn.call("SMEMBERS", k)
            out.append((k, value, conn.call("TTL", k)))
        return re.sub(r"1\\x1f\d{13}\\x1f", "1\\\\x1f<applied_at>\\\\x1f", repr(out))
    return with_server(sources, scenario)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rev = sys.argv[1]
    before = run([cost.read_source(None, rev, "shared/src/lua/prelude.lua"),
                  cost.read_source(None, rev, "workers/stock/lua/apply_stock.lua")])
    after = run([cost.read_source(None, None, "shared/src/lua/prelude.lua"),
                 cost.read_source(None, None, "workers/stock/lua/apply_stock.lua")])
    if before == after:
        print("identical: every reply and every key left behind")
        return
    print("DIFFERENT\n--- %s\n%s\n--- working tree\n%s" % (rev, before, after))
    sys.exit(1)


if __name__ == "__main__":
    main()
