"""The harness's Hydra plugins (discovered by Hydra through the hydra_plugins namespace)."""
