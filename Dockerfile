# syntax=docker/dockerfile:1
# konnect-sa-operator: a static musl binary on distroless (CA bundle included: kube and reqwest verify TLS with it).
#   docker build -t konnect-sa-operator .
#   docker run --rm konnect-sa-operator --help
# tests/install.rs replays every COPY and cargo step below on the host (no Docker engine needed), so a step that
# cannot work fails there first. The release workflow builds it on a native runner per architecture.

# Planner: the dependency layer's only inputs are the manifests (the workspace's: the operator's and the tests'
# Kubernetes API stand-in, which cargo must read to resolve the lock file), the lock file and a stand-in for every
# target cargo knows (declared in Cargo.toml, like the `scale` bench, or discovered), so cargo parses the manifests
# as they are, whatever targets they gain, and editing a source file does not invalidate the dependency layer.
FROM rust:1.95-alpine AS planner
WORKDIR /src
COPY . .
RUN cargo metadata --no-deps --format-version 1 > metadata.json \
    && grep -o '"src_path":"[^"]*"' metadata.json > src_paths \
    && cut -d '"' -f 4 src_paths > targets \
    && grep -o '"manifest_path":"[^"]*"' metadata.json > manifest_paths \
    && cut -d '"' -f 4 manifest_paths > manifests \
    && mkdir skeleton \
    && cp Cargo.lock skeleton/ \
    && while IFS= read -r manifest; do \
           copy="skeleton/${manifest#"$PWD"/}"; \
           mkdir -p "$(dirname "$copy")"; \
           cp "$manifest" "$copy"; \
       done < manifests \
    && while IFS= read -r target; do \
           stub="skeleton/${target#"$PWD"/}"; \
           mkdir -p "$(dirname "$stub")"; \
           echo '#[allow(dead_code)] fn main() {}' > "$stub"; \
       done < targets

FROM rust:1.95-alpine AS builder
# musl-dev: C runtime headers for ring's C code; the musl target links statically by default. Not pinned: Alpine
# drops superseded package versions from its index, so a pinned version stops building within weeks.
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev
WORKDIR /src

# Dependency layer: every dependency, built against the stand-ins.
COPY --from=planner /src/skeleton ./
RUN cargo build --release --locked --bin konnect-sa-operator

# The real sources. touch: COPY keeps the context's mtimes, which can be older than the stand-ins' build, and cargo
# would then keep the stand-in binary.
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin konnect-sa-operator \
    && target/release/konnect-sa-operator --version

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="konnect-sa-operator" \
      org.opencontainers.image.description="Kong Konnect system accounts, spat_ tokens and role bindings as Kubernetes resources" \
      org.opencontainers.image.source="https://github.com/konnect-sa-operator/konnect-sa-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /src/target/release/konnect-sa-operator /konnect-sa-operator
# nonroot (65532:65532), numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
# The subcommand comes from the container args: the manifests pass `run ...`; `docker run <image> sim ...` runs the
# simulator. (An entrypoint ending in `run` would make the manifests' args `run run ...`, which the CLI rejects.)
ENTRYPOINT ["/konnect-sa-operator"]
