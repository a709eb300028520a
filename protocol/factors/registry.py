"""The factor set klined projects, in docs/factors.md's order (the engine sorts them by their DAG anyway)."""

from __future__ import annotations

from typing import Final

from protocol.factors.anchor import Anchor
from protocol.factors.base import Factor
from protocol.factors.pen import Pen
from protocol.factors.pivot import Pivot
from protocol.factors.sr import SupportResistance
from protocol.factors.zhongshu import Zhongshu

DEFAULT_FACTORS: Final[tuple[type[Factor], ...]] = (Pivot, Pen, Zhongshu, Anchor, SupportResistance)
