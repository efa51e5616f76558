-- Dispatch support: give a slice back without counting an attempt (breaker open, connector busy), let an
-- operator drop a dead slice as failed, flag slices whose outcome stays unknown, and audit operator actions.

ALTER TABLE payout_slices ADD COLUMN flagged_at timestamptz;
ALTER TABLE payout_slices ADD COLUMN status_checks integer NOT NULL DEFAULT 0 CHECK (status_checks >= 0);
CREATE INDEX payout_slices_flagged_idx ON payout_slices (flagged_at) WHERE flagged_at IS NOT NULL;

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
        ('dead', 'pending'), ('dead', 'failed')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'payout slice %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END $$;

CREATE TABLE payout_slice_audit (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payout_slice_id  bigint NOT NULL REFERENCES payout_slices (id),
    at               timestamptz NOT NULL DEFAULT now(),
    action           text NOT NULL CHECK (action IN ('dlq_retry', 'dlq_drop')),
    actor            text NOT NULL,
    from_status      text NOT NULL,
    to_status        text NOT NULL,
    detail           text
);
CREATE INDEX payout_slice_audit_slice_idx ON payout_slice_audit (payout_slice_id);
