-- Exactly once across channels (design §6): every attempt is recorded before it starts, and a slice that may be
-- in a bank's hands stays bound to that channel's idempotency scope until the channel says it never got it or
-- an operator releases it. One audit table for what people and the daemon did to a slice or a connector.

-- The scope of the latest attempt that may have reached a bank, and when that attempt started (the acceptance
-- window runs from there). NULL: no bank can have this slice; any connector of its bank profile may take it.
ALTER TABLE payout_slices
    ADD COLUMN bound_scope  text CHECK (length(bound_scope) BETWEEN 1 AND 100),
    ADD COLUMN bound_at     timestamptz,
    ADD CONSTRAINT payout_slices_bound_check CHECK ((bound_scope IS NULL) = (bound_at IS NULL));
CREATE INDEX payout_slices_bound_idx ON payout_slices (bound_scope, bound_at) WHERE bound_scope IS NOT NULL;
-- Slices that were already with a connector when this migration ran may be in its bank's hands: bind them to
-- that connector's default scope (its name). A connector configured with another scope then finds them waiting,
-- in doubt, until its scope answers for them or an operator releases them: the safe side.
UPDATE payout_slices SET bound_scope = connector_name, bound_at = updated_at
WHERE connector_name IS NOT NULL AND status IN ('sending', 'sent', 'retry_scheduled', 'dead');

CREATE TABLE payout_slice_attempts (
    payout_slice_id    bigint NOT NULL REFERENCES payout_slices (id),
    attempt_no         integer NOT NULL CHECK (attempt_no >= 1),
    host_id            text NOT NULL,
    connector_name     text NOT NULL,
    idempotency_scope  text NOT NULL,
    trace_id           text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    ended_at           timestamptz,
    -- NULL while running (or when the daemon died mid-call: in doubt). answered: the bank answered about the
    -- payment; refused: a definite refusal (4xx, 401/403, 409, 429); not_sent: nothing left us (breaker, limiter,
    -- bulkhead, busy, connection refused); in_doubt: timeout, reset, 5xx, garbage, abandoned.
    outcome            text CHECK (outcome IN ('answered', 'refused', 'not_sent', 'in_doubt')),
    error              text,
    -- The slice's binding before this attempt, put back when the attempt provably did not reach the bank.
    bound_before       text,
    bound_at_before    timestamptz,
    PRIMARY KEY (payout_slice_id, attempt_no),
    CHECK ((outcome IS NULL) = (ended_at IS NULL))
);
CREATE INDEX payout_slice_attempts_open_idx ON payout_slice_attempts (started_at) WHERE outcome IS NULL;

-- Whoever writes: an attempt never goes to another scope than the one its slice is bound to.
CREATE FUNCTION payout_slice_attempts_guard_scope() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bound text;
BEGIN
    SELECT bound_scope INTO bound FROM payout_slices WHERE id = NEW.payout_slice_id;
    IF bound IS NOT NULL AND bound <> NEW.idempotency_scope THEN
        RAISE EXCEPTION 'payout slice %: bound to idempotency scope %, attempt in scope % refused',
            NEW.payout_slice_id, bound, NEW.idempotency_scope USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payout_slice_attempts_guard_scope BEFORE INSERT ON payout_slice_attempts
    FOR EACH ROW EXECUTE FUNCTION payout_slice_attempts_guard_scope();

-- Slices that may be in a bank's hands and have no final answer yet.
CREATE VIEW payout_slices_in_doubt AS
SELECT s.id, s.payout_id, s.status, s.bound_scope, s.bound_at, now() - s.bound_at AS age, s.connector_name,
       s.attempts, s.last_error
FROM payout_slices s
WHERE s.bound_scope IS NOT NULL AND s.status IN ('pending', 'claimed', 'sending', 'retry_scheduled', 'dead');

-- One audit trail: operator actions (with the caller's identity from SO_PEERCRED), the daemon's own decisions
-- about a slice (scope releases, statement settlements). Rows are never changed or deleted.
ALTER TABLE payout_slice_audit DROP CONSTRAINT payout_slice_audit_action_check;
ALTER TABLE payout_slice_audit ALTER COLUMN payout_slice_id DROP NOT NULL;
ALTER TABLE payout_slice_audit ALTER COLUMN from_status DROP NOT NULL;
ALTER TABLE payout_slice_audit ALTER COLUMN to_status DROP NOT NULL;
ALTER TABLE payout_slice_audit RENAME TO molamd_audit;
ALTER TABLE molamd_audit
    ADD COLUMN host_id    text,
    ADD COLUMN uid        integer,
    ADD COLUMN user_name  text,
    ADD COLUMN pid        integer,
    ADD COLUMN target     text,
    ADD COLUMN arguments  jsonb,
    ADD COLUMN ok         boolean NOT NULL DEFAULT true;
ALTER INDEX payout_slice_audit_slice_idx RENAME TO molamd_audit_slice_idx;
CREATE INDEX molamd_audit_at_idx ON molamd_audit (at DESC);
CREATE INDEX molamd_audit_uid_idx ON molamd_audit (uid, at DESC) WHERE uid IS NOT NULL;

CREATE FUNCTION molamd_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'molamd_audit: rows are never changed or deleted' USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER molamd_audit_append_only BEFORE UPDATE OR DELETE ON molamd_audit
    FOR EACH ROW EXECUTE FUNCTION molamd_audit_append_only();

-- Reconciliation matches a line only inside the bank profile of the source that delivered its statement.
ALTER TABLE bank_statements_raw ADD COLUMN bank_profile_id text;
CREATE INDEX treasury_accounts_iban_idx ON treasury_accounts (iban) WHERE iban IS NOT NULL;
CREATE INDEX treasury_accounts_number_idx ON treasury_accounts (account_number) WHERE account_number IS NOT NULL;
