"""Training the digit CNN: MNIST loading (mnist_data), architectures, fitting, saved artifacts and the CLI.

Serving never imports this package; `worker/create_and_train_model.py` is the seed's entry point into it.
"""
