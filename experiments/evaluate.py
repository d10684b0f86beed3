"""Evaluate a saved run, or classify digit images with it: `python experiments/evaluate.py -h`."""

import sys

from mnist_lab.config.schema import register
from mnist_lab.saved.evaluate import main

if __name__ == "__main__":
    register()  # the schema and the resolvers the run's config is composed on
    sys.exit(main())
