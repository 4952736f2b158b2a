"""Engine settings the command line lists before torch is loaded (``tah serve``, benchmarks)."""

# torch.compile modes the engine accepts
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# speculative depth 1 (tah.engine.speculate): for greedy requests only (outputs identical to
# the core's), for every request (sampled ones keep their distribution, not their draws), off
SPECULATE_MODES = ("greedy", "all", "off")
