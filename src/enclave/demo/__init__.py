"""Demo material for the embedded enclave: people, a project, (later) data and a model."""
