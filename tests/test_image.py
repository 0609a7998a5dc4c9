"""The notebook image: built offline, idempotent, and what runs in it is what the enclave expects.

Needs a Docker engine (and, for the first build on a machine, root for debootstrap and access to
Debian's and PyPI's package servers from the host). The first build takes minutes; later runs find
the image by its content-hash tag in well under a second.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from enclave.hub import image as notebook_image

# A first build on a fresh machine (debootstrap, wheel download, docker build) takes minutes.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parent.parent
CAP = 1_000_000
ANNOUNCEMENTS = "@jupyterlab/apputils-extension:announcements"

# Run inside the container (python3 of the image): what a scholar's session would find.
INSIDE_CHECKS = r"""
import importlib.util, json, os, re, subprocess, sys, warnings
report = {"uid": os.getuid(), "gid": os.getgid(), "home": os.path.expanduser("~"), "cwd": os.getcwd()}
report["torch"] = importlib.util.find_spec("torch") is not None
import numpy, pandas, matplotlib, acro, diffprivlib, sklearn, jupyterhub, jupyterlab, enclave
report["versions"] = {m.__name__: getattr(m, "__version__", "?") for m in
                      (numpy, pandas, matplotlib, acro, diffprivlib, sklearn, jupyterhub, jupyterlab, enclave)}
report["enclave_client"] = importlib.util.find_spec("enclave.client") is not None
report["enclave_modules"] = sorted(n for n in os.listdir(os.path.dirname(enclave.__file__)) if n != "__pycache__")
if report["enclave_client"]:
    import enclave.client  # noqa: F401  (importable without torch or the operator extras)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import matplotlib.pyplot as plt
    plt.plot([1, 2, 3]); plt.savefig("/tmp/plot.png")
report["mpl_warnings"] = [str(w.message) for w in caught]
report["mpl_cache"] = sorted(os.listdir(os.environ["MPLCONFIGDIR"]))
try:
    open("/opt/notebook/evil", "w")
    report["root_writable"] = True
except OSError:
    report["root_writable"] = False
weights = []
for top in ("/",):
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath.startswith(("/proc", "/sys", "/dev")):
            dirnames[:] = []
            continue
        for name in filenames:
            if name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".msgpack")):
                path = os.path.join(dirpath, name)
                try:
                    if os.path.getsize(path) > 5_000_000:
                        weights.append(path)
                except OSError:
                    pass
report["weight_like_files"] = weights
report["singleuser"] = subprocess.run(["sh", "-c", "command -v jupyterhub-singleuser"],
                                      capture_output=True, text=True).stdout.strip()
listing = subprocess.run(["jupyter", "server", "extension", "list"], capture_output=True, text=True)
report["extensions"] = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)  # no colours
listing = subprocess.run(["jupyter", "labextension", "list"], capture_output=True, text=True)
report["lab_extensions"] = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
print("REPORT " + json.dumps(report))
"""

# A JupyterLab server in the container, with the image's own config, attacked over loopback.
LAB_CHECKS = r"""
import json, os, subprocess, sys, time, urllib.error, urllib.request
open("/home/scholar/work/small.txt", "w").write("a small work file\n")
open("/home/scholar/work/big.bin", "wb").write(os.urandom(2_000_000))
os.symlink("/home/scholar/datasets/people.csv", "/home/scholar/work/link.csv")
log = open("/tmp/server.log", "w")
server = subprocess.Popen(["jupyter", "lab", "--ip=127.0.0.1", "--port=8888", "--no-browser",
                           "--IdentityProvider.token=t0ken", "--ServerApp.base_url=/user/scholar/"],
                          stdout=log, stderr=subprocess.STDOUT)
def get(path):
    req = urllib.request.Request("http://127.0.0.1:8888/user/scholar/" + path, headers={"Authorization": "token t0ken"})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
for _ in range(120):
    try:
        if get("api/status")[0] == 200:
            break
    except OSError:
        pass
    if server.poll() is not None:
        break
    time.sleep(0.5)
results = {}
for name, path in [("status", "api/status"), ("lab", "lab"), ("lab_tree_big", "lab/tree/work/big.bin"),
                   ("lab_tree_dataset", "lab/tree/datasets/people.csv"),
                   ("small", "api/contents/work/small.txt?type=file&format=text"),
                   ("big", "api/contents/work/big.bin"), ("files", "files/work/small.txt"),
                   ("files_case", "Files/work/small.txt"), ("view", "view/work/small.txt"),
                   ("nbconvert", "nbconvert/html/work/small.txt"), ("dataset", "api/contents/datasets/people.csv"),
                   ("dataset_link", "api/contents/work/link.csv"), ("dataset_listing", "api/contents/datasets"),
                   ("settings", "lab/api/settings"), ("workspaces", "lab/api/workspaces"),
                   ("terminals", "api/terminals"), ("lsp", "lsp/status")]:
    status, body = get(path)
    results[name] = {"status": status, "size": len(body), "leak": b"Ada Lovelace" in body or b"a small work file" in body}
