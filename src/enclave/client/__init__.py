"""What scholars import in notebooks: the model gateway and the export airlock, over HTTP.

    from enclave import client
    client.complete("The capital of France is", max_new_tokens=5)
    client.score("Some text")                      # log-probabilities of its own tokens
    client.next_token("Once upon a", top_k=5)      # at most 5 most likely next tokens
    client.usage()                                 # what is left of the project's grant, its tier
    client.models()                                # the models this project may use (model=... in calls)
    client.activations("Hello", ["blocks.0.hook_resid_pre"])  # numpy float16 arrays (internals tier)
    client.export(["results/table2.csv"], justification="Table 2 of the paper", context="...")
    client.dp.mean("patients", "age", epsilon=0.5, bounds=(0, 110))   # differentially private, charged
    job = client.finetune("patients", epsilon=8, delta=1e-5)  # DP fine-tune (finetune tier); job.wait()

Configuration comes from the environment the hub gives every notebook: JUPYTERHUB_API_TOKEN,
ENCLAVE_GATEWAY_URL, ENCLAVE_REVIEW_URL, ENCLAVE_PRIVACY_URL, ENCLAVE_PROJECT. Light on purpose: HTTP only (httpx), no
torch, and nothing else of the enclave's own code.
"""

from enclave.client import dp
from enclave.client._http import Config, EnclaveError
from enclave.client.finetune import finetune, finetune_jobs
from enclave.client.exports import comment, export, export_status, exports, resubmit, withdraw
from enclave.client.gateway import activations, complete, generate, hooks, model, models, next_token, score, usage
from enclave.client.results import Result

__all__ = [
    "Config", "EnclaveError", "comment", "dp", "finetune", "finetune_jobs", "complete", "export", "export_status", "exports", "generate", "next_token",
    "resubmit", "score", "usage", "withdraw", "activations", "hooks", "model", "models", "Result",
]
