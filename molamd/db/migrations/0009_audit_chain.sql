-- The audit trail an auditor can trust: molamd_audit (operator actions, the daemon's decisions about slices) and
-- bank_connector_logs (every bank call) become tables partitioned by month (UTC), and every row is chained by hash
-- to the one before it in its month: row_hash = sha256 of the row as jsonb (prev_hash and chain_seq included,
-- row_hash left out), prev_hash = the previous row's row_hash (the first row of a month chains to a genesis hash
-- of the table and month). molamd_audit_chain keeps each month's head (last seq and hash), so a row removed from
-- the end is noticed too. `molamd audit verify` recomputes the chains; `molamd audit export` writes a month out
-- with its checksum; partitions past [audit] retention_months are detached (kept as tables), never dropped.

CREATE TABLE molamd_audit_chain (
    table_name  text NOT NULL,
    month       date NOT NULL,
    seq         bigint NOT NULL,
    head        bytea NOT NULL,
    retired_at  timestamptz,  -- its partition detached after export (molamd audit retire): verify skips it
    PRIMARY KEY (table_name, month)
);

CREATE TABLE molamd_audit_exports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name   text NOT NULL,
    month        date NOT NULL,
    rows         bigint NOT NULL,
    head         bytea,
    file_name    text NOT NULL,
    sha256       text NOT NULL,
    exported_at  timestamptz NOT NULL DEFAULT now(),
    exported_by  text NOT NULL
);
CREATE INDEX molamd_audit_exports_month_idx ON molamd_audit_exports (table_name, month);

-- The canonical text of a row is its jsonb text in UTC with the shortest exact floats: the same in the trigger
-- and in `molamd audit verify`, whatever the session's settings.
CREATE FUNCTION molamd_audit_row_hash(row_json jsonb) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT sha256(convert_to((row_json - 'row_hash')::text, 'UTF8')) $$;

CREATE FUNCTION molamd_audit_genesis(table_name text, month date) RETURNS bytea LANGUAGE sql IMMUTABLE
    AS $$ SELECT sha256(convert_to('molamd audit chain ' || table_name || ' ' || to_char(month, 'YYYY-MM'), 'UTF8')) $$;

