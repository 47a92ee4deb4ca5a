# stockflow developer tasks. Run them as `./dev <recipe>`, which first installs
# missing tools (just, nats-server, redis) into .dev/bin; plain `just` works too.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

# Tools that scripts/bootstrap.py installed come first, also when `just` runs directly.
export PATH := justfile_directory() / ".dev/bin" + ":" + env_var("PATH")

# (default) list recipes
_default:
    @"{{just_executable()}}" --list --justfile "{{justfile()}}"

# Run all tests: Rust (integration tests start their own nats-server/redis-server on free
# ports and run the worker binaries, hence the build first), then the Helm chart checks, then
# a real Prometheus scraping the workers runs every alert and dashboard query. Installs
# Debian's chromium and chromedriver if missing, for the console's browser test
test:
    python3 scripts/bootstrap.py --with chromium
    cargo build --workspace --bins --locked
    cargo test --workspace --locked
    python3 helm/tests/check_chart.py
    python3 helm/tests/check_prometheus.py

# Run the demo against the local dev services (left running afterwards)
demo *args: services-start
    #!/usr/bin/env bash
    set -euo pipefail
    trap 'echo "dev services are still running; stop them with: ./dev services-stop"' EXIT
    eval "$(scripts/dev-services env)"  # STOCKFLOW_NATS_URL, STOCKFLOW_REDIS_URL
    cargo run --release --locked -p stockflow-cli --bin stockflow-demo -- "$@"

# Listens on STOCKFLOW_HTTP_ADDR (127.0.0.1:8080); dev tokens write:dev-write-token-0001 and
# read:dev-read-token-00001 unless STOCKFLOW_GATEWAY_TOKENS is set. Ctrl-C stops all three.
# Run the gateway with a stock and an order worker against the local dev services
gateway: services-start
    #!/usr/bin/env bash
    set -euo pipefail
    eval "$(scripts/dev-services env)"  # STOCKFLOW_NATS_URL, STOCKFLOW_REDIS_URL
    # stockflow-cli too: the same package set as the demo's build, so both share one set of
    # compiled dependencies (another set means other features, and a second full build).
    cargo build --release --locked -p stock-worker -p order-worker -p gateway -p stockflow-cli --bins
    bin="${CARGO_TARGET_DIR:-target}/release"
    export STOCKFLOW_LOG="${STOCKFLOW_LOG:-warn}"
    export STOCKFLOW_GATEWAY_TOKENS="${STOCKFLOW_GATEWAY_TOKENS:-write:dev-write-token-0001,read:dev-read-token-00001}"
    "$bin/stock-worker" & stock=$!
    "$bin/order-worker" & orders=$!
    trap 'kill "$stock" "$orders" 2>/dev/null || true; wait; echo "dev services are still running; stop them with: ./dev services-stop"' EXIT
    echo "gateway on http://${STOCKFLOW_HTTP_ADDR:-127.0.0.1:8080} (stock-worker pid $stock, order-worker pid $orders); Ctrl-C stops"
    "$bin/gateway"

# Start local nats-server (JetStream) and redis-server, state in .dev/
services-start:
    @scripts/dev-services start

# Stop the local services (data stays in .dev/data)
services-stop:
    @scripts/dev-services stop

# Start a local 3-node NATS cluster and a Redis Cluster (3 primaries + 3 replicas), state in
# .dev/cluster; `eval "$(scripts/dev-cluster env)"` points the binaries at them
cluster-start:
    @scripts/dev-cluster start

# Stop the local clusters (state stays in .dev/cluster)
cluster-stop:
    @scripts/dev-cluster stop

# Show whether the local services run and answer
services-status:
    -@scripts/dev-services status

# Formatting and clippy, warnings are errors (as CI will run them)
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Installs PostgreSQL if missing. The three packages build together: built apart, their shared
# dependencies would compile twice with different features.
# Run the benchmarks (BENCHMARKS.md; --quick: smoke run, --write BENCHMARKS.md: refresh it)
bench *args:
    python3 scripts/bootstrap.py --with postgresql
    cargo build --release --locked -p stock-worker -p order-worker -p gateway -p connector -p stockflow-bench
    "${CARGO_TARGET_DIR:-target}/release/stockflow-bench" "$@"

# Check the Helm chart
helm-check:
    python3 helm/tests/check_chart.py

# Run every alert and dashboard query against a real Prometheus scraping the workers
prometheus-check:
    cargo build --workspace --bins --locked
    python3 helm/tests/check_prometheus.py
