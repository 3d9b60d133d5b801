-- sipedge schema migration 2: cdr.source, what each record was built from (release 2).
--
--   psql -v ON_ERROR_STOP=1 -d sipedge -f migrations/0002_cdr_source.sql
--
-- Upgrades schema version 1 and refuses anything else. Every row already there was relayed by
-- a sipedge proxy, so the column's default gives them 'proxy'. Adding a column with a constant
-- default rewrites nothing (PostgreSQL 11 and later); the transaction holds cdr's lock only for
-- the catalog change, and gives up after lock_timeout rather than queue the sinks' writes
-- behind it (run it again then). The check of existing rows runs after the commit, under a
-- lock that lets reads and writes go on.
-- Upgrade order: this migration, then the sipedge nodes. A node of release 1 refuses schema
-- version 2 and keeps its records in its outbox (alarm sink_lag) until it is upgraded.
-- Grants: none (the column belongs to cdr, which sipedge may already insert and update).

BEGIN;
SET LOCAL lock_timeout = '5s';

DO $guard$
BEGIN
  IF to_regclass('sipedge_schema_version') IS NULL THEN
    RAISE EXCEPTION 'no sipedge_schema_version table: not a sipedge schema'
      USING HINT = 'a new database takes etc/sql/postgres.sql, not the migrations one by one';
  END IF;
  IF (SELECT max(version) FROM sipedge_schema_version) IS DISTINCT FROM 1 THEN
    RAISE EXCEPTION 'migration 2 upgrades schema version 1, this database is at %',
      (SELECT max(version) FROM sipedge_schema_version);
  END IF;
END
$guard$;

ALTER TABLE cdr
  ADD COLUMN source text NOT NULL DEFAULT 'proxy',
  ADD CONSTRAINT cdr_source_known CHECK (source IN ('proxy', 'pcap', 'hep')) NOT VALID;
COMMENT ON COLUMN cdr.source IS
  'proxy: built from the SIP sipedge relayed; pcap: from a capture file (sipedge import-pcap); hep: from HEP mirrored to sipedge';

INSERT INTO sipedge_schema_version (version, description)
VALUES (2, 'cdr.source: proxy, pcap or hep');

COMMIT;

ALTER TABLE cdr VALIDATE CONSTRAINT cdr_source_known;
