"""CMRC 2018 official scores as an evaluate module that loads by path, offline (mrc_cli.metrics.load_metric).

Inputs take the same shape as the Hub's `squad` metric:
    predictions: [{"id": str, "prediction_text": str or None}]   None: the question has no prediction (SKIP)
    references:  [{"id": str, "answers": {"text": [str], "answer_start": [int]}}]
Predictions are matched to references by id, not by position.
Returns EM, F1, AVERAGE (percent, unrounded), TOTAL, SKIP, missing and unknown_ids, as
mrc_cli.metrics.rules.score_cmrc2018.
"""

import datasets
import evaluate

from mrc_cli.metrics import from_evaluate_inputs, rules

_CITATION = """\
@inproceedings{cui-etal-2019-span,
    title = "A Span-Extraction Dataset for {C}hinese Machine Reading Comprehension",
    author = "Cui, Yiming and Liu, Ting and Che, Wanxiang and Xiao, Li and Chen, Zhipeng and Ma, Wentao and
              Wang, Shijin and Hu, Guoping",
    booktitle = "Proceedings of EMNLP-IJCNLP 2019",
    year = "2019",
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


class Cmrc2018(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=__doc__, features=_FEATURES
        )

    def _compute(self, predictions, references):
        return rules.score_cmrc2018(*from_evaluate_inputs(predictions, references))
