"""JupyterHub plug-ins: the enclave's authenticator, spawner and roles, and the notebook image."""
