"""The jobs' accumulators: what Python workers send back to the driver beside the rows they
write (pyspark's AccumulatorParam protocol)."""

from __future__ import annotations


class SecondsParam:
    """An accumulator of named seconds, summed key by key."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, seconds: dict, more: dict) -> dict:  # noqa: N802 (Spark's name)
        return {name: seconds.get(name, 0.0) + more.get(name, 0.0) for name in seconds | more}


class RowsParam:
    """An accumulator of lists of rows."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, rows: list, more: list) -> list:  # noqa: N802 (Spark's name)
        rows.extend(more)
        return rows


class DaySpreadsParam:
    """An accumulator of {day: Spread}, merged day by day."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, spreads: dict, more: dict) -> dict:  # noqa: N802 (Spark's name)
        for day, spread in more.items():
            spreads[day] = spreads[day].merge(spread) if day in spreads else spread
        return spreads
