-- molamd core schema: bank profiles and accounts, the connector registry, the payout queue,
-- raw statements and their lines, the connector audit log and secret metadata (never values).

CREATE FUNCTION molamd_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TABLE bank_profiles (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    bic         text CHECK (bic ~ '^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$'),
    country     text NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE treasury_accounts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bank_profile_id  text NOT NULL REFERENCES bank_profiles (id),
    label            text NOT NULL CHECK (length(label) BETWEEN 1 AND 200),
    iban             text CHECK (iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}$'),
    account_number   text CHECK (length(account_number) BETWEEN 1 AND 64),
    currency         text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (iban IS NOT NULL OR account_number IS NOT NULL),
    UNIQUE (bank_profile_id, label)
);
CREATE INDEX treasury_accounts_profile_idx ON treasury_accounts (bank_profile_id, currency) WHERE active;

CREATE TABLE bank_connectors_registry (
    host_id             text NOT NULL CHECK (length(host_id) BETWEEN 1 AND 255),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 63),
    kind                text NOT NULL,
    bank_profile_id     text NOT NULL,
    priority            integer NOT NULL,
    enabled             boolean NOT NULL,
    config_hash         text NOT NULL,
    state               text NOT NULL DEFAULT 'starting' CHECK (state IN
                            ('starting', 'running', 'paused', 'draining', 'drained', 'restarting',
                             'stopping', 'stopped', 'failed', 'removed')),
    breaker_state       text NOT NULL DEFAULT 'closed' CHECK (breaker_state IN ('closed', 'open', 'half_open')),
    breaker_changed_at  timestamptz,
    health_ok           boolean,
    health_checked_at   timestamptz,
    health_detail       text,
    last_error          text,
    incarnation         text,
    restarts            integer NOT NULL DEFAULT 0 CHECK (restarts >= 0),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host_id, name)
);
CREATE INDEX bank_connectors_registry_name_idx ON bank_connectors_registry (name);
CREATE INDEX bank_connectors_registry_profile_idx ON bank_connectors_registry (bank_profile_id);

CREATE TABLE bank_connector_secrets (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector_name  text NOT NULL,
    field           text NOT NULL,
    reference       text NOT NULL CHECK (reference ~ '^(vault|file|credential|env):.+'),
    version         text,
    rotated_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connector_name, field)
);
COMMENT ON TABLE bank_connector_secrets IS 'Where each connector secret lives and when it rotated; never the value.';

CREATE TABLE payout_slices (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payout_id            text NOT NULL CHECK (length(payout_id) BETWEEN 1 AND 100),
    slice_no             integer NOT NULL DEFAULT 1 CHECK (slice_no >= 1),
    treasury_account_id  bigint NOT NULL REFERENCES treasury_accounts (id),
    amount               numeric(20, 4) NOT NULL CHECK (amount > 0),
    currency             text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    rail                 text NOT NULL CHECK (length(rail) BETWEEN 1 AND 32),
    priority             smallint NOT NULL DEFAULT 0,
    beneficiary_name     text NOT NULL CHECK (length(beneficiary_name) BETWEEN 1 AND 140),
    beneficiary_account  text NOT NULL CHECK (length(beneficiary_account) BETWEEN 1 AND 64),
    beneficiary_bic      text CHECK (beneficiary_bic ~ '^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$'),
    remittance_info      text CHECK (length(remittance_info) <= 140),
    status               text NOT NULL DEFAULT 'pending' CHECK (status IN
                             ('pending', 'claimed', 'sending', 'sent', 'settled', 'failed',
                              'retry_scheduled', 'dead')),
    idempotency_key      text GENERATED ALWAYS AS ('molam-slice-' || id::text) STORED UNIQUE,
    attempts             integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts         integer NOT NULL DEFAULT 8 CHECK (max_attempts >= 1),
    next_attempt_at      timestamptz,
    claimed_by           text,
    lease_until          timestamptz,
    connector_name       text,
    provider_ref         text,
    last_error           text,
    sent_at              timestamptz,
    final_at             timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payout_id, slice_no),
    CHECK (status NOT IN ('claimed', 'sending') OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL)),
    CHECK (status <> 'retry_scheduled' OR next_attempt_at IS NOT NULL),
    CHECK (status <> 'dead' OR last_error IS NOT NULL),
    CHECK (status NOT IN ('settled', 'failed') OR final_at IS NOT NULL)
);
-- The dispatcher's claim: ready work by priority, then age.
CREATE INDEX payout_slices_pending_idx ON payout_slices (priority DESC, id) WHERE status = 'pending';
CREATE INDEX payout_slices_retry_idx ON payout_slices (next_attempt_at) WHERE status = 'retry_scheduled';
-- Crash recovery: claims and sends whose lease ran out.
CREATE INDEX payout_slices_lease_idx ON payout_slices (lease_until) WHERE status IN ('claimed', 'sending');
-- The status follower's work and the dead-letter queue.
CREATE INDEX payout_slices_sent_idx ON payout_slices (sent_at) WHERE status = 'sent';
CREATE INDEX payout_slices_dead_idx ON payout_slices (updated_at) WHERE status = 'dead';
CREATE INDEX payout_slices_status_currency_idx ON payout_slices (status, currency);
CREATE INDEX payout_slices_account_idx ON payout_slices (treasury_account_id);
CREATE INDEX payout_slices_provider_ref_idx ON payout_slices (connector_name, provider_ref)
    WHERE provider_ref IS NOT NULL;

