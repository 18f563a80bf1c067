"""``kvtier generate``: complete one prompt with the bundled engine and print the text."""

from __future__ import annotations

import argparse
import sys

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # engine.dtype.DTYPE_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="complete a prompt with the bundled engine",
        description="Complete a prompt with the bundled engine (default model: "
        "SmolLM2-135M-Instruct) and print the completion.",
    )
    p.add_argument("--prompt", required=True, help="the prompt text (or the user message with --chat)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="system message for --chat")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most (128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--model", help="GGUF file or Hugging Face folder (default: SmolLM2)")
    add_device_arguments(p)
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: its own)")
    p.set_defaults(func=run)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--no-cuda-graphs``: where and how an engine computes."""
    p.add_argument("--device", default="auto",
                   help="auto (the first CUDA GPU if PyTorch sees one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="weights and KV dtype (auto: bfloat16 on GPUs and on CPUs with bfloat16 hardware)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="run decode steps eagerly on a GPU instead of replaying captured CUDA graphs")


def run(args: argparse.Namespace) -> int:
    import torch

    from engine.config import EngineConfig
    from engine.runtime.llm_engine import LLMEngine
    from engine.runtime.sampling_params import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_tokens=args.max_tokens, seed=args.seed, stop=tuple(args.stop),
    )
    engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, device=args.device,
                                    cuda_graphs=not args.no_cuda_graphs, kv_cache_gb=0.25))
    prompt: str | list[int] = args.prompt
    if args.chat:
        if engine.tokenizer is None:
            raise ValueError("--chat needs a model with a tokenizer")
        messages = [{"role": "system", "content": args.system}] if args.system else []
        prompt = engine.tokenizer.apply_chat_template([*messages, {"role": "user", "content": args.prompt}])
    out = engine.generate([prompt], params)[0]
    sys.stdout.write(out.text + "\n")
    return 0
