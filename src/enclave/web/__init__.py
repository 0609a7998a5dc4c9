"""What every HTTP service of the enclave shares (gateway, review, and those to come): who is
calling (`hub_auth`) and how a user error becomes an HTTP answer (`errors`).

Services import this; it imports only the registry layer's `enclave.errors` and libraries, never a
service, so that services stay independent of each other.
"""
