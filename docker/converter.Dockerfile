# The converter image run by conversion Jobs: `modelops convert models:/NAME/VERSION ... --register`.
# CPU torch only: parity is checked on CPU; serving precision is applied in the graph.
# Build: docker build -f docker/converter.Dockerfile -t ghcr.io/modelops/modelops-converter:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY platform ./platform
COPY operators ./operators
RUN pip install --no-cache-dir --prefix=/install \
      --extra-index-url https://download.pytorch.org/whl/cpu '.[convert]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelops
USER 10001
ENV PYTHONUNBUFFERED=1 HOME=/tmp
ENTRYPOINT ["modelops"]
CMD ["convert", "--help"]
