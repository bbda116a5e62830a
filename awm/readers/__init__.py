"""Everything that turns a checkpoint into tensors: local files (safetensors, .bin, GGUF),
tokenizer vocabularies, the architecture table, and Hub repositories read by byte ranges."""


def open_model(reference, vocab_match="bytes", progress=False):
    """A model from a local folder or .gguf file, or from a Hub repo (``owner/name[@revision]``,
    ``hf://owner/name[@revision][/file.gguf]``; a local path of the same name wins)."""
    from awm.readers import hub
    from awm.readers.model_reader import ModelCheckpoint

    reference_on_hub = hub.parse_reference(reference)
    if reference_on_hub is None:
        return ModelCheckpoint(reference, vocab_match)
    return hub.open_hub_model(reference_on_hub, vocab_match, progress)
