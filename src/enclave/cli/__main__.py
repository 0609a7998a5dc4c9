"""`python -m enclave.cli`: how the hub starts its managed services with this very interpreter."""
from enclave.cli import main

main()
