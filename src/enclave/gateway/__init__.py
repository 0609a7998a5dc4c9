"""The model API: loading GPT-2, the continuous-batching engine, quotas, extraction defences, HTTP app."""
