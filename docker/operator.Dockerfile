# The ModelOps operator: no torch/CUDA needed (conversion runs in Jobs by default).
# Build: scripts/build-images.sh (or docker build -f docker/operator.Dockerfile -t ghcr.io/modelops/modelops-operator:0.1.0 .)
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml ./
COPY docker/constraints.txt ./docker/
COPY platform ./platform
COPY operators ./operators
# Every dependency at the version the tests ran with (docker/constraints.txt).
RUN pip install --no-cache-dir --prefix=/install -c docker/constraints.txt '.[operator]'

FROM python:3.11.13-slim-bookworm
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelops
USER 10001
ENV PYTHONUNBUFFERED=1 HOME=/tmp
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["modelops"]
CMD ["operator", "--all-namespaces", "--conversion", "job"]
