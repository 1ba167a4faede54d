"""Benchmark-only: llama.cpp (through llama-cpp-python) prefill and decode tokens/s on a GGUF.

Not a dependency of the project; scripts/bench-inference.sh installs llama-cpp-python into a
throwaway venv and runs this beside `sandgraph-infer bench` so both see the same machine.
Prints CSV lines `csv,llama.cpp,<batch>,<prefill tok/s>,<decode tok/s median>,<decode best>`.
"""

import argparse
import statistics
import time

import llama_cpp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=args.prompt_tokens + args.decode_tokens + 8,
        n_batch=512,
        verbose=False,
    )
    vocab = llm.n_vocab()
    # The same pseudo-prompt as `sandgraph-infer bench` (sequence 0).
    prompt = [200 + (i * 131) % (vocab - 200) for i in range(args.prompt_tokens)]

    def once(n_prompt: int, n_decode: int):
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        llm.eval(prompt[:n_prompt])
        t1 = time.perf_counter()
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        t2 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([tok])
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
        t3 = time.perf_counter()
        return n_prompt / (t1 - t0), n_decode / (t3 - t2)

    once(8, 4)  # warm-up
    pf, dc = [], []
    for _ in range(max(1, args.reps)):
        p, d = once(args.prompt_tokens, args.decode_tokens)
        pf.append(p)
        dc.append(d)
    print(
        f"csv,llama.cpp,1,{statistics.median(pf):.2f},{statistics.median(dc):.2f},{max(dc):.2f}"
    )


if __name__ == "__main__":
    main()
