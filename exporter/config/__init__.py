"""Configuration: the model (frozen dataclasses), the field reader, the bounded YAML reader, and loading."""
