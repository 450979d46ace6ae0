"""Score a model (or a predictions file) on short-answer data: a launcher over ``selector.training``.

    python recipes/evaluate.py --model_name_or_path OUT --dataset_name val.json --output_file OUT/eval.json
    python recipes/evaluate.py --dataset_name val.json --predictions_file preds.jsonl --output_file scores.json

The options are the fields of ``selector.training.EvalConfig`` (a YAML of them first, or ``--config``). Prints the
evaluation scores as JSON (``eval_loss``, ``exact_match``, ``contains_answer``, counts, ``per_source``) and writes
them to ``--output_file`` with the generated predictions beside it. Needs ``pip install "vlselect[training]"``.
From Python, call ``selector.training.evaluate(config, model=None, processor=None, **overrides)`` instead.
"""

from __future__ import annotations

import sys

from selector.training.evaluation import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
