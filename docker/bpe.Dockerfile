# The DSF BPE (dsf-bpe) as a container image, with the ping-pong plugin file that every DSF
# site runs to test its connections. Mount a directory over /opt/bpe/process to run others.
#
#   docker build -f docker/bpe.Dockerfile -t dsf-rs/bpe .
#
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# One cargo run for both programs: their dependencies' features are unified once, so each
# dependency is compiled once rather than again for the plugin.
RUN cargo build --release --locked -p dsf-bin --bin dsf-bpe \
      -p dsf-plugin-ping-pong --bin dsf-process-ping-pong \
 && mkdir -p /out/process /out/data \
 && cp target/release/dsf-bpe /out/ \
 && cp target/release/dsf-process-ping-pong /out/process/

# Runtime: glibc and libgcc only, no shell, as the unprivileged user 65532. Plugin files that
# are scripts need their interpreter in an image built on this one.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/dsf-bpe /usr/local/bin/dsf-bpe
COPY --from=build /out/process /opt/bpe/process
# Writable for the BPE's user: the SQLite default state database.
COPY --from=build --chown=65532:65532 /out/data /opt/bpe/data
WORKDIR /opt/bpe
USER 65532:65532
ENV DEV_DSF_BPE_PROCESS_PLUGIN_DIRECTORY=/opt/bpe/process \
    DEV_DSF_BPE_DB_URL=sqlite:/opt/bpe/data/bpe.sqlite \
    DEV_DSF_SERVER_STATUS_HOST=127.0.0.1 \
    DEV_DSF_SERVER_STATUS_PORT=10000
VOLUME ["/opt/bpe/data"]
# Asks the status port's /health/ready: the state database answers and both websocket
# subscriptions are bound.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/dsf-bpe", "health-check"]
ENTRYPOINT ["/usr/local/bin/dsf-bpe"]
