# The converter image run by conversion Jobs: `modelops convert models:/NAME/VERSION ... --register`.
# CPU torch only: parity is checked on CPU; serving precision is applied in the graph.
# The transformers extra (convert + transformers + sentence-transformers): Hugging Face flavors too.
# Build: scripts/build-images.sh (or docker build -f docker/converter.Dockerfile -t ghcr.io/modelops/modelops-converter:0.1.0 .)
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml ./
COPY docker/constraints.txt ./docker/
COPY platform ./platform
COPY operators ./operators
# Every dependency at the version the tests ran with (torch's CPU build from its own index).
RUN pip install --no-cache-dir --prefix=/install -c docker/constraints.txt \
      --extra-index-url https://download.pytorch.org/whl/cpu '.[transformers]'

FROM python:3.11.13-slim-bookworm
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelops
USER 10001
ENV PYTHONUNBUFFERED=1 HOME=/tmp
ENTRYPOINT ["modelops"]
CMD ["convert", "--help"]
