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
    """The family tree as a directed forest: roots at the top, an arrow from each parent to its
    child labelled with the relation, the scores (merges with their coefficients) and the
    direction's confidence where it is not measured (claim, inferred), dashed
    lines for pairs whose direction nothing decides, and under a stacked or layer-wise merged
    model a strip with the source of each of its layers."""
    tree = graph.get("tree") or {"nodes": [{"name": n, "parents": [], "layers": None} for n in graph["nodes"]], "undirected": []}
    position = _forest_layout(tree)
    width = max(6.0, 1.9 * (1 + max(x for x, _ in position.values())))
    height = max(3.0, 1.5 * (1 + max(-y for _, y in position.values())))
    figure, axis = plt.subplots(figsize=(width, height))
    family_of = {name: number for number, family in enumerate(graph["families"]) for name in family}
    for node in tree["nodes"]:
        for parent in node["parents"]:
            _arrow(axis, position[parent["name"]], position[node["name"]], _edge_label(parent))
    for pair in tree["undirected"]:
        (xa, ya), (xb, yb) = position[pair["a"]], position[pair["b"]]
        axis.plot([xa, xb], [ya, yb], color="grey", linestyle="--", linewidth=1.0, zorder=1)
        axis.text((xa + xb) / 2, (ya + yb) / 2, f"{pair['relation']}?", fontsize=6, ha="center", va="center", color="grey",
                  bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none"), zorder=3)
    sources = sorted({layer["source"] for node in tree["nodes"] for layer in node["layers"] or ()})
    for node in tree["nodes"]:
        x, y = position[node["name"]]
        axis.scatter([x], [y], s=90, color=plt.cm.tab10(family_of.get(node["name"], 0) % 10), zorder=2, edgecolor="black", linewidth=0.4)
        axis.text(x, y + 0.18, node["name"], fontsize=7, ha="center", va="bottom", zorder=4)
        if node["layers"]:
            _layer_strip(axis, x, y - 0.28, node["layers"], sources)
    axis.set_title(f"family tree of {len(tree['nodes'])} models: arrows parent -> child (relation, AWM % / QK-circuit %; "
                   "(claim) / (inferred): direction not measured); dashed: direction undecided", fontsize=8)
    axis.set_xlim(-0.8, max(x for x, _ in position.values()) + 0.8)
    axis.set_ylim(min(y for _, y in position.values()) - 0.7, 0.6)
    axis.axis("off")
    return _save(figure, path_without_ext)


def _forest_layout(tree):
    """Roots on the top row; every other model one row below its deepest parent; columns in
    order of first appearance, families side by side."""
    parents = {node["name"]: [p["name"] for p in node["parents"]] for node in tree["nodes"]}
    depth = {}

    def depth_of(name, seen=()):
        if name not in depth:
            ups = [p for p in parents[name] if p not in seen]
            depth[name] = 0 if not ups else 1 + max(depth_of(p, seen + (name,)) for p in ups)
        return depth[name]

    rows = {}
    for name in parents:
        rows.setdefault(depth_of(name), []).append(name)
    return {name: (column, -row) for row, names in rows.items() for column, name in enumerate(names)}


def _edge_label(parent):
    scores = "/".join("n/a" if v is None else f"{v:.0f}" for v in (parent["awm"], parent["qk_circuit"]))
    weight = f" w={parent['weight']:.2f}" if parent["weight"] is not None else \
        f" d={parent['density']:.2f}" if parent.get("density") is not None else ""
    sure = parent.get("confidence")
    return f"{parent['relation']}{weight}{'' if sure in (None, 'measured') else f' ({sure})'}\n{scores}"


def _arrow(axis, start, end, label):
    axis.annotate("", xy=end, xytext=start, zorder=1,
                  arrowprops=dict(arrowstyle="-|>", color="tab:red", linewidth=1.1, shrinkA=7, shrinkB=7))
    axis.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, label, fontsize=6, ha="center", va="center",
              bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none", alpha=0.85), zorder=3)


def _layer_strip(axis, x, y, layers, sources):
    """One cell per layer, coloured by the model it came from."""
    cell = min(0.08, 1.4 / len(layers))
    left = x - cell * len(layers) / 2
    for layer in layers:
        colour = plt.cm.Set2(sources.index(layer["source"]) % 8)
        axis.add_patch(plt.Rectangle((left + cell * layer["layer"], y), cell, 0.08, color=colour, zorder=4))
    axis.text(x, y - 0.05, " ".join(f"{s}" for s in sorted({layer["source"] for layer in layers})), fontsize=5,
              ha="center", va="top", zorder=4)
