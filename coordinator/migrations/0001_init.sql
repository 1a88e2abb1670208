-- Gantry's coordinator store, first version: everything SledStore keeps.
-- Records are kept as their JSON text (TEXT, not JSONB: JSONB refuses the
-- \u0000 escape a record's free text may hold), beside the columns the
-- coordinator asks by.

-- Job ids: operators read them, so a plain counter from 1.
CREATE SEQUENCE job_ids AS BIGINT START 1;

CREATE TABLE jobs (
    id BIGINT PRIMARY KEY,
    app TEXT NOT NULL,
    env TEXT NOT NULL,
    -- Whether the job has ended (an ended job never changes again).
    ended BOOLEAN NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX jobs_by_app_env ON jobs (app, env, id);
CREATE INDEX jobs_unended ON jobs (id) WHERE NOT ended;

-- A job's log, as runs of consecutive lines keyed by the run's last seq
-- (as sled's logs tree): `batch` is the encoded gantry.v1.LogBatch.
CREATE TABLE log_runs (
    job BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    batch BYTEA NOT NULL,
    PRIMARY KEY (job, last_seq)
);

-- The last stored seq of each job with a log. Appenders lock its row, so
-- two appends to one job are applied one after the other.
CREATE TABLE log_tails (
    job BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL
);

CREATE TABLE releases (
    app TEXT NOT NULL,
    env TEXT NOT NULL,
    number BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (app, env, number)
);

-- Readable dumps of the configured apps and environments.
CREATE TABLE config_snapshots (
    key TEXT PRIMARY KEY,
    dump TEXT NOT NULL
);

-- The audit trail; `record` is the entry without its seq.
CREATE TABLE audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record TEXT NOT NULL
);

CREATE TABLE certs (
    serial TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    env TEXT NOT NULL,
    issued_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX certs_by_name ON certs (name);

-- One row per agent name ever enrolled: an enrolment locks it, so its
-- check of the name's certificates and its insert are one step.
CREATE TABLE cert_names (
    name TEXT PRIMARY KEY
);

-- Nonces of the join tokens redeemed, and when.
CREATE TABLE used_tokens (
    nonce TEXT PRIMARY KEY,
    used_ms BIGINT NOT NULL
);
