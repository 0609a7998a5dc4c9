# The enclave's JupyterHub: every knob lives in enclave.hub (traitlets with help text); the
# launcher (`enclave serve hub` / `enclave up`) passes the deployment's facts in ENCLAVE_HUB_*
# environment variables. Override anything below the configure() call as in any hub config,
# e.g. an upstream authenticator: see enclave/hub/authenticator.py.
from enclave.hub.config import configure

c = get_config()  # noqa: F821
configure(c)
