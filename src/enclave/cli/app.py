"""The root `enclave` command: every group mounted under its name, and the top-level commands.

The order of registration is the order `enclave --help` lists them in.
"""

from __future__ import annotations

import typer

from enclave.cli import (access, audit, datasets, db, deploy, grants, image, keys, models, notebook_sessions, people, privacy,
                         projects, release, review, serve, volumes)
from enclave.cli import applications, awards, calls, panel, registrations
from enclave.cli import finetune

app = typer.Typer(
    help="Model Enclave: run a structured-access release of a language model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for group, name in ((db.app, "db"), (people.app, "person"), (projects.app, "project"), (projects.member_app, "member"),
                    (datasets.app, "dataset"), (grants.app, "grant"), (keys.app, "key"), (audit.app, "audit"),
                    (models.app, "model"), (serve.app, "serve"), (review.app, "review"), (release.app, "release"),
                    (image.app, "image"), (notebook_sessions.app, "session"), (volumes.app, "volume"),
                    (privacy.app, "privacy"), (deploy.app, "deploy")):
    app.add_typer(group, name=name)
app.add_typer(finetune.app, name="finetune")  # DP fine-tuning (issue 12)
# Access by competitive application (issue 13).
for group, name in ((calls.app, "call"), (applications.app, "application"), (panel.app, "panel"),
                    (awards.app, "award"), (awards.report_app, "report"), (registrations.app, "registration")):
    app.add_typer(group, name=name)

app.command("init")(db.init)
app.command("up")(serve.up)
app.command("check-access")(access.check_access)
