# Jupyter server configuration baked into the enclave notebook image (/etc/jupyter).
#
# The container runs with a read-only root filesystem and a tmpfs /tmp; the only writable,
# persistent place is the work volume at /home/scholar/work. The project's datasets are mounted
# read-only at /home/scholar/datasets. This file lives on the read-only root, so a kernel cannot
# change it; the spawner may still pass `--EnclaveLockdown.*` arguments to set the policy.
c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

# --- The lock-down extension, and nothing that would sidestep it ---------------------------
c.ServerApp.jpserver_extensions.update({
    "enclave_lockdown": True,
    # Language servers read files and answer with their text over their own websocket.
    "jupyter_lsp": False,
    # A terminal streams whatever it prints, uncapped; a kernel has the same reach, capped.
    "jupyter_server_terminals": False,
})
c.ServerApp.terminals_enabled = False
# A failed extension is normally only logged; a server without its lock-down must not run.
c.ServerApp.reraise_server_extension_failures = True

# Policy (the review service's policy.toml is the source; these are its browser-egress numbers).
c.EnclaveLockdown.max_read_bytes = 1_000_000
c.EnclaveLockdown.max_output_bytes = 1_000_000
c.EnclaveLockdown.datasets_dir = "datasets"

# --- Layout -----------------------------------------------------------------------------------
# The spawner's notebook_dir (JUPYTERHUB_ROOT_DIR) overrides this; datasets_dir is relative to it.
c.ServerApp.root_dir = "/home/scholar"
c.FileContentsManager.preferred_dir = "work"
# No trash can on a read-only home: deleting means deleting.
c.FileContentsManager.delete_to_trash = False
# The notary's database would live in the (read-only) data directory; trust lasts a session.
c.NotebookNotary.db_file = ":memory:"
# Its signing secret too: on the per-container tmpfs, so it dies with the session.
c.NotebookNotary.secret_file = "/tmp/jupyter-notebook-secret"

# --- Offline: nothing may try to reach the internet -------------------------------------------
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.extension_manager = "readonly"
