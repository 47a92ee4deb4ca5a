#!/usr/bin/env python3
"""A real Prometheus scrapes the running workers; every query of the chart's alert rules and
dashboard executes and returns data.

    python3 helm/tests/check_prometheus.py [-v] [--keep]

Starts, on free loopback ports and in a temporary directory: nats-server (JetStream),
redis-server, `stockctl setup`, a webhook receiver (one endpoint that accepts, one that always
answers 500), a fake Shopify shop, the five binaries (cargo build --workspace --bins first) with
STOCKFLOW_METRICS_ADDR set — stock-worker, order-worker, notify-worker (subscribed to the
receiver, with quick retries, a short retry horizon and a low breaker threshold), gateway (with a
write and a read token) and connector (a shops file naming the fake shop) — and Prometheus
(Debian package `prometheus`, installed by scripts/bootstrap.py) scraping them every second. Then `stockflow-traffic` sends traffic that exercises every metric
of the stock and order workers (alerts, duplicates, a stale count, a dead letter, confirmed,
rejected and cancelled orders, expiring holds, a NAK for an event that arrived too early), and
requests to the gateway (accepted, refused without a token or the scope, an unknown SKU) whose
stock changes and alerts the notify worker delivers: delivered to one endpoint, retried and
paused by the breaker and failed (dead-lettered past the retry horizon) at the other; between
them a sales channel is defined and sells more than it is offered (its quantity and its
channel_oversold alert are delivered too, stockflow_channel_oversold_total counts it). The
connector runs with a shops file (one Shopify shop, its item from CSV) against the fake Shopify
shop (a plain HTTP server playing the GraphQL Admin API's `inventoryItem` read and
`inventorySetQuantities` with compare-and-set, whose first push is throttled): last of all, a
receipt on the shop's channel is pushed (throttled once first), the shop sends the connector one
signed orders/create webhook (accepted) and one with a wrong signature (401), and a second
receipt is pushed once Prometheus has scraped the first. Between two rounds of gateway requests
the stock worker's durable consumer is deleted and declared again (a consumer restart, lag,
duplicates as the stream is read again). Once Prometheus has scraped the aftermath, every
dashboard query (Grafana's variables substituted) and every alert expression is sent to
/api/v1/query; each must execute, and each must return series — for an alert, the expressions
its condition is made of (see queries.data_legs). Every process started is stopped on exit, also
on failure.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from check_chart import ensure_python_deps
from queries import alert_rules, dashboard_queries, data_legs, grafana_to_promql, metric_names

ROOT = Path(__file__).resolve().parents[2]
DEV_BIN = ROOT / ".dev" / "bin"

# Every component Prometheus scrapes in production (the chart's jobs), all required. A new
# component may join through PENDING while it is a skeleton that exits at once: it is started if
# it works, and queries that only its metrics can answer are reported, not failed, while it is
# absent. Once it works, take it out of PENDING and add the series it must produce to TRAFFIC.
COMPONENTS = ["stock-worker", "order-worker", "notify-worker", "gateway", "connector"]
PENDING: set[str] = set()

# Metrics only one component exports (everything else comes from the shared consume loop of
# every worker, or from the stock and order workers).
EXPORTED_ONLY_BY = {
    "stockflow_webhook_deliveries_total": "notify-worker",
    "stockflow_webhook_delivery_seconds_bucket": "notify-worker",
    "stockflow_http_requests_total": "gateway",
    "stockflow_http_request_seconds_bucket": "gateway",
    "stockflow_connector_pushes_total": "connector",
    "stockflow_connector_quantities_pushed_total": "connector",
    "stockflow_connector_throttles_total": "connector",
    "stockflow_connector_stale_compares_total": "connector",
    "stockflow_connector_push_failures_total": "connector",
    "stockflow_connector_dead_letters_total": "connector",
    "stockflow_connector_push_lag_seconds_bucket": "connector",
    "stockflow_connector_shop_reachable": "connector",
    "stockflow_connector_last_success_timestamp_seconds": "connector",
    "stockflow_connector_webhooks_total": "connector",
}

NAMESPACE = "stockflow-check"  # the label the chart's Pod/ServiceMonitors attach
SCRAPE_INTERVAL = 1.0  # seconds
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval); 15 s covers a
# 1 s scrape with room, and the run is shorter than the alerts' own windows (5m..15m) anyway.
RATE_INTERVAL = "15s"
STARTUP_DEADLINE = 20.0  # seconds for a server or worker to answer
RECOVERY_DEADLINE = 30.0  # seconds for a worker to notice its consumer is gone, and to re-bind
DELIVERY_DEADLINE = 30.0  # seconds for a gateway request to reach the webhook receiver
TRAFFIC_DEADLINE = 90.0  # seconds for stockflow-traffic (it gives up on a step after 30)

# What the gateway requests are about. Only events of this SKU reach the webhook receiver, so
# the traffic of stockflow-traffic (its own SKUs) costs the notify worker no POSTs.
HOOK_SKU = "CHECK-HOOKED-1"
HOOK_LOCATION = "store-1"
# A sales channel on HOOK_LOCATION that holds most of the stock back, and sells more than it
# is offered (stockflow_channel_oversold_total, a channel_oversold alert).
CHECK_CHANNEL = "check-market"
CHECK_CHANNEL_BUFFER = 8
# The connector's shop: a Shopify shop (FakeShopify below) selling the channel CONNECTOR_CHANNEL,
# over a location of its own, which maps one SKU. Nothing of it reaches the webhook receiver (the
# notify worker's subscriptions name HOOK_SKU only).
CONNECTOR_SHOP = "check-shop"
CONNECTOR_CHANNEL = "check-shop"
CONNECTOR_LOCATION = "check-shop-store"
CONNECTOR_SKU = "CHECK-SHOP-1"
SHOPIFY_ITEM = "gid://shopify/InventoryItem/1"
SHOPIFY_LOCATION = "gid://shopify/Location/1"
CONNECTOR_RECEIPT = 5  # units received at CONNECTOR_LOCATION: the quantity pushed to the shop
# The notify worker's retry settings: back-off of at most 200 ms, a retry horizon of one second
# and a breaker that opens after three consecutive failures for one second — so the deliveries to
# the failing endpoint are retried, pause it (the breaker opens) and are dead-lettered once past
# the horizon, within a few seconds.
NOTIFY_RETRY_ENV = {
    "STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS": "50",
    "STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS": "200",
    "STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS": "1",
    "STOCKFLOW_WEBHOOK_BREAKER_FAILURES": "3",
    "STOCKFLOW_WEBHOOK_BREAKER_OPEN_SECONDS": "1",
}


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(what: str, deadline: float, check, interval: float = 0.1):
    """Polls `check` until it returns a truthy value; CheckFailed after `deadline` seconds."""
    end = time.monotonic() + deadline
    last = None
    while True:
        try:
            value = check()
            if value:
                return value
        except CheckFailed:
            raise  # e.g. the process waited for has exited: no point in waiting longer
        except Exception as exc:  # noqa: BLE001 - not ready yet; reported if it stays so
            last = exc
        if time.monotonic() > end:
            raise CheckFailed(f"{what}: not within {deadline:.0f}s" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)  # poll interval of a wait bounded by `deadline`


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def nats_request(port: int, subject: str, payload: bytes = b"", timeout: float = 5.0) -> dict:
    """One request over the NATS client protocol; the JSON reply. Enough for JetStream's API."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = sock.makefile("rb")
        if not stream.readline().startswith(b"INFO "):
            raise CheckFailed(f"127.0.0.1:{port} does not speak NATS")
        inbox = f"_INBOX.check{os.getpid()}"
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"no_responders":true,"headers":true}\r\n'
                     + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode() + payload + b"\r\n")
        while True:
            line = stream.readline()
            if not line:
                raise CheckFailed(f"NATS closed the connection before answering {subject}")
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise CheckFailed(f"NATS refused {subject}: {line.decode().strip()}")
            elif line.startswith((b"MSG ", b"HMSG ")):
                size = int(line.split()[-1])
                body = stream.read(size + 2)[:size]
                if line.startswith(b"HMSG "):  # only a status (e.g. 503 no responders), no JSON
                    status = body.splitlines()[0].decode(errors="replace")
                    raise CheckFailed(f"no answer to {subject}: {status}")
                return json.loads(body)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb(*fields: tuple[int, int | str | bytes]) -> bytes:
    """A protobuf message from (field number, value) pairs: an int is a varint, str and bytes
    are length-delimited (a nested message is its bytes). Enough for the two inputs below."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def publish_to_stream(port: int, subject: str, payload: bytes) -> None:
    """Publishes `payload` on `subject` and waits for JetStream's acknowledgement."""
    ack = nats_request(port, subject, payload)
    if "error" in ack or not ack.get("seq"):
        raise CheckFailed(f"JetStream did not store the message on {subject}: {ack}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# --------------------------------------------------------------------------------------------
# Webhook receiver and gateway client
# --------------------------------------------------------------------------------------------


class WebhookReceiver:
    """The notify worker's webhook endpoints: a plain HTTP server on a free loopback port that
    answers 200 on /accepting and 500 on /failing (a receiver that is down), and records what
    each POST was about."""

    ANSWERS = {"/accepting": 200, "/failing": 500}

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # path -> (event type, ledger kind or None) of every POST, in arrival order
        self.posts: dict[str, list[tuple[str, str | None]]] = {path: [] for path in self.ANSWERS}
        receiver = self

        class Endpoint(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    doc = json.loads(body)
                    seen = (str(doc.get("type")), (doc.get("data") or {}).get("kind"))
                except (ValueError, AttributeError):
                    seen = ("undecodable", None)
                status = receiver.ANSWERS.get(self.path, 404)
                with receiver.lock:
                    if self.path in receiver.posts:
                        receiver.posts[self.path].append(seen)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass  # hundreds of lines of noise otherwise

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self, path: str, event_type: str, kind: str | None = None) -> bool:
        """Whether `path` has had a POST of `event_type` (and, for a stock change, `kind`)."""
        with self.lock:
            return any(t == event_type and (kind is None or k == kind) for t, k in self.posts[path])

    def summary(self) -> str:
        with self.lock:
            return ", ".join(f"{len(posts)} POSTs to {path} ({self.ANSWERS[path]})" for path, posts in self.posts.items())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


class FakeShopify:
    """The connector's shop: a plain HTTP server on a free loopback port playing Shopify's GraphQL
    Admin API as documented (workers/connector/README.md; tests/src/platforms.rs is the full fake):
    the access token is checked, `inventoryItem` reads the item's `available` quantity,
    `inventorySetQuantities` sets it when `changeFromQuantity` matches (else
    CHANGE_FROM_QUANTITY_STALE) and needs `@idempotent`. Every answer carries `extensions.cost`
    with a Standard shop's budget; the first push is answered THROTTLED, as a spent budget is."""

    COST = {"requestedQueryCost": 10, "actualQueryCost": 10,
            "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1990, "restoreRate": 100.0}}

    def __init__(self) -> None:
        self.token = f"shpat_check_{secrets.token_hex(8)}"
        self.lock = threading.Lock()
        self.quantities = {(SHOPIFY_ITEM, SHOPIFY_LOCATION): 0}
        self.throttle_next_push = True
        self.calls: dict[str, int] = {"read": 0, "push": 0, "throttled": 0}
        shop = self

        class Api(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not re.fullmatch(r"/admin/api/[\w-]+/graphql\.json", self.path):
                    return self.answer(404, {"errors": "Not Found"})
                if self.headers.get("X-Shopify-Access-Token") != shop.token:
                    return self.answer(401, {"errors": "[API] Invalid API key or access token"})
                try:
                    request = json.loads(body)
                except ValueError:
                    return self.answer(400, {"errors": "not JSON"})
                with shop.lock:
                    self.answer(200, shop.graphql(request.get("query") or "", request.get("variables") or {}))

            def answer(self, status: int, doc: dict) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-shopify", daemon=True)

    def graphql(self, query: str, variables: dict) -> dict:
        """The answer to one GraphQL document (called under the lock)."""
        if "inventorySetQuantities" in query:
            if self.throttle_next_push:
                self.throttle_next_push = False
                self.calls["throttled"] += 1
                cost = dict(self.COST, actualQueryCost=None,
                            throttleStatus=dict(self.COST["throttleStatus"], currentlyAvailable=0))
                return {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                        "extensions": {"cost": cost}}
            if "@idempotent" not in query or not variables.get("key"):
                return {"errors": [{"message": "inventorySetQuantities requires the @idempotent directive"}]}
            self.calls["push"] += 1
            errors, updates = [], {}
            for i, q in enumerate((variables.get("input") or {}).get("quantities") or []):
                key = (q.get("inventoryItemId"), q.get("locationId"))
                if key not in self.quantities:
                    errors.append({"code": "ITEM_NOT_STOCKED_AT_LOCATION", "field": ["input", "quantities", str(i)],
                                   "message": "The specified inventory item is not stocked at the location."})
                elif q.get("changeFromQuantity") != self.quantities[key]:
                    errors.append({"code": "CHANGE_FROM_QUANTITY_STALE", "field": ["input", "quantities", str(i)],
                                   "message": "The specified compare quantity does not match the current quantity."})
                else:
                    updates[key] = q.get("quantity")
            if not errors:
                self.quantities.update(updates)
            group = None if errors else {"id": f"gid://shopify/InventoryAdjustmentGroup/{self.calls['push']}"}
            return {"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": group, "userErrors": errors}},
                    "extensions": {"cost": self.COST}}
        if "inventoryItem(" in query:
            self.calls["read"] += 1
            held = self.quantities.get((variables.get("item"), variables.get("location")))
            level = None if held is None else {"quantities": [{"name": "available", "quantity": held}]}
            return {"data": {"inventoryItem": {"inventoryLevel": level}}, "extensions": {"cost": self.COST}}
        return {"errors": [{"message": "unknown operation"}]}

    def quantity(self) -> int | None:
        with self.lock:
            return self.quantities.get((SHOPIFY_ITEM, SHOPIFY_LOCATION))

    def sell(self, units: int) -> None:
        """An order on the shop: Shopify takes the units off `available` itself."""
        with self.lock:
            self.quantities[(SHOPIFY_ITEM, SHOPIFY_LOCATION)] -= units

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


class GatewayClient:
    """JSON requests to the gateway's API, each checked against the status it must answer."""

    def __init__(self, port: int, write_token: str, read_token: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.write_token, self.read_token = write_token, read_token

    def expect(self, status: int, method: str, path: str, body=None, token: str | None = None,
               key: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if key:
            headers["Idempotency-Key"] = key
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=15) as r:
                got, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            got, text = e.code, e.read().decode(errors="replace")
        except OSError as e:
            raise CheckFailed(f"gateway {method} {path}: {e}") from None
        if got != status:
            raise CheckFailed(f"gateway {method} {path} answered {got}, expected {status}: {text[:300]}")
        return json.loads(text) if text else {}

    def fact(self, key: str, change: dict, status: int = 202) -> dict:
        body = {"sku": HOOK_SKU, "location": HOOK_LOCATION, "source": "check", **change}
        return self.expect(status, "POST", "/v1/stock/events", body, self.write_token, key)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Processes:
    """Every process this check starts, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})), cwd=self.workdir)
        log.close()
        self.running[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"      | {line}" for line in text[-lines:])

    def first_error(self, name: str) -> str:
        """The `Error: ...` line a Rust main prints when it fails, else the log's first line."""
        lines = self.log_path(name).read_text(errors="replace").splitlines() or ["(no output)"]
        return next((line for line in lines if line.startswith("Error:")), lines[0]).strip()

    def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)


def tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(DEV_BIN), os.environ.get("PATH", "")]))
    if not found:
        raise CheckFailed(f"{name} not found on PATH or in .dev/bin: run python3 scripts/bootstrap.py")
    return found


