# One image for every role of the lab: each docker-compose service runs
# `gateway <role> --config lab/configs/docker/<role>.toml` from /app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first, so a source change does not reinstall them.
COPY pyproject.toml README.md ./
COPY certs ./certs
COPY gateway ./gateway
COPY lab ./lab
COPY media ./media
COPY sip ./sip
COPY turn ./turn
RUN pip install .

# Private keys are made at run time by the `certs` service, into the /certs volume.
RUN useradd --system --home /app gateway && mkdir /certs && chown gateway /certs
VOLUME ["/certs"]
USER gateway

CMD ["gateway", "--help"]
