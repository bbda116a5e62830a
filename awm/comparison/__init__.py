"""One pair end to end: each model's digest (what a pair needs, read once), the hidden-dimension
alignment and its witnesses, the per-layer CKA scores, the verdict and the pair's JSON record.

Rooms above call `digest.digest_path` and `pair.compare_digests`; `report` is the record."""
