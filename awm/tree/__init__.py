"""The family tree: groups of derived models, the shape of each group (pruned, upcycled, stacked,
multimodal, copies), merges fitted from their parents, each edge directed only by evidence about
it, and the tree in the Hub's own terms (`base_model`, `base_model_relation`).

Rooms above call `build.family_tree` on scored pairs and `lineage.families` to group them."""
