"""Bring the hub up: the Docker engine, the notebook image, the enclave network and firewall,
then JupyterHub (which runs the proxy, the gateway, the review service, the warden and the idle
culler as its managed services, so Ctrl-C on the hub stops them all).

The stack lives and dies together: the hub and everything it starts run under the tether
(`enclave.hub.tether`), so the kernel stops each one when its parent dies (a hub killed hard
takes its services with it; a launcher killed hard takes the hub), and each carries the stack's
mark, by which the next start finds and stops whatever an earlier run still left (`stop_leftovers`).
Before starting, every port the stack needs is checked: one held by a program that is not ours is
a clear error naming the port and its holder. Ctrl-C gives the hub a few seconds to stop cleanly,
then stops it hard, and its notebook containers with it: it returns within 10 s, notebooks running or
not. A hub that dies on its own leaves its notebook containers running; the next start takes them
back, and the warden's first sweep re-checks each against the registry at once.

`serve_hub` is the whole sequence, as `enclave serve hub` and `enclave up` run it; the steps
(`prepare_docker`, `hub_environment`, `start_hub`, `stop_leftover_proxy`, `stop_leftovers`,
`check_ports`) are public for the tests' and benchmarks' own stacks. What cannot start raises
`enclave.errors.Unavailable`.
"""
from __future__ import annotations

import errno
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy.engine import Engine

from enclave.envsettings import database_url, enclave_home, env_str
from enclave.errors import Unavailable
from enclave.hub.config import BANNER, EnclaveHubSettings
from enclave.hub.image import ImageBuildError, build_image
from enclave.hub.network import FirewallError, ensure_network, install
from enclave.hub.tether import STACK_MARK, command as tethered
from enclave.registry.credentials import set_password
from enclave.registry.db import session_scope
from enclave.registry.people import Role, list_people


class HubLaunchError(Unavailable):
    """A part of the hub's stack cannot start (proxy missing, configuration, image, firewall)."""


class DockerUnavailable(HubLaunchError):
    """No Docker engine answers, and none can be started here."""


REPO_ROOT = Path(__file__).resolve().parents[3]


