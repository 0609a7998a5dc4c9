"""The access service: the web pages of access by application (calls, applications, panel review),
a JupyterHub service at `/services/access/` with the hub's OAuth login, like the review UI."""
