"""CoMPT on MoleculeNet: featurization, input pipeline, model, training."""
