"""The verdict's evidence and its rule: the witnesses that say whether two models' hidden dims
correspond (the embedding's permutation or rotation, the body's rows and profiles, the QK
circuits' spectra) and the verdict that weighs them. Rooms above use `verdict` (the rule, its
thresholds, the calibrated reference) and call each witness on a pair's digests."""
