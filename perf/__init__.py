"""The loop's speed and memory machinery, which a reader of the method can skip (the method is at the repository root):

    fast_sample.py   the fast decode paths train.py and the evaluation scripts use: the same tokens as the readable
                     samplers policy.sample / janus.sample (tested token for token), faster
    synthetic.py     every backbone at its real size with seeded random weights (train.py --synthetic) and the
                     peak-memory estimate on the meta device (train.py --dry_run)

Self-checks, from the repository root:  python -m perf.fast_sample   python -m perf.synthetic
It imports the concept files at the root; no concept file imports it (tests/test_imports.py).
"""