-- The status machine of design §6, enforced by the database whoever writes.
CREATE FUNCTION payout_slices_guard_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF (OLD.status, NEW.status) IN (
        ('pending', 'claimed'), ('retry_scheduled', 'claimed'),
        ('claimed', 'sending'), ('claimed', 'pending'), ('claimed', 'retry_scheduled'), ('claimed', 'dead'),
        ('sending', 'sent'), ('sending', 'settled'), ('sending', 'failed'), ('sending', 'retry_scheduled'),
        ('sending', 'dead'), ('sending', 'claimed'),
        ('sent', 'settled'), ('sent', 'failed'),
        ('dead', 'pending')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'payout slice %: status % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER payout_slices_guard_status BEFORE UPDATE OF status ON payout_slices
    FOR EACH ROW EXECUTE FUNCTION payout_slices_guard_status();

CREATE TABLE bank_statements_raw (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source         text NOT NULL CHECK (length(source) BETWEEN 1 AND 100),
    remote_name    text NOT NULL CHECK (length(remote_name) BETWEEN 1 AND 1024),
    format         text NOT NULL CHECK (format IN ('mt940', 'mt942', 'csv', 'camt053', 'pain002')),
    sha256         bytea NOT NULL UNIQUE CHECK (octet_length(sha256) = 32),
    size_bytes     bigint NOT NULL CHECK (size_bytes >= 0),
    raw            bytea NOT NULL,
    status         text NOT NULL DEFAULT 'received' CHECK (status IN
                       ('received', 'parsed', 'parse_failed', 'balance_failed')),
    error          text,
    line_count     integer CHECK (line_count >= 0),
    received_at    timestamptz NOT NULL DEFAULT now(),
    processed_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (octet_length(raw) = size_bytes),
    CHECK (status NOT IN ('parse_failed', 'balance_failed') OR error IS NOT NULL)
);
CREATE INDEX bank_statements_raw_status_idx ON bank_statements_raw (status, received_at)
    WHERE status <> 'parsed';
CREATE INDEX bank_statements_raw_source_idx ON bank_statements_raw (source, received_at DESC);

-- Raw bytes are evidence: only the processing outcome may change, and rows are never deleted.
CREATE FUNCTION bank_statements_raw_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'bank_statements_raw %: rows are never deleted', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.source, NEW.remote_name, NEW.format, NEW.sha256, NEW.size_bytes, NEW.raw, NEW.received_at)
        IS DISTINCT FROM
       (OLD.source, OLD.remote_name, OLD.format, OLD.sha256, OLD.size_bytes, OLD.raw, OLD.received_at) THEN
        RAISE EXCEPTION 'bank_statements_raw %: raw data is immutable; only status may change', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bank_statements_raw_immutable BEFORE UPDATE OR DELETE ON bank_statements_raw
    FOR EACH ROW EXECUTE FUNCTION bank_statements_raw_immutable();