-- The chain's running head is kept in a transaction-local setting while a transaction writes: the head row is
-- locked and read once per transaction and month (its lock orders concurrent writers, on every host, until they
-- commit), each row takes the next seq and links to the previous hash, and the head row is written once per
-- INSERT statement (molamd_audit_chain_heads), not once per row. Rows go in through the partitioned tables
-- (molamd's only way in): an INSERT straight into a partition leaves the head behind, which `verify` reports.
CREATE FUNCTION molamd_audit_chain_row() RETURNS trigger LANGUAGE plpgsql
    SET TimeZone = 'UTC' SET extra_float_digits = 1 AS $$
DECLARE
    m date := date_trunc('month', NEW.at AT TIME ZONE 'UTC')::date;
    key text := 'molamd.chain_' || TG_ARGV[0] || '_' || to_char(m, 'YYYY_MM');
    cached text := current_setting(key, true);
    dirty text := coalesce(current_setting('molamd.chain_dirty', true), '');
    s bigint;
    h bytea;
BEGIN
    IF cached IS NULL OR cached = '' THEN
        SELECT seq, head INTO s, h FROM molamd_audit_chain WHERE table_name = TG_ARGV[0] AND month = m FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO molamd_audit_chain (table_name, month, seq, head)
                VALUES (TG_ARGV[0], m, 0, molamd_audit_genesis(TG_ARGV[0], m)) ON CONFLICT DO NOTHING;
            SELECT seq, head INTO s, h FROM molamd_audit_chain WHERE table_name = TG_ARGV[0] AND month = m
                FOR UPDATE;
        END IF;
    ELSE
        s := split_part(cached, ':', 1)::bigint;
        h := decode(split_part(cached, ':', 2), 'hex');
    END IF;
    NEW.chain_seq := s + 1;
    NEW.prev_hash := h;
    NEW.row_hash := molamd_audit_row_hash(to_jsonb(NEW));
    PERFORM set_config(key, (s + 1)::text || ':' || encode(NEW.row_hash, 'hex'), true);
    IF position(key || ',' IN dirty) = 0 THEN
        PERFORM set_config('molamd.chain_dirty', dirty || key || ',', true);
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION molamd_audit_chain_heads() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key text;
    cached text;
    prefix text := 'molamd.chain_' || TG_ARGV[0] || '_';
BEGIN
    FOREACH key IN ARRAY string_to_array(rtrim(coalesce(current_setting('molamd.chain_dirty', true), ''), ','), ',')
    LOOP
        CONTINUE WHEN left(key, length(prefix)) <> prefix;
        cached := current_setting(key, true);
        UPDATE molamd_audit_chain SET seq = split_part(cached, ':', 1)::bigint,
                                      head = decode(split_part(cached, ':', 2), 'hex')
            WHERE table_name = TG_ARGV[0] AND month = to_date(right(key, 7), 'YYYY_MM');
    END LOOP;
    RETURN NULL;
END $$;

CREATE FUNCTION molamd_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: rows are never changed or deleted', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END $$;

-- Month partitions of both tables from `first` to `months_ahead` months after now; a month whose rows already
-- sit in the default partition is left there (its chain is by month, not by partition) and reported.
CREATE FUNCTION molamd_audit_partitions(first date, months_ahead integer) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    t text;
    m date;
    name text;
BEGIN
    FOREACH t IN ARRAY ARRAY['molamd_audit', 'bank_connector_logs'] LOOP
        m := date_trunc('month', first)::date;
        WHILE m <= (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => months_ahead))::date LOOP
            name := format('%s_%s', t, to_char(m, 'YYYY_MM'));
            IF to_regclass(name) IS NULL THEN
                BEGIN
                    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', name, t,
                                   m::text || ' 00:00:00+00', (m + interval '1 month')::date::text || ' 00:00:00+00');
                    RETURN NEXT name;
                EXCEPTION WHEN check_violation THEN
                    RAISE WARNING '%: rows of % are in %_default; left there', name, m, t;
                END;
            END IF;
            m := (m + interval '1 month')::date;
        END LOOP;
    END LOOP;
END $$;

