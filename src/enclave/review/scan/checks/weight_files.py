"""Model weights files, recognised by their bytes: safetensors, pickles (pt/pth/bin/joblib),
PyTorch zip checkpoints, numpy npy/npz, HDF5, ONNX, GGUF/GGML. None of them may leave: they are
how weights travel, and a pickle can also run code on whoever opens it."""
from __future__ import annotations

from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.detect import Kind
from enclave.review.scan.items import Item

NAME = "weight_files"


def check(item: Item, env: Env) -> Result:
    result = Result()
    if item.kind is Kind.tensor:
        result.add(NAME, env.policy.weights.tensor_file_severity, item.name, "whole file",
                   f"a {item.sniffed.format} file: model weights and tensor files may not be exported",
                   format=item.sniffed.format)
    return result
