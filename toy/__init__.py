"""The toy world: a laptop-scale stand-in for the real setting (scenes, captions, a VQ tokenizer, a GPT policy, two
CLIPs and an attribute checker, trained in minutes on a CPU), its evaluation and the reproduction of the paper's
comparison on it. It imports the concept files at the repository root; no concept file imports it.

    python train.py                     # a toy run (the default backbone), from the repository root
    python -m toy.world --rebuild       # remake the shipped base models in toy/assets/
    python -m toy.reproduce             # the comparison: several methods x seeds, one table
"""
