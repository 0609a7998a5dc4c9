"""DP fine-tuning of the project's GPT-2 on one of its datasets, from a notebook, over HTTP.

    from enclave.client.finetune import finetune, finetune_jobs
    job = finetune("patients", epsilon=4.0, delta=1e-6, epochs=3)   # queued; checked, not yet charged
    job.status()["progress"]        # {"step", "total", "epsilon_spent"}
    done = job.wait()               # polls until done or failed, printing progress; the final job
    done["model"]                   # the new model's name: call it through the gateway (this project only)
    done["exposure"]["table"]       # the canary audit: exposure per repetition count
    finetune_jobs()                 # the project's jobs

The privacy service checks the request at once (the dataset is the project's, epsilon > 0,
delta < 1/n for its n records, the budget can pay) and queues the job; its worker runs one job at
a time, charging epsilon and delta to the project's ledger when the job starts (a job that then
fails keeps its charge). The weights never leave the enclave: the model is served by the gateway
to this project and cannot be exported. A non-private fine-tune is not available from notebooks:
it needs an operator. A notebook sees a job's status, progress, model and canary exposure table;
the training loss, the membership-inference report and why a job failed are for operators
(`enclave finetune show ID`): they are computed on the private records.

Configuration: JUPYTERHUB_API_TOKEN, ENCLAVE_PRIVACY_URL (and ENCLAVE_PROJECT), which the hub
gives every notebook. HTTP only; no torch.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from enclave.client._http import Config, EnclaveError, call

__all__ = ["FinetuneJob", "finetune", "finetune_jobs"]


def _call(method: str, path: str, config: Config | None, **kwargs: Any) -> Any:
    return call(config, "privacy", method, path, **kwargs)


class FinetuneJob:
    """A submitted fine-tune: its id, and calls that read its state from the service."""

    def __init__(self, record: dict, config: Config | None = None):
        self.id: str = record["id"]
        self.record = record
        self._config = config

    def __repr__(self) -> str:
        return f"FinetuneJob({self.id!r}, status={self.record.get('status')!r})"

    def status(self) -> dict:
        """The job now: status, progress (step, total, epsilon spent), model, canary exposure table."""
        self.record = _call("GET", f"/api/finetune/{self.id}", self._config)
        return self.record

    def wait(self, *, poll_seconds: float = 5.0, timeout: float | None = None, progress: bool = True) -> dict:
        """Poll until the job is done or failed (EnclaveError if it failed, or on `timeout`)."""
        started = time.monotonic()
        last = None
        while True:
            record = self.status()
            p = record["progress"]
            line = (f"{record['status']}: step {p['step']}/{p['total']}"
                    + (f", epsilon spent {p['epsilon_spent']:.3f}" if p.get("epsilon_spent") is not None else ""))
            if progress and line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
            if record["status"] == "done":
                return record
            if record["status"] == "failed":
                raise EnclaveError(f"fine-tune {self.id} failed: {record['message']}")
            if timeout is not None and time.monotonic() - started > timeout:
                raise EnclaveError(f"fine-tune {self.id} is still {record['status']} after {timeout:g} s")
            time.sleep(poll_seconds)


def finetune(dataset: str, *, epsilon: float, delta: float, base: str | None = None, epochs: int | None = None,
             batch_size: int | None = None, learning_rate: float | None = None, max_grad_norm: float | None = None,
             max_length: int | None = None, accountant: str | None = None, grad_sample_mode: str | None = None,
             holdout: float | None = None, max_records: int | None = None, seed: int | None = None,
             config: Config | None = None, **more: Any) -> FinetuneJob:
    """Queue a DP fine-tune of the project's GPT-2 (or the catalog model `base`) on `dataset`."""
    body: dict[str, Any] = {"dataset": dataset, "epsilon": epsilon, "delta": delta}
    for key, value in dict(base=base, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                           max_grad_norm=max_grad_norm, max_length=max_length, accountant=accountant,
                           grad_sample_mode=grad_sample_mode, holdout=holdout, max_records=max_records, seed=seed,
                           **more).items():
        if value is not None:
            body[key] = value
    return FinetuneJob(_call("POST", "/api/finetune", config, json=body), config)


def finetune_jobs(config: Config | None = None) -> list[dict]:
    """The project's fine-tune jobs, oldest first."""
    return _call("GET", "/api/finetune", config)
