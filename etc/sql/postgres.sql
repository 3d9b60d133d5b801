-- sipedge: the complete current schema for a NEW database (schema version 2).
--
--   psql -v ON_ERROR_STOP=1 -d sipedge -f postgres.sql
--
-- This file equals every migration of etc/sql/migrations/ applied in order (0001_initial.sql,
-- 0002_cdr_source.sql), in one transaction; tests/sql.rs checks that the two give the same
-- catalog. A database that already has the schema is refused and left as it is: upgrade it
-- with the migrations numbered after its version (README.md).

BEGIN;

DO $guard$
BEGIN
  IF to_regclass('sipedge_schema_version') IS NOT NULL THEN
    RAISE EXCEPTION 'this database already has the sipedge schema (version %)',
      (SELECT max(version) FROM sipedge_schema_version)
      USING HINT = 'postgres.sql is for a new database; upgrade with the migrations numbered after that version';
  END IF;
  IF to_regclass('cdr') IS NOT NULL THEN
    RAISE EXCEPTION 'a table "cdr" exists but no sipedge_schema_version: not a sipedge schema'
      USING HINT = 'apply sipedge''s SQL to an empty database or schema';
  END IF;
END
$guard$;

CREATE TABLE sipedge_schema_version (
  version     integer     PRIMARY KEY CONSTRAINT sipedge_schema_version_positive CHECK (version > 0),
  description text        NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sipedge_schema_version IS
  'One row per applied sipedge migration; the schema version is max(version). sipedge checks it at connect.';

-- The checks are the domains of the values sipedge's store can hold, and no rule across
-- columns that the store does not also enforce: a CDR the store accepted is never refused
-- here (that would stop the sink's queue), and anything else is.
CREATE TABLE cdr (
  id               text COLLATE "C" PRIMARY KEY
                   CONSTRAINT cdr_id_format CHECK (id ~ '^[0-9a-f]{32}$'),
  node             text NOT NULL CONSTRAINT cdr_node_named CHECK (node <> ''),
  call_id          text NOT NULL,
  caller           text COLLATE "C" NOT NULL,
  called           text COLLATE "C" NOT NULL,
  caller_uri       text NOT NULL,
  called_uri       text NOT NULL,
  call_type        text NOT NULL CONSTRAINT cdr_call_type_known CHECK (call_type IN ('audio', 'video')),
  video_started_at timestamptz,
  status           text NOT NULL CONSTRAINT cdr_status_known CHECK (status IN ('connected', 'not_connected')),
  disposition      text NOT NULL CONSTRAINT cdr_disposition_known CHECK (disposition IN
                     ('answered', 'busy', 'declined', 'no_answer', 'cancelled', 'failed', 'timeout')),
  sip_code         smallint CONSTRAINT cdr_sip_code_range CHECK (sip_code BETWEEN 100 AND 699),
  ended_by         text NOT NULL CONSTRAINT cdr_ended_by_known CHECK (ended_by IN ('caller', 'callee', 'sipedge')),
  start_time       timestamptz NOT NULL,
  ring_time        timestamptz,
  answer_time      timestamptz,
  end_time         timestamptz NOT NULL,
  -- Derived as sipedge derives them (never negative: the clocks of a call's messages may
  -- disagree by a millisecond), so that they cannot disagree with the times.
  duration_s       numeric(12,3) GENERATED ALWAYS AS
                     (greatest(round(extract(epoch FROM end_time - start_time), 3), 0)) STORED,
  talk_s           numeric(12,3) GENERATED ALWAYS AS
                     (CASE WHEN status = 'connected' AND answer_time IS NOT NULL
                           THEN greatest(round(extract(epoch FROM end_time - answer_time), 3), 0)
                           ELSE 0 END) STORED,
  transport        text NOT NULL CONSTRAINT cdr_transport_known CHECK (transport IN ('udp', 'tcp')),
  terminal         text NOT NULL,
  shipped_at       timestamptz NOT NULL DEFAULT now(),
  -- After shipped_at, where migration 2 adds it, so that both give the same table.
  source           text NOT NULL DEFAULT 'proxy'
                   CONSTRAINT cdr_source_known CHECK (source IN ('proxy', 'pcap', 'hep'))
);
COMMENT ON TABLE cdr IS
  'sipedge call detail records (SPEC section 5), one per INVITE dialog, replicated from every node; idempotent on id.';
COMMENT ON COLUMN cdr.id IS '32 lowercase hex digits: start time and a hash of node and Call-ID; stable over replays.';
COMMENT ON COLUMN cdr.caller IS 'user part of the From URI';
COMMENT ON COLUMN cdr.called IS 'user part of the To URI (the Request-URI''s when To has none)';
COMMENT ON COLUMN cdr.status IS 'connected: a 2xx to the initial INVITE';
COMMENT ON COLUMN cdr.sip_code IS 'final response to the initial INVITE (487 when cancelled); null when none came';
COMMENT ON COLUMN cdr.start_time IS 'the first INVITE; the time every query range is on';
COMMENT ON COLUMN cdr.duration_s IS 'end_time - start_time, seconds';
COMMENT ON COLUMN cdr.talk_s IS 'end_time - answer_time when connected, else 0: the call duration totals add up';
COMMENT ON COLUMN cdr.terminal IS 'ip:port the terminal reached sipedge from';
COMMENT ON COLUMN cdr.shipped_at IS 'when the row reached this database';
COMMENT ON COLUMN cdr.source IS
  'proxy: built from the SIP sipedge relayed; pcap: from a capture file (sipedge import-pcap); hep: from HEP mirrored to sipedge';

-- One index per query condition of the source document, each ending in start_time, since
-- every query is on a time range; LIKE 'prefix%' can use the number indexes (COLLATE "C").
CREATE INDEX cdr_start_time_idx ON cdr (start_time);
CREATE INDEX cdr_caller_idx ON cdr (caller, start_time);
CREATE INDEX cdr_called_idx ON cdr (called, start_time);
CREATE INDEX cdr_call_type_idx ON cdr (call_type, start_time);
CREATE INDEX cdr_status_idx ON cdr (status, start_time);
CREATE INDEX cdr_node_idx ON cdr (node, start_time);

INSERT INTO sipedge_schema_version (version, description)
VALUES (1, 'initial: cdr and sipedge_schema_version'),
       (2, 'cdr.source: proxy, pcap or hep');

COMMIT;
