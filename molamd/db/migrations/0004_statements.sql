-- Statement ingestion: exact amounts at any scale, the bank's own line kept beside each row, and the lookups
-- reconciliation needs.

-- numeric(20, 4) would round a five-decimal camt amount without a word: keep every digit the bank sent.
ALTER TABLE bank_statement_lines ALTER COLUMN amount TYPE numeric;
ALTER TABLE bank_statement_lines
    ADD COLUMN raw_line     text,
    ADD COLUMN source_line  integer CHECK (source_line >= 0);
ALTER TABLE bank_statements_raw ADD COLUMN statement_count integer CHECK (statement_count >= 0);

-- Reconciliation finds a slice by the end-to-end reference we sent (the idempotency key, which has its own
-- unique index) or by the bank's payment id alone (0001 indexes it behind the connector name).
CREATE INDEX payout_slices_bank_ref_idx ON payout_slices (provider_ref) WHERE provider_ref IS NOT NULL;

-- Raw statement files are large text: lz4 stores them several times faster than the default pglz. A server
-- built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE bank_statements_raw ALTER COLUMN raw SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available; bank_statements_raw.raw keeps the default compression';
END $$;

-- A bank statement line that carries a payout is proof the money left: it settles a slice whose outcome was
-- still open (sent, waiting for a retry, or given up on as dead), with an audit row for the last two.
CREATE OR REPLACE FUNCTION payout_slices_guard_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF (OLD.status, NEW.status) IN (
        ('pending', 'claimed'), ('retry_scheduled', 'claimed'),
        ('claimed', 'sending'), ('claimed', 'pending'), ('claimed', 'retry_scheduled'), ('claimed', 'dead'),
        ('claimed', 'sent'), ('claimed', 'settled'), ('claimed', 'failed'),
        ('sending', 'sent'), ('sending', 'settled'), ('sending', 'failed'), ('sending', 'retry_scheduled'),
        ('sending', 'dead'), ('sending', 'claimed'), ('sending', 'pending'),
        ('sent', 'settled'), ('sent', 'failed'),
        ('dead', 'pending'), ('dead', 'failed'),
        ('dead', 'settled'), ('retry_scheduled', 'settled')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'payout slice %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END $$;

ALTER TABLE payout_slice_audit DROP CONSTRAINT payout_slice_audit_action_check;
ALTER TABLE payout_slice_audit ADD CONSTRAINT payout_slice_audit_action_check
    CHECK (action IN ('dlq_retry', 'dlq_drop', 'statement_settle'));
