# syntax=docker/dockerfile:1
# Builds every Handoff binary into one image; compose / Kubernetes choose the command.
# Protos compile with protox (pure Rust), so no protoc is installed.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY proto ./proto
COPY migrations ./migrations
# The router's SQL is checked against this query data at compile time (no database here).
COPY .cargo ./.cargo
COPY .sqlx ./.sqlx
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 handoff \
    && useradd --system --uid 10001 --gid handoff --no-create-home --shell /usr/sbin/nologin handoff
COPY --from=builder \
    /src/target/release/inlet-gateway \
    /src/target/release/outlet-gateway \
    /src/target/release/router \
    /src/target/release/handoffctl \
    /src/target/release/zendesk-agent \
    /src/target/release/handoff-sim \
    /usr/local/bin/
USER 10001:10001
EXPOSE 8080 8081 8082 8090
# No ENTRYPOINT: run e.g. `docker run handoff:local router`.
CMD ["router"]
