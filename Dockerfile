# The builder image release pipelines use: builder on NVIDIA's PyTorch container 24.08, which holds
# CUDA 12.6, TensorRT 10.3.0 (with its Python API and the EfficientNMS_TRT plugin) and PyTorch 2.5.
#
# Why TensorRT 10.3: it is the TensorRT of JetPack 6.1/6.2 (L4T r36.4), so an engine recipe that builds
# here builds the same way on a Jetson (containers/jetson/); it still ships the NMS plugins that builder's
# "tensorrt" flavour uses; and it parses both builder ONNX flavours and explicit (Q/DQ) INT8. TensorRT 11
# dropped the FP16/INT8 flags of weakly typed networks (builder builds strongly typed networks, which work
# on both) and more of the legacy plugins, and has no JetPack release yet.
#
# Pinned by tag and digest: the digest is what `docker pull` resolves 24.08-py3 to; a new digest is a new
# toolchain, recorded in every bundle's manifest (stage.image_id).
#
#   docker build -t model-bundle-builder:0.1.0 .
#   builder bundle --target triton --engine tensorrt --runner docker --gpus --model yolo_nas_s ...
FROM nvcr.io/nvidia/pytorch:24.08-py3@sha256:60cc7c9cf24b423c28f621287779ebe5e52cd39cfd284df04983df52566c1e39

ARG UID=10001
WORKDIR /opt/builder-src
COPY pyproject.toml README.md ./
COPY builder ./builder
# Keep the container's own torch (a CUDA build, a pre-release version pip would otherwise replace) and
# TensorRT: pin them to what is installed, then install builder and the rest of its dependencies. Ray (the
# cluster extra) lets the image run `builder release` and be the node image of a KubeRay cluster.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/keep.txt \
 && pip install --no-cache-dir -c /tmp/keep.txt ".[cluster]" \
 && python -c "import tensorrt, builder; print('tensorrt', tensorrt.__version__, 'builder', builder.__version__)" \
 && rm -rf /opt/builder-src /tmp/keep.txt \
 && useradd --uid "${UID}" --create-home --shell /usr/sbin/nologin builder

ENV PYTHONDONTWRITEBYTECODE=1
USER builder
WORKDIR /tmp
ENTRYPOINT ["builder"]
CMD ["--help"]
