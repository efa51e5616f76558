-- Never dead while in doubt (design §6). A slice with an attempt that may have reached the bank is not given up
-- by counting attempts: once they are exhausted it is looked up in its bound scope until that scope's acceptance
-- window has passed. If the scope still cannot say, the slice is 'unresolved': it may have been paid, and the
-- platform never pays it again without a person (`molamctl payouts resolve`). 'dead' keeps its meaning: provably
-- not executed.

ALTER TABLE payout_slices DROP CONSTRAINT payout_slices_status_check;
ALTER TABLE payout_slices ADD CONSTRAINT payout_slices_status_check CHECK (status IN
    ('pending', 'claimed', 'sending', 'batched', 'sent', 'settled', 'failed', 'retry_scheduled', 'dead',
     'unresolved'));
-- Unresolved is always in doubt in one scope, and says why.
ALTER TABLE payout_slices ADD CONSTRAINT payout_slices_unresolved_check
    CHECK (status <> 'unresolved' OR (bound_scope IS NOT NULL AND last_error IS NOT NULL));
CREATE INDEX payout_slices_unresolved_idx ON payout_slices (updated_at) WHERE status = 'unresolved';

-- As 0007 left it, with 'unresolved' added: the dispatcher (a lookup that cannot say, past the window), the file
-- batcher (a slice no file can carry that an earlier attempt may have put in the bank's hands), and out of it
-- only to a final state (an operator's resolve, a statement line that proves the payment).
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
        ('dead', 'settled'), ('retry_scheduled', 'settled'),
        -- the file channel: handed to a FileBatcher, then in a recorded file, or refused by every file
        ('sending', 'batched'), ('batched', 'sent'), ('batched', 'dead'), ('batched', 'pending'),
        -- may have been paid: a person (or a statement line) decides
        ('claimed', 'unresolved'), ('sending', 'unresolved'), ('batched', 'unresolved'),
        ('unresolved', 'settled'), ('unresolved', 'failed')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'payout slice %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END $$;

-- Slices that may be in a bank's hands and have no final answer yet: unresolved ones too.
CREATE OR REPLACE VIEW payout_slices_in_doubt AS
SELECT s.id, s.payout_id, s.status, s.bound_scope, s.bound_at, now() - s.bound_at AS age, s.connector_name,
       s.attempts, s.last_error
FROM payout_slices s
WHERE s.bound_scope IS NOT NULL
  AND s.status IN ('pending', 'claimed', 'sending', 'retry_scheduled', 'dead', 'unresolved');
