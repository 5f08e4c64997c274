"""The embedded demo model's data: synthetic arithmetic problems with step-by-step reasoning traces.

:mod:`sambay_cli.demo.arith` generates the training corpus and the embedded ``arith`` eval set from the same code;
:mod:`sambay_cli.demo.recipe` (tokenizer, model config, training loop, export) is what ``tools/train_demo.py`` runs.
"""
