-- The evhost transactional outbox (schema version 1).
--
-- Applications insert CloudEvents into `outbox` inside the transaction that changes their own
-- data; evhost relays them in commit order. Install it with `evhost outbox install URL
-- --schema NAME`, or `install = true` in evhost.toml's [outbox] (the host then installs it at
-- start), or `Outbox::install_schema` from Rust; to apply it by hand, pick the schema with a
-- psql variable (`evhost outbox sql --schema NAME` prints it with the name filled in):
--
--     psql -v schema=evhost -f schema.sql
--
-- Every statement is idempotent: running the file again changes nothing. The schema name must
-- be a plain lower-case identifier, because the notification channel is `<schema>_outbox`.

CREATE SCHEMA IF NOT EXISTS :"schema";

-- The last position handed out, in exactly one row. Every outbox insert increments it, and the
-- row lock that increment takes is held until the inserting transaction ends: that is what
-- makes positions follow commit order.
CREATE TABLE IF NOT EXISTS :"schema".outbox_position (
    n bigint NOT NULL,
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO :"schema".outbox_position (n) VALUES (0) ON CONFLICT DO NOTHING;

-- CloudEvents extension rules, checked on insert so a producer learns of a bad event in its own
-- transaction: names are lower-case alphanumeric and not an attribute name; values are strings,
-- booleans or 32-bit integers.
CREATE OR REPLACE FUNCTION :"schema".outbox_extensions_valid(extensions jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(extensions) IS DISTINCT FROM 'object' THEN false ELSE coalesce((
        SELECT bool_and(
            key ~ '^[a-z0-9]+$'
            AND key NOT IN ('id', 'source', 'type', 'specversion', 'subject', 'time',
                            'datacontenttype', 'dataschema', 'data')
            AND CASE jsonb_typeof(value)
                WHEN 'string' THEN true
                WHEN 'boolean' THEN true
                WHEN 'number' THEN CASE WHEN value::text ~ '^-?[0-9]{1,10}$'
                    THEN value::text::bigint BETWEEN -2147483648 AND 2147483647
                    ELSE false END
                ELSE false
            END)
        FROM jsonb_each(extensions)), true) END
$$;

CREATE TABLE IF NOT EXISTS :"schema".outbox (
    -- Assigned by the trigger below; whatever the insert says is overwritten.
    position bigint PRIMARY KEY,
    id text NOT NULL,
    source text NOT NULL,
    type text NOT NULL,
    subject text,
    time timestamptz NOT NULL DEFAULT now(),
    datacontenttype text,
    dataschema text,
    data jsonb,
    extensions jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, id),
    CONSTRAINT outbox_required_attributes CHECK (id <> '' AND source <> '' AND type <> ''),
    CONSTRAINT outbox_time_rfc3339
        CHECK (time >= '0001-01-01 00:00:00+00' AND time < '10000-01-01 00:00:00+00'),
    CONSTRAINT outbox_extensions_valid CHECK (:"schema".outbox_extensions_valid(extensions))
);

-- Rows the relay could not turn into an event (see the relay's documentation), one per relay.
-- The outbox row itself is left in place.
CREATE TABLE IF NOT EXISTS :"schema".outbox_rejected (
    relay text NOT NULL,
    position bigint NOT NULL,
    error text NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relay, position)
);

CREATE OR REPLACE FUNCTION :"schema".outbox_assign_position() RETURNS trigger
LANGUAGE plpgsql SET search_path = :"schema", pg_temp AS $$
BEGIN
    UPDATE outbox_position SET n = n + 1 RETURNING n INTO NEW.position;
    RETURN NEW;
END
$$;

-- NOTIFY is delivered at commit, and not at all on rollback: exactly when the relay has
-- something new to read.
CREATE OR REPLACE FUNCTION :"schema".outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_outbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_assign_position ON :"schema".outbox;
CREATE TRIGGER outbox_assign_position BEFORE INSERT ON :"schema".outbox
    FOR EACH ROW EXECUTE FUNCTION :"schema".outbox_assign_position();

DROP TRIGGER IF EXISTS outbox_notify ON :"schema".outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON :"schema".outbox
    FOR EACH STATEMENT EXECUTE FUNCTION :"schema".outbox_notify();
