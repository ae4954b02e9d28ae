"""The grid as functions: classify and the results table, with explicit keywords and
splits as fractions."""
import pytest
from helpers import write_toy_cache

import featbank as fb
from featbank.api.grid import classify_config
from featbank.core.errors import BadInput


def test_classify_then_results_table_as_a_dataframe(tmp_path):
    cache = tmp_path / "cache"
    write_toy_cache(cache)
    rows = fb.classify(cache=cache, head="knn,logreg", task="style", jobs=1)
    assert len(rows) == 4 and {r["head"] for r in rows} == {"knn", "logreg"}
    assert fb.classify(cache=cache, head="knn,logreg", task="style", jobs=1) == []  # stored
    table = fb.results_table(cache=cache)
    assert list(table.columns) == ["logreg", "knn"]  # the registry's order
    assert len(table) == 2 and table.notna().all().all()
    table.index[0]
    assert set(table.attrs["spread"]) == {(k, c) for k in table.index for c in table.columns}
    assert all(column in ("logreg", "knn") for _, column in table.attrs["bold"])


def test_a_split_given_as_fractions_is_the_split_given_as_text(tmp_path):
    as_text = classify_config(cache=tmp_path, split="70/10/20", seed=3)
    as_fractions = classify_config(cache=tmp_path, split=(0.7, 0.1, 0.2), seed=3)
    assert as_fractions.split == as_text.split and as_text.split.tag.startswith("70-10-20")
    assert classify_config(cache=tmp_path, split=(7, 1, 2), seed=3).split == as_text.split
    with pytest.raises(BadInput, match="three positive"):
        classify_config(cache=tmp_path, split=(0.9, 0.1))


def test_an_unknown_setting_is_a_type_error_not_a_silent_pass(tmp_path):
    write_toy_cache(tmp_path / "cache")
    with pytest.raises(TypeError, match="normalise"):
        fb.classify(cache=tmp_path / "cache", normalise="l2")
    with pytest.raises(TypeError, match="normalise"):
        fb.results_table(cache=tmp_path / "cache", normalise="l2")
