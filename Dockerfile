# syntax=docker/dockerfile:1
# keyward container image: build with the pinned lockfile, run as non-root on distroless.
#   docker build -t keyward .
#   docker run --read-only --cap-drop ALL --ulimit memlock=-1 --ulimit core=0 \
#     -v keyward-state:/var/lib/keyward --tmpfs /run/keyward \
#     -v "$PWD/keyward.toml:/etc/keyward/keyward.toml:ro" -v "$PWD/master.key:/run/secrets/keyward/master-key:ro" \
#     -p 8443:8443 keyward
# The root filesystem can be read-only: keyward writes only to the store (a volume) and
# its sockets (a tmpfs).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Manifests first so dependency builds are cached across source changes.
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml build.rs ./
# The code layout the linker follows (build.rs): fewer resident code pages.
COPY build ./build
COPY src ./src
COPY crates ./crates
COPY bench ./bench
COPY examples ./examples
RUN cargo build --release --locked --bin keyward \
 && strip target/release/keyward \
 && install -d -m 0700 /out/var/lib/keyward /out/run/keyward \
 && install -m 0755 target/release/keyward /out/usr/local/bin/keyward

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build --chown=65532:65532 /out/ /
USER 65532:65532
VOLUME ["/var/lib/keyward"]
# 8443: webhooks; 7443: app mTLS listener; 9090: ops (/healthz /readyz /metrics).
EXPOSE 8443 7443 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/keyward", "health", "--url", "http://127.0.0.1:9090/readyz"]
ENTRYPOINT ["/usr/local/bin/keyward"]
CMD ["serve", "--config", "/etc/keyward/keyward.toml"]
