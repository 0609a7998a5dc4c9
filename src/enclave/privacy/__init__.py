"""The privacy service: differentially private statistics over the registered datasets, computed
inside the enclave with diffprivlib, charged to the project's privacy ledger in the registry
(`enclave.registry.privacy`) and answered with a signed receipt.

A JupyterHub service like the gateway and the review service (`enclave serve privacy`); notebooks
call it through `enclave.client.dp`. It imports `web`, the registry, `envsettings` and `errors`,
never another service.
"""
