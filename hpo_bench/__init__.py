"""hpo-bench: SAM perturbation-radius selection as hyperparameter optimization."""
__version__ = "0.1.0"
