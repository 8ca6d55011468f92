# syntax=docker/dockerfile:1
# Build: docker build -t sessiongate .
# Run:   docker run -p 8080:8080 -v $PWD/config:/etc/sessiongate:ro sessiongate serve --config /etc/sessiongate/sessiongate.toml

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang pkg-config && rm -rf /var/lib/apt/lists/*
# Cache dependencies separately from the sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked || true
COPY src ./src
COPY config ./config
COPY openapi.yaml ./
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sessiongate

FROM debian:bookworm-slim AS runtime
# libgssapi-krb5-2: MIT GSS-API, loaded at run time only by pools with auth = "kerberos".
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgssapi-krb5-2 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/sessiongate --create-home sessiongate
COPY --from=build /src/target/release/sessiongate /usr/local/bin/sessiongate
COPY config/example.toml /etc/sessiongate/example.toml
USER 10001:10001
WORKDIR /var/lib/sessiongate
ENV SESSIONGATE__SERVER__LISTEN=0.0.0.0:8080 \
    SESSIONGATE__SERVER__DATA_DIR=/var/lib/sessiongate \
    SESSIONGATE__SERVER__JSON_LOGS=true
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/sessiongate", "probe", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["serve", "--config", "/etc/sessiongate/sessiongate.toml"]
