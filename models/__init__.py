"""CoMPT on MoleculeNet: featurization, input pipeline, model, training."""

from models import _allocator

_allocator.retain_freed_memory()
