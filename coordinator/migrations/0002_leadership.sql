-- Which coordinator leads, when several share this database. One row:
-- the leader's epoch (one more at every change of leader), who holds it,
-- the URL standbys send clients to, and when the lease runs out unless
-- renewed. Times are the database's own clock, so coordinators' clocks
-- need not agree.
CREATE TABLE leadership (
    id SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    url TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
