-- Raw statement files may be stored sealed (molamd/encryption.py: AES-256-GCM under a data key per file, the data
-- key wrapped by Vault's transit or a local key): `raw` then holds the sealed form, never the bank's bytes.
-- sha256 and size_bytes stay those of the file as received (duplicates are still found by its hash).
ALTER TABLE bank_statements_raw ADD COLUMN sealed boolean NOT NULL DEFAULT false;
-- A sealed file is longer than the file it holds (a header and a tag per MiB).
ALTER TABLE bank_statements_raw DROP CONSTRAINT bank_statements_raw_check;
ALTER TABLE bank_statements_raw ADD CONSTRAINT bank_statements_raw_size_check
    CHECK (sealed OR octet_length(raw) = size_bytes);

-- With sealing, the fields of a line that matching does not need (the counterparty, the remittance text, the
-- details and the line as the bank wrote it) are NULL in clear and sealed together in sealed_fields, under the
-- file's data key. counterparty_account_hash is an HMAC of the counterparty's account ([encryption] lookup_key)
-- for equality lookups without opening every line.
ALTER TABLE bank_statement_lines ADD COLUMN sealed_fields bytea;
ALTER TABLE bank_statement_lines ADD COLUMN counterparty_account_hash text;
CREATE INDEX bank_statement_lines_counterparty_hash_idx ON bank_statement_lines (counterparty_account_hash)
    WHERE counterparty_account_hash IS NOT NULL;

-- After a rotation of the transit key, a sealed file's data key is rewrapped under the latest key version
-- (`molamctl statements rewrap`) without touching its bytes: data_key then holds the current wrapping (NULL: the
-- one in the sealed header). Whether a file is sealed is as immutable as its bytes.
ALTER TABLE bank_statements_raw ADD COLUMN data_key text;
CREATE OR REPLACE FUNCTION bank_statements_raw_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'bank_statements_raw %: rows are never deleted', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.source, NEW.remote_name, NEW.format, NEW.sha256, NEW.size_bytes, NEW.raw, NEW.received_at, NEW.sealed)
        IS DISTINCT FROM
       (OLD.source, OLD.remote_name, OLD.format, OLD.sha256, OLD.size_bytes, OLD.raw, OLD.received_at, OLD.sealed) THEN
        RAISE EXCEPTION 'bank_statements_raw %: raw data is immutable; only status may change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
