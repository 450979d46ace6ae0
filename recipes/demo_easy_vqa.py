"""End-to-end CPU demo of the recipes on real VQA data that installs offline (easy-vqa, MIT).

Builds a small LLaVA-style model from configs (random weights, byte-level tokenizer; no download), fine-tunes it
on easy-vqa questions with training dynamics, evaluates before and after, and then retrains on half of the data
chosen by forgetting scores and by random selection:

    PYTHONPATH=tests python recipes/demo_easy_vqa.py --n_train 400 --n_test 200 --epochs 4 --out /tmp/easy-vqa-demo

Prints a JSON table of eval loss and exact-match accuracy. Needs ``pip install easy-vqa`` and the tests' tiny
model builder (``tests/tiny_vlm.py``, hence ``PYTHONPATH=tests``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _canonical(questions, answers, image_ids, paths, prefix: str, n: int):
    from datasets import Dataset

    from selector.data.schema import features

    rows = []
    for k in range(n):
        with open(paths[image_ids[k]], "rb") as handle:
            data = handle.read()
        rows.append(
            {
                "id": f"{prefix}{k}",
                "image": {"bytes": data, "path": None},
                "images": [],
                "messages": [
                    {"role": "user", "content": f"<image>\n{questions[k]}"},
                    {"role": "assistant", "content": answers[k]},
                ],
                "error": None,
                "source": "easy_vqa",
            }
        )
    return Dataset.from_list(rows, features=features())


def run(args) -> dict:
    import easy_vqa

    from selector import select, training

    try:
        from tiny_vlm import build_tiny_vlm
    except ModuleNotFoundError as exc:
        if exc.name != "tiny_vlm":
            raise
        raise SystemExit("run with PYTHONPATH=tests: the demo builds its model with tests/tiny_vlm.py") from None

    os.makedirs(args.out, exist_ok=True)
    train_q, train_a, train_ids = easy_vqa.get_train_questions()
    test_q, test_a, test_ids = easy_vqa.get_test_questions()
    train = _canonical(train_q, train_a, train_ids, easy_vqa.get_train_image_paths(), "train", args.n_train)
    test = _canonical(test_q, test_a, test_ids, easy_vqa.get_test_image_paths(), "test", args.n_test)
    train_path, test_path = os.path.join(args.out, "train"), os.path.join(args.out, "test")
    train.save_to_disk(train_path)
    test.save_to_disk(test_path)
    model = build_tiny_vlm(os.path.join(args.out, "model"), image_size=32, hidden_size=64, num_layers=2)

    common = {
        "model_name_or_path": model,
        "per_device_train_batch_size": 16,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "max_length": 256,
        "freeze_vision_tower": False,
        "logging_steps": 20,
        "seed": args.seed,
    }

    def score(model_dir):
        res = training.evaluate(
            {"model_name_or_path": model_dir, "dataset_name": test_path, "max_new_tokens": 12},
            per_device_eval_batch_size=32,
        )
        return {"eval_loss": round(res["eval_loss"], 4), "exact_match": round(res["exact_match"], 4)}

    table = {"untrained": score(model)}
    full = training.train(
        dict(common, dataset_name=train_path, output_dir=os.path.join(args.out, "full"), num_train_epochs=args.epochs)
    )
    table[f"full ({args.n_train} rows)"] = score(full["model_dir"])
    half = args.n_train // 2
    for strategy in ("forgetting", "random"):
        options = {"dynamics": full["dynamics_path"]} if strategy == "forgetting" else {}
        sel = select(train, half, strategy, random_state=args.seed, **options)
        ids = sel.ids[sel.mask].tolist()
        run_dir = os.path.join(args.out, strategy)
        # Same number of optimizer steps as the full run, so the comparison is about which rows, not compute.
        steps = full["global_step"]
        result = training.train(
            dict(common, dataset_name=train_path, output_dir=run_dir, train_ids=ids, max_steps=steps, dynamics=False)
        )
        table[f"{strategy} half ({half} rows, {steps} steps)"] = score(result["model_dir"])
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_train", type=int, default=400)
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="easy-vqa-demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
