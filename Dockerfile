# syntax=docker/dockerfile:1
#
# One image with every stockflow binary (stock-worker, order-worker, notify-worker, gateway,
# stockctl) in /usr/local/bin. It has no entrypoint: each Helm workload sets its `command`.
#
#   docker build -t stockflow:0.1.0 .
#   docker run --rm stockflow:0.1.0 stockctl --help

############################ build ############################
FROM rust:1-bookworm AS builder
WORKDIR /src

# Sources (target/ and .dev/ are left out by .dockerignore when it lists them).
COPY . .

# Cache mounts keep the registry and incremental artefacts between builds; the binaries are
# copied out of target/ in the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -perm -u+x -exec cp {} /out/ \; \
 && ls -l /out

############################ runtime ############################
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 stockflow \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin stockflow

COPY --from=builder /out/ /usr/local/bin/

# Metrics, /healthz and /readyz (STOCKFLOW_METRICS_ADDR) and the gateway API (STOCKFLOW_HTTP_ADDR),
# on the ports the Helm chart configures.
EXPOSE 9090 8080

USER 10001:10001
