# syntax=docker/dockerfile:1
# offload's container image, so a migration can run where the data is: inside a Tutor platform's
# Compose network (`tutor local do offload`) or Kubernetes namespace (`tutor k8s do offload`).
#
#   docker build -t offload .
#   docker run --rm offload --help
#
# Stage 1 builds the release binary exactly as CI and a local build do (`cargo build --release
# --locked`); stage 2 holds only that binary and Debian's CA certificates (the TLS connections to
# managed databases and S3 verify against them), run as a fixed non-root user.

# ---- build ------------------------------------------------------------------------------------
# The toolchain the project builds with (Cargo.toml's rust-version is the minimum). Debian
# bookworm on both stages, so the binary links against the runtime's glibc.
FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches speed up rebuilds; the binary is copied out of the cached target
# folder in the same step, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/offload /out/offload

# ---- runtime ----------------------------------------------------------------------------------
FROM docker.io/library/debian:bookworm-slim AS runtime
# DL3008 (pin apt package versions) is ignored on purpose: Debian keeps only the newest
# ca-certificates in bookworm and bookworm-security, so a pinned version stops building at its
# next update; the base image tag is what pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 offload \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/offload --create-home \
       --shell /usr/sbin/nologin offload
COPY --from=build /out/offload /usr/local/bin/offload
# Fixed ids, so Kubernetes' runAsUser/fsGroup and host folders can name them.
USER 10001:10001
WORKDIR /home/offload
ENTRYPOINT ["offload"]
CMD ["--help"]
