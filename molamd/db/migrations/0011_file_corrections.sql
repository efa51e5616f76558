-- Two operator corrections of the file channel, each audited.
--
-- `molamctl files resubmit ID --reopen-failed`: the failed slices of a file the bank rejected go back into it.
-- The same bytes uploaded again may pay every one of them, so they are in doubt again in the file's scope
-- ('failed' -> 'sent') until a report resolves them. That move is allowed only inside a transaction that says so
-- (SET LOCAL molamd.reopen_failed = 'on', as payment_files.resubmit does with its audit rows); nothing else may
-- ever take a slice out of 'failed'.
--
-- The guard's list of transitions is restated by several migrations (0007, 0010); this one adds its rule in front
-- of whatever list is in place instead of restating it, so it holds whichever of them ran last before it.
DO $$
DECLARE
    source text := pg_get_functiondef('payout_slices_guard_status()'::regprocedure);
    anchor constant text := 'IF (OLD.status, NEW.status) IN (';
BEGIN
    IF position('molamd.reopen_failed' IN source) > 0 THEN
        RETURN;
    END IF;
    IF position(anchor IN source) = 0 THEN
        RAISE EXCEPTION 'payout_slices_guard_status has no transition list to extend';
    END IF;
    source := replace(source, anchor,
        'IF (OLD.status, NEW.status) = (''failed'', ''sent'')'
        || ' AND current_setting(''molamd.reopen_failed'', true) = ''on'' THEN' || chr(10)
        || '        RETURN NEW;' || chr(10) || '    END IF;' || chr(10) || '    ' || anchor);
    EXECUTE source;
END $$;

-- `molamctl files reapply REPORT`: a stored report applied again (after the config that let another channel take
-- it is fixed, or a file's slices reopened). The evidence stays as received: the application is a new row that
-- names the report it repeats, with the same bytes, and says what it did. A report is still received once per
-- connector (the unique key now holds for received rows only).
ALTER TABLE payment_status_reports ADD COLUMN reapplied_from bigint REFERENCES payment_status_reports (id);
ALTER TABLE payment_status_reports ADD COLUMN reapplied_by text;
ALTER TABLE payment_status_reports ADD CONSTRAINT payment_status_reports_reapplied_check
    CHECK ((reapplied_from IS NULL) = (reapplied_by IS NULL));
ALTER TABLE payment_status_reports DROP CONSTRAINT payment_status_reports_connector_name_sha256_key;
CREATE UNIQUE INDEX payment_status_reports_received_key ON payment_status_reports (connector_name, sha256)
    WHERE reapplied_from IS NULL;
