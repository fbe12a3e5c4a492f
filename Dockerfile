# syntax=docker/dockerfile:1
# konnect-sa-operator: a static musl binary on distroless (CA bundle included: kube and reqwest verify TLS with it).
#   docker build -t ghcr.io/konnect-sa-operator/konnect-sa-operator:0.1.0 .
#   docker run --rm ghcr.io/konnect-sa-operator/konnect-sa-operator:0.1.0 --help

FROM rust:1.95-alpine AS builder
# musl-dev: C runtime headers for ring's C code; the musl target links statically by default.
RUN apk add --no-cache musl-dev
WORKDIR /src

# Dependency layer: build all dependencies against stub sources, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin konnect-sa-operator \
    && rm -rf src

# The real sources. touch: COPY keeps the context's mtimes, which can be older than the stub build.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin konnect-sa-operator \
    && mkdir /out \
    && cp target/release/konnect-sa-operator /out/ \
    && /out/konnect-sa-operator --version

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="konnect-sa-operator" \
      org.opencontainers.image.description="Kong Konnect system accounts, spat_ tokens and role bindings as Kubernetes resources" \
      org.opencontainers.image.source="https://github.com/konnect-sa-operator/konnect-sa-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/konnect-sa-operator /konnect-sa-operator
# nonroot (65532:65532), numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
# The subcommand comes from the container args: the manifests pass `run ...`; `docker run <image> sim ...` runs the
# simulator. (An entrypoint ending in `run` would make the manifests' args `run run ...`, which the CLI rejects.)
ENTRYPOINT ["/konnect-sa-operator"]
