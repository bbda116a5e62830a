"""Fingerprints and the reference library: a folder of entries (one per model), the first pass
that screens entries against a suspect, identify (which places a suspect in the tree), batches
of exact comparisons and libraries published on the Hub.

The suites and the faces use `folder.Library`, `tasks` and `identification.identify`."""
