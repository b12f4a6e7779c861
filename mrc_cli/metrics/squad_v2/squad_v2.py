"""SQuAD v2.0 official scores as an evaluate module that loads by path, offline (mrc_cli.metrics.load_metric).

Inputs are those of the Hub's `squad_v2` metric, so this is a drop-in replacement:
    predictions: [{"id": str, "prediction_text": str or None, "no_answer_probability": float or None}]
                 prediction_text "" means "no answer"; None means the question has no prediction.
                 no_answer_probability is the question's null odds; None everywhere means no null odds.
    references:  [{"id": str, "answers": {"text": [str], "answer_start": [int]}}]; no text: unanswerable
Predictions are matched to references by id, not by position. compute(..., no_answer_threshold=1.0) is the
official --na-prob-thresh. Returns what mrc_cli.metrics.rules.score_squad_v2 returns: exact, f1, total, the
HasAns_/NoAns_ split, best_exact/best_f1 and their thresholds when there are null odds, missing, unknown_ids.
"""

import datasets
import evaluate

from mrc_cli.metrics import from_evaluate_inputs, rules

_CITATION = """\
@inproceedings{rajpurkar-etal-2018-know,
    title = "Know What You Don{'}t Know: Unanswerable Questions for {SQ}u{AD}",
    author = "Rajpurkar, Pranav and Jia, Robin and Liang, Percy",
    booktitle = "Proceedings of ACL 2018",
    year = "2018",
}
"""

_FEATURES = datasets.Features(
    {
        "predictions": {
            "id": datasets.Value("string"),
            # large_string, not string: evaluate rejects None in the first row of a string column, and None
            # marks a question without prediction.
            "prediction_text": datasets.Value("large_string"),
            # float64, not the Hub module's float32, so that best_*_thresh are the caller's values exactly.
            "no_answer_probability": datasets.Value("float64"),
        },
        "references": {
            "id": datasets.Value("string"),
            "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
        },
    }
)


class SquadV2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=__doc__, features=_FEATURES
        )

    def _compute(self, predictions, references, no_answer_threshold=1.0):
        golds, texts = from_evaluate_inputs(predictions, references)
        null_odds = {
            pred["id"]: pred["no_answer_probability"]
            for pred in predictions
            if pred["no_answer_probability"] is not None
        }
        return rules.score_squad_v2(golds, texts, null_odds or None, no_answer_threshold)
