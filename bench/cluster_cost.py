#!/usr/bin/env python3
"""CPU cost of one stock fact on the cluster topology, per process, for docs/capacity.md.

Starts the local clusters (scripts/dev-cluster: 3 NATS nodes with streams at R3, a Redis Cluster
of 3 primaries + 3 replicas) on their own ports, runs one release `stock-worker`, imports a CSV
of N rows with `stockctl import --wait` (one `counted` fact per row, every row a new SKU), and
reads the CPU time (/proc/<pid>/stat, user + system) each server and the worker used meanwhile.

With --single, the same on one nats-server and one redis-server (scripts/dev-services), for the
comparison. With --wait-replicas, the worker waits for each write's replica
(STOCKFLOW_REDIS_WAIT_REPLICAS=1) before publishing its ledger entry: the price of that guarantee.
With --ingest-only (clusters), no worker runs: the rows are only published to STOCK_EVENTS (R3),
and the CPU per message is shown per NATS node, the stream's leader apart from its followers —
what one stream leader costs, the number that sizes partitions (docs/capacity.md).

Usage: python3 bench/cluster_cost.py [--single | --wait-replicas | --ingest-only] [rows]   (release binaries built first: just bench does it;
       or cargo build --release -p stock-worker -p stockflow-cli)
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pids(name):
    out = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def setup(env, deadline_s=60):
    """`stockctl setup`, retried until the NATS cluster has elected its JetStream meta leader."""
    end = time.monotonic() + deadline_s
    while True:
        done = subprocess.run([TARGET / "stockctl", "setup"], env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if time.monotonic() > end:
            sys.exit(f"stockctl setup kept failing: {done.stderr.strip()}")
        time.sleep(0.5)  # poll interval of a wait bounded by `deadline_s`


def write_sheet(tmp, rows):
    """A CSV of `rows` counted facts, every row a new SKU (the load spreads over every slot)."""
    sheet = tmp / "stock.csv"
    with sheet.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["sku", "location", "on_hand"])
        for i in range(rows):
            out.writerow([f"CAP-{i}", "wh", 100])
    return sheet


def nats_nodes(state):
    """Server name -> pid of each node of the local NATS cluster."""
    nodes = {}
    for i in range(3):
        name = next(
            line.split(":", 1)[1].strip()
            for line in (state / f"nats-{i}.conf").read_text().splitlines()
            if line.startswith("server_name:")
        )
        nodes[name] = int((state / f"nats-{i}.pid").read_text())
    return nodes


def leaders(env):
    """Server name -> what it leads (streams, and consumers as stream/durable), from /jsz."""
    port = int(env["STOCKFLOW_DEV_CLUSTER_NATS_PORT"]) + 4000
    url = f"http://127.0.0.1:{port}/jsz?streams=true&consumers=true"
    with urllib.request.urlopen(url, timeout=5) as response:
        jsz = json.load(response)
    led = {}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            leader = (stream.get("cluster") or {}).get("leader")
            if leader:
                led.setdefault(leader, []).append(stream["name"])
            for consumer in stream.get("consumer_detail") or []:
                leader = (consumer.get("cluster") or {}).get("leader")
                if leader:
                    led.setdefault(leader, []).append(f"{stream['name']}/{consumer['name']}")
    return led


def print_nodes(nodes, before, after, rows, led, keep):
    """CPU per event of each NATS node, with the streams and consumers it leads (of `keep`)."""
    print("| NATS node | leads | CPU µs/event |")
    print("|---|---|---|")
    for name in sorted(nodes):
        roles = ", ".join(sorted(r for r in led.get(name, []) if r.split("/")[0] in keep)) or "–"
        print(f"| {name} | {roles} | {(after[name] - before[name]) / rows * 1e6:.1f} |")


def measure_ingest(env, state, rows):
    """Publishes `rows` facts with no worker running; CPU per message of each NATS node."""
    nodes = nats_nodes(state)
    with tempfile.TemporaryDirectory() as tmp:
        sheet = write_sheet(Path(tmp), rows)
        before = {name: cpu_seconds(pid) for name, pid in nodes.items()}
        started = time.monotonic()
        subprocess.run(
            [TARGET / "stockctl", "import", str(sheet)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        elapsed = time.monotonic() - started
        after = {name: cpu_seconds(pid) for name, pid in nodes.items()}
    print(f"STOCK_EVENTS at R3, no worker: {rows} facts published in {elapsed:.1f} s ({rows / elapsed:.0f}/s)")
    print_nodes(nodes, before, after, rows, leaders(env), {"STOCK_EVENTS"})


def main():
    args = sys.argv[1:]
    single = "--single" in args
    wait_replicas = "--wait-replicas" in args
    ingest_only = "--ingest-only" in args
    args = [a for a in args if a not in ("--single", "--wait-replicas", "--ingest-only")]
    rows = int(args[0]) if args else 20000
    if single and (wait_replicas or ingest_only):
        sys.exit("--wait-replicas and --ingest-only measure the clusters; drop --single")
    env = dict(os.environ)
    env.update(
        STOCKFLOW_DEV_CLUSTER_NATS_PORT="4350",
        STOCKFLOW_DEV_CLUSTER_REDIS_PORT="7101",
        STOCKFLOW_DEV_NATS_PORT="4360",
        STOCKFLOW_DEV_NATS_MONITOR_PORT="8360",
        STOCKFLOW_DEV_REDIS_PORT="7201",
        STOCKFLOW_LOG="warn",
        STOCKFLOW_METRICS_ADDR="127.0.0.1:0",
        STOCKFLOW_REDIS_WAIT_REPLICAS="1" if wait_replicas else "0",
    )
    if single:
        cluster = ROOT / "scripts" / "dev-services"
        state = ROOT / ".dev" / "data"
        nats_pattern, redis_pattern = "nats-server --jetstream", "redis-server 127.0.0.1:7201"
    else:
        cluster = ROOT / "scripts" / "dev-cluster"
        state = ROOT / ".dev" / "cluster"
        nats_pattern, redis_pattern = f"{state}/nats-", "redis-server 127.0.0.1:71"
    if state.exists():
        shutil.rmtree(state)
    subprocess.run([cluster, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    worker = None
    try:
        for line in subprocess.run(
            [cluster, "env"], env=env, check=True, capture_output=True, text=True
        ).stdout.splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value
        setup(env)
        if ingest_only:
            measure_ingest(env, state, rows)
            return
        worker = subprocess.Popen([TARGET / "stock-worker"], env=env)
        with tempfile.TemporaryDirectory() as tmp:
            sheet = write_sheet(Path(tmp), rows)
            processes = {
                "stock-worker": [worker.pid],
                "nats-server": pids(nats_pattern),
                "redis-server": pids(redis_pattern),
            }
            nodes = {} if single else nats_nodes(state)
            before = {k: sum(cpu_seconds(p) for p in v) for k, v in processes.items()}
            before_nodes = {name: cpu_seconds(pid) for name, pid in nodes.items()}
            started = time.monotonic()
            subprocess.run(
                [TARGET / "stockctl", "import", str(sheet), "--wait"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            elapsed = time.monotonic() - started
            after = {k: sum(cpu_seconds(p) for p in v) for k, v in processes.items()}
            after_nodes = {name: cpu_seconds(pid) for name, pid in nodes.items()}
        topology = "single servers" if single else "clusters (R3 streams, 3+3 Redis)"
        waits = ", replica wait on" if wait_replicas else ""
        print(f"{topology}{waits}: {sum(len(v) for v in processes.values()) - 1} server processes")
        print(f"{rows} counted facts, publish to applied: {elapsed:.1f} s ({rows / elapsed:.0f} events/s)")
        print("| process | CPU µs/event |")
        print("|---|---|")
        for k in processes:
            print(f"| {k} | {(after[k] - before[k]) / rows * 1e6:.1f} |")
        if nodes:
            print()
            keep = {"STOCK_EVENTS", "STOCK_CHANGES"}
            print_nodes(nodes, before_nodes, after_nodes, rows, leaders(env), keep)
    finally:
        if worker:
            worker.terminate()
            worker.wait()
        subprocess.run([cluster, "stop"], env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
