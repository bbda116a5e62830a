"""Figures of a suite run: per-layer curves, a score heatmap, the ROC curve (PNG and PDF)."""

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(figure, path_without_ext, formats=("png",)):
    paths = []
    for ext in formats:
        path = f"{path_without_ext}.{ext}"
        figure.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(figure)
    return paths


def layer_curves(record, path_without_ext):
    """W_q, W_k and QK-circuit similarity of every matched layer pair of one model pair."""
    layers = record["layers"]
    x = np.arange(len(layers))
    figure, axis = plt.subplots(figsize=(7, 3.2))
    for key, label in (("wq", "W_q CKA"), ("wk", "W_k CKA"), ("qk_circuit", "QK circuit")):
        axis.plot(x, [np.nan if l[key] is None else l[key] for l in layers], marker=".", label=label)
    axis.set_xlabel("layer of model B (matched)" if record["evidence"]["layer_map"] else "layer")
    axis.set_xticks(x[:: max(1, len(x) // 16)])
    axis.set_xticklabels([layers[i]["layer_b"] for i in x[:: max(1, len(x) // 16)]])
    axis.set_ylabel("similarity (%)")
    axis.set_ylim(min(-5, axis.get_ylim()[0]), 105)
    axis.set_title(f"{record['model_a']['name']} vs {record['model_b']['name']}", fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _save(figure, path_without_ext)


def score_heatmap(records, path_without_ext):
    """Final AWM score of every compared pair, models on both axes."""
    names = list(dict.fromkeys(n for r in records for n in (r["model_a"]["name"], r["model_b"]["name"])))
    index = {n: i for i, n in enumerate(names)}
    grid = np.full((len(names), len(names)), np.nan)
    for r in records:
        i, j = index[r["model_a"]["name"]], index[r["model_b"]["name"]]
        grid[i, j] = grid[j, i] = r["scores"]["final"]
    np.fill_diagonal(grid, 100.0)
    figure, axis = plt.subplots(figsize=(1 + 0.6 * len(names), 0.8 + 0.6 * len(names)))
    image = axis.imshow(grid, cmap="viridis", vmin=0, vmax=100)
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(grid[i, j]) and i != j:
                axis.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=6, color="w" if grid[i, j] < 60 else "k")
    figure.colorbar(image, label="AWM score (%)")
    return _save(figure, path_without_ext)


def roc_figure(curves, path_without_ext):
    """ROC of each score on the run's labelled pairs; curves: {name: metrics dict}."""
    figure, axis = plt.subplots(figsize=(4.2, 4))
    for name, metrics in curves.items():
        axis.step(metrics["fpr"], metrics["tpr"], where="post",
                  label=f"{name}: AUC {metrics['auc']:.3f}, pAUC {metrics['pauc']:.3f}, TPR@1% {metrics['tpr_at_fpr']:.2f}")
    axis.plot([0, 1], [0, 1], ls=":", color="grey")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    return _save(figure, path_without_ext, ("png", "pdf"))


def lineage_figure(graph, path_without_ext):
    """Models on a circle, family by family; a line for every derived pair, labelled with its
    AWM and QK-circuit scores (thicker for higher)."""
    order = [n for family in graph["families"] for n in family]
    angles = np.linspace(0, 2 * np.pi, len(order), endpoint=False) + np.pi / 2
    position = {n: (np.cos(a), np.sin(a)) for n, a in zip(order, angles)}
    figure, axis = plt.subplots(figsize=(7, 7))
    for edge in graph["edges"]:
        (xa, ya), (xb, yb) = position[edge["a"]], position[edge["b"]]
        strength = max(edge["awm"] or 0.0, edge["qk_circuit"] or 0.0) / 100
        axis.plot([xa, xb], [ya, yb], color="tab:red", linewidth=0.8 + 3 * strength, alpha=0.7, zorder=1)
        circuit = "" if edge["qk_circuit"] is None else f" / {edge['qk_circuit']:.0f}"
        axis.text((xa + xb) / 2, (ya + yb) / 2, f"{edge['awm']:.1f}{circuit}", fontsize=7, ha="center", va="center",
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8), zorder=3)
    for family_number, family in enumerate(graph["families"]):
        for name in family:
            x, y = position[name]
            axis.scatter([x], [y], s=80, color=plt.cm.tab10(family_number % 10), zorder=2)
            axis.text(1.1 * x, 1.1 * y, name, fontsize=8, ha="left" if x >= 0 else "right", va="center")
    axis.set_title(f"derived pairs (AWM % / QK-circuit %) among {len(order)} models; colours: families", fontsize=9)
    axis.set_xlim(-1.9, 1.9)
    axis.set_ylim(-1.4, 1.4)
    axis.axis("off")
    return _save(figure, path_without_ext)
