"""Training configurations: ``default.get_config(dataset)`` and ``test``."""
