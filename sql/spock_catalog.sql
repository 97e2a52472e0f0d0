-- spock-rs catalog, schema spock. Table and column names and types follow pgEdge
-- Spock 6.0 so that tools written for Spock (ACE, Zodan, monitoring queries) can
-- read them. Tables the output plugin reads while decoding are user catalog
-- tables, so that logical decoding sees them as of the decoded change.

CREATE TABLE spock.node (
    node_id oid NOT NULL PRIMARY KEY,
    node_name name NOT NULL UNIQUE,
    location text,
    country text,
    info jsonb
) WITH (user_catalog_table = true);

CREATE TABLE spock.node_interface (
    if_id oid NOT NULL PRIMARY KEY,
    if_name name NOT NULL,
    if_nodeid oid REFERENCES spock.node(node_id) ON UPDATE CASCADE,
    if_dsn text NOT NULL,
    UNIQUE (if_nodeid, if_name)
);

CREATE TABLE spock.local_node (
    node_id oid PRIMARY KEY REFERENCES spock.node(node_id),
    node_local_interface oid NOT NULL REFERENCES spock.node_interface(if_id)
);
-- At most one local node per database.
CREATE UNIQUE INDEX local_node_onlyone ON spock.local_node ((true));

CREATE TABLE spock.subscription (
    sub_id oid NOT NULL PRIMARY KEY,
    sub_name name NOT NULL UNIQUE,
    sub_origin oid NOT NULL REFERENCES spock.node(node_id) ON UPDATE CASCADE,
    sub_target oid NOT NULL REFERENCES spock.node(node_id) ON UPDATE CASCADE,
    sub_origin_if oid NOT NULL REFERENCES spock.node_interface(if_id),
    sub_target_if oid NOT NULL REFERENCES spock.node_interface(if_id),
    sub_enabled boolean NOT NULL DEFAULT true,
    sub_slot_name name NOT NULL,
    sub_replication_sets text[],
    sub_forward_origins text[],
    sub_apply_delay interval NOT NULL DEFAULT '0',
    sub_force_text_transfer boolean NOT NULL DEFAULT false,
    sub_skip_lsn pg_lsn NOT NULL DEFAULT '0/0',
    sub_skip_schema text[],
    sub_created_at timestamptz,
    sub_parallel_apply_workers integer CHECK (sub_parallel_apply_workers BETWEEN 1 AND 16)
);
CREATE SEQUENCE spock.sub_id_generator AS integer MINVALUE 1 CYCLE START WITH 1
    OWNED BY spock.subscription.sub_id;

CREATE TABLE spock.local_sync_status (
    sync_kind "char" NOT NULL CHECK (sync_kind IN ('i', 's', 'd', 'f')),
    sync_subid oid NOT NULL REFERENCES spock.subscription(sub_id),
    sync_nspname name,
    sync_relname name,
    sync_status "char" NOT NULL,
    sync_statuslsn pg_lsn NOT NULL,
    UNIQUE (sync_subid, sync_nspname, sync_relname)
);

CREATE TABLE spock.replication_set (
    set_id oid NOT NULL PRIMARY KEY,
    set_nodeid oid NOT NULL REFERENCES spock.node(node_id) ON UPDATE CASCADE,
    set_name name NOT NULL,
    replicate_insert boolean NOT NULL DEFAULT true,
    replicate_update boolean NOT NULL DEFAULT true,
    replicate_delete boolean NOT NULL DEFAULT true,
    replicate_truncate boolean NOT NULL DEFAULT true,
    UNIQUE (set_nodeid, set_name)
) WITH (user_catalog_table = true);

CREATE TABLE spock.replication_set_table (
    set_id oid NOT NULL,
    set_reloid regclass NOT NULL,
    set_att_list text[],
    set_row_filter pg_node_tree,
    PRIMARY KEY (set_id, set_reloid)
) WITH (user_catalog_table = true);

CREATE TABLE spock.replication_set_seq (
    set_id oid NOT NULL,
    set_seqoid regclass NOT NULL,
    PRIMARY KEY (set_id, set_seqoid)
) WITH (user_catalog_table = true);

CREATE TABLE spock.sequence_state (
    seqoid oid NOT NULL PRIMARY KEY,
    cache_size integer NOT NULL,
    last_value bigint NOT NULL
) WITH (user_catalog_table = true);

