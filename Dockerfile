# meter-gateway in a container.
#   docker build -t meter-gateway .
#   docker run -d --name meter-gateway \
#     -v /etc/meter-gateway:/etc/meter-gateway:ro -v meter-gateway-state:/var/lib/meter-gateway \
#     --device /dev/ttyUSB0 --group-add dialout meter-gateway
# Reload the configuration: docker kill --signal HUP meter-gateway
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/meter-gateway --shell /usr/sbin/nologin meter-gateway \
 && mkdir -p /var/lib/meter-gateway /etc/meter-gateway \
 && chown meter-gateway:meter-gateway /var/lib/meter-gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/example.yaml /etc/meter-gateway/config.yaml
USER meter-gateway
VOLUME ["/var/lib/meter-gateway"]
ENV PYTHONUNBUFFERED=1 METER_GATEWAY_LOG_FORMAT=json METER_GATEWAY_CONFIG=/etc/meter-gateway/config.yaml
# Healthy while the daemon writes its heartbeat and no platform is failing.
HEALTHCHECK --interval=60s --timeout=15s --start-period=30s --retries=3 CMD ["meter-gateway", "status", "--check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["meter-gateway"]
CMD ["run"]
