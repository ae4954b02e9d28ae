import errno
import json
import os

import numpy as np
import pytest

from featbank.evaluation.metrics import metrics, top_k_accuracy
from featbank.evaluation.reports import write_reports
from featbank.evaluation.tables import build_table, table_notes, to_markdown, write_table
from featbank.store.results import RESULT_KEYS, append_result, load_results


def test_top_k_known_answer():
    classes = ["a", "b", "c"]
    scores = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    y = ["a", "c", "b"]
    assert top_k_accuracy(y, scores, classes, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(y, scores, classes, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(y, scores, classes, 5) == 1.0  # k >= classes


def test_metrics_known_answer():
    scores = np.eye(3)[[0, 0, 1, 2]]
    m = metrics(["a", "b", "b", "c"], scores, ["a", "b", "c"])
    assert m["top1"] == 0.75 and m["top5"] == 1.0
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def _row(**kw):
    row = {k: 0 for k in RESULT_KEYS}
    row.update(backbone="vgg19", weights="imagenet", task="type", method="off-the-shelf",
               head="svm", split="test", top1=0.5, split_tag="t", variant="v", cell="c1",
               feature_dim=512)
    row.update(kw)
    return row


def test_store_appends_and_survives_a_torn_line(tmp_path):
    append_result(tmp_path, _row())
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"backbone": "vg')  # a writer killed mid-line
    assert len(load_results(tmp_path)) == 1
    with pytest.raises(AssertionError, match="lacks"):
        append_result(tmp_path, {"backbone": "x"})


def test_table_has_a_column_per_head_and_fine_tuning(tmp_path):
    rows = [_row(), _row(head="softmax", top1=0.6, cell="c2", n_params=1234,
                         tuned={"alpha": 0.0001}),
            _row(head="svm", top1=0.7, cell="c1", tuned={"C": 0.1}),  # newer row of the same cell wins
            _row(method="fine-tuning", head=None, top1=0.8, cell="c3"),
            _row(head="svm", top1=0.1, cell="c4", variant="other")]
    columns, records = build_table(rows, split_tag="t", variant="v")
    assert columns == ["task", "backbone", "weights", "dim", "softmax", "svm", "fine-tuning"]
    assert records == [{"task": "type", "backbone": "vgg19", "weights": "imagenet", "dim": 512,
                        "layer": "final", "layer_index": None,
                        "svm": 0.7, "softmax": 0.6, "fine-tuning": 0.8, "spread": {},
                        "repeats": {"svm": 1, "softmax": 1, "fine-tuning": 1}, "marked": [],
                        "chosen": {"svm": {"C": 0.1}, "softmax": {"alpha": 0.0001}}}]
    assert table_notes(columns, records) == ["type / vgg19 / imagenet: softmax alpha=0.0001, svm C=0.1"]
    assert "| type | vgg19 | imagenet | 512 | 0.600 | 0.700 | 0.800 |" in to_markdown(columns, records)
    # the column order is the registry's, whatever order the rows were stored in
    for stored in (rows, rows[::-1]):
        ordered, _ = build_table(stored, split_tag="t", variant="v", head_order=["svm", "softmax"])
        assert ordered[4:] == ["svm", "softmax", "fine-tuning"]
    csv_path, json_path = write_table(tmp_path, columns, records)
    assert json.loads(json_path.read_text())["rows"][0]["fine-tuning"] == 0.8
    assert csv_path.read_text().splitlines()[0].startswith("task,backbone")


def test_reports(tmp_path):
    write_reports(tmp_path / "r" / "cell", ["a", "b", "b"], ["a", "a", "b"], ["a", "b"])
    assert (tmp_path / "r" / "cell_confusion.png").stat().st_size > 1000
    lines = (tmp_path / "r" / "cell_confusion.csv").read_text().splitlines()
    assert lines[1:] == ["a,1,0", "b,1,1"]
    assert "b,1.0000,0.5000" in (tmp_path / "r" / "cell_per_class.csv").read_text()


def test_a_cell_is_stored_once_and_force_replaces_it(tmp_path):
    assert append_result(tmp_path, _row(top1=0.5))
    assert not append_result(tmp_path, _row(top1=0.9))  # the same cell again: nothing added
    assert append_result(tmp_path, _row(cell="c2"))
    assert append_result(tmp_path, _row(top1=0.7), replace=True)
    rows = load_results(tmp_path)
    assert sorted((r["cell"], r["top1"]) for r in rows) == [("c1", 0.7), ("c2", 0.5)]


def test_damaged_lines_are_reported_with_their_number_and_skipped(tmp_path):
    append_result(tmp_path, _row())
    with open(tmp_path / "results.jsonl", "a") as fh:
        fh.write('{"backbone": "vgg19", "top1": 0.\n[1, 2]\n{"half": ')  # edited, then torn
    notes = []
    assert [r["cell"] for r in load_results(tmp_path, warn=notes.append)] == ["c1"]
    assert [n.split(": ")[0].rsplit(":", 1)[1] for n in notes] == ["2", "3", "4"]
    append_result(tmp_path, _row(cell="c2"))  # after a torn last line: a line of its own
    assert [r["cell"] for r in load_results(tmp_path)] == ["c1", "c2"]
    columns, records = build_table(load_results(tmp_path), split_tag="t", variant="v")
    assert records and "svm" in columns


def test_a_full_disk_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    append_result(tmp_path, _row())
    before = (tmp_path / "results.jsonl").read_bytes()
    real_write = os.write

    def disk_fills(fd, data):
        real_write(fd, data[: len(data) // 2])  # half a row lands, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "write", disk_fills)
    with pytest.raises(OSError, match="No space left on device.*rows before it are intact") as err:
        append_result(tmp_path, _row(cell="c2"))
    assert len(str(err.value).splitlines()) == 1
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_combinations_and_ensembles_share_a_row_with_their_own_columns():
    both = dict(backbone="vgg19+resnet50", weights="sha256:" + "ab" * 32 + "+random")
    rows = [_row(head="svm", top1=0.7, cell="a", **both),
            _row(head="svm", method="ensemble", top1=0.75, cell="b", **both)]
    columns, records = build_table(rows, split_tag="t", variant="v")
    assert columns == ["task", "backbone", "weights", "dim", "svm", "svm ensemble"]
    assert records[0]["svm"] == 0.7 and records[0]["svm ensemble"] == 0.75
    assert "| sha256:abababababab + random |" in to_markdown(columns, records)


def test_labels_say_what_differs_from_the_default_cell():
    rows = [_row(option_pca=128, train_fraction=0.25, option_normalize="l2", cell="a",
                 weights_exact="torchvision:vgg19.IMAGENET1K_V1"),
            _row(method="fine-tuning", head=None, freeze="trunk", cell="b",
                 weights_label="θ̂ label__vgg19__1a2b (paintings/genre)")]
    columns, records = build_table(rows, split_tag="t", variant="v")
    assert columns[4:] == ["svm (l2, pca 128, train 25%)", "fine-tuning (freeze trunk)"]
    assert records[0]["weights"] == "imagenet IMAGENET1K_V1"  # the first row of the record names it


def _hits_row(column_hits, **kw):
    from featbank.evaluation.stats import pack_hits

    hits = np.array(column_hits, dtype=bool)
    return _row(top1=float(hits.mean()), n_test=len(hits), test_correct=pack_hits(hits),
                test_ids_sha256="same", top1_ci=[hits.mean() - 0.05, hits.mean() + 0.05], **kw)


def test_cells_not_significantly_worse_than_the_best_are_marked():
    n = 200
    best = np.ones(n, dtype=bool)
    best[:20] = False  # 0.90
    close = best.copy()
    close[20:24] = False  # 0.88: 4 discordant images, p = 0.125
    far = best.copy()
    far[20:60] = False  # 0.70: 40 discordant, p ~ 1e-12
    rows = [_hits_row(best, head="logreg", cell="a"), _hits_row(close, head="svm", cell="b"),
            _hits_row(far, head="knn", cell="c"),
            _hits_row(close, head="rf", cell="d") | {"test_ids_sha256": "other"}]
    columns, records = build_table(rows, split_tag="t", variant="v")
    assert sorted(records[0]["marked"]) == ["logreg", "svm"]
    table = to_markdown(columns, records)
    assert "**0.900 ± 0.050**" in table and "| 0.700 ± 0.050 |" in table


def test_repeats_show_mean_and_standard_deviation():
    rows = [_row(top1=v, split_tag=f"s{k}", cell=f"c{k}", top1_ci=[v - 0.1, v + 0.1])
            for k, v in enumerate((0.5, 0.6, 0.7))]
    columns, records = build_table(rows, split_tag=["s0", "s1", "s2"], variant="v")
    assert records[0]["svm"] == pytest.approx(0.6)
    assert records[0]["spread"]["svm"] == pytest.approx(0.1)  # sample standard deviation
    assert records[0]["repeats"]["svm"] == 3


def test_k_shot_columns_come_in_the_order_of_k():
    rows = [_row(head="logreg", cell=f"c{k}", shots=k, draw=0) for k in (16, 1, 4)]
    rows.append(_row(head="logreg", cell="all", shots=None))
    columns, _ = build_table(rows, split_tag="t", variant="v")
    shots = [c for c in columns if c.startswith("logreg")]
    assert shots == ["logreg", "logreg (1-shot)", "logreg (4-shot)", "logreg (16-shot)"]


def test_multi_label_metrics_and_reports(tmp_path):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    Y = (rng.random((60, 4)) < 0.3).astype(int)
    Y[0] = 1  # every class has a positive
    scores = Y + rng.normal(0, 0.8, Y.shape)
    m = metrics(Y, scores, ["a", "b", "c", "d"], ci=True)
    assert m["mAP"] == pytest.approx(average_precision_score(Y, scores, average="macro"))
    assert m["mAP_ci"][0] < m["mAP"] < m["mAP_ci"][1]
    assert m["top1"] == pytest.approx(np.mean(Y[np.arange(60), scores.argmax(1)]))
    write_reports(tmp_path / "cell", Y, None, ["a", "b", "c", "d"], scores)
    lines = (tmp_path / "cell_per_class.csv").read_text().splitlines()
    assert lines[0] == "class,average_precision,positives" and len(lines) == 5


def test_map_cells_are_marked_by_a_paired_test_of_their_stored_scores(tmp_path, monkeypatch):
    from featbank.evaluation import tables as evaluate
    from featbank.evaluation.reports import load_test_scores, save_test_scores
    from featbank.evaluation.stats import map_resamples, paired_map_p, percentile_interval

    rng = np.random.default_rng(6)
    ids = [f"im{k:03d}" for k in rng.permutation(300)]  # stored in sorted-id order
    Y = (rng.random((300, 5)) < 0.3).astype(int)
    noise = rng.normal(0, 1, Y.shape)
    scores = {"logreg": Y + noise, "svm": Y + noise + rng.normal(0, 0.05, Y.shape),
              "knn": Y * 0.3 + noise}
    rows = []
    for head, s in scores.items():
        test = metrics(Y, s, list("abcde"), ci=True, seed=3)
        name = save_test_scores(tmp_path, f"reports/tags/{head}_test_scores.npz", ids, Y, s,
                                list("abcde"), test, seed=3)
        rows.append(_row(head=head, cell=head, task="tags", mAP=test["mAP"],
                         test_ids_sha256="same", test_scores=name))
    rows.append(_row(head="rf", cell="rf", task="tags", mAP=0.99, test_ids_sha256="same",
                     test_scores="reports/tags/gone.npz"))  # its file is gone: not compared
    stored = load_test_scores(tmp_path, rows[0])
    order = np.argsort(ids)
    assert np.array_equal(stored["truth"], Y[order])
    assert np.allclose(stored["scores"], scores["logreg"][order])
    # the resamples behind mAP_ci, stored: the table pairs cells without recomputing them
    assert np.array_equal(stored["map_resamples"], map_resamples(Y, scores["logreg"], seed=3))
    assert percentile_interval(stored["map_resamples"]) == \
        metrics(Y, scores["logreg"], list("abcde"), ci=True, seed=3)["mAP_ci"]
    columns, records = build_table(rows, split_tag="t", variant="v", folder=tmp_path)
    assert records[0]["task"] == "tags (mAP)" and sorted(records[0]["marked"]) == ["logreg", "svm"]
    assert build_table(rows, split_tag="t", variant="v")[1][0]["marked"] == []  # no folder
    for row in rows[:3]:  # resamples that differ: the test recomputes them from the scores
        arrays = load_test_scores(tmp_path, row)
        with open(tmp_path / row["test_scores"], "wb") as fh:
            np.savez(fh, **{**arrays, "resamples_digest": np.asarray(row["head"])})
    recomputed = []
    monkeypatch.setattr(evaluate, "paired_map_p",
                        lambda *a, **kw: recomputed.append(1) or paired_map_p(*a, **kw))
    [record] = build_table(rows, split_tag="t", variant="v", folder=tmp_path)[1]
    assert sorted(record["marked"]) == ["logreg", "svm"] and len(recomputed) == 2


def test_an_unreadable_score_file_is_named_not_silently_unmarked(tmp_path):
    from featbank.core.errors import DamagedFile
    from featbank.evaluation.reports import load_test_scores

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/svm_test_scores.npz").write_bytes(b"PK\x03\x04 truncated")
    row = _row(head="svm", test_scores="reports/svm_test_scores.npz")
    with pytest.raises(DamagedFile, match="svm_test_scores.npz .* cannot be read.*--force"):
        load_test_scores(tmp_path, row)
    assert load_test_scores(tmp_path, {**row, "test_scores": "reports/gone.npz"}) is None
