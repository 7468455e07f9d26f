"""MQTT: meters that publish their readings to a broker (message formats; the source is in gateway.sources.mqtt)."""
