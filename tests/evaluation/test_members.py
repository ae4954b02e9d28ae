from helpers import write_toy_cache

from featbank.classification.config import ClassifyConfig
from featbank.classification.grid import classify
from featbank.data.collection import load_metadata
from featbank.evaluation.members import describe, versus_best_member
from featbank.evaluation.stats import mcnemar_p, unpack_hits
from featbank.store.results import load_results


def test_combinations_are_tested_against_their_best_member(tmp_path):
    folder = write_toy_cache(tmp_path)
    collection = load_metadata(folder)
    settings = dict(heads="logreg", tasks="style", cache_root=str(tmp_path), jobs=1)
    classify(collection, ClassifyConfig(backbones="resnet18,alexnet", ensemble=True,
                                        **settings), warn=lambda m: None)
    classify(collection, ClassifyConfig(backbones="resnet18+alexnet", **settings),
             warn=lambda m: None)
    rows = load_results(folder)
    found = {r["kind"]: r for r in versus_best_member(rows, folder=folder)}
    assert sorted(found) == ["concatenation", "ensemble"]
    singles = {r["backbone"]: r for r in rows
               if r["method"] == "off-the-shelf" and "+" not in r["backbone"]}
    best = max(singles.values(), key=lambda r: r["top1"])
    for kind, method in (("concatenation", "off-the-shelf"), ("ensemble", "ensemble")):
        [row] = [r for r in rows if r["backbone"] == "resnet18+alexnet" and r["method"] == method]
        record = found[kind]
        assert record["best_member"] == best["backbone"]
        assert record["score"] == row["top1"] and record["best_member_score"] == best["top1"]
        # the p-value is McNemar's on the two rows' hits, by hand
        assert record["p"] == mcnemar_p(unpack_hits(best["test_correct"], best["n_test"]),
                                        unpack_hits(row["test_correct"], row["n_test"]))
        assert f"against {best['backbone']}'s" in describe(record)
    # a combination whose member has no row is left out, not compared with a stranger
    without = [r for r in rows if not (r["backbone"] == "alexnet" and r["method"] != "ensemble")]
    assert versus_best_member(without, folder=folder) == []
