"""sparsenet: truly sparse MLPs trained with Sparse Evolutionary Training on CPUs."""

__version__ = "0.1.0"
