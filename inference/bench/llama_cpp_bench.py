"""Benchmark-only: llama.cpp (through llama-cpp-python's C API bindings) prefill and decode
tokens/s on a GGUF, at several batch sizes, mirroring `sandgraph-infer bench`: the same
pseudo-prompts, all sequences prefilled in one batch, then greedy decode steps with one token
per sequence per step.

Not a dependency of the project: scripts/bench-inference.sh installs llama-cpp-python into a
throwaway venv and runs this alternately with `sandgraph-infer bench`.
Prints `csv,llama.cpp,<batch>,<prefill tok/s>,<decode tok/s median>,<decode tok/s best>`.
"""

import argparse
import ctypes
import statistics
import time

import numpy as np
import llama_cpp as L


def prompt(seq: int, n: int, vocab: int) -> list:
    return [200 + (i * 131 + seq * 977) % (vocab - 200) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    max_b = max(batches)

    # Silence llama.cpp's loader and graph logs; only the CSV lines matter here.
    quiet = L.llama_log_callback(lambda level, text, data: None)
    L.llama_log_set(quiet, ctypes.c_void_p())
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(args.model.encode(), mp)
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    per_seq = args.prompt_tokens + args.decode_tokens + 8
    cp = L.llama_context_default_params()
    cp.n_ctx = per_seq * max_b
    cp.n_batch = max(512, args.prompt_tokens * max_b)
    cp.n_ubatch = 512
    cp.n_seq_max = max_b
    cp.n_threads = args.threads
    cp.n_threads_batch = args.threads
    cp.no_perf = True
    ctx = L.llama_init_from_model(model, cp)
    cap = max(512, args.prompt_tokens * max_b)
    batch = L.llama_batch_init(cap, 0, 1)

    def submit(entries):
        """entries: (token, pos, seq, want_logits)"""
        for i, (t, p, s, lg) in enumerate(entries):
            batch.token[i] = t
            batch.pos[i] = p
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s
            batch.logits[i] = 1 if lg else 0
        batch.n_tokens = len(entries)
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise SystemExit(f"llama_decode failed: {rc}")

    def argmax(i: int) -> int:
        ptr = L.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(ptr, shape=(vocab,)).argmax())

    def once(b: int, n_prompt: int, n_decode: int):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        prompts = [prompt(s, n_prompt, vocab) for s in range(b)]
        t0 = time.perf_counter()
        entries = []
        lasts = []
        for s, p in enumerate(prompts):
            for i, t in enumerate(p):
                entries.append((t, i, s, i == n_prompt - 1))
            lasts.append(len(entries) - 1)
        submit(entries)
        nxt = [argmax(i) for i in lasts]
        t1 = time.perf_counter()
        for step in range(n_decode):
            submit([(nxt[s], n_prompt + step, s, True) for s in range(b)])
            nxt = [argmax(i) for i in range(b)]
        t2 = time.perf_counter()
        return b * n_prompt / (t1 - t0), b * n_decode / (t2 - t1)

    once(1, 8, 4)  # warm-up
    for b in batches:
        pf, dc = [], []
        for _ in range(max(1, args.reps)):
            p, d = once(b, args.prompt_tokens, args.decode_tokens)
            pf.append(p)
            dc.append(d)
        print(
            f"csv,llama.cpp,{b},{statistics.median(pf):.2f},{statistics.median(dc):.2f},{max(dc):.2f}",
            flush=True,
        )
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
