"""The factor catalog (``GET /api/factor/catalog``, docs/factors.md): what the chart can toggle.

Every overlay instruction's ``feature`` is one of :data:`SUB_FEATURES`, so the front end can show or hide it.
"""

from __future__ import annotations

from typing import Any, Final

# (key, label, default_visible, ((sub key, sub label, sub default_visible), ...)) in factor dependency order
_CATALOG: Final = (
    (
        "pivot",
        "Pivots",
        True,
        (("pivot.major", "Major pivots", True), ("pivot.minor", "Minor pivots", False)),
    ),
    (
        "pen",
        "Pens",
        True,
        (
            ("pen.confirmed", "Confirmed pens", True),
            ("pen.extending", "Extending pen", True),
            ("pen.candidate", "Candidate pen", True),
        ),
    ),
    (
        "zhongshu",
        "Central zones",
        True,
        (("zhongshu.alive", "Alive zone", True), ("zhongshu.dead", "Dead zones", True)),
    ),
    (
        "anchor",
        "Anchor",
        True,
        (
            ("anchor.current", "Current anchor", True),
            ("anchor.history", "Anchor history", True),
            ("anchor.switch", "Anchor switches", True),
        ),
    ),
    (
        "sr",
        "Support / resistance",
        True,
        (("sr.active", "Active levels", True), ("sr.broken", "Broken levels", False)),
    ),
)

SUB_FEATURES: Final[frozenset[str]] = frozenset(sub[0] for factor in _CATALOG for sub in factor[3])


def factor_catalog() -> dict[str, Any]:
    """The catalog response body; a fresh object on every call, so a caller may change it freely."""
    return {
        "schema_version": 1,
        "factors": [
            {
                "key": key,
                "label": label,
                "default_visible": visible,
                "sub_features": [
                    {"key": sub_key, "label": sub_label, "default_visible": sub_visible}
                    for sub_key, sub_label, sub_visible in subs
                ],
            }
            for key, label, visible, subs in _CATALOG
        ],
    }
