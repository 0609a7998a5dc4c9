# The enclave's JupyterHub in deploy/compose.yaml: `enclave.hub.config.configure` as on one host,
# then what differs when the hub and the services are containers of their own on the enclave's
# internal network (at fixed addresses, since notebooks' DNS answers nothing) rather than
# processes on the host listening on the bridge's address:
# - the hub API listens on the hub container's enclave address; the proxy's public port on all of
#   the container's addresses, published on the host's loopback only (compose.yaml), and the
#   hub's firewall (hub-entrypoint.sh) drops it for the enclave network;
# - the gateway, review and privacy services are external JupyterHub services (their own
#   containers, each with an API token from the env file), not processes the hub starts;
# - notebooks reach them at those fixed addresses.
import os

from enclave.hub.config import configure


def _need(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"compose hub: {name} is not set (see deploy/compose.env.example)")
    return value


c = get_config()  # noqa: F821
settings = configure(c)

hub_ip = _need("ENCLAVE_COMPOSE_HUB_IP")
gateway_ip = _need("ENCLAVE_COMPOSE_GATEWAY_IP")
review_ip = _need("ENCLAVE_COMPOSE_REVIEW_IP")
privacy_ip = os.environ.get("ENCLAVE_COMPOSE_PRIVACY_IP", "")

c.JupyterHub.bind_url = f"http://0.0.0.0:{os.environ.get('ENCLAVE_PROXY_PORT', '8000')}"
c.JupyterHub.hub_bind_url = f"http://{hub_ip}:{settings.hub_port}"
c.JupyterHub.hub_connect_url = f"http://{hub_ip}:{settings.hub_port}"
# The cookie secret is JPY_COOKIE_SECRET from the env file: JupyterHub takes it before any file.

gateway_url = f"http://{gateway_ip}:{settings.gateway_port}"
review_url = f"http://{review_ip}:{settings.review_port}"
privacy_url = f"http://{privacy_ip}:{settings.privacy_port}" if privacy_ip else ""
c.EnclaveDockerSpawner.gateway_url = gateway_url
c.EnclaveDockerSpawner.review_url = review_url
c.EnclaveDockerSpawner.privacy_url = privacy_url

external = [
    {"name": "gateway", "url": gateway_url, "api_token": _need("ENCLAVE_GATEWAY_HUB_TOKEN"), "display": False},
    {"name": "review", "url": review_url, "api_token": _need("ENCLAVE_REVIEW_HUB_TOKEN"), "oauth_no_confirm": True,
     "oauth_client_id": "service-review"},
]
if privacy_url:
    external.append({"name": "privacy", "url": privacy_url, "api_token": _need("ENCLAVE_PRIVACY_HUB_TOKEN"),
                     "display": False})
managed = {entry["name"] for entry in external}
c.JupyterHub.services = [s for s in c.JupyterHub.services if s["name"] not in managed] + external
