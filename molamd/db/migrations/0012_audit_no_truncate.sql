-- The audit trail refuses TRUNCATE, which skips the row triggers that refuse UPDATE and DELETE: a statement
-- trigger on each audit table, each of its partitions (the default one, those made later by
-- molamd_audit_partitions, and detached ones kept as tables), the chain heads, the export records and the raw
-- statement files. The chain heads are never deleted nor moved back (seq only grows, a month and table never
-- change, retired only once exported with the head it has), and a head is written for every month a partition is
-- made for, empty or not, so `molamd audit verify` can require one for every month from the first partition to
-- now: a month whose rows and head were both removed is named instead of missing from the report.

CREATE FUNCTION molamd_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: the audit trail is never truncated', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE FUNCTION molamd_refuse_truncate(rel regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'molamd_no_truncate') THEN
        EXECUTE format('CREATE TRIGGER molamd_no_truncate BEFORE TRUNCATE ON %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION molamd_no_truncate()', rel);
    END IF;
END $$;

CREATE FUNCTION molamd_audit_chain_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'molamd_audit_chain: the head of % % is never deleted', OLD.table_name,
            to_char(OLD.month, 'YYYY-MM') USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.table_name <> OLD.table_name OR NEW.month <> OLD.month THEN
        RAISE EXCEPTION 'molamd_audit_chain: the head of % % cannot move to another table or month',
            OLD.table_name, to_char(OLD.month, 'YYYY-MM') USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.seq < OLD.seq OR (NEW.seq = OLD.seq AND NEW.head <> OLD.head) THEN
        RAISE EXCEPTION 'molamd_audit_chain: the head of % % only moves forward (seq % -> %)', OLD.table_name,
            to_char(OLD.month, 'YYYY-MM'), OLD.seq, NEW.seq USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.retired_at IS DISTINCT FROM OLD.retired_at AND (OLD.retired_at IS NOT NULL OR NOT EXISTS (
            SELECT 1 FROM molamd_audit_exports e WHERE e.table_name = NEW.table_name AND e.month = NEW.month
                AND e.head IS NOT DISTINCT FROM NEW.head)) THEN
        RAISE EXCEPTION 'molamd_audit_chain: % % is retired once, after an export with its current head',
            OLD.table_name, to_char(OLD.month, 'YYYY-MM') USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER molamd_audit_chain_guard BEFORE UPDATE OR DELETE ON molamd_audit_chain
    FOR EACH ROW EXECUTE FUNCTION molamd_audit_chain_guard();

-- As in 0009, with each partition made refusing TRUNCATE, and the head of every month in the range written
-- (seq 0, the genesis hash: what the first row of the month would have made) so an empty month has one too.
CREATE OR REPLACE FUNCTION molamd_audit_partitions(first date, months_ahead integer) RETURNS SETOF text
    LANGUAGE plpgsql AS $$
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
                    PERFORM molamd_refuse_truncate(name::regclass);
                    RETURN NEXT name;
                EXCEPTION WHEN check_violation THEN
                    RAISE WARNING '%: rows of % are in %_default; left there', name, m, t;
                END;
            END IF;
            INSERT INTO molamd_audit_chain (table_name, month, seq, head)
                VALUES (t, m, 0, molamd_audit_genesis(t, m)) ON CONFLICT DO NOTHING;
            m := (m + interval '1 month')::date;
        END LOOP;
    END LOOP;
END $$;

SELECT molamd_refuse_truncate(c.oid::regclass) FROM pg_class c
    WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
      AND (c.relname IN ('molamd_audit', 'bank_connector_logs', 'molamd_audit_chain', 'molamd_audit_exports',
                         'bank_statements_raw')
           OR c.relname ~ '^(molamd_audit|bank_connector_logs)_([0-9]{4}_[0-9]{2}|default)$');

-- The heads of the months partitioned so far that have none and whose partition is empty: the state at this
-- migration is taken as it is, as 0009 took the rows it chained (a month with rows and no head stays a finding).
DO $$
DECLARE
    part record;
    empty boolean;
BEGIN
    FOR part IN SELECT i.inhparent::regclass::text AS t, c.relname AS name, to_date(right(c.relname, 7), 'YYYY_MM') AS m
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent IN ('molamd_audit'::regclass, 'bank_connector_logs'::regclass)
                  AND c.relname ~ '_[0-9]{4}_[0-9]{2}$' LOOP
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I)', part.name) INTO empty;
        IF empty THEN
            INSERT INTO molamd_audit_chain (table_name, month, seq, head)
                VALUES (part.t, part.m, 0, molamd_audit_genesis(part.t, part.m)) ON CONFLICT DO NOTHING;
        END IF;
    END LOOP;
END $$;
