"""What every HTTP service of the enclave shares (gateway, review, access, privacy): who is calling
(`hub_auth`), browser sessions (`browser_session`) and the pages logged in through the hub's OAuth
(`oauth_pages`), how a user error becomes an HTTP answer (`errors`), short registry transactions
(`transactions`) and a service's own signing key (`keys`).

Services import this; it imports only the registry layer, `enclave.errors` and libraries, never a
service, so that services stay independent of each other.
"""
