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
