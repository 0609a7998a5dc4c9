"""Model Enclave: structured access to a language model, run like a research data centre."""

__version__ = "0.1.0"
