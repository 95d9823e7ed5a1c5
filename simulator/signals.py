"""Signal models of one simulated device: battery, temperature, humidity.

Pure and deterministic: each model draws from the random generator it is given, and
advances only by the simulated time it is told has passed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

HOURS_PER_DAY = 24.0
# The warmest time of day: early afternoon.
PEAK_HOUR = 15.0


@dataclass
class Battery:
    """Drains at a device-specific pace until low, then charges back to full, and again."""

    level: float
    drain_per_hour: float
    charge_per_hour: float
    low_mark: float
    charging: bool = False

    @classmethod
    def random(cls, rng: random.Random) -> Battery:
        return cls(
            level=rng.uniform(35.0, 100.0),
            drain_per_hour=rng.uniform(4.0, 12.0),
            charge_per_hour=rng.uniform(40.0, 80.0),
            low_mark=rng.uniform(8.0, 20.0),
        )

    def advance(self, hours: float, rng: random.Random) -> None:
        # Load varies a little from one reading to the next; draw even when charging so the
        # sequence of random numbers does not depend on the battery's state.
        load = rng.uniform(0.8, 1.2)
        if self.charging:
            self.level += self.charge_per_hour * hours
            if self.level >= 100.0:
                self.level = 100.0
                self.charging = False
        else:
            self.level -= self.drain_per_hour * hours * load
            if self.level <= self.low_mark:
                self.charging = True
        self.level = min(100.0, max(0.0, self.level))

    @property
    def percent(self) -> int:
        """What devices report: a whole percentage."""
        return round(self.level)


@dataclass
class Climate:
    """Temperature with a daily cycle plus slow and fast noise; humidity falls as it warms."""

    temp_base: float
    temp_amplitude: float
    humid_base: float
    temp_drift: float = 0.0
    humid_drift: float = 0.0

    @classmethod
    def random(cls, rng: random.Random) -> Climate:
        return cls(
            temp_base=rng.uniform(17.0, 24.0),
            temp_amplitude=rng.uniform(2.5, 5.0),
            humid_base=rng.uniform(35.0, 60.0),
        )

    def advance(self, rng: random.Random) -> None:
        # AR(1) drifts: neighbouring readings stay close, as a real room's air does.
        self.temp_drift = 0.95 * self.temp_drift + rng.gauss(0.0, 0.12)
        self.humid_drift = 0.95 * self.humid_drift + rng.gauss(0.0, 0.4)

    def temperature(self, hour_of_day: float, rng: random.Random) -> float:
        cycle = math.cos(2 * math.pi * (hour_of_day - PEAK_HOUR) / HOURS_PER_DAY)
        value = self.temp_base + self.temp_amplitude * cycle + self.temp_drift + rng.gauss(0.0, 0.05)
        return round(value, 2)

    def humidity(self, temperature: float, rng: random.Random) -> float:
        value = self.humid_base - 2.0 * (temperature - self.temp_base) + self.humid_drift
        value += rng.gauss(0.0, 0.2)
        return round(min(99.0, max(5.0, value)), 1)
