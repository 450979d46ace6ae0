"""Fine-tune a vision-language model on vlselect or TRL-layout data: a launcher over ``selector.training``.

    python recipes/finetune.py recipes/configs/tiny_cpu.yaml \
        --model_name_or_path MODEL --dataset_name DATA --output_dir OUT [--<option> value ...]
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml --num_processes 8 \
        recipes/finetune.py recipes/configs/llava_1.5_7b_lora.yaml --dataset_name DATA --output_dir OUT

The first argument (or ``--config``) is a YAML path or the name of a config shipped with the package
(``tiny_cpu``, ``proxy_smolvlm_256m``, ...); flags override it. Options are the fields of
``selector.training.FinetuneConfig``, named as in TRL (``--use_peft``, ``--lora_target_modules q_proj v_proj``,
``--bf16``, ``--report_to tensorboard``, ``--eval_strategy steps``, ``--push_to_hub``, ...). The run writes the
model or adapter, a model card, ``finetune_config.yaml``, ``train_results.json`` and ``dynamics.parquet`` to
``--output_dir`` and prints the results as JSON. Needs ``pip install "vlselect[training]"``. From Python, call
``selector.training.train(config, **overrides)`` instead.
"""

from __future__ import annotations

import sys

from selector.training.finetune import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
