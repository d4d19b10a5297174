"""The core: plugin API, registries, configuration and the pipeline runtime."""
