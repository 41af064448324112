"""Timing scripts (nothing imports them); run from the repository root:

    python -m bench.sampler    # the LlamaGen samplers
    python -m bench.janus      # the Janus-Pro samplers
    python -m bench.stages     # one training step, stage by stage
"""
