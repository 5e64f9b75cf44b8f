# One image for the cloud side: `ioc db migrate`, `ioc ingest`, `ioc sim` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IOC_FIRMWARE_CONFIG=/app/firmware-config

# Install the package without dev extras (no edge/vision/test dependencies), then drop the sources so
# only the installed copy can be imported.
COPY pyproject.toml README.md /tmp/src/
COPY contract /tmp/src/contract
COPY cloud /tmp/src/cloud
COPY edge /tmp/src/edge
COPY simulators /tmp/src/simulators
COPY ioc /tmp/src/ioc
RUN pip install /tmp/src && rm -rf /tmp/src

# The device profiles ingest validates against; installed code finds them through $IOC_FIRMWARE_CONFIG.
WORKDIR /app
COPY firmware-config ./firmware-config

RUN useradd --system --uid 10001 --home-dir /app ioc
USER ioc

CMD ["ioc", "--help"]
