"""A command-line device simulator: N simulated sensors publishing readings to the MQTT broker.

Run it as `python -m simulator --help` from the repository root. It depends on paho-mqtt only,
not on the adapter: it is what a real device would be, seen from outside the platform.
"""