-- molamd_audit, partitioned
ALTER TABLE molamd_audit RENAME TO molamd_audit_unpartitioned;
DROP TRIGGER molamd_audit_append_only ON molamd_audit_unpartitioned;
DROP INDEX molamd_audit_at_idx, molamd_audit_slice_idx, molamd_audit_uid_idx;
CREATE TABLE molamd_audit (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    payout_slice_id  bigint REFERENCES payout_slices (id),
    at               timestamptz NOT NULL DEFAULT now(),
    action           text NOT NULL,
    actor            text NOT NULL,
    from_status      text,
    to_status        text,
    detail           text,
    host_id          text,
    uid              integer,
    user_name        text,
    pid              integer,
    target           text,
    arguments        jsonb,
    ok               boolean NOT NULL DEFAULT true,
    chain_seq        bigint NOT NULL DEFAULT 0,
    prev_hash        bytea,
    row_hash         bytea,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE molamd_audit_default PARTITION OF molamd_audit DEFAULT;
CREATE INDEX molamd_audit_at_idx ON molamd_audit (at DESC);
CREATE INDEX molamd_audit_slice_idx ON molamd_audit (payout_slice_id);
CREATE INDEX molamd_audit_uid_idx ON molamd_audit (uid, at DESC) WHERE uid IS NOT NULL;

-- bank_connector_logs, partitioned
ALTER TABLE bank_connector_logs RENAME TO bank_connector_logs_unpartitioned;
DROP INDEX bank_connector_logs_connector_idx, bank_connector_logs_trace_idx, bank_connector_logs_slice_idx;
CREATE TABLE bank_connector_logs (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    at                timestamptz NOT NULL DEFAULT now(),
    host_id           text NOT NULL,
    connector_name    text NOT NULL,
    trace_id          text NOT NULL,
    operation         text NOT NULL,
    duration_seconds  double precision NOT NULL CHECK (duration_seconds >= 0),
    outcome           text NOT NULL CHECK (outcome IN ('ok', 'error')),
    error_code        text,
    http_status       integer,
    payout_slice_id   bigint,
    request           jsonb,
    response          jsonb,
    chain_seq         bigint NOT NULL DEFAULT 0,
    prev_hash         bytea,
    row_hash          bytea,
    CHECK (outcome = 'ok' OR error_code IS NOT NULL),
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE bank_connector_logs_default PARTITION OF bank_connector_logs DEFAULT;
CREATE INDEX bank_connector_logs_connector_idx ON bank_connector_logs (connector_name, at DESC);
CREATE INDEX bank_connector_logs_trace_idx ON bank_connector_logs (trace_id);
CREATE INDEX bank_connector_logs_slice_idx ON bank_connector_logs (payout_slice_id) WHERE payout_slice_id IS NOT NULL;

SELECT molamd_audit_partitions(
    least((SELECT min(at) FROM molamd_audit_unpartitioned), (SELECT min(at) FROM bank_connector_logs_unpartitioned),
          now())::date, 3);

CREATE TRIGGER molamd_audit_chain BEFORE INSERT ON molamd_audit
    FOR EACH ROW EXECUTE FUNCTION molamd_audit_chain_row('molamd_audit');
CREATE TRIGGER molamd_audit_chain_heads AFTER INSERT ON molamd_audit
    FOR EACH STATEMENT EXECUTE FUNCTION molamd_audit_chain_heads('molamd_audit');
CREATE TRIGGER molamd_audit_append_only BEFORE UPDATE OR DELETE ON molamd_audit
    FOR EACH ROW EXECUTE FUNCTION molamd_append_only('molamd_audit');
CREATE TRIGGER bank_connector_logs_chain BEFORE INSERT ON bank_connector_logs
    FOR EACH ROW EXECUTE FUNCTION molamd_audit_chain_row('bank_connector_logs');
CREATE TRIGGER bank_connector_logs_chain_heads AFTER INSERT ON bank_connector_logs
    FOR EACH STATEMENT EXECUTE FUNCTION molamd_audit_chain_heads('bank_connector_logs');
CREATE TRIGGER bank_connector_logs_append_only BEFORE UPDATE OR DELETE ON bank_connector_logs
    FOR EACH ROW EXECUTE FUNCTION molamd_append_only('bank_connector_logs');

-- The rows so far, in their order, chained as they go in.
INSERT INTO molamd_audit (id, payout_slice_id, at, action, actor, from_status, to_status, detail, host_id, uid,
                          user_name, pid, target, arguments, ok) OVERRIDING SYSTEM VALUE
    SELECT id, payout_slice_id, at, action, actor, from_status, to_status, detail, host_id, uid, user_name, pid,
           target, arguments, ok FROM molamd_audit_unpartitioned ORDER BY at, id;
INSERT INTO bank_connector_logs (id, at, host_id, connector_name, trace_id, operation, duration_seconds, outcome,
                                 error_code, http_status, payout_slice_id, request, response) OVERRIDING SYSTEM VALUE
    SELECT id, at, host_id, connector_name, trace_id, operation, duration_seconds, outcome, error_code, http_status,
           payout_slice_id, request, response FROM bank_connector_logs_unpartitioned ORDER BY at, id;
SELECT setval(pg_get_serial_sequence('molamd_audit', 'id'), coalesce(max(id), 0) + 1, false) FROM molamd_audit;
SELECT setval(pg_get_serial_sequence('bank_connector_logs', 'id'), coalesce(max(id), 0) + 1, false)
    FROM bank_connector_logs;
DROP TABLE molamd_audit_unpartitioned;
DROP TABLE bank_connector_logs_unpartitioned;
DROP FUNCTION molamd_audit_append_only();
