# The KServe predictor (ClusterServingRuntime modelops-onnxruntime): onnxruntime-gpu on CUDA.
# `modelops serve` refuses to fall back to CPU when the InferenceService asked for a GPU.
# The base install only: no torch, no MLflow (the model arrives as ONNX in /mnt/models).
# Build: scripts/build-images.sh (or docker build -f docker/predictor.Dockerfile -t ghcr.io/modelops/modelops-predictor:0.1.0 .)
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/modelops
ENV PATH=/opt/modelops/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
WORKDIR /src
COPY pyproject.toml ./
COPY docker/constraints.txt ./docker/
COPY platform ./platform
COPY operators ./operators
# Every dependency at the version the tests ran with. onnxruntime-gpu installs the same
# `onnxruntime` module: remove the CPU build first.
RUN pip install --no-cache-dir -c docker/constraints.txt . \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir -c docker/constraints.txt onnxruntime-gpu \
 && rm -rf /src
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelops
USER 10001
EXPOSE 8080 8081
ENTRYPOINT ["modelops"]
# KServe passes its own arguments (see the ClusterServingRuntime); this default serves /mnt/models.
CMD ["serve", "/mnt/models", "--name", "model", "--http-port", "8080", "--grpc-port", "8081"]
