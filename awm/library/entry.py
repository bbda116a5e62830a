"""A library entry on disk: what one model's stored digest looks like, how it is written and
how it is read back.

An entry is a folder holding `digest.json` (tool version, the source and how to tell that it
changed, the model's description) and `fingerprint.safetensors` (the first pass's compact
summary, awm.library.fingerprint). An exact entry adds `vocab.json` (the vocabulary) and
`kernels.safetensors` (the embedding in its stored precision; per layer the W_q and W_k Grams
as their upper row blocks and the QK circuit, all float32; the W_q and W_k of a few layers as
stored, with their input norm gain, for the body-weights test and the family tree). These are
exactly the matrices a comparison from the weights computes, so a score from an exact entry
equals the score from the weights. Entries are built in a scratch
folder and renamed into place: a reader never sees half an entry, and builders running at
the same time do not collide.
"""
import base64
import contextlib
import json
import os
import shutil
import struct
import tempfile
import time
import uuid

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from awm.atomic import usual_mode, write_json_atomic
from awm.comparison.digest import LayerKernels, ModelDigest
from awm.errors import CheckpointError
from awm.library import fingerprint
from awm.method import cka
from awm.readers import checkpoint_files as files
from awm.version import VERSION
from awm.witnesses import body_rows

DIGEST_FILE, FINGERPRINT_FILE = "digest.json", "fingerprint.safetensors"
KERNEL_FILE, VOCAB_FILE = "kernels.safetensors", "vocab.json"          # exact entries only
ENTRY_FORMAT = 4               # 4: the fingerprint holds the anchor columns
COMPACT, EXACT = "compact", "exact"         # an entry's kind: the fingerprint alone, or the kernels too
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
ROW_TENSORS = ("query_rows", "key_rows", "row_gain")          # per row layer: W_q, W_k as stored, the input gain
SAMPLE_PREFIX = "sample."      # a few rows of the other weights, as stored (awm.readers.weight_sample); absent in older entries
TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


# ----------------------------------------------------------------------------- kernels on disk
def gram_block(hidden):
    """The row block of cka.gram: small kernels are one full product (stored whole)."""
    return cka.GRAM_BLOCK if hidden > 2 * cka.GRAM_BLOCK else hidden


def packed_length(hidden):
    block = gram_block(hidden)
    return sum((min(start + block, hidden) - start) * (hidden - start) for start in range(0, hidden, block))


def pack_upper(kernel):
    """The row blocks cka.gram multiplies (diagonal block rightwards): about half of K."""
    hidden, block = kernel.shape[0], gram_block(kernel.shape[0])
    return torch.cat([kernel[start:start + block, start:].reshape(-1) for start in range(0, hidden, block)])


def unpack_upper(packed, hidden):
    """K back from its upper row blocks, mirrored exactly as cka.gram mirrors: bit-identical."""
    block, position = gram_block(hidden), 0
    kernel = torch.empty(hidden, hidden, dtype=packed.dtype, device=packed.device)
    for start in range(0, hidden, block):
        stop = min(start + block, hidden)
        rows = packed[position:position + (stop - start) * (hidden - start)].view(stop - start, hidden - start)
        position += rows.numel()
        kernel[start:stop, start:] = rows
        kernel[stop:, start:stop] = rows[:, stop - start:].t()
    return kernel


class StreamingSafetensorsWriter:
    """A standard safetensors file written tensor by tensor, in declared order, so a 70B
    model's kernels never have to be in memory together."""

    def __init__(self, handle, layout, metadata=None):
        self.handle, self.layout, self.position = handle, list(layout), 0
        header, offset = {"__metadata__": metadata or {}}, 0
        for name, dtype, shape in self.layout:
            size = files.SAFETENSORS_DTYPES[dtype] * int(torch.Size(shape).numel())
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        handle.write(struct.pack("<Q", len(raw)) + raw)
        self.header = header

    def write(self, name, tensor):
        expected, dtype, shape = self.layout[self.position]
        if name != expected or DTYPE_NAMES[tensor.dtype] != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"expected {expected} {dtype} {shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}")
        self.handle.write(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy())
        self.position += 1


