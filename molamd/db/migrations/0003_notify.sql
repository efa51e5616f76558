-- Wake dispatchers when new payout slices arrive, instead of making them poll.
CREATE FUNCTION payout_slices_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('molamd_payout_slices', '');
    RETURN NULL;
END $$;
CREATE TRIGGER payout_slices_notify AFTER INSERT ON payout_slices
    FOR EACH STATEMENT EXECUTE FUNCTION payout_slices_notify();
