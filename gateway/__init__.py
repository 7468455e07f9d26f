"""meter-gateway: reads energy meters and delivers every reading to cloud energy platforms."""

__version__ = "0.2.0"
