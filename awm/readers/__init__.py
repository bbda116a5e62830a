"""Everything that turns a checkpoint into tensors: local files (safetensors, .bin, GGUF),
tokenizer vocabularies, the architecture table, quantized formats, model cards' declared bases
and Hub repositories read by byte ranges. The rooms above call `open_model`."""
import os


def open_model(reference, vocab_match="bytes", progress=False, adapter_base=None):
    """A model from a local folder or .gguf file, or from a Hub repo (``owner/name[@revision]``,
    ``hf://owner/name[@revision][/file.gguf]``; a local path of the same name wins). A PEFT LoRA
    adapter folder is the model it makes: merged into `adapter_base`, else the base it names."""
    from awm.readers import adapters, hub
    from awm.readers.model_reader import ModelCheckpoint

    if adapters.is_adapter(os.path.expanduser(str(reference))):
        return _open_adapter(os.path.abspath(os.path.expanduser(str(reference))), vocab_match, progress, adapter_base)
    reference_on_hub = hub.parse_reference(reference)
    if reference_on_hub is None:
        return ModelCheckpoint(reference, vocab_match)
    snapshot = hub.HubSnapshot(reference_on_hub)
    adapter = hub.adapter_folder(snapshot)
    if adapter is not None:                  # the base it names is read by byte ranges like any repo
        return _open_adapter(adapter, vocab_match, progress, adapter_base, f"{hub.HUB_PREFIX}{snapshot.repo}@{snapshot.commit}")
    return hub.open_hub_model(reference_on_hub, vocab_match, progress, snapshot)


def _open_adapter(path, vocab_match, progress, adapter_base, display=None):
    from awm.readers import adapters

    config = adapters.read_config(path)
    checkpoint = open_model(adapters.base_reference(path, config, adapter_base), vocab_match, progress)
    checkpoint.store = adapters.MergedStore(checkpoint.store, path, config, display)
    checkpoint.adapter = checkpoint.store.describe(checkpoint.display_path)
    checkpoint.display_path = display or path
    return checkpoint
