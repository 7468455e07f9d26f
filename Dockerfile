# meter-gateway in a container.
#   docker build -t meter-gateway .
#   docker run -d --name meter-gateway \
#     -v /etc/meter-gateway:/etc/meter-gateway:ro -v meter-gateway-state:/var/lib/meter-gateway \
#     --device /dev/ttyUSB0 --group-add dialout meter-gateway
# Reload the configuration: docker kill --signal HUP meter-gateway
# Several architectures at once (docs/operations.md "Running in a container"):
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t registry.example/meter-gateway:0.2.0 --push .
#
# BASE: any Debian-like image with python3 (3.11 or newer) and its venv module. The official Python image is the
# default; the tests build on a Debian 12 root of their own (they cannot pull images).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python3 -m venv /opt/meter-gateway \
 && /opt/meter-gateway/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/meter-gateway/bin/pip uninstall --yes pip

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/meter-gateway --shell /usr/sbin/nologin \
      meter-gateway \
 && mkdir -p /var/lib/meter-gateway /etc/meter-gateway \
 && chown meter-gateway:meter-gateway /var/lib/meter-gateway \
 && chmod 0750 /var/lib/meter-gateway
COPY --from=build /opt/meter-gateway /opt/meter-gateway
COPY config/example.yaml /etc/meter-gateway/config.yaml
ENV PATH=/opt/meter-gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    METER_GATEWAY_LOG_FORMAT=json \
    METER_GATEWAY_CONFIG=/etc/meter-gateway/config.yaml
USER meter-gateway
WORKDIR /var/lib/meter-gateway
VOLUME ["/var/lib/meter-gateway"]
# Healthy while the daemon writes its heartbeat and no platform is failing.
HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 CMD ["meter-gateway", "status", "--check"]
# The daemon stops cleanly on SIGTERM (what 'docker stop' sends): the queue is committed, connections closed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["meter-gateway"]
CMD ["run"]
