# The least privilege molamd needs on OpenBao or HashiCorp Vault (the AppRole role "molamd" carries this policy).
# Paths assume the mounts scripts/vault-setup makes: KV v2 at secret/, transit/, database/.
# What "default" already grants is not repeated: auth/token/{lookup,renew,revoke}-self, sys/leases/{renew,lookup}.

# Secrets the config references as vault:secret/molamd/...#FIELD: read a version, and read the metadata the
# rotation check compares versions with. No write, no delete, no list of other trees.
path "secret/data/molamd/*"     { capabilities = ["read"] }
path "secret/metadata/molamd/*" { capabilities = ["read"] }

# Encryption at rest: a data key per file (wrapped by the key "molamd"), its unwrap, and rewrap after a rotation.
# "update" only, never "create": a mistyped key name is refused rather than created.
path "transit/datakey/plaintext/molamd" { capabilities = ["update"] }
path "transit/decrypt/molamd"           { capabilities = ["update"] }
path "transit/rewrap/molamd"            { capabilities = ["update"] }

# Leased PostgreSQL credentials ([database] credentials = "vault-db:molamd"). No sys/leases/revoke: it takes
# any lease id; the daemon's leases end with its token (revoked at a clean stop) or run out.
path "database/creds/molamd" { capabilities = ["read"] }

# Short-lived mTLS client certificates for REST connectors ([connectors.rest] client_pki).
path "pki/issue/molamd-client" { capabilities = ["update"] }
