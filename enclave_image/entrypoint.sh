#!/bin/sh
# Entry point of the enclave notebook image: prepare the per-session scratch space, then run the
# command (jupyterhub-singleuser by default). The root filesystem is read-only and /tmp is an
# empty tmpfs at every start, so everything Jupyter, IPython and matplotlib write goes under /tmp,
# created here.
set -eu
mkdir -p "$JUPYTER_RUNTIME_DIR" "$IPYTHONDIR" "$MPLCONFIGDIR" "$XDG_CACHE_HOME"
chmod 700 "$JUPYTER_RUNTIME_DIR"
# matplotlib's font cache was built into the image; a copy saves each session rebuilding it.
cp -p /opt/matplotlib-cache/* "$MPLCONFIGDIR"/ 2>/dev/null || true
# JupyterLab's settings and workspaces live on the work volume, so they outlive the container.
# Without a volume (e.g. a bare `docker run`) the directory is read-only: Lab then keeps defaults.
mkdir -p "$JUPYTERLAB_SETTINGS_DIR" "$JUPYTERLAB_WORKSPACES_DIR" 2>/dev/null || true
exec "$@"