-- Global sequences (spock.convert_sequence_to_global): here they hand out the ids
-- whose low 16 bits are node_id, this node's id (spock_core::global_ids).
CREATE TABLE spock.global_sequence (
    seqoid oid NOT NULL PRIMARY KEY,
    node_id integer NOT NULL,
    converted_at timestamptz NOT NULL DEFAULT now()
);

-- Why a subscription last failed (spock.sub_show_status, spock.subscription_status):
-- the manager writes the error each attempt of the apply worker ended with; the
-- worker itself writes the error that made it disable the subscription (reason:
-- spock_core::status::Permanent::name, with the provider slot's state then).
-- error_count: attempts in a row that ended with this SQLSTATE and message.
CREATE TABLE spock.subscription_error (
    sub_id oid NOT NULL PRIMARY KEY,
    sqlstate text NOT NULL,
    message text NOT NULL,
    reason text,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    error_count bigint NOT NULL DEFAULT 1,
    next_attempt_at timestamptz,
    disabled boolean NOT NULL DEFAULT false,
    slot_wal_status text,
    slot_invalidation_reason text
);

CREATE TABLE spock.queue (
    queued_at timestamp with time zone NOT NULL,
    role name NOT NULL,
    replication_sets text[],
    message_type "char" NOT NULL,
    message json NOT NULL
);

CREATE TABLE spock.resolutions (
    id int GENERATED ALWAYS AS IDENTITY,
    node_name name NOT NULL,
    log_time timestamptz NOT NULL,
    relname text,
    idxname text,
    conflict_type text,
    conflict_resolution text,
    local_origin int,
    local_tuple text,
    local_xid xid,
    local_timestamp timestamptz,
    remote_origin int,
    remote_tuple text,
    remote_xid xid,
    remote_timestamp timestamptz,
    remote_lsn pg_lsn,
    PRIMARY KEY (id, node_name)
) WITH (user_catalog_table = true);
CREATE INDEX ON spock.resolutions (log_time);

CREATE TABLE spock.exception_log (
    remote_origin oid NOT NULL,
    remote_commit_ts timestamptz NOT NULL,
    command_counter integer NOT NULL,
    retry_errored_at timestamptz NOT NULL,
    remote_xid bigint NOT NULL,
    local_origin oid,
    local_commit_ts timestamptz,
    table_schema text,
    table_name text,
    operation text,
    local_tup jsonb,
    remote_old_tup jsonb,
    remote_new_tup jsonb,
    ddl_statement text,
    ddl_user text,
    error_message text NOT NULL,
    PRIMARY KEY (remote_origin, remote_commit_ts, command_counter, retry_errored_at)
) WITH (user_catalog_table = true);

-- Schemas and extensions spock treats specially (Spock's spock.reserved_object):
-- exclude_from_dump keeps them out of the structure sync's pg_dump (a subscriber
-- has them already), block_in_repset keeps their tables out of replication sets,
-- replicate_ddl = false keeps AutoDDL of a schema on this node (schemas only; NULL
-- for extensions). The built-in rows are re-created by the extension script and
-- cannot be changed; rows added with reserved_object_add() are dumped with the
-- database.
CREATE TABLE spock.reserved_object (
    name name NOT NULL,
    kind text NOT NULL CHECK (kind IN ('schema', 'extension')),
    exclude_from_dump boolean NOT NULL DEFAULT true,
    block_in_repset boolean NOT NULL DEFAULT true,
    replicate_ddl boolean,
    builtin boolean NOT NULL DEFAULT false,
    PRIMARY KEY (name, kind),
    CONSTRAINT reserved_object_replicate_ddl_kind CHECK ((kind = 'schema') = (replicate_ddl IS NOT NULL))
) WITH (user_catalog_table = true);
SELECT pg_catalog.pg_extension_config_dump('spock.reserved_object', 'WHERE NOT builtin');
-- lolor's tables replicate (large objects must survive on every node), though
-- the extension itself is not dumped.
INSERT INTO spock.reserved_object (name, kind, exclude_from_dump, block_in_repset, replicate_ddl, builtin) VALUES
    ('spock', 'schema', true, true, true, true),
    ('spock', 'extension', true, true, NULL, true),
    ('snowflake', 'schema', true, true, true, true),
    ('snowflake', 'extension', true, true, NULL, true),
    ('lolor', 'schema', true, false, true, true),
    ('lolor', 'extension', true, false, NULL, true),
    ('pgedge_ace', 'schema', true, true, false, true);

CREATE FUNCTION spock._reserved_object_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF OLD.builtin THEN
        RAISE EXCEPTION 'cannot % built-in reserved object "%" (%)', lower(TG_OP), OLD.name, OLD.kind
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END;
$$;
CREATE TRIGGER reserved_object_guard BEFORE UPDATE OR DELETE ON spock.reserved_object
    FOR EACH ROW EXECUTE FUNCTION spock._reserved_object_guard();

-- Whether `p_name` (a schema or an extension, per `p_kind`) is reserved for
-- `p_purpose`: 'dump', 'repset' or 'ddl' (the last: its DDL stays on this node).
CREATE FUNCTION spock._is_reserved(p_kind text, p_purpose text, p_name name) RETURNS boolean
STABLE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(bool_or(CASE p_purpose WHEN 'dump' THEN exclude_from_dump
                                          WHEN 'repset' THEN block_in_repset
                                          WHEN 'ddl' THEN NOT replicate_ddl END), false)
      FROM spock.reserved_object WHERE name = p_name AND kind = p_kind
$$;

-- Adds a reserved object or changes one that is not built in.
CREATE FUNCTION spock.reserved_object_add(p_name name, p_kind text, p_exclude_from_dump boolean DEFAULT true,
    p_block_in_repset boolean DEFAULT true, p_replicate_ddl boolean DEFAULT NULL)
RETURNS void VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- replicate_ddl is for schemas only: true unless given for a schema, NULL for
    -- an extension.
    v_ddl boolean := CASE WHEN p_kind = 'schema' THEN coalesce(p_replicate_ddl, true) END;
BEGIN
    IF p_name IS NULL OR p_kind IS NULL OR p_exclude_from_dump IS NULL OR p_block_in_repset IS NULL THEN
        RAISE EXCEPTION 'reserved object name, kind and flags cannot be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- One at a time per name and kind (a user catalog takes no ON CONFLICT).
    PERFORM pg_catalog.pg_advisory_xact_lock('spock.reserved_object'::regclass::oid::int,
                                             pg_catalog.hashtext(p_kind || '.' || p_name));
    UPDATE spock.reserved_object
       SET exclude_from_dump = p_exclude_from_dump, block_in_repset = p_block_in_repset, replicate_ddl = v_ddl
     WHERE name = p_name AND kind = p_kind;
    IF NOT FOUND THEN
        INSERT INTO spock.reserved_object (name, kind, exclude_from_dump, block_in_repset, replicate_ddl, builtin)
        VALUES (p_name, p_kind, p_exclude_from_dump, p_block_in_repset, v_ddl, false);
    END IF;
END;
$$;

-- Removes a reserved object that is not built in.
CREATE FUNCTION spock.reserved_object_remove(p_name name, p_kind text) RETURNS void
VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM spock.reserved_object WHERE name = p_name AND kind = p_kind
$$;

CREATE VIEW spock.tables AS
    WITH set_relations AS (
        SELECT s.set_name, r.set_reloid
          FROM spock.replication_set_table r
          JOIN spock.replication_set s ON s.set_id = r.set_id
          JOIN spock.local_node n ON s.set_nodeid = n.node_id
    ),
    user_tables AS (
        SELECT r.oid, n.nspname, r.relname
          FROM pg_catalog.pg_class r
          JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
         WHERE r.relkind IN ('r', 'p')
           AND r.relpersistence = 'p'
           AND n.nspname !~ '^pg_'
           AND n.nspname <> 'information_schema'
           AND n.nspname <> 'spock'
    )
    SELECT r.oid AS relid, n.nspname, r.relname, s.set_name
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_class r ON n.oid = r.relnamespace
      JOIN set_relations s ON r.oid = s.set_reloid
     WHERE r.relkind IN ('r', 'p')
    UNION
    SELECT t.oid AS relid, t.nspname, t.relname, NULL
      FROM user_tables t
     WHERE t.oid NOT IN (SELECT set_reloid FROM set_relations);

-- What the output plugin reads while decoding is metadata, like PostgreSQL's own
-- pg_publication catalogs: readable by every role, so that a replication role that is
-- not superuser can stream (node_interface, with DSNs, stays private).
GRANT USAGE ON SCHEMA spock TO PUBLIC;
GRANT SELECT ON spock.node, spock.local_node, spock.replication_set, spock.replication_set_table,
    spock.replication_set_seq, spock.tables, spock.global_sequence TO PUBLIC;
