-- Raw statement files may be stored sealed (molamd/encryption.py: AES-256-GCM under a data key per file, the data
-- key wrapped by Vault's transit or a local key): `raw` then holds the sealed form, never the bank's bytes.
-- sha256 and size_bytes stay those of the file as received (duplicates are still found by its hash).
ALTER TABLE bank_statements_raw ADD COLUMN sealed boolean NOT NULL DEFAULT false;
-- A sealed file is longer than the file it holds (a header and a tag per MiB).
ALTER TABLE bank_statements_raw DROP CONSTRAINT bank_statements_raw_check;
ALTER TABLE bank_statements_raw ADD CONSTRAINT bank_statements_raw_size_check
    CHECK (sealed OR octet_length(raw) = size_bytes);