CREATE TABLE bank_statement_lines (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    statement_raw_id      bigint NOT NULL REFERENCES bank_statements_raw (id),
    statement_no          integer NOT NULL CHECK (statement_no >= 1),
    line_no               integer NOT NULL CHECK (line_no >= 1),
    account               text NOT NULL,
    statement_ref         text,
    booking_date          date,
    value_date            date NOT NULL,
    credit_debit          text NOT NULL CHECK (credit_debit IN ('C', 'D')),
    reversal              boolean NOT NULL DEFAULT false,
    amount                numeric(20, 4) NOT NULL CHECK (amount >= 0),
    currency              text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    transaction_code      text,
    customer_ref          text,
    bank_ref              text,
    end_to_end_id         text,
    counterparty_name     text,
    counterparty_account  text,
    counterparty_bic      text,
    remittance_info       text,
    details               jsonb,
    payout_slice_id       bigint REFERENCES payout_slices (id),
    matched_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (statement_raw_id, statement_no, line_no),
    CHECK ((payout_slice_id IS NULL) = (matched_at IS NULL))
);
CREATE INDEX bank_statement_lines_e2e_idx ON bank_statement_lines (end_to_end_id) WHERE end_to_end_id IS NOT NULL;
CREATE INDEX bank_statement_lines_customer_ref_idx ON bank_statement_lines (customer_ref)
    WHERE customer_ref IS NOT NULL;
CREATE INDEX bank_statement_lines_unmatched_idx ON bank_statement_lines (value_date) WHERE payout_slice_id IS NULL;
CREATE INDEX bank_statement_lines_slice_idx ON bank_statement_lines (payout_slice_id)
    WHERE payout_slice_id IS NOT NULL;

CREATE TABLE bank_connector_logs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    CHECK (outcome = 'ok' OR error_code IS NOT NULL)
);
CREATE INDEX bank_connector_logs_connector_idx ON bank_connector_logs (connector_name, at DESC);
CREATE INDEX bank_connector_logs_trace_idx ON bank_connector_logs (trace_id);
CREATE INDEX bank_connector_logs_slice_idx ON bank_connector_logs (payout_slice_id) WHERE payout_slice_id IS NOT NULL;

CREATE TRIGGER bank_profiles_touch BEFORE UPDATE ON bank_profiles
    FOR EACH ROW EXECUTE FUNCTION molamd_touch_updated_at();
CREATE TRIGGER treasury_accounts_touch BEFORE UPDATE ON treasury_accounts
    FOR EACH ROW EXECUTE FUNCTION molamd_touch_updated_at();
CREATE TRIGGER bank_connectors_registry_touch BEFORE UPDATE ON bank_connectors_registry
    FOR EACH ROW EXECUTE FUNCTION molamd_touch_updated_at();
CREATE TRIGGER bank_connector_secrets_touch BEFORE UPDATE ON bank_connector_secrets
    FOR EACH ROW EXECUTE FUNCTION molamd_touch_updated_at();
CREATE TRIGGER payout_slices_touch BEFORE UPDATE ON payout_slices
    FOR EACH ROW EXECUTE FUNCTION molamd_touch_updated_at();
CREATE TRIGGER bank_statements_raw_touch BEFORE UPDATE ON bank_statements_raw
    FOR EACH ROW EXECUTE FUNCTION molamd_touch_updated_at();
CREATE TRIGGER bank_statement_lines_touch BEFORE UPDATE ON bank_statement_lines
    FOR EACH ROW EXECUTE FUNCTION molamd_touch_updated_at();
