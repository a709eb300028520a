"""The factor catalog: the ``GET /api/factor/catalog`` body of docs/factors.md, in dependency order."""

from __future__ import annotations

from protocol.factors.catalog import SUB_FEATURES, factor_catalog


def test_catalog_shape_and_order() -> None:
    body = factor_catalog()
    assert body["schema_version"] == 1
    assert [f["key"] for f in body["factors"]] == ["pivot", "pen", "zhongshu", "anchor", "sr"]
    assert [[s["key"] for s in f["sub_features"]] for f in body["factors"]] == [
        ["pivot.major", "pivot.minor"],
        ["pen.confirmed", "pen.extending", "pen.candidate"],
        ["zhongshu.alive", "zhongshu.dead"],
        ["anchor.current", "anchor.history", "anchor.switch"],
        ["sr.active", "sr.broken"],
    ]
    for factor in body["factors"]:
        assert set(factor) == {"key", "label", "default_visible", "sub_features"}
        assert factor["default_visible"] is True
        assert isinstance(factor["label"], str)
        assert factor["label"]
        for sub in factor["sub_features"]:
            assert set(sub) == {"key", "label", "default_visible"}
            assert isinstance(sub["label"], str)
            assert sub["label"]
    assert body["factors"][0]["label"] == "Pivots"
    assert body["factors"][0]["sub_features"][0]["label"] == "Major pivots"


def test_only_minor_pivots_and_broken_levels_start_hidden() -> None:
    hidden = {s["key"] for f in factor_catalog()["factors"] for s in f["sub_features"] if not s["default_visible"]}
    assert hidden == {"pivot.minor", "sr.broken"}


def test_sub_features_lists_every_sub_key() -> None:
    keys = [s["key"] for f in factor_catalog()["factors"] for s in f["sub_features"]]
    assert len(keys) == len(set(keys)) == 12
    assert frozenset(keys) == SUB_FEATURES


def test_each_call_returns_a_fresh_body() -> None:
    body = factor_catalog()
    body["factors"][0]["sub_features"].clear()
    assert factor_catalog()["factors"][0]["sub_features"]
