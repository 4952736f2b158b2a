"""Streaming detokenisation: incremental (``tokenizers``' DecodeStream) against decoding every
generated token again at each step (what the server did before), side by side.

    python bench/detokenize.py [--tokenizer ../shared/tokenizers/qwen3] [--lengths 500 2000]

Prints process CPU time per output and the ratio; the texts are checked to be identical.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

TEXT = "The answer is 42; 世界 🎉 naïve ünïcödé, so we carry 1. "


def main() -> None:
    from transformers import AutoTokenizer

    from tah.engine.detokenize import IncrementalDecoder

    default = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "qwen3"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=str(default), help="tokenizer directory")
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 2000])
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    ids_all = tok.encode(TEXT * 1000, add_special_tokens=False)
    print(f"{'tokens':>7} {'incremental ms':>15} {'re-decode ms':>13} {'ratio':>7}")
    for n in args.lengths:
        ids = ids_all[:n]
        start = time.process_time()
        decoder = IncrementalDecoder(tok)
        streamed = "".join(decoder.add([t]) for t in ids) + decoder.finish()
        incremental = time.process_time() - start
        start = time.process_time()
        for k in range(1, len(ids) + 1):
            full = tok.decode(ids[:k], skip_special_tokens=True)
        redecode = time.process_time() - start
        assert streamed == full, "incremental text differs from the full decode"
        ratio = redecode / incremental
        print(f"{n:>7} {incremental * 1e3:>15.1f} {redecode * 1e3:>13.1f} {ratio:>6.1f}x")


if __name__ == "__main__":
    main()