def cargo_bin_dir() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug"


def workspace_binary(name: str) -> Path:
    path = cargo_bin_dir() / name
    if not path.is_file():
        raise CheckFailed(f"{path} is missing: build the binaries first (cargo build --workspace --bins, "
                          "which ./dev test does)")
    return path


# --------------------------------------------------------------------------------------------
# The system under test
# --------------------------------------------------------------------------------------------


class System:
    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.nats_port = free_port()
        self.redis_port = free_port()
        self.nats_store = procs.workdir / "nats"
        self.env = {
            "STOCKFLOW_NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
            "STOCKFLOW_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
            "STOCKFLOW_KEY_PREFIX": "check",
            "STOCKFLOW_LOG": "info",
        }
        self.metrics_ports: dict[str, int] = {}  # component -> port, for those that run
        self.absent: dict[str, str] = {}  # pending component -> why it does not run
        self.gateway: GatewayClient | None = None  # set when the gateway's env is made
        self.shopify: FakeShopify | None = None  # the connector's shop, started by run()
        self.connector_port: int | None = None  # where the connector receives webhooks
        self.webhook_secret = secrets.token_hex(16)  # the shop's webhook signing secret

    def start_nats(self) -> None:
        self.procs.start("nats-server", [tool("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(self.nats_port),
                                         "-sd", str(self.nats_store)])
        self._wait_port("nats-server", self.nats_port)

    def start_redis(self) -> None:
        self.procs.start("redis-server", [tool("redis-server"), "--bind", "127.0.0.1", "--port", str(self.redis_port),
                                          "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                          "--dir", str(self.procs.workdir)])
        self._wait_port("redis-server", self.redis_port)

    def _wait_port(self, name: str, port: int) -> None:
        proc = self.procs.running[name]

        def up():
            if proc.poll() is not None:
                raise CheckFailed(f"{name} exited with {proc.returncode}:\n{self.procs.tail(name)}")
            return port_open(port)

        eventually(f"{name} listening on 127.0.0.1:{port}", STARTUP_DEADLINE, up)

    def setup(self) -> None:
        try:
            r = subprocess.run([str(workspace_binary("stockctl")), "setup"], env=dict(os.environ, **self.env),
                               capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise CheckFailed("stockctl setup did not finish within 60s") from None
        if r.returncode != 0:
            raise CheckFailed(f"stockctl setup failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    def component_env(self, name: str, receiver: WebhookReceiver) -> dict[str, str]:
        """What `name` needs besides the connections: the gateway its listener and tokens, the
        notify worker its subscriptions (the receiver's two endpoints) and quick retries, the
        connector a shops file (the fake Shopify shop, its item from CSV) and its secrets."""
        if name == "gateway":
            self.gateway = GatewayClient(free_port(), f"check-write-{secrets.token_hex(12)}",
                                         f"check-read-{secrets.token_hex(12)}")
            return {"STOCKFLOW_HTTP_ADDR": self.gateway.url.removeprefix("http://"),
                    "STOCKFLOW_GATEWAY_TOKENS": f"write:{self.gateway.write_token},read:{self.gateway.read_token}"}
        if name == "notify-worker":
            webhooks = self.procs.workdir / "webhooks.json"
            webhooks.write_text(json.dumps({"subscriptions": [
                {"id": "accepting", "url": receiver.url("/accepting"), "events": ["*"], "skus": [HOOK_SKU]},
                {"id": "failing", "url": receiver.url("/failing"), "events": ["stock_changed", "low_stock"],
                 "skus": [HOOK_SKU]},
            ]}, indent=2))
            return {"STOCKFLOW_WEBHOOKS_FILE": str(webhooks), "STOCKFLOW_WEBHOOK_SECRET": secrets.token_hex(16),
                    **NOTIFY_RETRY_ENV}
        if name == "connector":
            (self.procs.workdir / "shop-items.csv").write_text(
                "sku,inventory_item_id,location_id,location\n"
                f"{CONNECTOR_SKU},{SHOPIFY_ITEM},{SHOPIFY_LOCATION},{CONNECTOR_LOCATION}\n")
            shops = self.procs.workdir / "shops.json"
            shops.write_text(json.dumps({"shops": [
                {"id": CONNECTOR_SHOP, "platform": "shopify", "channel": CONNECTOR_CHANNEL,
                 "base_url": self.shopify.url, "webhook_secret_env": "CHECK_SHOP_WEBHOOK_SECRET",
                 "access_token_env": "CHECK_SHOP_ACCESS_TOKEN", "items_csv": "shop-items.csv"},
            ]}, indent=2))
            self.connector_port = free_port()
            return {"STOCKFLOW_CONNECTOR_SHOPS_FILE": str(shops),
                    "STOCKFLOW_CONNECTOR_ADDR": f"127.0.0.1:{self.connector_port}",
                    "STOCKFLOW_CONNECTOR_BATCH_MILLIS": "20",
                    "STOCKFLOW_CONNECTOR_BACKOFF_FLOOR_MILLIS": "50",
                    "STOCKFLOW_CONNECTOR_BACKOFF_CEILING_MILLIS": "200",
                    "CHECK_SHOP_WEBHOOK_SECRET": self.webhook_secret,
                    "CHECK_SHOP_ACCESS_TOKEN": self.shopify.token}
        return {}

    def start_components(self, receiver: WebhookReceiver) -> None:
        started = {}
        for name in COMPONENTS:
            path = cargo_bin_dir() / name
            if not path.is_file():
                if name in PENDING:
                    self.absent[name] = f"{path} is not built"
                    continue
                workspace_binary(name)  # raises with the message
            port = free_port()
            env = dict(self.env, STOCKFLOW_METRICS_ADDR=f"127.0.0.1:{port}", **self.component_env(name, receiver))
            started[name] = (self.procs.start(name, [str(path)], env), port)
        for name, (proc, port) in started.items():
            def ready(proc=proc, port=port):
                if proc.poll() is not None:
                    return "exited"
                return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200 and "ready"

            try:
                state = eventually(f"{name} ready on 127.0.0.1:{port}/readyz", STARTUP_DEADLINE, ready)
            except CheckFailed as exc:
                raise CheckFailed(f"{exc}\n{self.procs.tail(name)}") from None
            if state == "exited":
                why = f"exited with {proc.returncode}: {self.procs.first_error(name)}"
                self.procs.running.pop(name, None)
                if name not in PENDING:
                    raise CheckFailed(f"{name} {why}\n{self.procs.tail(name)}")
                self.absent[name] = why
                continue
            self.metrics_ports[name] = port
        for name, why in self.absent.items():
            say(f"NOTE  {name} does not run ({why}); it is not scraped")
        say(f"running: {', '.join(f'{n} (metrics :{p})' for n, p in self.metrics_ports.items())}")

    def delete_consumer(self, stream: str, durable: str) -> None:
        """Deletes a durable consumer through the JetStream API (plain NATS protocol)."""
        reply = nats_request(self.nats_port, f"$JS.API.CONSUMER.DELETE.{stream}.{durable}")
        if not reply.get("success"):
            raise CheckFailed(f"deleting consumer {durable} on {stream}: {reply}")

    def metrics_text(self, name: str) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics")
        return body if status == 200 else ""

    def ready(self, name: str) -> bool:
        return http_get(f"http://127.0.0.1:{self.metrics_ports[name]}/readyz")[0] == 200


# --------------------------------------------------------------------------------------------
# Gateway requests and webhook deliveries
# --------------------------------------------------------------------------------------------


def webhook_outcomes(system: System, endpoint: str) -> dict[str, float]:
    text = system.metrics_text("notify-worker")
    return {outcome: metric_value(text, "stockflow_webhook_deliveries_total", endpoint=endpoint, outcome=outcome)
            for outcome in ("delivered", "retried", "failed")}


def delivered(receiver: WebhookReceiver, what: str, event_type: str, kind: str | None = None) -> None:
    eventually(f"the notify worker delivers {what} to the accepting endpoint", DELIVERY_DEADLINE,
               lambda: receiver.received("/accepting", event_type, kind))


def gateway_first_round(system: System, receiver: WebhookReceiver) -> None:
    """A low-stock policy and a receipt through the gateway, one after the other (the sale of the
    second round must find both applied), each delivered to the accepting endpoint, retried and
    dead-lettered at the failing one (which opens its breaker); and requests the gateway
    refuses: no token (401), a read token writing (403), an unknown SKU (404)."""
    gw = system.gateway
    gw.fact("check-policy", {"type": "policy_set", "low_stock_threshold": 5})
    delivered(receiver, "the policy's stock change", "stock_changed", "policy_set")
    gw.fact("check-receipt", {"type": "received", "quantity": 10})
    delivered(receiver, "the receipt's stock change", "stock_changed", "received")
    channel_oversells(system, receiver)
    gw.expect(401, "POST", "/v1/stock/events", {"type": "received", "sku": HOOK_SKU, "location": HOOK_LOCATION,
                                                "quantity": 1})
    gw.expect(403, "POST", "/v1/stock/events", {"type": "received", "sku": HOOK_SKU, "location": HOOK_LOCATION,
                                                "quantity": 1}, gw.read_token, "check-refused")
    gw.expect(404, "GET", "/v1/stock/CHECK-NEVER-SEEN", token=gw.read_token)

    # The breaker is open only for a second at a time: remember having seen it open.
    seen_open = [False]

    def failing_gave_up():
        text = system.metrics_text("notify-worker")
        if metric_value(text, "stockflow_webhook_breaker_open", endpoint="failing") == 1:
            seen_open[0] = True
        return (metric_value(text, "stockflow_webhook_deliveries_total", endpoint="failing", outcome="failed") >= 2
                and seen_open[0])

    eventually("the notify worker dead-letters both deliveries to the failing endpoint and opens its breaker",
               DELIVERY_DEADLINE, failing_gave_up)


def channel_oversells(system: System, receiver: WebhookReceiver) -> None:
    """A sales channel on HOOK_LOCATION (buffer 8 of the 10 received: it is offered 2) is
    defined and sells 3: its quantity and its oversold alert reach the accepting endpoint.
    Straight onto the streams (protobuf, stock.proto and channels.proto), not through the
    gateway. The stock falls to 7, above the low-stock threshold of 5."""
    meta = lambda event_id: pb((1, event_id), (3, "check"))  # noqa: E731 - EventMeta
    rules = pb((1, CHECK_CHANNEL_BUFFER))  # AvailabilityRules.buffer
    # Channel {id, name, kind = MARKETPLACE, locations, rules}
    definition = pb((1, CHECK_CHANNEL), (2, CHECK_CHANNEL), (3, 3), (4, HOOK_LOCATION), (5, rules))
    # ChannelEvent {meta, channel_id, set: ChannelSet {channel}}
    publish_to_stream(system.nats_port, f"channels.events.{CHECK_CHANNEL}",
                      pb((1, meta("check-channel")), (2, CHECK_CHANNEL), (10, pb((1, definition)))))
    delivered(receiver, "the channel's quantity", "channel_availability")
    # StockEvent {meta, sku, channel, sold: Sold {quantity: 3}}
    publish_to_stream(system.nats_port, f"stock.events.{HOOK_SKU}",
                      pb((1, meta("check-channel-sale")), (2, HOOK_SKU), (4, CHECK_CHANNEL), (11, pb((1, 3)))))
    delivered(receiver, "the channel's oversold alert", "channel_oversold")


def gateway_second_round(system: System, receiver: WebhookReceiver) -> None:
    """A sale down to low stock and a checkout that waits for its decision (201), a stock query
    (200) and an invalid fact (400), so that every gateway and webhook series changes once more
    after Prometheus has scraped the first round: rate() needs two different samples."""
    gw = system.gateway
    failed_before = webhook_outcomes(system, "failing")["failed"]
    gw.fact("check-sale", {"type": "sold", "quantity": 6})
    order = gw.expect(201, "POST", "/v1/orders?wait=10s", {
        "order_id": "check-order-1",
        "lines": [{"line_id": "1", "sku": HOOK_SKU, "location": HOOK_LOCATION, "quantity": 1}],
    }, gw.write_token, "check-checkout")
    if order.get("decision") != "confirmed":
        raise CheckFailed(f"the checkout was not confirmed: {order}")
    levels = gw.expect(200, "GET", f"/v1/stock/{HOOK_SKU}", token=gw.read_token)
    if not levels.get("totals", {}).get("on_hand"):
        raise CheckFailed(f"GET /v1/stock/{HOOK_SKU} shows no stock after the receipt: {levels}")
    gw.fact("check-invalid", {"type": "sold", "quantity": 0}, status=400)
    delivered(receiver, "the low-stock alert of the sale", "low_stock")
    delivered(receiver, "the checkout's decision", "order_confirmed")
    # The sale's stock change and its alert, at least, reach the failing endpoint too, whose
    # breaker dead-letters them.
    eventually("the notify worker dead-letters the second round's deliveries to the failing endpoint",
               DELIVERY_DEADLINE, lambda: webhook_outcomes(system, "failing")["failed"] >= failed_before + 2)


def shopify_webhook(system: System, topic: str, body: dict, secret: str) -> int:
    """POSTs a Shopify webhook signed with `secret` to the connector; the status it answers."""
    data = json.dumps(body).encode()
    signature = base64.b64encode(hmac.new(secret.encode(), data, hashlib.sha256).digest()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{system.connector_port}/webhooks/shopify/{CONNECTOR_SHOP}", data=data, method="POST",
        headers={"Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": signature,
                 "X-Shopify-Webhook-Id": f"check-{secrets.token_hex(8)}",
                 "X-Shopify-Shop-Domain": f"{CONNECTOR_SHOP}.myshopify.com"})
    try:
        with urllib.request.urlopen(request, timeout=15) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        raise CheckFailed(f"connector webhook {topic}: {e}") from None


def connector_round(system: System, prom: "Prometheus") -> None:
    """The connector's shop sells a channel over a location of its own: a receipt there, then the
    channel's definition lists the SKU's quantity in its feed, and the connector reads the shop's
    quantity (0) and pushes the new one (its first push throttled); then the shop sends a signed
    orders/create webhook (accepted: a channel sale) and one with a wrong signature (401). Once
    Prometheus has scraped that, a second receipt is pushed: the push lag histogram appears with
    the first push, and rate() needs it to move between two scrapes. Straight onto the streams
    (protobuf, as channel_oversells), and run last: the histogram must move inside the dashboard's
    rate window."""
    shop = system.shopify
    meta = lambda event_id: pb((1, event_id), (3, "check"))  # noqa: E731 - EventMeta
    # StockEvent {meta, sku, location, received: Received {quantity}}: a channel's locations
    # must have stock recorded before it is defined.
    publish_to_stream(system.nats_port, f"stock.events.{CONNECTOR_SKU}",
                      pb((1, meta("check-shop-receipt")), (2, CONNECTOR_SKU), (3, CONNECTOR_LOCATION),
                         (10, pb((1, CONNECTOR_RECEIPT)))))
    gw = system.gateway

    def stocked() -> bool:
        try:
            gw.expect(200, "GET", f"/v1/stock/{CONNECTOR_SKU}", token=gw.read_token)
            return True
        except CheckFailed:  # 404 until the receipt is applied
            return False

    eventually("the stock worker applies the receipt at the shop's location", DELIVERY_DEADLINE, stocked)
    # Channel {id, name, kind = MARKETPLACE, locations}, default rules: the location's stock. Its
    # definition lists the location's SKU in the channel's feed, which the connector follows.
    definition = pb((1, CONNECTOR_CHANNEL), (2, CONNECTOR_CHANNEL), (3, 3), (4, CONNECTOR_LOCATION))
    publish_to_stream(system.nats_port, f"channels.events.{CONNECTOR_CHANNEL}",
                      pb((1, meta("check-shop-channel")), (2, CONNECTOR_CHANNEL), (10, pb((1, definition)))))
    eventually(f"the connector pushes {CONNECTOR_RECEIPT} to the shop (after a throttle)", DELIVERY_DEADLINE,
               lambda: shop.quantity() == CONNECTOR_RECEIPT)
    # A customer buys one unit in the shop: Shopify takes it off, then sends orders/create.
    shop.sell(1)
    order = {"id": 6_001, "name": "#C1001", "line_items": [
        {"id": 88_001, "sku": CONNECTOR_SKU, "quantity": 1, "variant_id": 1}]}
    status = shopify_webhook(system, "orders/create", order, system.webhook_secret)
    if status != 200:
        raise CheckFailed(f"the connector answered {status} to a signed orders/create webhook, expected 200")
    status = shopify_webhook(system, "orders/create", order, "not-the-secret")
    if status != 401:
        raise CheckFailed(f"the connector answered {status} to a webhook with a wrong signature, expected 401")

    def counted():
        text = system.metrics_text("connector")
        return (metric_value(text, "stockflow_connector_webhooks_total", shop=CONNECTOR_SHOP, outcome="accepted") >= 1
                and metric_value(text, "stockflow_connector_webhooks_total", shop=CONNECTOR_SHOP,
                                 outcome="bad_signature") >= 1
                and metric_value(text, "stockflow_connector_throttles_total", shop=CONNECTOR_SHOP) >= 1
                and metric_value(text, "stockflow_connector_push_lag_seconds_count", shop=CONNECTOR_SHOP) >= 1)

    eventually("the connector counts the push, its throttle and both webhooks", DELIVERY_DEADLINE, counted)
    first_push_counted = time.time()
    eventually("Prometheus scrapes the connector's first push", STARTUP_DEADLINE,
               lambda: prom.scraped_since(first_push_counted, 1), interval=0.25)
    publish_to_stream(system.nats_port, f"stock.events.{CONNECTOR_SKU}",
                      pb((1, meta("check-shop-receipt-2")), (2, CONNECTOR_SKU), (3, CONNECTOR_LOCATION),
                         (10, pb((1, 2)))))
    eventually(f"the connector pushes {CONNECTOR_RECEIPT - 1 + 2} to the shop", DELIVERY_DEADLINE,
               lambda: shop.quantity() == CONNECTOR_RECEIPT - 1 + 2)


# --------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------


class Prometheus:
    def __init__(self, procs: Processes, targets: dict[str, int]) -> None:
        self.procs = procs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL:g}s", "scrape_timeout": f"{SCRAPE_INTERVAL:g}s",
                       "evaluation_interval": f"{SCRAPE_INTERVAL:g}s"},
            "scrape_configs": [
                {"job_name": name, "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE, "pod": f"{name}-0"}}]}
                for name, port in targets.items()
            ],
        }
        self.config_path = procs.workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML

    def start(self) -> None:
        self.procs.start("prometheus", [
            tool("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.procs.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ])
        proc = self.procs.running["prometheus"]

        def ready():
            if proc.poll() is not None:
                raise CheckFailed(f"prometheus exited with {proc.returncode}:\n{self.procs.tail('prometheus')}")
            return http_get(f"{self.url}/-/ready")[0] == 200

        eventually(f"prometheus ready on {self.url}", STARTUP_DEADLINE, ready)

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url, timeout=10)
        try:
            doc = json.loads(body)
        except json.JSONDecodeError:
            raise CheckFailed(f"GET {url}: HTTP {status}, not JSON: {body[:200]}") from None
        return doc

    def query(self, expr: str, at: float) -> tuple[list | None, str]:
        """(result, "") or (None, error) for an instant query at `at`."""
        doc = self.api("query", query=expr, time=f"{at:.3f}")
        if doc.get("status") != "success":
            return None, f"{doc.get('errorType')}: {doc.get('error')}"
        data = doc["data"]
        if data["resultType"] != "vector":
            return None, f"result type {data['resultType']}, expected an instant vector"
        return data["result"], ""

    def scraped_since(self, since: float, scrapes: int) -> bool:
        """Every target is up and has been scraped `scrapes` times after `since` (epoch seconds)."""
        active = self.api("targets", state="active")["data"]["activeTargets"]
        if {t["labels"]["job"] for t in active} != set(self.targets):
            return False
        for t in active:
            if t["health"] != "up":
                return False
        now = time.time()
        result, error = self.query(f"count_over_time(up[{int((now - since) * 1000)}ms])", now)
        if error or not result:
            return False
        counts = {r["metric"]["job"]: float(r["value"][1]) for r in result}
        # count_over_time counts the scrapes inside the window, which starts at `since`.
        return all(counts.get(job, 0) >= scrapes for job in self.targets)


# --------------------------------------------------------------------------------------------
# The queries
# --------------------------------------------------------------------------------------------


class Query:
    """One expression to run. `data`: it must return series (else it only has to execute);
    `needs`: components whose absence alone would explain an empty result."""

    def __init__(self, source: str, expr: str, data: bool, needs: set[str] | None = None) -> None:
        self.source, self.expr, self.data = source, expr, data
        self.needs = {EXPORTED_ONLY_BY[m] for m in metric_names(expr) if m in EXPORTED_ONLY_BY} | (needs or set())


# `outcome=~"stale|dead_lettered"`: a regular expression listing label values.
ALTERNATIVES = re.compile(r'\b(\w+)=~"([\w-]+(?:\|[\w-]+)+)"')


def with_each_alternative(q: Query) -> list[Query]:
    """A query per value its label regexes list: `a|b` matching data through `a` alone would hide
    a `b` that no worker exports (a misspelt or undocumented value shows an empty panel line)."""
    out = []
    for m in ALTERNATIVES.finditer(q.expr):
        label, values = m.group(1), m.group(2).split("|")
        for value in values:
            expr = q.expr[:m.start()] + f'{label}="{value}"' + q.expr[m.end():]
            needs = {value} if value in COMPONENTS else set()
            out.append(Query(f"{q.source} [{label}={value}]", expr, True, needs))
    return out


def queries() -> list[Query]:
    out = []
    for title, expr in dashboard_queries():
        q = Query(f"panel {title!r}", grafana_to_promql(expr, RATE_INTERVAL), True)
        out += [q, *with_each_alternative(q)]
    for rule in alert_rules():
        name = rule.get("alert") or rule.get("record")
        expr = " ".join(rule["expr"].split())
        legs = data_legs(expr)
        # The whole condition is empty while all is well: it must parse and execute, no more.
        if legs != [expr]:
            out.append(Query(f"alert {name} (condition)", expr, False))
        for leg in legs:
            q = Query(f"alert {name}", leg, True)
            out += [q, *with_each_alternative(q)]
    return out


# What the traffic claims to cause (stockflow-traffic, the gateway requests, the webhook
# receiver's answers), by the label values it must leave behind: (metric, label, values).
# Checked first, so that a query passing on partial traffic cannot go unnoticed.
TRAFFIC = [
    ("stockflow_events_total", "outcome", {"applied", "duplicate", "stale", "dead_lettered"}),
    ("stockflow_events_total", "worker", {"stock-worker", "order-worker", "notify-worker"}),
    ("stockflow_ready", "worker", {"stock-worker", "order-worker", "notify-worker"}),
    ("stockflow_alerts_total", "kind", {"low_stock", "out_of_stock", "back_in_stock"}),
    ("stockflow_derived_published_total", "kind", {"stock_changed", "alert", "outcome", "order_result",
                                                   "channel_availability"}),
    ("stockflow_channel_oversold_total", "channel", {CHECK_CHANNEL}),
    ("stockflow_dead_letters_total", "worker", {"stock-worker", "notify-worker"}),
    ("stockflow_dead_letters_total", "reason", {"webhook_failed"}),
    ("stockflow_reservations_total", "outcome", {"confirmed", "rejected", "released"}),
    ("stockflow_transient_failures_total", "kind", {"not_yet"}),
    ("stockflow_consumer_restarts_total", "worker", {"stock-worker"}),
    ("stockflow_holds_expired_total", None, {"2"}),
    ("stockflow_webhook_deliveries_total", "outcome", {"delivered", "retried", "failed"}),
    ("stockflow_webhook_deliveries_total", "endpoint", {"accepting", "failing"}),
    ("stockflow_webhook_delivery_seconds_count", "endpoint", {"accepting", "failing"}),
    ("stockflow_webhook_breaker_open", "endpoint", {"failing"}),
    ("stockflow_http_requests_total", "route", {"/v1/stock/events", "/v1/stock/{sku}", "/v1/orders"}),
    ("stockflow_http_requests_total", "status", {"200", "201", "202", "400", "401", "403", "404"}),
    ("stockflow_http_request_seconds_count", "route", {"/v1/stock/events", "/v1/stock/{sku}", "/v1/orders"}),
    ("stockflow_connector_push_lag_seconds_count", "shop", {CONNECTOR_SHOP}),
]


def check_traffic(prom: Prometheus, at: float) -> list[str]:
    problems = []
    for metric, label, wanted in TRAFFIC:
        if label is None:  # the value itself
            result, error = prom.query(f"sum({metric})", at)
            seen = {r["value"][1] for r in result or []}
        else:
            result, error = prom.query(f"count by ({label}) ({metric})", at)
            seen = {r["metric"].get(label, "") for r in result or []}
        if error:
            problems.append(f"{metric}: {error}")
        elif not wanted <= seen:
            what = "value" if label is None else f"{label} values"
            problems.append(f"traffic left {metric} without {what} {sorted(wanted - seen)} (has {sorted(seen)})")
    return problems


def seconds(n: str, unit: str) -> int:
    return int(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def evaluate(prom: Prometheus, at: float, history: float, absent: dict[str, str], verbose: bool) -> list[str]:
    """Runs every query at `at`; returns the failures, prints a table."""
    failures, rows, notes = [], [], []
    for q in queries():
        result, error = prom.query(q.expr, at)
        if error:
            failures.append(f"{q.source}: {error}\n        query: {q.expr}")
            rows.append((q.source, "ERROR", q.expr))
            continue
        if not q.data:
            rows.append((q.source, f"{len(result)} (runs)", q.expr))
            continue
        if not result:
            # `x offset 15m` looks at history from before this Prometheus existed: empty is
            # right (the alert relies on exactly that for a first dead letter). The selector
            # itself must still match what the workers export, so it is checked without offset.
            offsets = re.findall(r"\boffset\s+(\d+)([smhd])\b", q.expr)
            if offsets and all(seconds(n, u) >= history for n, u in offsets):
                plain = re.sub(r"\s+offset\s+\w+", "", q.expr)
                plain_result, _ = prom.query(plain, at)
                if plain_result:
                    notes.append(f"{q.source}: empty because its offset reaches back before Prometheus started; "
                                 f"{len(plain_result)} series without the offset")
                    rows.append((q.source, "0 (offset)", q.expr))
                    continue
            missing = sorted(q.needs & set(absent))
            if missing:
                notes.append(f"{q.source}: no data because {', '.join(missing)} does not run "
                             f"({'; '.join(absent[m] for m in missing)})")
                rows.append((q.source, "0 (absent)", q.expr))
                continue
            failures.append(f"{q.source}: no series\n        query: {q.expr}\n"
                            f"        metrics: {', '.join(sorted(metric_names(q.expr)))}")
            rows.append((q.source, "0 FAIL", q.expr))
            continue
        if all(r["value"][1] == "NaN" for r in result):
            # histogram_quantile of buckets that did not move in the window: the panel is blank.
            failures.append(f"{q.source}: every series is NaN (no change inside the window)\n        query: {q.expr}")
            rows.append((q.source, "NaN FAIL", q.expr))
            continue
        rows.append((q.source, str(len(result)), q.expr))
    width = max(len(r[0]) for r in rows)
    say(f"\n{'query':<{width}}  {'series':<10}  expression")
    for source, n, expr in rows:
        shown = expr if verbose or len(expr) <= 100 else expr[:97] + "..."
        say(f"{source:<{width}}  {n:<10}  {shown}")
    if notes:
        say("")
        for n in notes:
            say(f"NOTE  {n}")
    return failures


# --------------------------------------------------------------------------------------------


def run(args) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="stockflow-prometheus-"))
    procs = Processes(workdir)
    receiver = WebhookReceiver()
    shopify = FakeShopify()
    failed = True
    try:
        for name in ("stockctl", "stockflow-traffic", *(c for c in COMPONENTS if c not in PENDING)):
            workspace_binary(name)
        system = System(procs)
        system.start_nats()
        system.start_redis()
        system.setup()
        receiver.start()
        shopify.start()
        system.shopify = shopify
        system.start_components(receiver)
        prom = Prometheus(procs, system.metrics_ports)
        prom.start()
        prom_started = time.time()
        eventually("Prometheus scrapes every worker", STARTUP_DEADLINE, lambda: prom.scraped_since(prom_started, 2),
                   interval=0.25)
        say(f"prometheus {prom.url} scrapes {len(system.metrics_ports)} targets every {SCRAPE_INTERVAL:g}s "
            f"(work dir {workdir})")

        # The gateway's first round runs while stockflow-traffic does (other SKUs): it keeps the
        # time from the traffic's last changes (the hold expiries) to the queries short.
        say("traffic: stock facts, alerts, duplicates, a stale count, a dead letter, orders, expiring holds;")
        say("  meanwhile through the gateway: a policy and a receipt, delivered to one webhook endpoint and "
            "dead-lettered at the other, and refused requests ...")
        step = time.monotonic()
        traffic = procs.start("stockflow-traffic", [str(workspace_binary("stockflow-traffic"))], system.env)
        # Both run unless they are PENDING (then their queries are reported, not failed).
        with_gateway = {"gateway", "notify-worker"} <= set(system.metrics_ports)
        if with_gateway:
            gateway_first_round(system, receiver)
            first_round_done = time.time()
        try:
            traffic.wait(timeout=max(1.0, TRAFFIC_DEADLINE - (time.monotonic() - step)))
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"stockflow-traffic did not finish within {TRAFFIC_DEADLINE:.0f}s:\n"
                              f"{procs.tail('stockflow-traffic')}") from None
        procs.running.pop("stockflow-traffic", None)
        if traffic.returncode != 0:
            raise CheckFailed(f"stockflow-traffic failed ({traffic.returncode}):\n{procs.tail('stockflow-traffic')}\n"
                              + "\n".join(f"    {n}:\n{procs.tail(n)}" for n in system.metrics_ports))
        say(f"      ({time.monotonic() - step:.1f}s)")

        # An operator deletes a durable consumer by mistake and `setup` declares it again: the
        # worker's subscription ends (a consumer restart), it is not ready until the consumer is
        # back, then re-reads the stream from the start (lag, and duplicates absorbed).
        say("deleting the stock-worker consumer, then stockctl setup: the worker must re-bind ...")
        step = time.monotonic()
        system.delete_consumer("STOCK_EVENTS", "stock-worker")
        eventually("stock-worker counts a consumer restart", RECOVERY_DEADLINE,
                   lambda: "stockflow_consumer_restarts_total" in system.metrics_text("stock-worker"))
        system.setup()
        eventually("stock-worker ready again", RECOVERY_DEADLINE, lambda: system.ready("stock-worker"))
        say(f"      ({time.monotonic() - step:.1f}s)")

        if with_gateway:
            # The first round's counters must be in Prometheus before the second changes them.
            eventually("Prometheus scrapes the first gateway round", STARTUP_DEADLINE,
                       lambda: prom.scraped_since(first_round_done, 1), interval=0.25)
            say("gateway: a sale to low stock, a checkout, a query, an invalid fact; their deliveries ...")
            step = time.monotonic()
            gateway_second_round(system, receiver)
            say(f"      ({time.monotonic() - step:.1f}s; webhook receiver: {receiver.summary()})")
        if "connector" in system.metrics_ports:
            say("connector: a receipt pushed to the Shopify shop (throttled once), a signed order webhook, a "
                "forged one, a second receipt pushed ...")
            step = time.monotonic()
            connector_round(system, prom)
            say(f"      ({time.monotonic() - step:.1f}s; shop: {shopify.calls})")
        traffic_done = time.time()
        # Three scrapes after the last change, so every counter's latest value is in, and rate()
        # has at least two samples of each new series (the restart counter appears only now).
        eventually("Prometheus scrapes the aftermath", STARTUP_DEADLINE,
                   lambda: prom.scraped_since(traffic_done, 3), interval=0.25)

        at = time.time()
        failures = check_traffic(prom, at)
        failures += evaluate(prom, at, at - prom_started, system.absent, args.verbose)
        say(f"\nprometheus check took {time.monotonic() - started:.1f}s")
        if failures:
            say(f"\nFAIL  {len(failures)} problems:")
            for f in failures:
                say(f"  - {f}")
            say(f"\nlogs in {workdir}")
            return 1
        failed = False
        say("ok    every alert and dashboard query executes and returns data")
        return 0
    except CheckFailed as exc:
        say(f"\nFAIL  {exc}\nlogs in {workdir}")
        return 1
    except KeyboardInterrupt as exc:
        say(f"\ninterrupted ({exc or 'Ctrl-C'}); every process started is stopped; logs in {workdir}")
        return 130
    finally:
        procs.stop_all()
        receiver.stop()
        shopify.stop()
        if not (failed or args.keep):
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="print whole expressions")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, tsdb)")
    args = parser.parse_args()

    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the `finally` stops every process.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    ensure_python_deps()  # pyyaml, for the alert rules
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
