"""SQuAD v1.1 official scores as an evaluate module that loads by path, offline (mrc_cli.metrics.load_metric).

Inputs are those of the Hub's `squad` metric, so this is a drop-in replacement:
    predictions: [{"id": str, "prediction_text": str or None}]   None: the question has no prediction
    references:  [{"id": str, "answers": {"text": [str], "answer_start": [int]}}]
Predictions are matched to references by id, not by position.
Returns exact_match, f1 (percent), total, missing and unknown_ids, as mrc_cli.metrics.rules.score_squad.
"""

import datasets
import evaluate

from mrc_cli.metrics import from_evaluate_inputs, rules

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP 2016",
    year = "2016",
}
"""

_FEATURES = datasets.Features(
    {
        # large_string, not string: evaluate rejects None in the first row of a string column, and None marks
        # a question without prediction.
        "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("large_string")},
        "references": {
            "id": datasets.Value("string"),
            "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
        },
    }
)


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=__doc__, features=_FEATURES
        )

    def _compute(self, predictions, references):
        return rules.score_squad(*from_evaluate_inputs(predictions, references))
