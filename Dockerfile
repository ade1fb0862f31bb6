# syntax=docker/dockerfile:1
# The skewless application image: the `skewless` command (stream, serve, train, ...).
#
#   docker build -t skewless .
#   docker run --rm skewless --help
#
# compose.yaml runs the whole stack from it (Kafka, Redis, `skewless stream`,
# `skewless serve`). Checked statically by tests/interop/test_container.py.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1-slim-bookworm

FROM ${RUST_IMAGE} AS rust

# ---- builder: the native core (Rust, built by maturin) and skewless, as wheels
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
WORKDIR /src
# the native core first: it changes least and takes longest (maturin, cargo --release)
COPY native/ native/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./native
COPY pyproject.toml README.md ./
COPY features/ features/
COPY flows/ flows/
COPY serving/ serving/
COPY skewless/ skewless/
COPY bench/ bench/
COPY feature_repo/ feature_repo/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime: Python 3.11, the two wheels and their pinned dependencies, no toolchain
FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: XGBoost's OpenMP runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /tmp/constraints.txt
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && useradd --create-home --uid 10001 skewless \
    && mkdir /data \
    && chown skewless /data
USER skewless
WORKDIR /data
# one data root (events, features, registry, predictions); the server listens on every
# interface of the container (the default, 127.0.0.1, is unreachable from outside it)
ENV SKEWLESS_DATA_DIR=/data \
    SKEWLESS_REGISTRY_DIR=/data/registry \
    SKEWLESS_GRPC_ADDRESS=0.0.0.0:50051 \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 50051
ENTRYPOINT ["skewless"]
CMD ["--help"]
