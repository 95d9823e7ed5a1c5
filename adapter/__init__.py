"""MQTT → InfluxDB adapter of the IoT platform (see adapter/adapter.py)."""
