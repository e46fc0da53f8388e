# The builder image: builder and its pinned toolchain, run as a non-root user.
# BASE must provide Python 3.10+ with pip; the release image swaps in the pinned CUDA + TensorRT base.
ARG BASE=python:3.11-slim
FROM ${BASE}

WORKDIR /opt/builder
COPY pyproject.toml constraints.txt README.md ./
COPY builder ./builder
# --no-cache-dir keeps the layer small; the constraints keep torch on the tested build.
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --create-home --uid 10001 builder
USER builder
WORKDIR /work
ENTRYPOINT ["builder"]
CMD ["--help"]
