"""Offline benchmark of one replica's engine (run on a GPU host; not a test).

  python bench/engine.py [--model-shape llama3-8b] [--batches 1,32,128,256] [--context 1024]
                         [--requests 1000] [--hf-requests 256] [--out result.json]

(a) Decode step time at each batch size with the given context, as a fraction of the HBM roofline:
    (weights + KV bytes read per step) / (device copy bandwidth measured in the same run).
(b) A ShareGPT-like offline workload (lognormal input/output lengths, all requests at once):
    output tokens/s of this engine vs Hugging Face transformers `generate` with static batches,
    same model shape, same dummy bf16 weights distribution, same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine
from actors.models.embedded import ensure_embedded_model

SHAPES = {
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    },
    "tiny": None,  # the embedded model's own config, for a smoke run on CPU
}
# What one rank of tensor parallelism 2 holds (half the heads and MLP columns; embeddings and
# lm_head stay whole): its step time on one GPU bounds a TP 2 step from below (no all-reduces).
SHAPES["llama3-8b-tp2-rank"] = {
    **SHAPES["llama3-8b"],
    "intermediate_size": 7168,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
}


def make_model_dir(shape: str) -> Path:
    """A checkpoint dir with config.json and the embedded byte-level tokenizer (no weights)."""
    src = ensure_embedded_model()
    if SHAPES[shape] is None:
        return src
    out = Path(tempfile.mkdtemp(prefix=f"fleetlm-{shape}-"))
    (out / "config.json").write_text(json.dumps(SHAPES[shape]))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    return out


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy, counting read + write (the practical HBM peak)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=device)
    a.random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n / statistics.median(times)


def weight_bytes_per_step(model: torch.nn.Module, batch: int) -> int:
    """Every weight is read once per decode step, except the input embedding: only `batch` rows."""
    total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            total += batch * p.shape[1] * p.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


def kv_bytes_per_step(cfg: dict, contexts: list[int], elem: int) -> int:
    per_token = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * elem
    return sum(contexts) * per_token


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_decode(engine: LLMEngine, cfg: dict, batch: int, context: int, steps: int) -> dict:
    rng = random.Random(batch)
    vocab = cfg["vocab_size"]
    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
    ids = [f"dec-{batch}-{i}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, [rng.randrange(vocab) for _ in range(context)], params)
    produced = dict.fromkeys(ids, 0)
    while min(produced.values()) < 1:  # prefill everyone
        for out in engine.step():
            produced[out.request_id] += len(out.new_token_ids)
    device = engine.runner.device
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        engine.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    for rid in ids:
        engine.abort_request(rid)
    while engine.has_unfinished_requests():
        engine.step()
    step_s = statistics.median(times[2:])
    ctx = [context + 1 + steps // 2] * batch
    elem = engine.runner.dtype.itemsize
    w = weight_bytes_per_step(engine.runner.model, batch)
    kv = kv_bytes_per_step(cfg, ctx, elem)
    return {"batch": batch, "context": context, "step_ms": step_s * 1e3, "bytes": w + kv}


def sharegpt_like(n: int, seed: int, in_mean: float, out_mean: float) -> list[tuple[int, int]]:
    """Lognormal lengths with the given means (sigma 0.9, ShareGPT-like spread), clipped."""
    rng = random.Random(seed)
    sigma = 0.9

    def draw(mean: float, hi: int) -> int:
        mu = math.log(mean) - sigma**2 / 2
        return max(4, min(hi, int(rng.lognormvariate(mu, sigma))))

    return [(draw(in_mean, 2048), draw(out_mean, 1024)) for _ in range(n)]


def bench_engine_workload(engine: LLMEngine, lengths: list[tuple[int, int]], vocab: int) -> dict:
    rng = random.Random(0)
    for i, (n_in, n_out) in enumerate(lengths):
        prompt = [rng.randrange(vocab) for _ in range(n_in)]
        params = SamplingParams(temperature=0.0, max_tokens=n_out, ignore_eos=True)
        engine.add_request(f"w-{i}", prompt, params)
    sync(engine.runner.device)
    t0 = time.perf_counter()
    tokens = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens += len(out.new_token_ids)
    sync(engine.runner.device)
    wall = time.perf_counter() - t0
    return {
        "requests": len(lengths),
        "output_tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
    }


def bench_hf_workload(cfg: dict, lengths: list[tuple[int, int]], batch: int) -> dict:
    """transformers generate in static batches (arrival order, left padding), greedy, no EOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(hf_cfg).to(torch.bfloat16).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(cfg["vocab_size"]) for _ in range(n)] for n, _ in lengths]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    useful = 0
    for b in range(0, len(lengths), batch):
        chunk = prompts[b : b + batch]
        outs = [o for _, o in lengths[b : b + batch]]
        width = max(len(p) for p in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with torch.no_grad():
            model.generate(
                input_ids=ids.cuda(),
                attention_mask=mask.cuda(),
                max_new_tokens=max(outs),
                min_new_tokens=max(outs),
                do_sample=False,
                pad_token_id=0,
            )
        useful += sum(outs)  # tokens a request asked for; the rest of a static batch is waste
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache()
    return {
        "requests": len(lengths),
        "batch": batch,
        "output_tokens": useful,
        "seconds": wall,
        "tokens_per_s": useful / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-shape", default="llama3-8b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,32,128,256")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--hf-requests", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma list of: decode,workload,hf")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument(
        "--variant",
        default="after",
        choices=["before", "after"],
        help="before: torch twins, no CUDA graphs (the engine issue's GPU path); after: Triton "
        "kernels + CUDA graphs",
    )
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "engine.json"))
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.variant == "before":
        os.environ["FLEETLM_KERNELS"] = "torch"
    model_dir = make_model_dir(args.model_shape)
    cfg = json.loads((model_dir / "config.json").read_text())
    result: dict = {
        "shape": args.model_shape,
        "date": time.strftime("%Y-%m-%d"),
        "variant": args.variant,
        "command": " ".join(sys.argv),
    }
    lengths = sharegpt_like(args.requests, 0, 200, 180)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        result["gpu"] = torch.cuda.get_device_name()
        result["copy_bw_GBps"] = copy_bandwidth(torch.device("cuda")) / 1e9
    if on_gpu and "hf" not in skip:
        result["hf"] = bench_hf_workload(cfg, lengths[: args.hf_requests], args.hf_batch)
        print("hf", result["hf"], flush=True)
    engine = LLMEngine.from_model(
        str(model_dir),
        dtype="bfloat16" if on_gpu else "float32",
        load_format="dummy",
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=max(256, max(int(b) for b in args.batches.split(","))),
        max_num_batched_tokens=8192,
        enforce_eager=args.variant == "before",
    )
    result["kv_blocks"] = engine.block_manager.num_total_blocks
    if "decode" not in skip:
        rows = []
        for b in (int(x) for x in args.batches.split(",")):
            row = bench_decode(engine, cfg, b, args.context, args.steps)
            if on_gpu:
                row["roofline_ms"] = row["bytes"] / (result["copy_bw_GBps"] * 1e9) * 1e3
                row["roofline_fraction"] = row["roofline_ms"] / row["step_ms"]
            rows.append(row)
            print("decode", row, flush=True)
        result["decode"] = rows
    if "workload" not in skip:
        result["engine"] = bench_engine_workload(engine, lengths, cfg["vocab_size"])
        print("engine", result["engine"], flush=True)
        if "hf" in result:
            result["speedup_vs_hf"] = (
                result["engine"]["tokens_per_s"] / result["hf"]["tokens_per_s"]
            )
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
