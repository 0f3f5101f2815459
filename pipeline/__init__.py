"""DVC pipeline for the gradient-clipping experiment, tracked in MLflow."""
