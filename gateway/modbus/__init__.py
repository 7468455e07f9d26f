"""Modbus: registers, profiles, request planning, buses and simulated meters."""