results["small"]["leak"] = False  # that one is meant to open
lab_page = get("lab")[1].decode()
import re
bundle = re.search(r'static/lab/[\w.]+\.js', lab_page) or re.search(r'static/[\w./-]+\.js', lab_page)
results["bundle"] = get(bundle.group(0))[0] if bundle else None
# The page config the lab page hands the browser: the plugins it must not start.
config = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', lab_page, re.S)
page_config = json.loads(config.group(1)) if config else {}
results["page_disabled"] = page_config.get("disabledExtensions")
server.terminate(); server.wait(20)
print("LAB " + json.dumps(results))
print("LOG " + json.dumps(open("/tmp/server.log").read()[-20000:]))
"""


@pytest.fixture(scope="module")
def built(docker_client):
    started = time.monotonic()
    first = notebook_image.ensure_image(REPO)
    first_seconds = time.monotonic() - started
    started = time.monotonic()
    second_id = notebook_image.build_image(REPO)
    second_seconds = time.monotonic() - started
    return first, first_seconds, second_id, second_seconds


def _run(client, image_id: str, command: list[str], tmp_path: Path) -> str:
    """Run a command in the image the way the spawner runs a session, and return its output."""
    datasets = tmp_path / "datasets"
    datasets.mkdir(exist_ok=True)
    (datasets / "people.csv").write_text("id,name\n1,Ada Lovelace\n")
    output = client.containers.run(
        image_id, command, remove=True, read_only=True, network_mode="none",
        tmpfs={"/tmp": "rw,nosuid,nodev,size=256m", "/home/scholar/work": "rw,uid=1000,gid=1000,size=64m"},
        volumes={str(datasets): {"bind": "/home/scholar/datasets", "mode": "ro"}},
        cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=256, mem_limit="2g",
        stdout=True, stderr=True)
    return output.decode()


def _line(output: str, prefix: str):
    for line in output.splitlines():
        if line.startswith(prefix + " "):
            return json.loads(line[len(prefix) + 1:])
    raise AssertionError(f"no {prefix} line in:\n{output[-3000:]}")


def test_build_is_idempotent_and_tagged_by_content(built, docker_client):
    first, _, second_id, second_seconds = built
    assert second_id == first.id
    assert second_seconds < 5, f"a cached build_image() took {second_seconds:.1f} s"
    assert first.tag.startswith(f"{notebook_image.IMAGE_REPOSITORY}:") and len(first.tag.split(":")[1]) == 12
    image = docker_client.images.get(first.tag)
    assert image.id == first.id
    assert image.labels["org.model-enclave.content-hash"] == first.content_hash
    config = image.attrs["Config"]
    assert config["Cmd"] == ["jupyterhub-singleuser"]
    assert config["User"] == "1000:1000"
    print(f"\nimage {first.tag}: {first.size_bytes / 1e6:.0f} MB; "
          f"first call {built[1]:.0f} s ({'built' if first.built else 'found'}), cached call {second_seconds:.2f} s")


def test_image_contents_and_runtime_under_the_spawner_constraints(built, docker_client, tmp_path):
    import jupyterhub

    first = built[0]
    report = _line(_run(docker_client, first.id, ["python3", "-c", INSIDE_CHECKS], tmp_path), "REPORT")
    assert report["torch"] is False
    assert report["uid"] == 1000 and report["gid"] == 1000 and report["home"] == "/home/scholar"
    assert report["cwd"] == "/home/scholar/work"
    assert report["versions"]["jupyterhub"] == jupyterhub.__version__
    assert report["versions"]["pandas"] <= "2.3.3" and report["versions"]["sklearn"] < "1.8"
    if (REPO / "src" / "enclave" / "client").is_dir():
        assert report["enclave_client"], "enclave.client is in the repository but not importable in the image"
    # Only the light client: enclave.demo would regenerate the demo's confidential people from its seed.
    assert report["enclave_modules"] in (["__init__.py"], ["__init__.py", "client"])
    assert report["root_writable"] is False
    assert report["weight_like_files"] == []
    assert report["singleuser"] == "/opt/notebook/bin/jupyterhub-singleuser"
    # The font cache was built into the image: no rebuild and no complaint on a read-only root.
    assert not [w for w in report["mpl_warnings"] if "cache" in w.lower()], report["mpl_warnings"]
    assert any(name.startswith("fontlist-") for name in report["mpl_cache"])
    assert re.search(r"enclave_lockdown\b.*enabled", report["extensions"]), report["extensions"]
    assert "enclave_lockdown 0.1.0 OK" in report["extensions"], report["extensions"]
    # JupyterLab's news and update announcements would reach for the internet: switched off in the image.
    assert re.search(r"Disabled extensions:\s+" + re.escape(ANNOUNCEMENTS), report["lab_extensions"]), \
        report["lab_extensions"]


def test_jupyterlab_in_the_image_opens_files_but_refuses_bulk_reads(built, docker_client, tmp_path):
    output = _run(docker_client, built[0].id, ["python3", "-c", LAB_CHECKS], tmp_path)
    results, log = _line(output, "LAB"), _line(output, "LOG")
    assert "enclave lockdown active" in log, log[-3000:]
    assert results["status"]["status"] == 200
    for name in ("lab", "lab_tree_big", "lab_tree_dataset", "small", "dataset_listing", "settings", "workspaces"):
        assert results[name]["status"] == 200, (name, results[name], log[-3000:])
    for name in ("big", "files", "files_case", "view", "nbconvert", "dataset", "dataset_link", "terminals"):
        assert results[name]["status"] == 403, (name, results[name])
    assert results["lsp"]["status"] == 404  # jupyter_lsp is disabled, not merely unused
    assert not [name for name, r in results.items() if isinstance(r, dict) and r["leak"]]
    assert results["settings"]["size"] < CAP  # JupyterLab's own settings fit under the backstop cap
    assert results["bundle"] == 200  # static bundles over the cap are exempt
    # ... and the lab page tells the browser not to start the announcements plugin.
    assert ANNOUNCEMENTS in (results["page_disabled"] or []), results["page_disabled"]
