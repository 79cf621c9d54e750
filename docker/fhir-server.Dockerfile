# The DSF FHIR server (dsf-fhir-server) as a container image.
#
#   docker build -f docker/fhir-server.Dockerfile -t dsf-rs/fhir-server .
#
# Build stage: the release binary from the workspace, with the locked dependencies.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dsf-bin --bin dsf-fhir-server \
 && mkdir -p /out/data /out/log \
 && cp target/release/dsf-fhir-server /out/

# Runtime: glibc and libgcc only (distroless "cc"), no shell, no package manager, running as
# the unprivileged user 65532. The binary needs nothing else: TLS is rustls, SQLite is built in.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/dsf-fhir-server /usr/local/bin/dsf-fhir-server
# Writable for the server's user: the SQLite default database and the audit log.
COPY --from=build --chown=65532:65532 /out/data /opt/fhir/data
COPY --from=build --chown=65532:65532 /out/log /opt/fhir/log
WORKDIR /opt/fhir
USER 65532:65532
ENV DEV_DSF_SERVER_API_HOST=0.0.0.0 \
    DEV_DSF_SERVER_API_PORT=8443 \
    DEV_DSF_SERVER_STATUS_HOST=127.0.0.1 \
    DEV_DSF_SERVER_STATUS_PORT=10000 \
    DEV_DSF_FHIR_DB_URL=sqlite:/opt/fhir/data/fhir.sqlite \
    DEV_DSF_LOG_AUDIT_FILE=/opt/fhir/log/fhir-audit.log
VOLUME ["/opt/fhir/data", "/opt/fhir/log"]
EXPOSE 8443
# Asks the status port's /health/ready: the database answers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/dsf-fhir-server", "health-check"]
ENTRYPOINT ["/usr/local/bin/dsf-fhir-server"]