def kernel_layout(digest):
    hidden, packed = digest.hidden_size, packed_length(digest.hidden_size)
    layout = [("embedding", DTYPE_NAMES[digest.embedding.dtype], tuple(digest.embedding.shape))]
    for i in range(digest.num_layers):
        layout += [(f"layers.{i}.query", "F32", (packed,)), (f"layers.{i}.key", "F32", (packed,))]
        if digest.with_circuit:
            layout.append((f"layers.{i}.circuit", "F32", (hidden, hidden)))
        if i in body_rows.row_layers(digest.num_layers):
            heads = digest.checkpoint.heads
            rows = DTYPE_NAMES[body_rows.KEPT_DTYPES.get(digest.meta["dtype"], torch.float32)]
            layout += [(f"layers.{i}.query_rows", rows, (heads.n_head * heads.head_dim, hidden)),
                       (f"layers.{i}.key_rows", rows, (heads.n_kv * heads.head_dim, hidden)),
                       (f"layers.{i}.row_gain", "F32", (hidden,))]
    layout += [(SAMPLE_PREFIX + name, DTYPE_NAMES[_sample_dtype(rows)], tuple(rows.shape)) for name, rows in digest.weight_sample().items()]
    return layout


def _sample_dtype(rows):
    return rows.dtype if rows.dtype in DTYPE_NAMES else torch.float32


# ----------------------------------------------------------------------------- vocabularies as JSON
def encode_vocab(vocab):
    """Byte keys (ordinary tokens) and str keys (control tokens) stay distinct in JSON."""
    if not vocab:
        return None
    return {"bytes": [[base64.b64encode(k).decode(), i] for k, i in vocab.items() if isinstance(k, bytes)],
            "names": [[k, i] for k, i in vocab.items() if isinstance(k, str)]}


def decode_vocab(encoded):
    if not encoded:
        return None
    vocab = {base64.b64decode(k): int(i) for k, i in encoded["bytes"]}
    vocab.update((k, int(i)) for k, i in encoded["names"])
    return vocab


