"""Detection quality of a score over labelled pairs: ROC, AUC, partial AUC, TPR at low FPR."""
import numpy as np

from awm.witnesses.verdict import DERIVED_CALLS, NO_EVIDENCE, VERDICTS


def roc_curve(scores, labels):
    """ROC points (fpr, tpr) from the highest threshold down; tied scores move together.

    labels: 1 for derived, 0 for independent.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    true_pos = np.cumsum(labels)[last_of_tie]
    false_pos = (last_of_tie + 1) - true_pos
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    fpr = np.r_[0.0, false_pos / negatives]
    tpr = np.r_[0.0, true_pos / positives]
    return fpr, tpr


def _area(fpr, tpr, upto):
    """Area under the ROC polyline from FPR 0 to FPR `upto` (trapezoids, interpolated end)."""
    end_tpr = np.interp(upto, fpr, tpr, right=tpr[-1]) if upto < fpr[-1] else tpr[-1]
    keep = fpr <= upto
    xs, ys = np.r_[fpr[keep], upto], np.r_[tpr[keep], end_tpr]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def detection_metrics(scores, labels, max_fpr=0.05, at_fpr=0.01):
    """AUC, pAUC (area up to max_fpr divided by max_fpr, so 1.0 is perfect) and TPR@at_fpr."""
    labels = np.asarray(labels, dtype=int)
    if labels.min() == labels.max():
        return None
    fpr, tpr = roc_curve(scores, labels)
    reachable = tpr[fpr <= at_fpr]
    return {
        "auc": _area(fpr, tpr, 1.0),
        "pauc": _area(fpr, tpr, max_fpr) / max_fpr,
        "pauc_max_fpr": max_fpr,
        "tpr_at_fpr": float(reachable.max()) if len(reachable) else 0.0,
        "at_fpr": at_fpr,
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
    }


def null_statistics(scores):
    """Mean and sample standard deviation (percent) of independent-pair scores."""
    values = np.asarray([s for s in scores if s is not None], dtype=float)
    if len(values) < 2:
        return None
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)), "n": int(len(values))}


def verdict_confusion(records):
    """Counts of each verdict per true label, with the rates people ask about: how often an
    independent pair is called derived, and how often a derived pair is recognised."""
    table = {label: {call: 0 for call in VERDICTS} for label in ("derived", "independent")}
    for record in records:
        if record.get("label") in table:
            table[record["label"]][record["verdict"]] += 1
    rate = lambda row, calls: (sum(row[c] for c in calls) / sum(row.values())) if sum(row.values()) else None
    return {
        "counts": table,
        "false_positive_rate": rate(table["independent"], DERIVED_CALLS),
        "true_positive_rate": rate(table["derived"], DERIVED_CALLS),
        "independent_called_independent": rate(table["independent"], ("independent",)),
        # Nothing found, whether or not every derivation the pair's depths allow was looked for.
        "independent_no_evidence_found": rate(table["independent"], ("independent", NO_EVIDENCE)),
    }


def verdicts_by(records, key, order=()):
    """Per value of the records' `key` (a benchmark's difficulty): derived pairs recognised,
    independent pairs called independent, and the share of verdicts that are right (an
    inconclusive verdict is not). Only labelled records that carry the key; values in `order`
    first, the rest after in sorted order."""
    groups = {}
    for record in records:
        value, label = record.get(key), record.get("label")
        if value is None or label not in ("derived", "independent"):
            continue
        group = groups.setdefault(value, {"derived": 0, "derived_recognised": 0, "independent": 0, "independent_called_independent": 0})
        right = record["verdict"] in DERIVED_CALLS if label == "derived" else record["verdict"] == "independent"
        group[label] += 1
        group["derived_recognised" if label == "derived" else "independent_called_independent"] += int(right)
    rank = lambda value: (order.index(value), "") if value in order else (len(order), str(value))
    return {value: {**group, "accuracy": (group["derived_recognised"] + group["independent_called_independent"])
                    / (group["derived"] + group["independent"])}
            for value, group in sorted(groups.items(), key=lambda item: rank(item[0]))}