def docker_client(timeout: int = 120):
    import docker

    return docker.DockerClient(base_url=env_str("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=timeout)


def _ping() -> bool:
    try:
        client = docker_client(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, daemon starting, permission: all mean "not usable yet"
        return False


def ensure_dockerd(log_dir: Path, wait_s: float = 60) -> None:
    """Use a running Docker engine, or start Debian's dockerd when we are root."""
    if _ping():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerUnavailable("no Docker engine: dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine running, and starting dockerd needs root")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "dockerd.log", "ab")
    subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _ping():
            return
        time.sleep(0.5)
    raise DockerUnavailable(f"dockerd did not answer within {wait_s:.0f} s (see {log_dir / 'dockerd.log'})")


def _say(line: str) -> None:
    # Flushed: the hub's own log goes to the same terminal right after.
    print(line, flush=True)


def prepare_docker(settings: EnclaveHubSettings, log_dir: Path, progress: Callable[[str], None] = _say) -> str:
    """Engine, image, network, firewall; returns the notebook image ID."""
    ensure_dockerd(log_dir)
    progress("docker: engine up; building the notebook image when missing (minutes the first time)")
    try:
        image_id = build_image(REPO_ROOT)
    except ImageBuildError as exc:
        raise HubLaunchError(str(exc)) from None
    ports = [settings.hub_port, settings.gateway_port, settings.review_port, settings.privacy_port]
    client = docker_client()
    try:
        ensure_network(client, settings.network)
        install(settings.network, ports)
    except FirewallError as exc:
        raise HubLaunchError(str(exc)) from None
    finally:
        client.close()
    progress(f"docker: network {settings.network_name} ({settings.subnet}) behind the firewall; "
             f"notebooks reach only {settings.service_ip} ports {', '.join(map(str, ports))}")
    return image_id


def hub_environment(settings: EnclaveHubSettings, image_id: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The hub process's environment: ours, plus the settings as the variables the hub reads back
    (`EnclaveHubSettings.to_environment`), the notebook image and the proxy's token; `extra` last."""
    env = dict(os.environ)
    env.update(settings.to_environment())
    # Absolute: the hub and its services run in the state directory, where a relative
    # ENCLAVE_HOME (the default is ./var) would point somewhere else.
    env["ENCLAVE_HOME"] = str(Path(settings.enclave_home or enclave_home()).resolve())
    env["ENCLAVE_DB_URL"] = settings.db_url or database_url()
    env["PYTHONUNBUFFERED"] = "1"
    if image_id:
        env["ENCLAVE_NOTEBOOK_IMAGE"] = image_id
    # The proxy's API token is a secret: from the environment if the operator set one, else fresh.
    env.setdefault("CONFIGPROXY_AUTH_TOKEN", secrets.token_hex(32))
    env.update(extra or {})
    return env


def config_file() -> Path:
    path = REPO_ROOT / "hub_config" / "jupyterhub_config.py"
    if not path.exists():
        raise HubLaunchError(f"hub configuration not found at {path}")
    return path


def start_hub(env: dict[str, str], state_dir: Path, log_path: Path | None = None) -> subprocess.Popen:
    """JupyterHub in a session of its own (a terminal's Ctrl-C reaches the launcher only, which
    passes the hub exactly one signal), tethered to this process: should the launcher die, the hub
    gets SIGTERM and stops as on Ctrl-C. Call it from the main thread (the tether binds to the
    thread that starts it)."""
    if shutil.which("configurable-http-proxy", path=env.get("PATH")) is None:
        raise HubLaunchError("configurable-http-proxy is missing (npm install -g configurable-http-proxy; `make` does it)")
    state_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else None
    argv = tethered([sys.executable, "-m", "jupyterhub", "-f", str(config_file())], parent=os.getpid(),
                    stack=stack_id(state_dir))
    try:
        return subprocess.Popen(argv, cwd=state_dir, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)
    finally:
        if out:
            out.close()


def stack_id(state_dir: Path | str) -> str:
    """The mark every process of the stack kept in `state_dir` carries (its resolved path)."""
    return str(Path(state_dir).resolve())


# --- the stack's own processes, found again -----------------------------------------------------

def process_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def _describe(pid: int) -> str:
    env = process_environ(pid)
    name = env.get("JUPYTERHUB_SERVICE_NAME")
    cmd = process_cmdline(pid)
    if not name:
        name = "proxy" if "configurable-http-proxy" in cmd else "hub" if "jupyterhub" in cmd else (cmd[:60] or "process")
    return f"{name} (pid {pid})"


def stack_processes(state_dir: Path | str) -> list[int]:
    """Live processes carrying this stack's mark (Linux: read from /proc), this process and its
    ancestors left out."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    mark, mine = stack_id(state_dir), _ancestors()
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and int(entry.name) not in mine:
            pid = int(entry.name)
            if process_environ(pid).get(STACK_MARK) == mark and process_alive(pid):
                found.append(pid)
    return sorted(found)


def stop_processes(pids: Iterable[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL for whatever is still alive after `grace` seconds."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(process_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if process_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def refuse_if_running(state_dir: Path) -> None:
    """A hub of this stack still run by a live launcher is not a leftover: refuse to start a
    second one over it (rather than stop the first)."""
    hub, launcher = _read_pid(state_dir / "jupyterhub.pid"), _read_pid(state_dir / "launcher.pid")
    if hub is None or launcher is None or not process_alive(hub) or not process_alive(launcher):
        return
    if process_environ(hub).get(STACK_MARK) == stack_id(state_dir) and _ppid(hub) == launcher:
        raise HubLaunchError(f"this enclave is already running (hub pid {hub}, started by pid {launcher}, state in "
                             f"{state_dir}); stop it first (Ctrl-C where it runs)")


def stop_leftovers(state_dir: Path, progress: Callable[[str], None] = lambda line: None, grace: float = 3.0) -> list[str]:
    """Stop what an earlier run of this stack left running (its proxy by pid file; any process
    with the stack's mark); returns what was stopped, as "name (pid N)"."""
    stop_leftover_proxy(state_dir)
    pids = stack_processes(state_dir)
    stopped = [_describe(pid) for pid in pids]
    if stopped:
        progress("stopping this enclave's processes still running (an earlier run's leftovers or a stopped "
                 f"hub's services): {', '.join(stopped)}")
        stop_processes(pids, grace)
    return stopped


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> int | None:
    """The process listening on TCP `port`, where /proc tells (None when it cannot be seen)."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


def _bindable(host: str, port: int) -> bool | None:
    """True if (host, port) can be bound now, False if something holds it, None if the address is
    not (yet) on this machine (the enclave bridge before the network exists)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            # Anything but "in use" (an address not on this machine, a name, a privileged port)
            # is not ours to judge here: the hub's own start reports it.
            return False if exc.errno == errno.EADDRINUSE else None
    return True


def stack_ports(settings: EnclaveHubSettings) -> list[tuple[str, str, int, str]]:
    """What the stack listens on: (what, host, port, the variable that moves it)."""
    public = urlparse(settings.public_url)
    ip = settings.service_ip
    ports = [("the hub's public address", public.hostname or "127.0.0.1", public.port or 80, "--public-url"),
             ("hub API", ip, settings.hub_port, "ENCLAVE_HUB_PORT"),
             ("proxy API", "127.0.0.1", settings.proxy_api_port, "ENCLAVE_HUB_PROXY_API_PORT")]
    if settings.gateway:
        ports.append(("gateway", ip, settings.gateway_port, "ENCLAVE_GATEWAY_PORT"))
    if settings.review_command:
        ports.append(("review", ip, settings.review_port, "ENCLAVE_REVIEW_PORT"))
    if settings.privacy_command:
        ports.append(("privacy", ip, settings.privacy_port, "ENCLAVE_PRIVACY_PORT"))
    if settings.access_command:
        ports.append(("access pages", "127.0.0.1", settings.access_port, "ENCLAVE_ACCESS_PORT"))
    return ports


def check_ports(settings: EnclaveHubSettings, progress: Callable[[str], None] = lambda line: None) -> None:
    """Every port the stack needs must be free: a process of this stack's own still holding one is
    stopped; anything else is a HubLaunchError naming the port and its holder."""
    mark = stack_id(settings.state_dir)
    for what, host, port, knob in stack_ports(settings):
        if _bindable(host, port) is not False:
            continue
        holder = port_holder(port)
        if holder is not None and process_environ(holder).get(STACK_MARK) == mark:
            progress(f"port {port} ({what}) is held by {_describe(holder)} of an earlier run of this enclave; stopping it")
            stop_processes([holder])
            deadline = time.monotonic() + 5
            while _bindable(host, port) is False and time.monotonic() < deadline:
                time.sleep(0.1)
            if _bindable(host, port) is not False:
                continue
        who = f" (pid {holder}: {process_cmdline(holder)[:80]})" if holder is not None else ""
        raise HubLaunchError(f"port {port} ({what}) on {host} is in use by another program{who}; stop it, or "
                             f"give the enclave another port ({knob})")


def stop_leftover_proxy(state_dir: Path) -> None:
    """JupyterHub leaves its proxy running when it dies abnormally (it can adopt it on restart);
    `enclave` owns the whole stack, so it stops the proxy too."""
    pid_file = Path(state_dir) / "proxy.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)


def review_command(settings: EnclaveHubSettings) -> str:
    """`enclave serve review` with this interpreter, for the hub to run as its managed service."""
    return shlex.join([sys.executable, "-m", "enclave.cli", "serve", "review", "--host", settings.service_ip,
                       "--port", str(settings.review_port)])


def privacy_command(settings: EnclaveHubSettings) -> str:
    """`enclave serve privacy` with this interpreter, for the hub to run as its managed service."""
    return shlex.join([sys.executable, "-m", "enclave.cli", "serve", "privacy", "--host", settings.service_ip,
                       "--port", str(settings.privacy_port)])


def access_command(settings: EnclaveHubSettings) -> str:
    """`enclave serve access` with this interpreter, on loopback: browsers reach it through the
    proxy, notebooks never."""
    return shlex.join([sys.executable, "-m", "enclave.cli", "serve", "access", "--host", "127.0.0.1",
                       "--port", str(settings.access_port)])


def reset_passwords(engine: Engine, usernames: Iterable[str]) -> dict[str, str]:
    """Fresh hub passwords for `usernames`, set on the first operator's authority. Passwords are
    stored hashed only, so a demo's are reset at every start to be shown to whoever runs it."""
    with session_scope(engine) as session:
        actor = next(p.username for p in list_people(session) if p.has_role(Role.operator))
        return {username: set_password(session, actor, username) for username in usernames}


STOP_GRACE_S = 5.0  # the hub's own clean stop; then a hard one (its tethered services follow at once)


def stop_notebook_containers(network_name: str, timeout: int = 1) -> list[str]:
    """Stop, all at once, the notebook containers on the enclave network (what a hub stopped hard
    before its own clean stop reached them leaves running). Each gets SIGTERM and `timeout`
    seconds; they were started with auto-remove, and their work volumes stay. Returns their names."""
    client = docker_client(timeout=timeout + 20)
    try:
        containers = client.containers.list(filters={"network": network_name, "label": "enclave.user"})
        if containers:
            with ThreadPoolExecutor(max_workers=min(len(containers), 16)) as pool:
                list(pool.map(lambda c: _stop_quietly(c, timeout), containers))
        return [c.name for c in containers]
    finally:
        client.close()


def _stop_quietly(container, timeout: int) -> None:
    import docker.errors

    try:
        container.stop(timeout=timeout)
    except docker.errors.NotFound:  # gone already (auto-removed)
        pass


def wait_for_hub(hub: subprocess.Popen, grace: float = STOP_GRACE_S) -> tuple[int, bool]:
    """Wait until the hub exits; Ctrl-C or a service manager's SIGTERM stops it: one SIGINT, then
    SIGKILL after `grace` seconds or at a second Ctrl-C. Returns its exit status and whether it was
    asked to stop."""

    def on_term(signum, frame):  # a service manager's stop: same as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return hub.wait(), False
    except KeyboardInterrupt:
        pass
    try:
        hub.send_signal(signal.SIGINT)
        return hub.wait(timeout=grace), True
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        _say(f"the hub did not stop within {grace:g} s: stopping it hard (its services go with it)")
        hub.kill()
        return hub.wait(), True


def serve_hub(*, unisolated: bool, public_url: str, model_dir: str, log_dir: Path,
              logins: dict[str, str] | None = None, progress: Callable[[str], None] = _say) -> None:
    """Bring the whole hub up and run it until it exits or is stopped (`enclave serve hub`, `enclave
    up`): Docker, image, network and firewall unless `unisolated`, then JupyterHub with the gateway
    serving `model_dir`, review, warden and idle culler. `logins` (user -> password) are shown once
    the hub is up. Raises Unavailable when a part cannot start or the hub exits abnormally."""
    settings = EnclaveHubSettings(mode="unisolated" if unisolated else "docker", public_url=public_url,
                                  model_dir=model_dir)
    settings.review_command = review_command(settings)
    settings.privacy_command = privacy_command(settings)
    settings.access_command = access_command(settings)
    state_dir = Path(settings.state_dir)
    refuse_if_running(state_dir)
    stop_leftovers(state_dir, progress)
    check_ports(settings, progress)  # before the image build, which can take minutes
    image_id = None
    if unisolated:
        print(f"WARNING: {BANNER}", file=sys.stderr, flush=True)
    else:
        try:
            image_id = prepare_docker(settings, log_dir, progress=progress)
        except DockerUnavailable as exc:
            raise DockerUnavailable(f"{exc}. Without a Docker engine, `enclave up --unisolated` runs a developer "
                                    "mode with no isolation (never for real data)") from None
        check_ports(settings, progress)  # the bridge address exists now
    hub = start_hub(hub_environment(settings, image_id), state_dir)
    (state_dir / "launcher.pid").write_text(f"{os.getpid()}\n")
    progress(f"hub: {settings.public_url}  (model gateway for notebooks: "
             f"http://{settings.service_ip}:{settings.gateway_port}/v1/)")
    if settings.access_command:
        progress(f"applications: {settings.public_url}/services/access/   review: {settings.public_url}/services/review/")
    for username, password in (logins or {}).items():
        progress(f"  log in as {username:<9} password {password}")
    notebooks: Future | None = None
    try:
        code, asked = wait_for_hub(hub)
        if asked and code == -signal.SIGKILL and not unisolated:
            # A deliberate stop that the hub did not finish: its notebooks too, while its services
            # go (a hub that died on its own leaves them to the warden at the next start). Only
            # now: the hub's own stop goes through the spawner's, which closes each session's
            # record, and JupyterHub skips that for a container already gone.
            pool = ThreadPoolExecutor(max_workers=1)
            notebooks = pool.submit(stop_notebook_containers, settings.network_name)
            pool.shutdown(wait=False)
    finally:
        stop_leftovers(state_dir, progress, grace=1.5)
        (state_dir / "launcher.pid").unlink(missing_ok=True)
    if notebooks is not None:
        try:
            stopped = notebooks.result()
        except Exception as exc:  # the engine gone as well: nothing more to do here
            progress(f"could not stop notebook containers: {exc}")
        else:
            if stopped:
                progress(f"stopped notebook containers: {', '.join(stopped)}")
    if asked and code in (0, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL):
        return
    if code == -signal.SIGKILL:
        raise Unavailable("the hub was killed (SIGKILL: out of memory?); its services were stopped with it")
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise Unavailable(f"the hub exited with status {code}; see its log above")