def read_vocab(entry):
    """An exact entry's vocabulary (None for a model that has none)."""
    path = os.path.join(entry, VOCAB_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return decode_vocab(json.load(handle))
    except OSError as err:
        raise CheckpointError(path, f"library entry is incomplete ({err.strerror})") from None
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(path, "library entry has a corrupt vocabulary") from None


# ----------------------------------------------------------------------------- one entry
def build_entry(folder, name, checkpoint, identity, options, device, progress=False, exact=False):
    """Digest a model into `folder/name` (built aside, renamed into place); returns the path.
    Every entry holds the compact fingerprint; an exact one also the kernels and its vocabulary."""
    digest = ModelDigest(checkpoint, device, with_circuit=options["with_circuit"], progress=progress, precision=options["precision"])
    record = {"tool": "awm", "version": VERSION, "entry_format": ENTRY_FORMAT, "name": name, "kind": EXACT if exact else COMPACT,
              "build_id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "source": identity, "options": options, "meta": digest.meta, "hidden_size": digest.hidden_size,
              "num_layers": digest.num_layers}
    anchors, anchor_gram, anchor_columns = fingerprint.anchor_summaries(digest.vocab, digest.embedding)
    os.makedirs(folder, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".building-{name}-", dir=folder)
    try:
        with contextlib.ExitStack() as stack:
            writer = None
            if exact:
                handle = stack.enter_context(open(os.path.join(scratch, KERNEL_FILE), "wb"))
                writer = StreamingSafetensorsWriter(handle, kernel_layout(digest), {"format": "awm-digest", "entry": name})
                writer.write("embedding", digest.embedding)
            spectra = []
            for i in tqdm(range(digest.num_layers), desc=f"digest {name}", unit="layer", leave=False, disable=None if progress else True):
                kernels = digest.layer(i)
                spectra.append(fingerprint.layer_spectra(kernels))
                if writer is not None:
                    _write_layer(writer, i, kernels, digest)
            if writer is not None:
                for sampled, rows in digest.weight_sample().items():
                    writer.write(SAMPLE_PREFIX + sampled, rows.to(_sample_dtype(rows)))
            if writer is not None:
                handle.flush()
                os.fsync(handle.fileno())
        save_file({"anchors": anchors, "anchor_gram": fingerprint.pack_gram(anchor_gram), "anchor_columns": anchor_columns,
                   "spectra": torch.stack(spectra)},
                  os.path.join(scratch, FINGERPRINT_FILE), metadata={"format": "awm-fingerprint", "entry": name})
        if exact:
            write_json_atomic(os.path.join(scratch, VOCAB_FILE), encode_vocab(digest.vocab))
        write_json_atomic(os.path.join(scratch, DIGEST_FILE), record)
        usual_mode(scratch)
        return publish(scratch, os.path.join(folder, name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_layer(writer, i, kernels, digest):
    writer.write(f"layers.{i}.query", pack_upper(kernels.query))
    writer.write(f"layers.{i}.key", pack_upper(kernels.key))
    if kernels.circuit is not None:
        writer.write(f"layers.{i}.circuit", kernels.circuit)
    if i in digest.rows:
        for kind, tensor in zip(ROW_TENSORS, digest.rows[i]):
            writer.write(f"layers.{i}.{kind}", tensor)


def read_fingerprint(entry):
    """The entry's compact fingerprint: {"anchors", "anchor_gram", "anchor_columns", "spectra"}, checked."""
    path = os.path.join(entry, FINGERPRINT_FILE)
    tensors = files.read_safetensors_header(path) if os.path.isfile(path) else None
    if tensors is None:
        raise CheckpointError(path, "library entry is incomplete (no fingerprint file)")
    shapes = {name: info.shape for name, info in tensors.items()}
    anchors, gram, columns, spectra = (shapes.get(k) for k in ("anchors", "anchor_gram", "anchor_columns", "spectra"))
    if anchors is None or len(anchors) != 1 or gram != (anchors[0] * (anchors[0] - 1) // 2,) or columns is None or len(columns) != 2 \
            or spectra is None or len(spectra) != 3 or spectra[1] != 3 or spectra[2] != fingerprint.SPECTRUM:
        raise CheckpointError(path, "library entry is corrupt: its fingerprint is malformed")
    try:
        found = load_file(path)
    except Exception as err:                  # the library's own messages are not one-liners with a path
        raise CheckpointError(path, f"library entry is corrupt: {str(err).splitlines()[0] if str(err) else err.__class__.__name__}") from None
    if found["anchors"].dtype != torch.int16 or found["anchor_gram"].dtype != torch.int8 or found["anchor_columns"].dtype != torch.int8 \
            or not found["spectra"].is_floating_point():
        raise CheckpointError(path, "library entry is corrupt: its fingerprint has the wrong data types")
    anchors = found["anchors"].long()
    if (anchors < 0).any() or (anchors >= len(fingerprint.ANCHORS)).any() or (anchors[1:] <= anchors[:-1]).any():
        raise CheckpointError(path, "library entry is corrupt: anchor indices out of range or out of order")
    if len(found["anchor_columns"]) != int((anchors < fingerprint.COLUMN_ANCHORS).sum()):
        raise CheckpointError(path, "library entry is corrupt: its anchor columns do not match its anchors")
    return {**found, "anchors": anchors, "spectra": found["spectra"].float()}


def publish(scratch, target):
    """Move a finished entry into place; an older entry there is replaced, a concurrent
    builder's identical one is kept."""
    try:
        os.rename(scratch, target)
        return target
    except OSError:
        pass                                   # the name is taken
    retired = tempfile.mkdtemp(prefix=".retired-", dir=os.path.dirname(target))
    try:
        os.rename(target, os.path.join(retired, "entry"))
    except OSError:
        pass                                   # another builder retired it first
    try:
        os.rename(scratch, target)
    except OSError:
        pass                                   # another builder published first: theirs stands
    shutil.rmtree(retired, ignore_errors=True)
    return target


def read_record(entry):
    path = os.path.join(entry, DIGEST_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except OSError as err:
        raise CheckpointError(path, f"library entry is incomplete ({err.strerror})") from None
    except ValueError as err:
        raise CheckpointError(path, f"library entry is corrupt (not JSON: {err.__class__.__name__})") from None
    needed = ("tool", "version", "entry_format", "source", "options", "meta", "hidden_size", "num_layers", "build_id")
    if not isinstance(record, dict) or record.get("tool") != "awm" or any(k not in record for k in needed):
        raise CheckpointError(path, "not an awm library entry")
    if isinstance(record["options"], dict):
        record["options"].setdefault("precision", "exact")     # entries from before --precision
    record.setdefault("kind", EXACT)                            # entries from before compact fingerprints
    return record


def is_current(record):
    """An entry from another tool version or entry format cannot be trusted to score the same."""
    return record["version"] == VERSION and record["entry_format"] == ENTRY_FORMAT


def check_current(record, entry):
    if not is_current(record):
        raise CheckpointError(entry, f"built by awm {record['version']} (entry format {record['entry_format']}); this is awm "
                                     f"{VERSION}: rebuild it with --add")


class StoredDigest:
    """A library entry with the interface of ModelDigest, read lazily per layer."""

    kept_axes = None

    def __init__(self, entry, device, record=None):
        """record: the entry's record when the caller has already read it."""
        started = time.perf_counter()
        self.entry, self.device = entry, device
        record = record if record is not None else read_record(entry)
        check_current(record, entry)
        if record["kind"] != EXACT:
            raise CheckpointError(entry, "a compact entry holds no kernels: its exact stage reads the model from its source")
        self.meta = record["meta"]
        self.name = record["name"]
        self.hidden_size, self.num_layers = int(record["hidden_size"]), int(record["num_layers"])
        self.with_circuit = bool(record["options"]["with_circuit"])
        self.precision = record["options"]["precision"]
        self.vocab = read_vocab(entry)
        self.path = os.path.join(entry, KERNEL_FILE)
        self.tensors = files.read_safetensors_header(self.path) if os.path.isfile(self.path) else None
        if self.tensors is None:
            raise CheckpointError(self.path, "library entry is incomplete (no kernels file)")
        self._check_layout()
        self.embedding = self._read("embedding")
        self.profiles = {}
        self.spectra = {}
        self.read_seconds, self.compute_seconds = time.perf_counter() - started, 0.0

    def _check_layout(self):
        packed, hidden = packed_length(self.hidden_size), self.hidden_size
        expected = {f"layers.{i}.{kind}": shape for i in range(self.num_layers)
                    for kind, shape in (("query", (packed,)), ("key", (packed,))) + ((("circuit", (hidden, hidden)),) if self.with_circuit else ())}
        for name, shape in expected.items():
            info = self.tensors.get(name)
            if info is None or info.shape != shape or info.dtype != "F32":
                raise CheckpointError(self.path, f"library entry is corrupt: tensor '{name}' missing or malformed")
        for i in body_rows.row_layers(self.num_layers):
            for kind in ROW_TENSORS:
                info = self.tensors.get(f"layers.{i}.{kind}")
                if info is None or info.shape[-1] != hidden or len(info.shape) != (1 if kind == "row_gain" else 2) or info.dtype not in TORCH_DTYPES:
                    raise CheckpointError(self.path, f"library entry is corrupt: tensor 'layers.{i}.{kind}' missing or malformed")
        embedding = self.tensors.get("embedding")
        if embedding is None or len(embedding.shape) != 2 or embedding.shape[1] != hidden or embedding.dtype not in TORCH_DTYPES:
            raise CheckpointError(self.path, "library entry is corrupt: embedding missing or malformed")

    def _read(self, name):
        """One tensor, read straight into its buffer (several times faster than faulting in a
        memory map page by page); the header's offsets were validated against the file size."""
        info = self.tensors[name]
        tensor = torch.empty(info.shape, dtype=TORCH_DTYPES[info.dtype])
        try:
            with open(self.path, "rb") as handle:
                handle.seek(info.begin)
                got = handle.readinto(tensor.view(-1).view(torch.uint8).numpy())
        except OSError as err:
            raise CheckpointError(self.path, f"cannot read '{name}' ({err.strerror or err})") from None
        if got != info.end - info.begin:
            raise CheckpointError(self.path, f"library entry is truncated: tensor '{name}' is cut short")
        return files.check_finite(tensor, self.path, name)

    def layer(self, index):
        started = time.perf_counter()
        query = unpack_upper(self._read(f"layers.{index}.query").to(self.device), self.hidden_size)
        key = unpack_upper(self._read(f"layers.{index}.key").to(self.device), self.hidden_size)
        circuit = self._read(f"layers.{index}.circuit").to(self.device) if self.with_circuit else None
        self.read_seconds += time.perf_counter() - started
        return LayerKernels(query, key, circuit)

    release_embedding = ModelDigest.release_embedding

    def kept_rows(self):
        return self.rows

    @property
    def rows(self):
        """The stored W_q / W_k rows of the row layers, read when a body-weights test asks (not
        kept: a batch of entries holds no more than its alignments)."""
        return {i: tuple(self._read(f"layers.{i}.{kind}") for kind in ROW_TENSORS) for i in body_rows.row_layers(self.num_layers)}

    def weight_sample(self):
        """The sample of other weights the entry keeps ({} for an entry built before it kept one)."""
        return {name[len(SAMPLE_PREFIX):]: self._read(name) for name in self.tensors if name.startswith(SAMPLE_PREFIX)}

    def size_bytes(self):
        return self.embedding.numel() * self.embedding.element_size()
