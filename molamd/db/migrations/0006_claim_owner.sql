-- Which daemon incarnation holds a claim: the key of the PostgreSQL session advisory lock it holds for its whole
-- life. A claim whose owner's lock is free belongs to a process that is gone (killed, crashed, its session
-- ended): another incarnation may take it back at once instead of waiting out the lease.
ALTER TABLE payout_slices ADD COLUMN claim_owner integer;
COMMENT ON COLUMN payout_slices.claim_owner IS
    'advisory lock key (pg_advisory_lock(1836018785, key)) of the incarnation holding the claim; free: it is gone';
