"""Everything that turns a checkpoint into tensors: local files (safetensors, .bin, GGUF),
tokenizer vocabularies, the architecture table, and Hub repositories read by byte ranges."""
