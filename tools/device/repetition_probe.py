"""Do greedy medquad answers loop, and would a repetition penalty help? (GPU probe, not part of the package.)

In the app's Compare view the fine-tuned medquad adapter, greedy as its spec says, sometimes repeats a
sentence until ``max_new_tokens`` ("The optic nerve is damaged because it is damaged by the buildup
of fluid in the eye." ×12 for "What are the symptoms of glaucoma?"). This answers the spec's test
questions (the first ``--limit``, as ``metrics.json`` does) with the fine-tuned adapter under several
decoding settings, passed to ``generate`` on top of the runtime's own, and reports for each: how many
answers run to the token limit, how many repeat an 8-word sequence, ROUGE-L and BERTScore F1 against
the references (the same metric modules as ``adapterlab eval``).

Usage on the GPU machine (after ``source tools/device/setup.sh``):
``python3 tools/device/repetition_probe.py --limit 200 --output $OUT/repetition.json``;
on a CPU, a smaller ``--limit`` and ``--batch-size 8``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.base_models import LoadOptions  # noqa: E402
from adapters.environment import environment  # noqa: E402
from adapters.runtime import Runtime  # noqa: E402
from training.data import load_splits  # noqa: E402
from training.evaluate import load_metric  # noqa: E402

SETTINGS = {  # name -> extra ``generate`` arguments
    "greedy (shipped)": {},
    "repetition_penalty 1.1": {"repetition_penalty": 1.1},
    "repetition_penalty 1.2": {"repetition_penalty": 1.2},
    "no_repeat_ngram_size 6": {"no_repeat_ngram_size": 6},
    "no_repeat_ngram_size 4": {"no_repeat_ngram_size": 4},
}


def repeats_a_phrase(text: str, n: int = 8) -> bool:
    """Whether some ``n``-word sequence occurs twice in ``text``."""
    words = re.findall(r"\w+", text.lower())
    seen = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def answers_with(runtime: Runtime, questions: list[str], extra: dict, batch_size: int) -> list[str]:
    backend = runtime.backend
    own = type(backend)._generate_kwargs
    backend._generate_kwargs = lambda params: {**own(backend, params), **extra}
    try:
        return runtime.answer("medquad", questions, batch_size=batch_size)
    finally:
        del backend._generate_kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--split", default="test", choices=["test", "validation"],
                        help="validation to choose a setting, test to report it")
    parser.add_argument("--only", default=None, help="comma-separated setting names (default: all)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    settings = {name: SETTINGS[name] for name in (args.only.split(",") if args.only else SETTINGS)}

    runtime = Runtime.local(options=LoadOptions(device=args.device), only=["medquad"])
    spec = runtime.spec("medquad")
    test = list(getattr(load_splits(spec), args.split))[:args.limit]
    questions, references = [ex.input for ex in test], [ex.target for ex in test]
    limit = spec.generation.max_new_tokens
    rows = {}
    for name, extra in settings.items():
        started = time.perf_counter()
        answers = answers_with(runtime, questions, extra, args.batch_size)
        seconds = time.perf_counter() - started
        overlap = load_metric("answer_overlap").compute(predictions=answers, references=references)
        bert = load_metric("bertscore_local").compute(predictions=answers, references=references)
        rows[name] = {
            "generate_arguments": extra,
            "at_token_limit": sum(runtime.backend.count_tokens(a) >= limit - 1 for a in answers) / len(answers),
            "repeats_an_8_word_phrase": sum(map(repeats_a_phrase, answers)) / len(answers),
            "rougeL": overlap["rougeL"], "bleu": overlap["bleu"], "length_ratio": overlap["length_ratio"],
            "bertscore_f1": bert["f1"], "seconds": round(seconds, 1),
            "glaucoma_example": next((a for q, a in zip(questions, answers) if "glaucoma" in q.lower()), None),
        }
        print(f"{name:26} limit {rows[name]['at_token_limit']:.3f}  repeats {rows[name]['repeats_an_8_word_phrase']:.3f}"
              f"  ROUGE-L {rows[name]['rougeL']:.4f}  BERTScore {rows[name]['bertscore_f1']:.4f}  {seconds:.0f} s",
              flush=True)
    Path(args.output).write_text(json.dumps({
        "adapter": "medquad", "variant": "fine_tuned", "split": args.split, "examples": len(test),
        "max_new_tokens": limit,
        "device": environment("cuda")["device"],
        "settings": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
