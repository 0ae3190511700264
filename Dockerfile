# One image for every role of the lab: each docker-compose service runs
# `gateway <role> --config lab/configs/docker/<role>.toml` from /app, as the user `gateway`.
#
# Build arguments (docker-compose passes the environment variables of the same names):
#   BASE_IMAGE  a Python 3.11 image with python3 -m venv (default python:3.11-slim); where no
#               registry can be reached, a local one (e.g. `mmdebstrap` of Debian bookworm
#               with python3 python3-venv, `docker import`ed; see README "Docker").
#   PIP_WHEELS  unset: dependencies come from the package index. A directory of the build
#               context filled on the host (`pip wheel -w wheels -r constraints.txt`, or
#               `pip download` for Python 3.11 where the host's differs): install only from
#               there, never from an index.
# Written for the classic builder too (docker-compose 1.29 builds without BuildKit).
ARG BASE_IMAGE=python:3.11-slim

# -- the dependencies, pinned by constraints.txt: rebuilt only when that file changes -------
FROM ${BASE_IMAGE} AS deps
ARG PIP_WHEELS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /build/constraints.txt
# COPY needs a source: without PIP_WHEELS the constraints file stands in (never read).
COPY ${PIP_WHEELS:-constraints.txt} /build/wheels/
# The project itself goes to /opt/app/lib (next stage): a .pth puts it on the venv's path.
RUN set -e; \
    if [ -n "$PIP_WHEELS" ]; then set -- --no-index --find-links /build/wheels; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install "$@" --requirement /build/constraints.txt; \
    echo /opt/app/lib > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/gateway-app.pth"

# -- the project, built against those dependencies (no index, no build isolation) ------------
FROM deps AS app
COPY pyproject.toml README.md /build/src/
COPY certs /build/src/certs
COPY gateway /build/src/gateway
COPY lab /build/src/lab
COPY media /build/src/media
COPY sip /build/src/sip
COPY turn /build/src/turn
RUN /opt/venv/bin/pip install --no-index --no-deps --no-build-isolation \
        --target /opt/app/lib /build/src

# -- the image: the venv and the project, no sources, build tree or pip cache --------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/app/lib/bin:/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Private keys are made at run time by the `certs` service, into the /certs volume.
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin gateway \
    && mkdir -p /app /certs && chown gateway /certs
COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/app /opt/app
COPY lab/configs /app/lab/configs
WORKDIR /app
VOLUME ["/certs"]
USER gateway
CMD ["gateway", "--help"]
