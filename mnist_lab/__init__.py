"""mnist-lab: a Hydra-driven hyperparameter research harness for PyTorch MLPs on MNIST."""
