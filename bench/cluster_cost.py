#!/usr/bin/env python3
"""CPU cost of one stock fact on the cluster topology, per process, for docs/capacity.md.

Starts the local clusters (scripts/dev-cluster: 3 NATS nodes with streams at R3, a Redis Cluster
of 3 primaries + 3 replicas) on their own ports, runs one release `stock-worker`, imports a CSV
of N rows with `stockctl import --wait` (one `counted` fact per row, every row a new SKU), and
reads the CPU time (/proc/<pid>/stat, user + system) each server and the worker used meanwhile.

With --single, the same on one nats-server and one redis-server (scripts/dev-services), for the
comparison. With --wait-replicas, the worker waits for each write's replica
(STOCKFLOW_REDIS_WAIT_REPLICAS=1) before publishing its ledger entry: the price of that guarantee.

Usage: python3 bench/cluster_cost.py [--single] [--wait-replicas] [rows]   (release binaries built first: just bench does it;
       or cargo build --release -p stock-worker -p stockflow-cli)
"""

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def main():
    args = sys.argv[1:]
    single = "--single" in args
    wait_replicas = "--wait-replicas" in args
    args = [a for a in args if a not in ("--single", "--wait-replicas")]
    rows = int(args[0]) if args else 20000
    if single and wait_replicas:
        sys.exit("--wait-replicas needs the clusters: a single redis-server has no replica to wait for")
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
        subprocess.run([TARGET / "stockctl", "setup"], env=env, check=True)
        worker = subprocess.Popen([TARGET / "stock-worker"], env=env)
        with tempfile.TemporaryDirectory() as tmp:
            sheet = Path(tmp) / "stock.csv"
            with sheet.open("w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["sku", "location", "on_hand"])
                for i in range(rows):
                    out.writerow([f"CAP-{i}", "wh", 100])
            processes = {
                "stock-worker": [worker.pid],
                "nats-server": pids(nats_pattern),
                "redis-server": pids(redis_pattern),
            }
            before = {k: sum(cpu_seconds(p) for p in v) for k, v in processes.items()}
            started = time.monotonic()
            subprocess.run(
                [TARGET / "stockctl", "import", str(sheet), "--wait"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            elapsed = time.monotonic() - started
            after = {k: sum(cpu_seconds(p) for p in v) for k, v in processes.items()}
        topology = "single servers" if single else "clusters (R3 streams, 3+3 Redis)"
        waits = ", replica wait on" if wait_replicas else ""
        print(f"{topology}{waits}: {sum(len(v) for v in processes.values()) - 1} server processes")
        print(f"{rows} counted facts, publish to applied: {elapsed:.1f} s ({rows / elapsed:.0f} events/s)")
        print("| process | CPU µs/event |")
        print("|---|---|")
        for k in processes:
            print(f"| {k} | {(after[k] - before[k]) / rows * 1e6:.1f} |")
    finally:
        if worker:
            worker.terminate()
            worker.wait()
        subprocess.run([cluster, "stop"], env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
