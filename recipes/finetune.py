"""Fine-tune a vision-language model on canonical vlselect data: a launcher over ``selector.training``.

    accelerate launch recipes/finetune.py --config recipes/configs/tiny_cpu.yaml \
        --model_name_or_path MODEL --dataset DATA --output_dir OUT [--<option> value ...]
    accelerate launch --num_processes 8 recipes/finetune.py --config recipes/configs/llava_1.5_7b_lora.yaml ...

``--config`` takes a YAML path or the name of a config shipped with the package (``tiny_cpu``,
``proxy_smolvlm_256m``, ...); any ``--<option> value`` overrides it. The options are the fields of
``selector.training.FinetuneConfig``; the run writes the model, ``finetune_config.yaml``, ``train_results.json``
and ``dynamics.parquet`` to ``--output_dir`` and prints the results as JSON. Needs
``pip install "vlselect[training]"`` (``pip install -e ".[training]"`` in a checkout). From Python, call
``selector.training.train(config, **overrides)`` instead.
"""

from __future__ import annotations

import sys

from selector.training.finetune import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
