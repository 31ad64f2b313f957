"""The learning side: torch (never NEURON). Models, data windows, training, metrics, checkpoints."""
