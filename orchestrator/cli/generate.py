"""`fleetlm generate`: one offline completion on a single in-process engine (no cluster)."""

from __future__ import annotations

import argparse
import sys

from actors.common.config import EMBEDDED_MODEL


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="complete one prompt offline on this machine")
    p.add_argument("--prompt", required=True)
    p.add_argument("--model", default=EMBEDDED_MODEL, help="checkpoint dir or the embedded name")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so `fleetlm --help` and the other subcommands do not pay for torch.
    from actors.common.sampling_params import SamplingParams
    from actors.engine.engine import LLMEngine

    engine = LLMEngine.from_model(
        args.model, dtype=args.dtype, device=args.device, load_format=args.load_format
    )
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    prompt = args.prompt
    if args.chat:
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    result = engine.generate([prompt], params)[0]
    sys.stdout.write(result.texts[0] + "\n")
    return 0
