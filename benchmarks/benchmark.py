#!/usr/bin/env python
"""Time and memory of awm on checkpoints shaped exactly like real models.

    python benchmarks/benchmark.py                              # Llama-2-7B-shaped pair on the CPU
    python benchmarks/benchmark.py --presets llama3.2-1b llama3-8b qwen2.5-7b --device cpu cuda
    python benchmarks/benchmark.py --dir /data/bench --keep --json bench.json
    python benchmarks/benchmark.py --presets llama3-8b --hub    # + the pair read from a local Hub server

For each preset it writes a base model, a derived copy (hidden dims permuted, sign-flipped and
rescaled, weights perturbed like a fine-tune) and an independent model, as sharded safetensors
with every tensor of the real architecture, in the real dtype. Tensors awm never reads (MLP,
V, O, norms of the MLP, lm_head) are written as sparse zero regions: the files have the real
sizes and offsets but cost no disk. Each comparison runs in a fresh process, so the peak
resident memory reported is that of the whole tool, and the scores are checked against a
straightforward float64 computation of the paper's formulas.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import zlib

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "method")]

PRESETS = {
    # name: hidden, layers, heads, kv heads, vocab, intermediate, dtype, shards, q/k/v biases, tied embeddings
    "llama3.2-1b": dict(hidden=2048, layers=16, heads=32, kv=8, vocab=128256, inter=8192, dtype="BF16", shards=1, bias=False, tied=True),
    "llama2-7b": dict(hidden=4096, layers=32, heads=32, kv=32, vocab=32000, inter=11008, dtype="F16", shards=2, bias=False, tied=False),
    "llama3-8b": dict(hidden=4096, layers=32, heads=32, kv=8, vocab=128256, inter=14336, dtype="BF16", shards=4, bias=False, tied=False),
    "qwen2.5-7b": dict(hidden=3584, layers=28, heads=28, kv=4, vocab=152064, inter=18944, dtype="BF16", shards=4, bias=True, tied=False),
    # 140 GB of files, ~14 GB of them written per model (embedding, W_q, W_k, norms): run with --suspects derived
    "llama3-70b": dict(hidden=8192, layers=80, heads=64, kv=8, vocab=128256, inter=28672, dtype="BF16", shards=30, bias=False, tied=False),
}
TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16}
READ = ("embed_tokens.weight", "q_proj.weight", "k_proj.weight", "input_layernorm.weight")


def tensor_shapes(p):
    """Every tensor of a Llama/Qwen2-style checkpoint, in file order."""
    hd = p["hidden"] // p["heads"]
    shapes = {"model.embed_tokens.weight": (p["vocab"], p["hidden"])}
    for i in range(p["layers"]):
        a = f"model.layers.{i}."
        shapes.update({
            a + "input_layernorm.weight": (p["hidden"],), a + "post_attention_layernorm.weight": (p["hidden"],),
            a + "self_attn.q_proj.weight": (p["heads"] * hd, p["hidden"]), a + "self_attn.k_proj.weight": (p["kv"] * hd, p["hidden"]),
            a + "self_attn.v_proj.weight": (p["kv"] * hd, p["hidden"]), a + "self_attn.o_proj.weight": (p["hidden"], p["heads"] * hd),
            a + "mlp.gate_proj.weight": (p["inter"], p["hidden"]), a + "mlp.up_proj.weight": (p["inter"], p["hidden"]),
            a + "mlp.down_proj.weight": (p["hidden"], p["inter"]),
        })
        if p["bias"]:
            shapes.update({a + "self_attn.q_proj.bias": (p["heads"] * hd,), a + "self_attn.k_proj.bias": (p["kv"] * hd,),
                           a + "self_attn.v_proj.bias": (p["kv"] * hd,)})
    shapes["model.norm.weight"] = (p["hidden"],)
    if not p["tied"]:
        shapes["lm_head.weight"] = (p["vocab"], p["hidden"])
    return shapes


def write_sparse_safetensors(path, shapes, dtype_name, make_tensor):
    """Stream a safetensors file; tensors for which make_tensor returns None become holes."""
    itemsize = 2
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = itemsize * int(torch.Size(shape).numel())
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        start = out.tell()
        for name, shape in shapes.items():
            tensor = make_tensor(name, shape)
            if tensor is None:
                continue
            out.seek(start + header[name]["data_offsets"][0])
            out.write(tensor.to(TORCH_DTYPES[dtype_name]).contiguous().view(torch.uint8).numpy().data)
        out.truncate(start + offset)


class SyntheticModel:
    """Weights of the tensors awm reads, generated per tensor from a seed; a derived copy is the
    base with permuted/sign-flipped/rescaled hidden dims plus fine-tuning noise. Two more
    derived kinds exercise the witnesses beyond the embedding's permutation: `redrawn` (the
    derived copy with a new random embedding: only the body can align it) and `rotated` (norm
    gains folded, the residual stream rotated by a dense random orthogonal matrix)."""

    def __init__(self, preset, seed, derived_from=None, kind="derived"):
        self.p, self.seed, self.parent, self.kind = preset, seed, derived_from, kind
        generator = torch.Generator().manual_seed(1000 + seed)
        hidden = preset["hidden"]
        self.perm = torch.randperm(hidden, generator=generator)
        self.sign = torch.where(torch.rand(hidden, generator=generator) < 0.5, -1.0, 1.0)
        self._rotation = None

    @property
    def rotation(self):
        if self._rotation is None:
            generator = torch.Generator().manual_seed(2000 + self.seed)
            self._rotation = torch.linalg.qr(torch.randn(self.p["hidden"], self.p["hidden"], generator=generator))[0]
        return self._rotation

    def raw(self, name, shape):
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{name}".encode()))
        if name.endswith("layernorm.weight"):
            return 1 + 0.1 * torch.randn(shape, generator=generator)
        return 0.02 * torch.randn(shape, generator=generator)

    def tensor(self, name, shape):
        if not name.endswith(READ):
            return None
        if self.parent is None or (self.kind == "redrawn" and name.endswith("embed_tokens.weight")):
            return self.raw(name, shape)
        if self.kind == "rotated":
            return self.rotated(name, shape)
        # In place where possible: a 70B embedding is 4 GB in float32.
        tuned = self.parent.tensor(name, shape)
        scale = 0.1 * tuned.std()
        tuned.add_(torch.randn(tuned.shape, generator=torch.Generator().manual_seed(self.seed)).mul_(scale))
        if name.endswith("layernorm.weight"):
            return tuned[self.perm]
        return tuned[:, self.perm].mul_(self.sign).mul_(2.0 if name.endswith("embed_tokens.weight") else 0.5)


    def rotated(self, name, shape):
        """The parent's tensor in a residual stream rotated by Q: norm gains folded into W_q / W_k."""
        if name.endswith("layernorm.weight"):
            return torch.ones(shape)
        tensor = self.parent.tensor(name, shape)
        if not name.endswith("embed_tokens.weight"):
            layer = name.split(".self_attn.")[0]
            tensor = tensor * self.parent.tensor(layer + ".input_layernorm.weight", (shape[1],))
        return tensor @ self.rotation


