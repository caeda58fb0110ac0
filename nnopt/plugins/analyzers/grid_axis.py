"""One axis of an evaluation grid: ``{start, stop, points}`` evenly spaced values, both ends
included (the α of an interpolation, the x / y of a loss surface)."""

from __future__ import annotations

from pydantic import Field, model_validator

from nnopt.core.component import Params

MAX_AXIS_POINTS = 1001


class Axis(Params):
    """``points`` evenly spaced values from ``start`` to ``stop`` (both included)."""

    start: float = Field(..., description="first value")
    stop: float = Field(..., description="last value")
    points: int = Field(..., ge=1, le=MAX_AXIS_POINTS, description="how many values, both ends included")

    @model_validator(mode="after")
    def _ordered(self) -> "Axis":
        if self.points > 1 and not self.stop > self.start:
            raise ValueError(f"stop ({self.stop}) must be greater than start ({self.start})")
        return self

    def values(self) -> list[float]:
        """start + (stop − start)·i/(points − 1), i = 0..points−1. Values within 1e-12 of 0 or 1
        are snapped onto them, so that a grid from −0.5 to 1.5 holds the endpoints α = 0 and
        α = 1 exactly (−0.5 + 2·10/40 is not 0.0 in every rounding)."""
        if self.points == 1:
            return [float(self.start)]
        out = []
        for i in range(self.points):
            v = self.start + (self.stop - self.start) * i / (self.points - 1)
            for anchor in (0.0, 1.0):
                if abs(v - anchor) < 1e-12:
                    v = anchor
            out.append(float(v))
        return out
