# The ModelOps operator: no torch/CUDA needed (conversion runs in Jobs by default).
# Build: docker build -f docker/operator.Dockerfile -t ghcr.io/modelops/modelops-operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY platform ./platform
COPY operators ./operators
RUN pip install --no-cache-dir --prefix=/install '.[operator]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelops
USER 10001
ENV PYTHONUNBUFFERED=1 HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["modelops"]
CMD ["operator", "--all-namespaces", "--conversion", "job"]