def write_model(directory, preset, model, tokens):
    from factory import llama_config, write_tokenizer_json

    os.makedirs(directory, exist_ok=True)
    shapes = tensor_shapes(preset)
    names = list(shapes)
    per_shard = -(-len(names) // preset["shards"])
    weight_map = {}
    for s in range(preset["shards"]):
        part = names[s * per_shard:(s + 1) * per_shard]
        shard = f"model-{s + 1:05d}-of-{preset['shards']:05d}.safetensors"
        write_sparse_safetensors(os.path.join(directory, shard), {n: shapes[n] for n in part}, preset["dtype"], model.tensor)
        weight_map.update({n: shard for n in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as out:
        json.dump({"weight_map": weight_map}, out)
    config = llama_config(preset["hidden"], preset["layers"], preset["heads"], preset["kv"], preset["vocab"],
                          intermediate_size=preset["inter"], tie_word_embeddings=preset["tied"])
    with open(os.path.join(directory, "config.json"), "w") as out:
        json.dump(config, out)
    write_tokenizer_json(directory, tokens, specials=())


def prepare(preset_name, folder, suspects=("derived", "independent")):
    from factory import byte_level_tokens

    preset = PRESETS[preset_name]
    tokens = byte_level_tokens(preset["vocab"], seed=5)
    base = SyntheticModel(preset, seed=1)
    models = {"base": base, "derived": SyntheticModel(preset, seed=2, derived_from=base), "independent": SyntheticModel(preset, seed=3),
              "redrawn": SyntheticModel(preset, seed=4, derived_from=base, kind="redrawn"),
              "rotated": SyntheticModel(preset, seed=5, derived_from=base, kind="rotated")}
    models = {role: model for role, model in models.items() if role == "base" or role in suspects}
    paths = {}
    for role, model in models.items():
        paths[role] = os.path.join(folder, preset_name, role)
        if not os.path.isfile(os.path.join(paths[role], "config.json")):
            started = time.perf_counter()
            write_model(paths[role], preset, model, tokens)
            print(f"  wrote {preset_name}/{role} in {time.perf_counter() - started:.0f} s", flush=True)
    return paths


# ----------------------------------------------------------------------------- one measured run
def cka64(k, l):
    from test_metrics import u_center  # U-centering written out, float64

    u, v = u_center(k), u_center(l)
    return float((u * v).sum() / (u.square().sum() * v.square().sum()).sqrt())


def float64_layer(checkpoint, i, with_circuit):
    """W_q and W_k Grams and the QK circuit of one layer computed in float64 from the stored weights."""
    from awm.comparison.digest import qk_circuit

    w_q, w_k = (w.double() for w in checkpoint.query_key(i))
    family = checkpoint.family.family
    matrices = {"wq": w_q.t() @ w_q, "wk": w_k.t() @ w_k}
    if with_circuit:
        gains = (checkpoint.attention_input_gain(i), checkpoint.optional_vector(family.q_norm, i, family.norm_offset),
                 checkpoint.optional_vector(family.k_norm, i, family.norm_offset))
        gains = [None if g is None else g.double() for g in gains]
        matrices["qk_circuit"] = qk_circuit(w_q, w_k, checkpoint.heads, *gains, dtype=torch.float64)
    return matrices


def straightforward_check(raw, path_a, path_b, with_circuit):
    """Recompute the first, middle and last layer's CKAs the plain way (float64 products of the
    stored weights, U-centering written out, the base re-indexed explicitly) and return the
    largest |difference| from the tool's unrounded per-layer values, in percentage points."""
    from awm.comparison.alignment import align
    from awm.comparison.digest import ModelDigest
    from awm.readers.model_reader import ModelCheckpoint

    a, b = ModelCheckpoint(path_a), ModelCheckpoint(path_b)
    base, target = (a, b) if raw["evidence"]["base_model"] == "a" else (b, a)
    digests = [ModelDigest(m, torch.device("cpu")) for m in (base, target)]
    alignment = align(*digests, torch.device("cpu"))
    index, sign = alignment.base_index, alignment.sign.double()
    worst = 0.0
    for i in sorted({0, base.num_layers // 2, base.num_layers - 1}):
        base_matrices, target_matrices = float64_layer(base, i, with_circuit), float64_layer(target, i, with_circuit)
        for key, matrix in base_matrices.items():
            aligned = matrix[index][:, index] * sign[:, None] * sign[None, :]
            worst = max(worst, abs(100 * cka64(aligned, target_matrices[key]) - 100 * raw["layers"][i][key]))
    return worst


def peak_rss_mb():
    """This process's own high-water resident memory. ru_maxrss is not used: Linux carries it
    across fork and exec, so a child would report the parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path_a, path_b, device_name, threads, paper_only=False, local_paths=None, precision="exact"):
    import copy

    from awm.comparison import pair
    from awm.comparison.digest import digest_path
    from awm.witnesses.verdict import PAPER_NULL

    torch.set_num_threads(threads or os.cpu_count())
    device = torch.device(device_name)
    started = time.perf_counter()
    digests = [digest_path(p, device, with_circuit=not paper_only, precision=precision) for p in (path_a, path_b)]
    unrounded = pair.compare(*digests, device, progress=False, null=PAPER_NULL)
    # The report rounds scores to 1e-4 %; the float64 check reads the unrounded copy.
    data = pair.pair_record(copy.deepcopy(unrounded), *digests, device, PAPER_NULL)
    total = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    deviation = straightforward_check(unrounded, *(local_paths or (path_a, path_b)), not paper_only)
    return {"total_s": round(total, 2), **data["timings"], "peak_rss_mb": round(peak_mb), "scores": data["scores"],
            "aligned_scores": data["aligned_scores"], "basis": data["evidence"]["alignment"]["basis"], "verdict": data["verdict"],
            "max_abs_deviation_from_float64_pp": deviation}


def run_in_subprocess(path_a, path_b, device, threads, paper_only, env=None, local_paths=None, precision="exact"):
    command = [sys.executable, os.path.abspath(__file__), "--measure", path_a, path_b, "--device", device, "--precisions", precision]
    if paper_only:
        command.append("--paper_only")
    if threads:
        command += ["--threads", str(threads)]
    if local_paths:
        command += ["--local", *local_paths]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def hub_rows(preset, paths, args):
    """base vs derived from a local Hub server: what crosses the wire, cold and with the cache."""
    from hub_server import FakeHub

    cache = os.path.join(args.dir, f"hub-cache-{preset}")
    shutil.rmtree(cache, ignore_errors=True)
    repo_bytes = sum(os.path.getsize(os.path.join(paths["base"], f)) for f in os.listdir(paths["base"]))
    rows = []
    with FakeHub() as server:
        for role in ("base", "derived"):
            server.add(f"bench/{preset}-{role}", paths[role])
        env = {**os.environ, "HF_ENDPOINT": server.endpoint, "AWM_HUB_CACHE": cache}
        for run in ("first", "second"):
            server.sent.clear()
            row = {"preset": preset, "pair": "base vs derived", "device": "cpu", "mode": f"hub, {run} run",
                   **run_in_subprocess(f"bench/{preset}-base", f"bench/{preset}-derived", "cpu", args.threads, False, env,
                                       (paths["base"], paths["derived"]))}
            row["hub_bytes_sent"], row["repo_bytes"] = sum(server.sent.values()), 2 * repo_bytes
            rows.append(row)
            print(f"  {preset:12s} hub, {run} run: total {row['total_s']:6.1f} s  read {row['read_s']:5.1f} s  "
                  f"sent {row['hub_bytes_sent'] / 1e9:6.2f} GB of the two repos' {row['repo_bytes'] / 1e9:6.2f} GB "
                  f"({100 * row['hub_bytes_sent'] / row['repo_bytes']:.1f} %)  peak RSS {row['peak_rss_mb']:5d} MB  "
                  f"AWM {row['scores']['final']:6.2f} %", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["llama2-7b"], choices=sorted(PRESETS))
    parser.add_argument("--device", nargs="+", default=["cpu"], choices=("cpu", "cuda"))
    parser.add_argument("--dir", default=os.path.join(ROOT, "bench_out"), help="where synthetic checkpoints go")
    parser.add_argument("--json", default=None, help="write the result table as JSON here")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    parser.add_argument("--modes", nargs="+", default=["full", "paper_only"], choices=("full", "paper_only"),
                        help="full: both scores; paper_only: as main.py --paper_only")
    parser.add_argument("--suspects", nargs="+", default=["derived", "independent"], choices=("derived", "independent", "redrawn", "rotated"),
                        help="which models to compare with the base (a 70B pair needs ~28 GB of disk per two models)")
    parser.add_argument("--hub", action="store_true",
                        help="also read base vs derived from a Hub server on 127.0.0.1 (tests/hub_server.py): "
                             "bytes transferred and time, first run (empty cache) and second run")
    parser.add_argument("--measure", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    parser.add_argument("--local", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--precisions", nargs="+", default=["exact"], choices=("exact", "fast"),
                        help="as main.py --precision; each is measured and checked against float64")
    parser.add_argument("--paper_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.device[0], args.threads, args.paper_only, args.local, args.precisions[0])))
        return 0
    rows = []
    for preset in args.presets:
        paths = prepare(preset, args.dir, args.suspects)
        for device in args.device:
            if device == "cuda" and not torch.cuda.is_available():
                print("  cuda: not available, skipped")
                continue
            for suspect, mode, precision in [(s, m, p) for s in args.suspects for m in args.modes for p in args.precisions]:
                row = {"preset": preset, "pair": f"base vs {suspect}", "device": device, "mode": mode,
                       **run_in_subprocess(paths["base"], paths[suspect], device, args.threads, mode == "paper_only",
                                           precision=precision)}
                rows.append(row)
                print(f"  {preset:12s} {row['pair']:20s} {device:4s} {mode:10s} {precision:5s} total {row['total_s']:6.1f} s  read {row['read_s']:5.1f}  "
                      f"gram {row['gram_s']:5.1f}  cosine {row['cosine_s']:5.1f}  LAP {row['lap_s']:5.1f}  cka {row['cka_s']:5.1f}  "
                      f"peak RSS {row['peak_rss_mb']:5d} MB  AWM {row['scores']['final']:6.2f} %  "
                      f"|float64 - ours| {row['max_abs_deviation_from_float64_pp']:.1e} pp", flush=True)
        if args.hub:
            rows += hub_rows(preset, paths, args)
        if not args.keep:
            shutil.rmtree(os.path.join(args.dir, preset), ignore_errors=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine, "rows": rows}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
