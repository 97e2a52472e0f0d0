-- spock-rs: upgrade of the extension's SQL objects from 0.1.0 (spock-rs's first
-- releases) to 6.0.0, the Spock API level spock-rs implements.
--
-- Run by `ALTER EXTENSION spock UPDATE` after the new spock.so is installed and the
-- server restarted. Every change to the extension's SQL objects made after 0.1.0
-- goes here too: tests/tests/upgrade.rs compares an upgraded node's objects with a
-- fresh install's and fails on any difference.

\echo Use "ALTER EXTENSION spock UPDATE" to load this file. \quit

-- Sync events in Spock's layout (native byte order, name zeroed) and flushed.
CREATE FUNCTION spock._sync_event_payload(node_id oid) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'sync_event_payload_wrapper';
ALTER FUNCTION spock._sync_event_payload(oid) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._sync_event_payload(oid) FROM PUBLIC;

-- A marker in the provider's WAL; subscribers have passed it once
-- wait_for_sync_event() returns true there. The payload is Spock's (its message
-- type and this node's id in native byte order, a zeroed name), so Spock
-- subscribers read it too; a non-transactional event is flushed at once, as
-- Spock's is (a transactional one with its commit). 55000 without a local node.
CREATE OR REPLACE FUNCTION spock.sync_event(transactional boolean DEFAULT false)
RETURNS pg_lsn STRICT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_logical_emit_message(transactional, 'Spock',
                                              spock._sync_event_payload(spock._local_node_id()), true);
$$;

-- Spock's spock.read_peer_progress(), on a provider that a new node subscribes
-- to (a Spock subscriber calls it right after creating its slot, inside the
-- transaction that imported the slot's snapshot, with the provider's apply
-- workers paused): first a header row with the slot's restart_lsn (the caller
-- ignores it), then for every subscription of this node to another peer than the
-- new node how far this node has applied that peer (remote_commit_lsn: the
-- subscription's origin progress, as in the snapshot) and the apply progress
-- kept in memory (timestamps NULL when not known since the last restart; LSNs
-- never NULL, which the caller requires). The new node takes those positions as
-- its own starting points for each peer.
CREATE FUNCTION spock.read_peer_progress(p_slot_name text, p_provider_node_id oid, p_subscriber_node_id oid)
RETURNS TABLE(lsn pg_lsn, snapshot text, dbid oid, node_id oid, remote_node_id oid,
              remote_commit_ts timestamptz, prev_remote_ts timestamptz, remote_commit_lsn pg_lsn,
              remote_insert_lsn pg_lsn, received_lsn pg_lsn, last_updated_ts timestamptz,
              updated_by_decode boolean)
VOLATILE STRICT LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_restart pg_lsn;
BEGIN
    SELECT s.restart_lsn INTO v_restart FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = p_slot_name;
    RETURN QUERY SELECT v_restart, ''::text, NULL::oid, NULL::oid, NULL::oid, NULL::timestamptz,
                        NULL::timestamptz, NULL::pg_lsn, NULL::pg_lsn, NULL::pg_lsn, NULL::timestamptz, NULL::boolean;
    RETURN QUERY
        SELECT v_restart, ''::text, d.oid, s.sub_target, s.sub_origin, p.remote_commit_ts, p.prev_remote_ts,
               c.applied, GREATEST(p.remote_insert_lsn, c.applied),
               GREATEST(p.received_lsn, c.applied), p.last_updated_ts, false
          FROM spock.subscription s
         CROSS JOIN LATERAL (SELECT spock._subscription_progress(s.sub_slot_name) AS applied) c
         CROSS JOIN (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) d
          LEFT JOIN spock.progress p ON p.node_id = s.sub_target AND p.remote_node_id = s.sub_origin
         WHERE s.sub_target = p_provider_node_id AND s.sub_origin <> p_subscriber_node_id
         ORDER BY s.sub_origin;
END;
$$;

REVOKE ALL ON FUNCTION spock.read_peer_progress(text, oid, oid) FROM PUBLIC;

-- spock_gen_slot_name with Spock's signature (name arguments and result), in SQL
-- over the Rust function, which keeps its C symbol.
DROP FUNCTION spock.spock_gen_slot_name(text, text, text);
CREATE FUNCTION spock._gen_slot_name(dbname text, provider_node text, subscription text) RETURNS text
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'spock_gen_slot_name_wrapper';
ALTER FUNCTION spock._gen_slot_name(text, text, text) SET search_path = pg_catalog, pg_temp;


CREATE FUNCTION spock.spock_gen_slot_name(dbname name, provider_node name, subscription name) RETURNS name
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT spock._gen_slot_name(dbname::text, provider_node::text, subscription::text)::name;
$$;


-- Subscriptions as Spock keeps them: the provider's interface named after the
-- provider node, sub_forward_origins NULL when empty, sub_drop returning 1 (0
-- when absent with ifexists). Generated columns refused in column lists.

CREATE OR REPLACE FUNCTION spock.sub_create(
    subscription_name name,
    provider_dsn text,
    replication_sets text[] = '{default,default_insert_only,ddl_sql}',
    synchronize_structure boolean = false,
    synchronize_data boolean = false,
    forward_origins text[] = '{}',
    apply_delay interval DEFAULT '0',
    force_text_transfer boolean = false,
    enabled boolean = true,
    skip_schema text[] = '{}')
RETURNS oid STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_local oid := spock._local_node_id();
    v_local_if oid;
    v_provider record;
    v_if oid;
    v_if_name name;
    v_slot name;
    v_id oid;
    v_other name;
BEGIN
    IF subscription_name = '' THEN
        RAISE EXCEPTION 'subscription name cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM spock._check_apply_delay(apply_delay);
    IF array_position(replication_sets, NULL) IS NOT NULL OR array_position(forward_origins, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'replication_sets and forward_origins cannot contain NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(replication_sets) = 0 THEN
        RAISE EXCEPTION 'replication_sets cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM spock._check_forward_origins(forward_origins);
    IF EXISTS (SELECT 1 FROM spock.subscription s WHERE s.sub_name = sub_create.subscription_name) THEN
        RAISE EXCEPTION 'subscription % already exists', subscription_name USING ERRCODE = 'duplicate_object';
    END IF;
    SELECT * INTO v_provider FROM spock._provider_info(provider_dsn);
    IF v_provider.node_id = v_local THEN
        RAISE EXCEPTION 'node % cannot subscribe to itself', v_provider.node_name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM spock._check_provider_sets(replication_sets, v_provider.replication_sets, v_provider.node_name);
    SELECT n.node_name INTO v_other FROM spock.node n WHERE n.node_id = v_provider.node_id;
    IF v_other IS NULL THEN
        INSERT INTO spock.node (node_id, node_name) VALUES (v_provider.node_id, v_provider.node_name);
    ELSIF v_other <> v_provider.node_name THEN
        RAISE EXCEPTION 'provider node "%" has the same node id (%) as node "%"', v_provider.node_name, v_provider.node_id, v_other
            USING ERRCODE = 'duplicate_object', HINT = 'Node names must hash to distinct 16-bit ids; rename one of the nodes.';
    END IF;
    SELECT if_id INTO v_if FROM spock.node_interface WHERE if_nodeid = v_provider.node_id AND if_dsn = provider_dsn;
    IF v_if IS NULL THEN
        -- Named after the provider node, as Spock names it (sub_alter_interface(sub,
        -- '<provider node>') goes back to it); <node>_<subscription> when another
        -- DSN has that name already.
        v_if_name := v_provider.node_name::name;
        IF EXISTS (SELECT 1 FROM spock.node_interface WHERE if_nodeid = v_provider.node_id AND if_name = v_if_name) THEN
            v_if_name := (v_provider.node_name || '_' || subscription_name)::name;
        END IF;
        v_if := spock._scoped_id(v_provider.node_id, v_if_name);
        INSERT INTO spock.node_interface (if_id, if_name, if_nodeid, if_dsn)
        VALUES (v_if, v_if_name, v_provider.node_id, provider_dsn);
    END IF;
    SELECT node_local_interface INTO v_local_if FROM spock.local_node;
    v_slot := spock.spock_gen_slot_name(current_database()::name, v_provider.node_name::name, subscription_name);
    v_id := nextval('spock.sub_id_generator')::oid;
    INSERT INTO spock.subscription (sub_id, sub_name, sub_origin, sub_target, sub_origin_if, sub_target_if,
        sub_enabled, sub_slot_name, sub_replication_sets, sub_forward_origins, sub_apply_delay,
        sub_force_text_transfer, sub_skip_lsn, sub_skip_schema, sub_created_at)
    VALUES (v_id, subscription_name, v_provider.node_id, v_local, v_if, v_local_if, enabled, v_slot,
        replication_sets, CASE WHEN cardinality(forward_origins) > 0 THEN forward_origins END, apply_delay,
        force_text_transfer, '0/0', CASE WHEN cardinality(skip_schema) > 0 THEN skip_schema END, now());
    -- 'i': the apply worker creates the slot (and synchronises structure 's', data
    -- 'd' or both 'f'); a disabled subscription is ready at once (the operator
    -- manages the slot, as with Spock).
    INSERT INTO spock.local_sync_status (sync_kind, sync_subid, sync_nspname, sync_relname, sync_status, sync_statuslsn)
    VALUES (CASE WHEN synchronize_structure AND synchronize_data THEN 'f'
                 WHEN synchronize_structure THEN 's'
                 WHEN synchronize_data THEN 'd'
                 ELSE 'i' END,
            v_id, NULL, NULL, CASE WHEN enabled THEN 'i' ELSE 'r' END, '0/0');
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = v_slot) THEN
        PERFORM pg_catalog.pg_replication_origin_create(v_slot);
    END IF;
    PERFORM spock._wake_workers();
    RETURN v_id;
END;
$$;

CREATE OR REPLACE FUNCTION spock.sub_drop(subscription_name name, ifexists boolean DEFAULT false)
RETURNS oid STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription;
    v_dsn text;
    v_origin text;
BEGIN
    SELECT * INTO v FROM spock.subscription s WHERE s.sub_name = sub_drop.subscription_name;
    IF NOT FOUND THEN
        IF ifexists THEN
            RETURN 0;
        END IF;
        RAISE EXCEPTION 'subscriber % not found', subscription_name USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    SELECT if_dsn INTO v_dsn FROM spock.node_interface WHERE if_id = v.sub_origin_if;
    IF NOT spock._drop_provider_slot(v_dsn, v.sub_slot_name) THEN
        RAISE WARNING 'could not reach the provider to drop slot %', v.sub_slot_name
            USING HINT = 'Drop it on the provider with pg_drop_replication_slot(), or it will keep WAL there.';
    END IF;
    FOR v_origin IN SELECT roname FROM pg_catalog.pg_replication_origin
                     WHERE spock._is_subscription_origin(v.sub_slot_name, roname)
    LOOP
        PERFORM pg_catalog.pg_replication_origin_drop(v_origin);
    END LOOP;
    DELETE FROM spock.local_sync_status WHERE sync_subid = v.sub_id;
    DELETE FROM spock.subscription_error WHERE sub_id = v.sub_id;
    DELETE FROM spock.subscription WHERE sub_id = v.sub_id;
    PERFORM spock._wake_workers();
    -- Spock's values: 1 dropped, 0 not there (with ifexists), not the id.
    RETURN 1;
END;
$$;

CREATE OR REPLACE FUNCTION spock.sub_alter_options(subscription_name name, options jsonb)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
    v_key text;
    v_forward text[];
    v_delay interval;
    v_skip text[];
    v_workers integer;
BEGIN
    -- (Spock's wording for every error)
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'subscription options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF options = '{}'::jsonb THEN
        RETURN false;
    END IF;
    FOR v_key IN SELECT jsonb_object_keys(options) LOOP
        IF v_key NOT IN ('forward_origins', 'apply_delay', 'skip_schema', 'parallel_apply_workers') THEN
            RAISE EXCEPTION 'unrecognized subscription option "%"', v_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known options: forward_origins, apply_delay, skip_schema, parallel_apply_workers.';
        END IF;
    END LOOP;
    IF options ? 'forward_origins' THEN
        v_forward := spock._option_text_array(options, 'forward_origins',
                                              'option "forward_origins" must be a JSON array of strings');
        SELECT f INTO v_key FROM unnest(v_forward) f WHERE f <> 'all' LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'invalid value "%" for option "forward_origins"', v_key
                USING ERRCODE = 'invalid_parameter_value', HINT = 'Only "all" is allowed.';
        END IF;
        -- (NULL when empty, as Spock keeps it)
        UPDATE spock.subscription SET sub_forward_origins = CASE WHEN cardinality(v_forward) > 0 THEN v_forward END
         WHERE sub_id = v.sub_id;
    END IF;
    IF options ? 'apply_delay' THEN
        IF jsonb_typeof(options->'apply_delay') <> 'string' THEN
            RAISE EXCEPTION 'option "apply_delay" must be a string' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- (an invalid interval gets the cast's own error, as in Spock)
        v_delay := (options->>'apply_delay')::interval;
        PERFORM spock._check_apply_delay(v_delay);
        UPDATE spock.subscription SET sub_apply_delay = v_delay WHERE sub_id = v.sub_id;
    END IF;
    IF options ? 'skip_schema' THEN
        v_skip := spock._option_text_array(options, 'skip_schema', 'option "skip_schema" must be a JSON array of strings');
        -- (NULL when empty, as Spock keeps it)
        UPDATE spock.subscription SET sub_skip_schema = CASE WHEN cardinality(v_skip) > 0 THEN v_skip END
         WHERE sub_id = v.sub_id;
    END IF;
    IF options ? 'parallel_apply_workers' THEN
        -- null: the node's spock.parallel_apply_workers again.
        v_workers := NULL;
        IF jsonb_typeof(options->'parallel_apply_workers') <> 'null' THEN
            IF jsonb_typeof(options->'parallel_apply_workers') = 'number'
               AND (options->>'parallel_apply_workers') ~ '^[0-9]{1,2}$' THEN
                v_workers := (options->>'parallel_apply_workers')::integer;
            END IF;
            IF v_workers IS NULL OR v_workers NOT BETWEEN 1 AND 16 THEN
                RAISE EXCEPTION 'parallel_apply_workers must be a whole number from 1 to 16, or null'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END IF;
        UPDATE spock.subscription SET sub_parallel_apply_workers = v_workers WHERE sub_id = v.sub_id;
    END IF;
    -- The worker reads its options when it starts.
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    PERFORM spock._wake_workers();
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION spock._repset_add_relation(p_set_name name, p_rel regclass, p_columns text[],
                                           p_row_filter text, p_skip boolean) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
    v_class record;
    v_col text;
    v_missing text;
    v_filter pg_node_tree;
BEGIN
    SELECT * INTO v_set FROM spock._repset(p_set_name);
    SELECT c.relkind, c.relpersistence, n.nspname, c.relname INTO v_class
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', p_rel::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF v_class.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', p_rel USING ERRCODE = 'wrong_object_type';
    END IF;
    -- As CREATE PUBLICATION: no system catalogs; nor anything else initdb made
    -- (information_schema), which exists on every node anyway.
    IF p_rel::oid < 16384 THEN
        RAISE EXCEPTION 'cannot add relation "%" to a replication set', p_rel
            USING ERRCODE = 'invalid_parameter_value', DETAIL = 'This operation is not supported for system tables.';
    END IF;
    IF v_class.relpersistence <> 'p' THEN
        RAISE EXCEPTION 'UNLOGGED and TEMP tables cannot be replicated' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM spock._check_not_reserved(p_rel);
    IF spock._set_needs_replica_identity(v_set.replicate_update, v_set.replicate_delete)
       AND NOT spock._has_replica_identity(p_rel) THEN
        -- (Spock's wording)
        IF p_skip THEN
            RAISE WARNING 'skipping table %.% for replication set %', quote_ident(v_class.nspname), quote_ident(v_class.relname), p_set_name
                USING DETAIL = 'Table has no replica identity index, and the replication set replicates UPDATEs or DELETEs.',
                      HINT = 'Add a PRIMARY KEY to the table, or nominate a unique index on NOT NULL columns with ALTER TABLE ... REPLICA IDENTITY USING INDEX.';
            RETURN false;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_index WHERE indrelid = p_rel AND indisprimary AND NOT indimmediate) THEN
            RAISE EXCEPTION 'table % cannot be added to replication set %', v_class.relname, p_set_name
                USING ERRCODE = 'invalid_object_definition',
                      DETAIL = 'The PRIMARY KEY of the table is DEFERRABLE: PostgreSQL does not log it as the replica identity of UPDATEs and DELETEs, and the given replication set is configured to replicate them.',
                      HINT = 'Make the primary key NOT DEFERRABLE, or set REPLICA IDENTITY FULL (or USING INDEX on a unique index that is not deferrable), or use an insert-only set.';
        END IF;
        RAISE EXCEPTION 'table % cannot be added to replication set %', v_class.relname, p_set_name
            USING ERRCODE = 'invalid_object_definition',
                  DETAIL = 'Table has no replica identity index, and the replication set replicates UPDATEs or DELETEs.',
                  HINT = 'Add a PRIMARY KEY to the table, or nominate a unique index on NOT NULL columns with ALTER TABLE ... REPLICA IDENTITY USING INDEX.';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.replication_set_table WHERE set_id = v_set.set_id AND set_reloid = p_rel) THEN
        -- (the catalog's own unique violation, as Spock reports it)
        RAISE EXCEPTION 'duplicate key value violates unique constraint "replication_set_table_pkey"'
            USING ERRCODE = 'unique_violation', SCHEMA = 'spock', TABLE = 'replication_set_table',
                  CONSTRAINT = 'replication_set_table_pkey',
                  DETAIL = format('Key (set_id, set_reloid)=(%s, %s) already exists.', v_set.set_id, p_rel);
    END IF;
    IF p_columns IS NOT NULL THEN
        FOREACH v_col IN ARRAY p_columns LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = p_rel AND attname = v_col
                                                         AND attnum > 0 AND NOT attisdropped) THEN
                RAISE EXCEPTION 'table % does not have column %', p_rel, v_col USING ERRCODE = 'undefined_column';
            END IF;
            -- Generated columns are computed on each node, never sent (Spock's wording).
            IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = p_rel AND attname = v_col AND attgenerated <> '') THEN
                RAISE EXCEPTION 'column % cannot be declared as generated', v_col USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END LOOP;
        SELECT string_agg(a.attname, ', ') INTO v_missing
          FROM pg_attribute a
         WHERE a.attrelid = p_rel AND a.attnum > 0
           AND a.attnum = ANY (SELECT unnest(i.indkey) FROM pg_index i
                                WHERE i.indrelid = p_rel
                                  AND (i.indisreplident OR (i.indisprimary AND
                                       (SELECT relreplident FROM pg_class WHERE oid = p_rel) = 'd')))
           AND NOT (a.attname = ANY (p_columns));
        IF v_missing IS NOT NULL THEN
            -- (Spock's error: no DETAIL naming them)
            RAISE EXCEPTION 'REPLICA IDENTITY columns must be replicated' USING ERRCODE = 'invalid_column_reference';
        END IF;
    END IF;
    IF p_row_filter IS NOT NULL THEN
        v_filter := spock._parse_row_filter(p_rel, p_row_filter);
        -- A row that an UPDATE takes out of the filter is deleted on subscribers only
        -- when the WAL holds the old values of the filter's columns.
        IF (v_set.replicate_update OR v_set.replicate_delete)
           AND NOT spock._row_filter_old_values_logged(p_rel, p_row_filter) THEN
            RAISE WARNING 'row filter of table % reads columns whose old values are not logged', p_rel
                USING DETAIL = 'Rows that an UPDATE moves out of the filter will stay on subscribers, and DELETEs are sent whatever the filter says.',
                      HINT = format('Use ALTER TABLE %s REPLICA IDENTITY FULL, or filter on replica identity columns only.', p_rel);
        END IF;
    END IF;
    INSERT INTO spock.replication_set_table (set_id, set_reloid, set_att_list, set_row_filter)
    VALUES (v_set.set_id, p_rel, p_columns, v_filter);
    PERFORM spock._invalidate_relcache(p_rel);
    RETURN true;
END;
$$;

UPDATE spock.subscription SET sub_forward_origins = NULL WHERE cardinality(sub_forward_origins) = 0;

-- Replication-set membership as a dependency (Spock's spock.depend): a RESTRICT
-- drop of a member table or sequence, or of a column its row filter reads, fails
-- (the ProcessUtility hook asks _dependent_memberships); CASCADE drops the
-- membership with a NOTICE (the sql_drop event trigger).
CREATE FUNCTION spock._row_filter_columns(filter text) RETURNS smallint[]
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'row_filter_columns_wrapper';
ALTER FUNCTION spock._row_filter_columns(text) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._row_filter_columns(text) FROM PUBLIC;
CREATE FUNCTION spock._statement_search_path() RETURNS text[]
STRICT STABLE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'statement_search_path_wrapper';
ALTER FUNCTION spock._statement_search_path() SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._statement_search_path() FROM PUBLIC;


CREATE FUNCTION spock._dependent_memberships(p_rel oid, p_attnum int2)
RETURNS TABLE(kind text, set_name text)
LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'table', s.set_name::text
      FROM spock.replication_set_table t JOIN spock.replication_set s ON s.set_id = t.set_id
     WHERE t.set_reloid = p_rel
       AND (p_attnum = 0 OR p_attnum = ANY (spock._row_filter_columns(t.set_row_filter::text)))
    UNION ALL
    SELECT 'sequence', s.set_name::text
      FROM spock.replication_set_seq q JOIN spock.replication_set s ON s.set_id = q.set_id
     WHERE q.set_seqoid = p_rel AND p_attnum = 0
     ORDER BY 2;
$$;

REVOKE ALL ON FUNCTION spock._dependent_memberships(oid, int2) FROM PUBLIC;


CREATE OR REPLACE FUNCTION spock._forget_dropped_relations() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_oids oid[];
    v_drop record;
    v_gone text[];
BEGIN
    IF to_regclass('spock.replication_set_table') IS NULL THEN
        RETURN;  -- spock itself is being dropped
    END IF;
    FOR v_drop IN
        SELECT d.objid, d.objsubid, d.object_type, d.schema_name, d.address_names[2] AS relname,
               -- (qualified unless the statement's search_path had the schema)
               CASE WHEN d.schema_name = ANY (spock._statement_search_path()) THEN ''
                    ELSE quote_ident(d.schema_name) || '.' END
               || quote_ident(d.address_names[2]) AS name
          FROM pg_catalog.pg_event_trigger_dropped_objects() WITH ORDINALITY
               AS d(classid, objid, objsubid, original, normal, is_temporary, object_type, schema_name,
                    object_name, object_identity, address_names, address_args, n)
         WHERE d.classid = 'pg_catalog.pg_class'::regclass
           AND ((d.objsubid = 0 AND d.object_type IN ('table', 'sequence', 'foreign table'))
                OR (d.objsubid > 0 AND d.object_type = 'table column'))
         -- (the statement's order: DROP TABLE a, b tells of a first, as Spock does)
         ORDER BY d.n DESC
    LOOP
        IF v_drop.objsubid = 0 THEN
            v_oids := v_oids || v_drop.objid;
            -- Its table-sync state goes too (as in Spock): a table of that name
            -- made later starts afresh.
            IF v_drop.object_type = 'table' THEN
                DELETE FROM spock.local_sync_status
                 WHERE sync_nspname = v_drop.schema_name AND sync_relname = v_drop.relname;
            END IF;
            WITH gone AS (
                DELETE FROM spock.replication_set_table WHERE set_reloid::oid = v_drop.objid RETURNING set_id)
            SELECT array_agg(format('table %s membership in replication set %s', v_drop.name, s.set_name)
                             ORDER BY s.set_name)
              INTO v_gone FROM gone JOIN spock.replication_set s ON s.set_id = gone.set_id;
            IF v_gone IS NULL THEN
                WITH gone AS (
                    DELETE FROM spock.replication_set_seq WHERE set_seqoid::oid = v_drop.objid RETURNING set_id)
                SELECT array_agg(format('sequence %s membership in replication set %s', v_drop.name, s.set_name)
                                 ORDER BY s.set_name)
                  INTO v_gone FROM gone JOIN spock.replication_set s ON s.set_id = gone.set_id;
            END IF;
        ELSE
            WITH gone AS (
                DELETE FROM spock.replication_set_table
                 WHERE set_reloid::oid = v_drop.objid
                   AND v_drop.objsubid = ANY (spock._row_filter_columns(set_row_filter::text))
                RETURNING set_id)
            SELECT array_agg(format('table %s membership in replication set %s', v_drop.name, s.set_name)
                             ORDER BY s.set_name)
              INTO v_gone FROM gone JOIN spock.replication_set s ON s.set_id = gone.set_id;
        END IF;
        IF cardinality(v_gone) = 1 THEN
            RAISE NOTICE 'drop cascades to %', v_gone[1];
        ELSIF cardinality(v_gone) > 1 THEN
            RAISE NOTICE 'drop cascades to % other objects', cardinality(v_gone)
                USING DETAIL = array_to_string(ARRAY(SELECT 'drop cascades to ' || g FROM unnest(v_gone) g), E'\n');
        END IF;
    END LOOP;
    IF v_oids IS NOT NULL THEN
        DELETE FROM spock.sequence_state WHERE seqoid = ANY (v_oids);
    END IF;
END;
$$;

-- Repair mode (Spock's spock.repair_mode).
CREATE FUNCTION spock._repair_mode_payload(enabled boolean) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'repair_mode_payload_wrapper';
ALTER FUNCTION spock._repair_mode_payload(boolean) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._repair_mode_payload(boolean) FROM PUBLIC;


CREATE FUNCTION spock.repair_mode(enabled boolean) RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_lsn pg_lsn := pg_catalog.pg_logical_emit_message(true, 'Spock', spock._repair_mode_payload(enabled));
BEGIN
    -- (set_config with is_local: kept to the end of the transaction, past this
    -- function's own SET clause, which concerns search_path only)
    PERFORM pg_catalog.set_config('spock.replication_repair_mode', CASE WHEN enabled THEN 'on' ELSE 'off' END, true);
    RETURN v_lsn;
END;
$$;

REVOKE ALL ON FUNCTION spock.repair_mode(boolean) FROM PUBLIC;

-- Conflict statistics (Spock's get/reset_subscription_stats) and the cleanup of
-- spock.resolutions (cleanup_resolutions, spock.resolutions_retention_days).
CREATE FUNCTION spock._conflict_counts(subid oid) RETURNS bigint[]
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'conflict_counts_wrapper';
ALTER FUNCTION spock._conflict_counts(oid) SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION spock.reset_subscription_stats(subid oid DEFAULT NULL) RETURNS void
VOLATILE PARALLEL UNSAFE SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'reset_subscription_stats_wrapper';
REVOKE ALL ON FUNCTION spock.reset_subscription_stats(oid) FROM PUBLIC;


CREATE FUNCTION spock.get_subscription_stats(subid oid,
    OUT subid oid, OUT confl_insert_exists bigint, OUT confl_update_origin_differs bigint,
    OUT confl_update_exists bigint, OUT confl_update_missing bigint,
    OUT confl_delete_origin_differs bigint, OUT confl_delete_missing bigint,
    OUT confl_delete_exists bigint, OUT stats_reset timestamptz)
RETURNS record LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT $1, c[1], c[2], c[3], c[4], c[5], c[6], c[7],
           CASE WHEN c[8] <> 0 THEN '2000-01-01 00:00:00+00'::timestamptz + c[8] * interval '1 microsecond' END
      FROM (SELECT spock._conflict_counts($1) AS c) x;
$$;

CREATE FUNCTION spock.cleanup_resolutions(days integer DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_days integer := coalesce(days, current_setting('spock.resolutions_retention_days')::integer);
    v_deleted bigint;
BEGIN
    IF v_days <= 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM spock.resolutions WHERE log_time < now() - make_interval(days => v_days);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END;
$$;

REVOKE ALL ON FUNCTION spock.cleanup_resolutions(integer) FROM PUBLIC;

-- spock.readonly: no table resync in a read-only node.
CREATE OR REPLACE FUNCTION spock.sub_resync_table(subscription_name name, relation regclass, truncate boolean DEFAULT true)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
    v_nsp name;
    v_rel name;
BEGIN
    SELECT n.nspname, c.relname INTO v_nsp, v_rel
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = relation;
    IF NOT FOUND THEN
        -- (without this check a row with no table would be a second subscription-level row)
        RAISE EXCEPTION 'relation with OID % does not exist', relation::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF NOT v.sub_enabled THEN
        RAISE EXCEPTION 'subscription % is disabled', subscription_name
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Enable it first: the apply worker copies the table.';
    END IF;
    IF current_setting('spock.readonly') <> 'off' THEN
        RAISE EXCEPTION 'cannot resync table "%.%": subscriber is in read-only mode', v_nsp, v_rel
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('spock.readonly is set to "%s" on this node.', current_setting('spock.readonly')),
                  HINT = 'Set spock.readonly to ''off'' before resyncing.';
    END IF;
    INSERT INTO spock.local_sync_status (sync_kind, sync_subid, sync_nspname, sync_relname, sync_status, sync_statuslsn)
    VALUES (CASE WHEN truncate THEN 'f' ELSE 'd' END, v.sub_id, v_nsp, v_rel, 'i', '0/0')
    ON CONFLICT (sync_subid, sync_nspname, sync_relname)
    DO UPDATE SET sync_kind = EXCLUDED.sync_kind, sync_status = 'i', sync_statuslsn = '0/0';
    RETURN true;
END;
$$;

-- Why subscriptions fail (6.0.0): spock.subscription_error, spock._slot_status(),
-- sub_show_status's new columns (its result type changes: dropped and created
-- again) and the view spock.subscription_status.
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
CREATE FUNCTION spock._slot_status()
RETURNS TABLE (sub_id oid, wal_status text, safe_wal_size bigint, checked_at bigint)
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'slot_status_wrapper';
ALTER FUNCTION spock._slot_status() SET search_path = pg_catalog, pg_temp;
DROP FUNCTION spock.sub_show_status(name);
-- sub_show_status reads the workers afresh on each call.
CREATE OR REPLACE FUNCTION spock.sub_show_status(subscription_name name DEFAULT NULL,
    OUT subscription_name text, OUT status text, OUT provider_node text, OUT provider_dsn text,
    OUT slot_name text, OUT replication_sets text[], OUT forward_origins text[],
    OUT last_error_sqlstate text, OUT last_error text, OUT last_error_reason text,
    OUT last_error_at timestamptz, OUT error_count bigint, OUT next_attempt_at timestamptz,
    OUT slot_wal_status text, OUT slot_safe_wal_size bigint, OUT slot_invalidation_reason text)
RETURNS SETOF record VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    -- The workers as they are now, also when called again in one transaction (a
    -- DO block waiting for 'replicating' would otherwise read its first snapshot
    -- of pg_stat_activity forever).
    SELECT pg_catalog.pg_stat_clear_snapshot();
    SELECT s.sub_name::text,
           -- As Spock: down while no apply worker runs (between the attempts of one
           -- that fails, say), initializing while it synchronises.
           CASE
             WHEN NOT s.sub_enabled THEN 'disabled'
             WHEN w.query IS NULL THEN 'down'
             WHEN coalesce(y.sync_status, 'r') <> 'r' THEN 'initializing'
             WHEN w.query = 'replicating' THEN 'replicating'
             ELSE 'down'
           END,
           n.node_name::text, i.if_dsn, s.sub_slot_name::text, s.sub_replication_sets, s.sub_forward_origins,
           -- (spock-rs) why it last failed: spock.subscription_error
           e.sqlstate, e.message, e.reason, e.last_at, e.error_count,
           CASE WHEN s.sub_enabled AND w.query IS NULL THEN e.next_attempt_at END,
           -- the provider slot as the worker last saw it, or when it stopped
           coalesce(l.wal_status, e.slot_wal_status),
           l.safe_wal_size,
           e.slot_invalidation_reason
      FROM spock.subscription s
      JOIN spock.node n ON n.node_id = s.sub_origin
      JOIN spock.node_interface i ON i.if_id = s.sub_origin_if
      LEFT JOIN spock.local_sync_status y ON y.sync_subid = s.sub_id AND y.sync_nspname IS NULL
      LEFT JOIN spock.subscription_error e ON e.sub_id = s.sub_id
      LEFT JOIN spock._slot_status() l
             ON l.sub_id = s.sub_id AND (e.last_at IS NULL
                 OR l.checked_at > (pg_catalog.date_part('epoch', e.last_at) - 946684800) * 1000000)
      LEFT JOIN LATERAL (SELECT max(a.query) AS query FROM pg_catalog.pg_stat_activity a
                          WHERE a.backend_type = 'spock apply' AND a.application_name = s.sub_slot_name) w ON true
     WHERE $1 IS NULL OR s.sub_name = $1
     ORDER BY s.sub_name;
$$;

-- (spock-rs) Every subscription's state for monitoring: spock.sub_show_status().
CREATE VIEW spock.subscription_status AS SELECT * FROM spock.sub_show_status();

-- node_drop words an active slot as Spock does.
CREATE OR REPLACE FUNCTION spock.node_drop(node_name name, ifexists boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid;
    v_slot record;
BEGIN
    SELECT n.node_id INTO v_id FROM spock.node n WHERE n.node_name = node_drop.node_name;
    IF v_id IS NULL THEN
        IF ifexists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'node % not found', node_drop.node_name USING ERRCODE = 'undefined_object';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.subscription WHERE sub_origin = v_id OR sub_target = v_id) THEN
        RAISE EXCEPTION 'cannot drop node "%" because it still has subscriptions associated with it', node_drop.node_name
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'drop the subscriptions first';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.local_node l WHERE l.node_id = v_id) THEN
        -- Every slot is checked before any is dropped: dropping a slot is not undone
        -- when the transaction aborts.
        SELECT slot_name INTO v_slot FROM pg_catalog.pg_replication_slots
         WHERE plugin = 'spock_output' AND database = current_database() AND slot_name ~ '^spk_' AND active
         ORDER BY slot_name LIMIT 1;
        IF FOUND THEN
            -- (Spock's message; the slot in the DETAIL)
            RAISE EXCEPTION 'cannot drop node "%" because one or more replication slots for the node are still active',
                            node_drop.node_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = format('Replication slot "%s" is active.', v_slot.slot_name),
                      HINT = 'drop the subscriptions connected to the node first';
        END IF;
        FOR v_slot IN SELECT slot_name FROM pg_catalog.pg_replication_slots
                       WHERE plugin = 'spock_output' AND database = current_database()
                         AND slot_name ~ '^spk_'
        LOOP
            PERFORM pg_catalog.pg_drop_replication_slot(v_slot.slot_name);
        END LOOP;
        DELETE FROM spock.local_node WHERE node_id = v_id;
    END IF;
    DELETE FROM spock.replication_set_table t USING spock.replication_set s
     WHERE t.set_id = s.set_id AND s.set_nodeid = v_id;
    DELETE FROM spock.replication_set_seq q USING spock.replication_set s
     WHERE q.set_id = s.set_id AND s.set_nodeid = v_id;
    DELETE FROM spock.replication_set WHERE set_nodeid = v_id;
    DELETE FROM spock.node_interface WHERE if_nodeid = v_id;
    DELETE FROM spock.node WHERE node_id = v_id;
    PERFORM spock._invalidate_all();
    RETURN true;
END;
$$;

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

CREATE OR REPLACE FUNCTION spock._check_schemas(p_schemas text[]) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_schema text;
BEGIN
    FOREACH v_schema IN ARRAY p_schemas LOOP
        IF v_schema IS NULL THEN
            RAISE EXCEPTION 'schema name cannot be NULL' USING ERRCODE = 'null_value_not_allowed';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = v_schema) THEN
            RAISE EXCEPTION 'schema "%" does not exist', v_schema USING ERRCODE = 'invalid_schema_name';
        END IF;
        IF v_schema IN ('pg_catalog', 'information_schema', 'pg_toast') THEN
            RAISE EXCEPTION 'cannot add schema "%" to a replication set', v_schema
                USING ERRCODE = 'invalid_parameter_value', DETAIL = 'This operation is not supported for system schemas.';
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION spock.repset_add_all_tables(set_name name, schema_names text[],
    synchronize_data boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rel regclass;
    v_schemas text[];
BEGIN
    PERFORM spock._repset(set_name);
    PERFORM spock._check_schemas(schema_names);
    v_schemas := spock._unreserved_schemas(schema_names);
    FOR v_rel IN
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (v_schemas) AND c.relkind IN ('r', 'p')
           AND c.relpersistence = 'p' AND c.oid >= 16384
           AND NOT c.relispartition
           AND NOT EXISTS (SELECT 1 FROM spock.replication_set_table t JOIN spock.replication_set s USING (set_id)
                            WHERE t.set_reloid = c.oid AND s.set_name = repset_add_all_tables.set_name
                              AND s.set_nodeid = spock._local_node_id())
         ORDER BY n.nspname, c.relname
    LOOP
        -- (here, not in the query: the WARNING is for the listed schemas only)
        CONTINUE WHEN spock._reserved_extension_member(v_rel);
        IF spock._repset_add_relation(set_name, v_rel, NULL, NULL, true) THEN
            PERFORM spock._repset_add_relation(set_name, p.relid, NULL, NULL, true)
               FROM pg_partition_tree(v_rel) p WHERE p.relid <> v_rel AND p.isleaf;
            IF synchronize_data THEN
                PERFORM spock._queue_table_sync(set_name, p.relid)
                   FROM pg_partition_tree(v_rel) p WHERE p.isleaf;
            END IF;
        END IF;
    END LOOP;
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION spock.repset_add_all_seqs(set_name name, schema_names text[], synchronize_data boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
    v_seq regclass;
    v_schemas text[];
BEGIN
    SELECT * INTO v_set FROM spock._repset(set_name);
    PERFORM spock._check_schemas(schema_names);
    v_schemas := spock._unreserved_schemas(schema_names);
    FOR v_seq IN
        SELECT DISTINCT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (v_schemas) AND c.relkind = 'S'
           AND c.relpersistence = 'p' AND c.oid >= 16384
           AND NOT EXISTS (SELECT 1 FROM spock.replication_set_seq q WHERE q.set_id = v_set.set_id AND q.set_seqoid = c.oid)
           AND NOT spock._is_global_sequence(c.oid)
    LOOP
        -- (here, not in the query: the WARNING is for the listed schemas only)
        CONTINUE WHEN spock._reserved_extension_member(v_seq);
        PERFORM spock._repset_add_seq(v_set.set_id, set_name, v_seq, synchronize_data);
    END LOOP;
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION spock._check_sequence(p_rel regclass) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_class record;
BEGIN
    SELECT c.relkind, c.relpersistence, c.relname INTO v_class FROM pg_catalog.pg_class c WHERE c.oid = p_rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', p_rel::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF v_class.relkind IS DISTINCT FROM 'S' THEN
        RAISE EXCEPTION '"%" is not a sequence', v_class.relname USING ERRCODE = 'wrong_object_type';
    END IF;
    IF v_class.relpersistence <> 'p' THEN
        RAISE EXCEPTION 'UNLOGGED and TEMP sequences cannot be replicated' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM spock._check_not_reserved(p_rel);
END;
$$;

CREATE FUNCTION spock._extension_of(p_rel oid) RETURNS name
STABLE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
     WHERE d.classid = 'pg_class'::regclass AND d.objid = p_rel AND d.objsubid = 0
       AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
     LIMIT 1
$$;

CREATE FUNCTION spock._check_not_reserved(p_rel regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_nsp name;
    v_rel name;
    v_ext name;
BEGIN
    SELECT n.nspname, c.relname INTO v_nsp, v_rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_rel;
    IF spock._is_reserved('schema', 'repset', v_nsp) THEN
        RAISE EXCEPTION 'relation % cannot be added to any replication set', v_rel
            USING ERRCODE = 'invalid_parameter_value', DETAIL = format('table is in the ignored schema %s', v_nsp),
                  HINT = 'Move this relation to a schema allowed for replication';
    END IF;
    v_ext := spock._extension_of(p_rel);
    IF v_ext IS NOT NULL AND spock._is_reserved('extension', 'repset', v_ext) THEN
        RAISE EXCEPTION 'relation % cannot be added to any replication set', v_rel
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('relation belongs to the ignored extension %s', v_ext),
                  HINT = 'Move this relation to an extension allowed for replication';
    END IF;
END;
$$;

CREATE FUNCTION spock._unreserved_schemas(p_schemas text[]) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_schema text;
    v_kept text[] := '{}';
BEGIN
    FOREACH v_schema IN ARRAY p_schemas LOOP
        IF spock._is_reserved('schema', 'repset', v_schema) THEN
            RAISE WARNING 'skipping schema %', v_schema
                USING DETAIL = 'Relations of this schema cannot be added to any replication set.';
        ELSE
            v_kept := v_kept || v_schema;
        END IF;
    END LOOP;
    RETURN v_kept;
END;
$$;

CREATE FUNCTION spock._reserved_extension_member(p_rel oid) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ext name := spock._extension_of(p_rel);
BEGIN
    IF v_ext IS NULL OR NOT spock._is_reserved('extension', 'repset', v_ext) THEN
        RETURN false;
    END IF;
    RAISE WARNING 'skipping relation %', p_rel::regclass
        USING DETAIL = format('Relation belongs to extension %s, which is excluded from replication.', v_ext);
    RETURN true;
END;
$$;

REVOKE ALL ON FUNCTION spock._extension_of(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._check_not_reserved(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._unreserved_schemas(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._reserved_extension_member(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._reserved_object_guard() FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._is_reserved(text, text, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.reserved_object_add(name, text, boolean, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.reserved_object_remove(name, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION spock._sync_event_reached(p_origin oid, p_lsn pg_lsn, p_wait_if_disabled boolean)
RETURNS boolean VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub record;
BEGIN
    IF p_origin IS NULL THEN
        RAISE EXCEPTION 'Invalid NULL origin_id' USING ERRCODE = 'null_value_not_allowed';  -- (Spock's wording)
    END IF;
    SELECT s.sub_enabled, s.sub_slot_name INTO v_sub
      FROM spock.subscription s JOIN spock.local_node l ON l.node_id = s.sub_target
     WHERE s.sub_origin = p_origin;
    IF NOT FOUND AND NOT p_wait_if_disabled THEN
        RAISE EXCEPTION 'no subscription from node % on this node',
                        coalesce((SELECT n.node_name::text FROM spock.node n WHERE n.node_id = p_origin), p_origin::text)
            USING ERRCODE = 'undefined_object';
    ELSIF FOUND AND NOT v_sub.sub_enabled AND NOT p_wait_if_disabled THEN
        RAISE EXCEPTION 'the subscription from node % is disabled',
                        coalesce((SELECT n.node_name::text FROM spock.node n WHERE n.node_id = p_origin), p_origin::text)
            USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF FOUND AND v_sub.sub_enabled THEN
        RETURN spock._subscription_progress(v_sub.sub_slot_name) >= p_lsn;
    END IF;
    RETURN false;
END;
$$;

CREATE FUNCTION spock._sync_origin_id(p_name name) RETURNS oid
STABLE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid;
BEGIN
    SELECT node_id INTO v_id FROM spock.node WHERE node_name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Origin node ''%'' not found', p_name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN v_id;
END;
$$;
REVOKE ALL ON FUNCTION spock._sync_origin_id(name) FROM PUBLIC;

-- wait_for_sync_event with Spock's errors for an unknown node or a NULL id.
CREATE OR REPLACE PROCEDURE spock.wait_for_sync_event(OUT result bool, origin name, lsn pg_lsn,
    timeout int DEFAULT 0, wait_if_disabled bool DEFAULT false)
LANGUAGE plpgsql AS $$
BEGIN
    CALL spock.wait_for_sync_event(result, spock._sync_origin_id(origin), lsn, timeout, wait_if_disabled);
END;
$$;

CREATE OR REPLACE FUNCTION spock.repset_add_seq(set_name name, relation regclass, synchronize_data boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
BEGIN
    SELECT * INTO v_set FROM spock._repset(set_name);
    PERFORM spock._check_sequence(relation);
    IF EXISTS (SELECT 1 FROM spock.replication_set_seq WHERE set_id = v_set.set_id AND set_seqoid = relation) THEN
        -- (the catalog's own unique violation, as Spock reports it)
        RAISE EXCEPTION 'duplicate key value violates unique constraint "replication_set_seq_pkey"'
            USING ERRCODE = 'unique_violation', SCHEMA = 'spock', TABLE = 'replication_set_seq',
                  CONSTRAINT = 'replication_set_seq_pkey',
                  DETAIL = format('Key (set_id, set_seqoid)=(%s, %s) already exists.', v_set.set_id, relation);
    END IF;
    PERFORM spock._repset_add_seq(v_set.set_id, set_name, relation, synchronize_data);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION spock._subscription(p_name name) RETURNS spock.subscription
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription;
BEGIN
    SELECT * INTO v FROM spock.subscription WHERE sub_name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscriber % not found', p_name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN v;
END;
$$;

CREATE OR REPLACE FUNCTION spock.sub_wait_for_sync(subscription_name name)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_enabled boolean;
    v_status "char";
BEGIN
    LOOP
        SELECT s.sub_enabled, y.sync_status INTO v_enabled, v_status
          FROM spock.subscription s
          LEFT JOIN spock.local_sync_status y ON y.sync_subid = s.sub_id AND y.sync_nspname IS NULL
         WHERE s.sub_name = sub_wait_for_sync.subscription_name;
        IF NOT FOUND THEN
            -- also when it is dropped while we wait: its synchronisation never ends
            RAISE EXCEPTION 'subscriber % not found', subscription_name USING ERRCODE = 'undefined_object';
        END IF;
        -- Ready once the subscription and each of its tables are (as Spock's):
        -- tables a provider asked to sync ('A') count too.
        IF v_status IS NULL OR v_status = 'r' THEN
            SELECT t.sync_status INTO v_status
              FROM spock.local_sync_status t JOIN spock.subscription s ON s.sub_id = t.sync_subid
             WHERE s.sub_name = sub_wait_for_sync.subscription_name AND t.sync_nspname IS NOT NULL
               AND t.sync_status <> 'r'
             ORDER BY t.sync_status = 'f' DESC
             LIMIT 1;
            EXIT WHEN NOT FOUND;
            IF v_status = 'f' THEN
                RAISE EXCEPTION 'synchronisation of a table of subscription % failed; see spock.sub_show_table() and the server log',
                                subscription_name
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        END IF;
        IF NOT v_enabled THEN
            RAISE EXCEPTION 'subscription % is disabled; its synchronisation cannot finish', subscription_name
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.2);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION spock.sub_show_table(subscription_name name, relation regclass,
    OUT nspname text, OUT relname text, OUT status text)
RETURNS record STRICT STABLE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription;
    v_status "char";
BEGIN
    -- Read-only: no internal helper, so that a role granted SELECT on the
    -- subscription catalogs can call it.
    SELECT * INTO v FROM spock.subscription s WHERE s.sub_name = sub_show_table.subscription_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscriber % not found', subscription_name USING ERRCODE = 'undefined_object';
    END IF;
    SELECT n.nspname::text, c.relname::text INTO nspname, relname
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', relation::oid USING ERRCODE = 'undefined_table';
    END IF;
    SELECT y.sync_status INTO v_status FROM spock.local_sync_status y
     WHERE y.sync_subid = v.sub_id AND y.sync_nspname = sub_show_table.nspname AND y.sync_relname = sub_show_table.relname;
    IF v_status IS NULL THEN
        -- No table-level row: the table follows the subscription.
        SELECT y.sync_status INTO v_status FROM spock.local_sync_status y
         WHERE y.sync_subid = v.sub_id AND y.sync_nspname IS NULL;
    END IF;
    -- Spock's names of the sync status codes.
    status := CASE v_status
        WHEN 'i' THEN 'sync_init' WHEN 's' THEN 'sync_structure' WHEN 'd' THEN 'sync_data'
        WHEN 'c' THEN 'sync_constraints' WHEN 'w' THEN 'sync_waiting' WHEN 'u' THEN 'catchup'
        WHEN 'y' THEN 'synchronized' WHEN 'r' THEN 'replicating' WHEN 'f' THEN 'sync_failed'
        WHEN 'm' THEN 'sync_merge' ELSE 'unknown' END;
END;
$$;

CREATE OR REPLACE FUNCTION spock._option_text_array(p_options jsonb, p_key text, p_error text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_typeof(p_options->p_key) <> 'array' THEN
        RAISE EXCEPTION '%', p_error USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_options->p_key) x WHERE jsonb_typeof(x) <> 'string') THEN
        RAISE EXCEPTION 'option "%" must contain only strings', p_key USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN (SELECT coalesce(array_agg(x), '{}') FROM jsonb_array_elements_text(p_options->p_key) x);
END;
$$;

CREATE OR REPLACE FUNCTION spock.table_wait_for_sync(subscription_name name, relation regclass)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_status text;
BEGIN
    LOOP
        -- 42704 / 42P01 for a missing subscription or relation
        SELECT t.status INTO v_status FROM spock.sub_show_table(subscription_name, relation) t;
        -- (as Spock's: copied and caught up with the stream)
        EXIT WHEN v_status = 'replicating';
        IF v_status = 'sync_failed' THEN
            -- (Spock's wording)
            RAISE EXCEPTION 'synchronization of table %.% failed on subscription %',
                            (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation),
                            (SELECT c.relname FROM pg_class c WHERE c.oid = relation), subscription_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Check the server log for details, resolve the issue, and retry.';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM spock.subscription s
                        WHERE s.sub_name = table_wait_for_sync.subscription_name AND s.sub_enabled) THEN
            RAISE EXCEPTION 'subscription % is disabled; table % cannot finish synchronising', subscription_name, relation
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.2);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION spock.repset_remove_table(set_name name, relation regclass, include_partitions boolean DEFAULT true)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
    v_rel regclass;
BEGIN
    SELECT * INTO v_set FROM spock._repset(set_name);
    IF NOT EXISTS (SELECT 1 FROM spock.replication_set_table WHERE set_id = v_set.set_id AND set_reloid = relation) THEN
        -- (Spock's wording)
        RAISE EXCEPTION 'Table % not found in replication set %', (SELECT c.relname FROM pg_class c WHERE c.oid = relation),
                        set_name USING ERRCODE = 'undefined_object';
    END IF;
    FOR v_rel IN
        SELECT relation
        UNION ALL
        SELECT p.relid FROM pg_partition_tree(relation) p WHERE include_partitions AND p.relid <> relation
    LOOP
        DELETE FROM spock.replication_set_table WHERE set_id = v_set.set_id AND set_reloid = v_rel;
        PERFORM spock._invalidate_relcache(v_rel);
    END LOOP;
    RETURN true;
END;
$$;


-- Row filters accept only what a publication's WHERE clause accepts (6.0.0): a
-- filter stored before that uses something else (a user-defined function, a
-- mutable one) still works, but is named here so that it can be replaced.
DO $check_filters$
DECLARE
    v_row record;
BEGIN
    FOR v_row IN
        SELECT s.set_name, t.set_reloid, pg_catalog.pg_get_expr(t.set_row_filter, t.set_reloid) AS filter
          FROM spock.replication_set_table t JOIN spock.replication_set s ON s.set_id = t.set_id
         WHERE t.set_row_filter IS NOT NULL
    LOOP
        BEGIN
            PERFORM spock._parse_row_filter(v_row.set_reloid, v_row.filter);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'row filter of table % in replication set % is no longer accepted: %',
                          v_row.set_reloid, v_row.set_name, SQLERRM
                USING DETAIL = format('The filter is %s.', v_row.filter),
                      HINT = 'Replace it (repset_remove_table, then repset_add_table with a filter of columns, constants, built-in operators and immutable built-in functions).';
        END;
    END LOOP;
END
$check_filters$;

-- Finding divergence between nodes (6.0.0): table_diff over _table_diff, mesh_diff.
CREATE FUNCTION spock._table_diff(relation regclass, peer text, recheck_timeout_ms int8,
    OUT key text, OUT status text, OUT local_row text, OUT peer_row text,
    OUT local_commit_ts text, OUT peer_commit_ts text, OUT local_origin text, OUT peer_origin text)
RETURNS SETOF record VOLATILE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO' SET TimeZone = 'UTC' SET extra_float_digits = 3
SET bytea_output = 'hex' SET IntervalStyle = 'postgres' SET lc_monetary = 'C' SET standard_conforming_strings = on
AS 'MODULE_PATHNAME', 'table_diff_rows_wrapper';
REVOKE ALL ON FUNCTION spock._table_diff(regclass, text, int8) FROM PUBLIC;

CREATE FUNCTION spock.table_diff(relation regclass, peer text, recheck_timeout interval DEFAULT '10 seconds',
    OUT key jsonb, OUT status text, OUT local_row jsonb, OUT peer_row jsonb,
    OUT local_commit_ts timestamptz, OUT peer_commit_ts timestamptz, OUT local_origin text, OUT peer_origin text)
RETURNS SETOF record VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.key::jsonb, d.status, d.local_row::jsonb, d.peer_row::jsonb,
           d.local_commit_ts::timestamptz, d.peer_commit_ts::timestamptz, d.local_origin, d.peer_origin
      FROM spock._table_diff(relation, peer,
               coalesce((extract(epoch FROM recheck_timeout) * 1000)::int8, 0)) d;
$$;

CREATE FUNCTION spock.mesh_diff(recheck_timeout interval DEFAULT '10 seconds',
    OUT relation regclass, OUT peer text, OUT only_local bigint, OUT only_peer bigint, OUT differs bigint,
    OUT error text)
RETURNS SETOF record VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rel regclass;
    v_peer text;
BEGIN
    FOR v_rel IN
        SELECT x.r FROM (SELECT DISTINCT t.set_reloid AS r
                           FROM spock.replication_set_table t
                           JOIN spock.replication_set s ON s.set_id = t.set_id
                           JOIN spock.local_node l ON l.node_id = s.set_nodeid) x
         ORDER BY x.r::text
    LOOP
        FOR v_peer IN
            SELECT n.node_name::text FROM spock.node n JOIN spock.local_node l ON n.node_id <> l.node_id
             WHERE EXISTS (SELECT FROM spock.node_interface i WHERE i.if_nodeid = n.node_id)
             ORDER BY 1
        LOOP
            relation := v_rel;
            peer := v_peer;
            error := NULL;
            BEGIN
                SELECT count(*) FILTER (WHERE d.status = 'only_local'),
                       count(*) FILTER (WHERE d.status = 'only_peer'),
                       count(*) FILTER (WHERE d.status = 'differs')
                  INTO only_local, only_peer, differs
                  FROM spock.table_diff(v_rel, v_peer, recheck_timeout) d;
            EXCEPTION WHEN OTHERS THEN
                only_local := NULL;
                only_peer := NULL;
                differs := NULL;
                error := SQLERRM;
            END;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION spock.table_diff(regclass, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.mesh_diff(interval) FROM PUBLIC;

-- Repairing a table from another node (6.0.0).
CREATE FUNCTION spock._table_repair(relation regclass, source text, recheck_timeout_ms int8, dry_run boolean,
    OUT key text, OUT action text, OUT origin text, OUT commit_ts text)
RETURNS SETOF record VOLATILE STRICT LANGUAGE c
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO' SET TimeZone = 'UTC' SET extra_float_digits = 3
SET bytea_output = 'hex' SET IntervalStyle = 'postgres' SET lc_monetary = 'C' SET standard_conforming_strings = on
AS 'MODULE_PATHNAME', 'table_repair_rows_wrapper';
REVOKE ALL ON FUNCTION spock._table_repair(regclass, text, int8, boolean) FROM PUBLIC;
CREATE FUNCTION spock._repair_session(origin_node text) RETURNS boolean
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'repair_session_wrapper';
ALTER FUNCTION spock._repair_session(text) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._repair_session(text) FROM PUBLIC;
CREATE FUNCTION spock._repair_row(relation regclass, key text, new_row text, commit_ts text) RETURNS text
VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'repair_row_wrapper';
REVOKE ALL ON FUNCTION spock._repair_row(regclass, text, text, text) FROM PUBLIC;

CREATE FUNCTION spock.table_repair(relation regclass, source_node text,
    recheck_timeout interval DEFAULT '10 seconds', dry_run boolean DEFAULT false,
    OUT key jsonb, OUT action text, OUT origin text, OUT commit_ts timestamptz)
RETURNS SETOF record VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.key::jsonb, r.action, r.origin, r.commit_ts::timestamptz
      FROM spock._table_repair(relation, source_node,
               coalesce((extract(epoch FROM recheck_timeout) * 1000)::int8, 0), coalesce(dry_run, false)) r;
$$;

REVOKE ALL ON FUNCTION spock.table_repair(regclass, text, interval, boolean) FROM PUBLIC;

-- Removing a node (6.0.0): remove_node over _remote_query.
CREATE FUNCTION spock._remote_query(dsn text, sql text) RETURNS SETOF text
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'remote_query_wrapper';
ALTER FUNCTION spock._remote_query(text, text) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._remote_query(text, text) FROM PUBLIC;
CREATE PROCEDURE spock.remove_node(target_node_name text, target_node_dsn text, verbose_mode boolean DEFAULT true)
LANGUAGE plpgsql AS $$
DECLARE
    v_local text;
    v_peer record;
    v_sub record;
BEGIN
    SELECT n.node_name::text INTO v_local
      FROM spock.local_node l JOIN spock.node n ON n.node_id OPERATOR(pg_catalog.=) l.node_id;
    IF v_local IS NULL OR v_local OPERATOR(pg_catalog.<>) target_node_name THEN
        RAISE EXCEPTION 'This procedure must be run on the node being removed (%). Current node is %',
                        target_node_name, coalesce(v_local, '(none)')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR v_peer IN
        SELECT n.node_name::text AS name,
               (SELECT i.if_dsn FROM spock.node_interface i WHERE i.if_nodeid OPERATOR(pg_catalog.=) n.node_id
                 ORDER BY (i.if_name OPERATOR(pg_catalog.=) n.node_name) DESC, i.if_id LIMIT 1) AS dsn
          FROM spock.node n WHERE n.node_name::text OPERATOR(pg_catalog.<>) v_local ORDER BY 1
    LOOP
        IF v_peer.dsn IS NULL THEN
            RAISE WARNING 'node % has no interface: remove node % there by hand', v_peer.name, target_node_name;
            CONTINUE;
        END IF;
        IF verbose_mode THEN
            RAISE NOTICE 'node %: dropping its subscriptions from node % and forgetting it', v_peer.name, target_node_name;
        END IF;
        PERFORM spock._remote_query(v_peer.dsn, pg_catalog.format(
            'SELECT spock.sub_drop(s.sub_name)::text FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L', target_node_name));
        PERFORM spock._remote_query(v_peer.dsn, pg_catalog.format('SELECT spock.node_drop(%L, true)::text', target_node_name));
    END LOOP;
    FOR v_sub IN SELECT s.sub_name FROM spock.subscription s ORDER BY 1 LOOP
        IF verbose_mode THEN
            RAISE NOTICE 'dropping subscription %', v_sub.sub_name;
        END IF;
        PERFORM spock.sub_drop(v_sub.sub_name);
    END LOOP;
    FOR v_peer IN SELECT n.node_name FROM spock.node n WHERE n.node_name::text OPERATOR(pg_catalog.<>) v_local LOOP
        PERFORM spock.node_drop(v_peer.node_name, true);
    END LOOP;
    PERFORM spock.node_drop(v_local::name, true);
    IF verbose_mode THEN
        RAISE NOTICE 'node % removed', target_node_name;
    END IF;
END;
$$;
REVOKE ALL ON PROCEDURE spock.remove_node(text, text, boolean) FROM PUBLIC;

-- Adding a node (6.0.0): add_node and its steps.
-- add_node(src_node_name, src_dsn, new_node_name, new_node_dsn, ...): Zodan's
-- procedure, run on the node that joins (docs/operations.md). It does the steps of
-- docs/sync.md "Adding a node to a running mesh" for every node of the mesh:
--   1. this node's spock node (new_node_dsn must lead to this database);
--   2. for every node P the source subscribes to: a disabled subscription from P
--      (sub_<P>_<new>), committed, then its slot on P, then a sync event of P
--      that the source must have applied (P's changes from then on come from P);
--   3. structure and data from the source (sub_<src>_<new>), which moves the
--      origins of the disabled subscriptions to what the copy holds;
--   4. those subscriptions enabled; the source's replication sets copied here;
--   5. every node subscribes to this one (sub_<new>_<node>), and the procedure
--      returns once each of those subscriptions replicates: from then on what
--      this node commits reaches everyone.
-- Each step commits and checks what exists first, so calling it again after a
-- failure goes on where it stopped; remove_node() undoes a join instead. A step
-- that waits (the sync event, the peers' subscriptions) gives up after timeout
-- seconds; the copy itself is not timed (it ends or fails). Must be CALLed
-- outside a transaction block. add_node manages the other nodes over their DSNs
-- (src_dsn, and the DSNs the source has for its providers), whose role must then
-- be a superuser; admin_conninfo (say 'user=postgres password=...') is appended to
-- each of those DSNs for that instead, while the subscriptions keep the DSNs as
-- they are (a replication role's, for example). The helpers pin search_path; the
-- procedure cannot (it commits), so it only calls them.

-- The error of a failed step, with what to do next.
CREATE FUNCTION spock._add_node_failed(step text, state text, message text, new_node_name text, new_node_dsn text)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'add_node: % failed: %', step, message
        USING ERRCODE = state,
              HINT = format('Fix the cause and CALL spock.add_node() on this node again: it resumes where it stopped. '
                            'To give up instead, CALL spock.remove_node(%L, %L) here: it removes what the join created on every node.',
                            new_node_name, new_node_dsn);
END;
$$;

-- The names of the replication sets of the node at dsn.
CREATE FUNCTION spock._remote_sets(dsn text) RETURNS text[]
STRICT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(q::text[], '{}')
      FROM spock._remote_query(dsn,
               'SELECT pg_catalog.array_agg(s.set_name::text ORDER BY s.set_name)::text
                  FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid') q;
$$;

-- Step 0: the source is src_node_name, new_node_dsn leads here, this database is
-- not another node already. Returns whether this node exists already (a resume).
CREATE FUNCTION spock._add_node_check(src_node_name text, src_admin_dsn text, new_node_name text, new_node_dsn text)
RETURNS boolean CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_here text;
    v_there text;
    v_local text;
BEGIN
    IF src_node_name IS NULL OR src_admin_dsn IS NULL OR new_node_name IS NULL OR new_node_dsn IS NULL THEN
        RAISE EXCEPTION 'add_node: src_node_name, src_dsn, new_node_name and new_node_dsn are required'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF src_node_name = new_node_name THEN
        RAISE EXCEPTION 'add_node: the new node cannot be its own source (%)', new_node_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n.node_name::text INTO v_local FROM spock.local_node l JOIN spock.node n ON n.node_id = l.node_id;
    IF v_local IS NOT NULL AND v_local <> new_node_name THEN
        RAISE EXCEPTION 'add_node: this database is node % already, not %', v_local, new_node_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run add_node on the database that joins, with its node name.';
    END IF;
    SELECT s.system_identifier::text || ' ' || current_database() INTO v_here FROM pg_control_system() s;
    BEGIN
        SELECT q INTO v_there FROM spock._remote_query(new_node_dsn,
            'SELECT s.system_identifier::text || '' '' || pg_catalog.current_database() FROM pg_catalog.pg_control_system() s') q;
    EXCEPTION WHEN OTHERS THEN
        -- (a load balancer's address may not be reachable from behind it)
        RAISE WARNING 'add_node: could not check that new_node_dsn leads to this database: %', SQLERRM
            USING HINT = 'The other nodes subscribe to this node with new_node_dsn: it must reach this database from them.';
        v_there := v_here;
    END;
    IF v_there IS DISTINCT FROM v_here THEN
        RAISE EXCEPTION 'add_node: new_node_dsn leads to another database (%), not this one (%)', v_there, v_here
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Run add_node on the database that joins.';
    END IF;
    BEGIN
        SELECT q INTO v_there FROM spock._remote_query(src_admin_dsn,
            'SELECT n.node_name::text FROM spock.local_node l JOIN spock.node n ON n.node_id = l.node_id') q;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'add_node: source node % (src_dsn): %', src_node_name, SQLERRM
            USING ERRCODE = 'connection_failure';
    END;
    IF v_there IS DISTINCT FROM src_node_name THEN
        RAISE EXCEPTION 'add_node: src_dsn leads to node %, not %', coalesce(v_there, '(none)'), src_node_name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN v_local IS NOT NULL;
END;
$$;

-- dsn with admin_conninfo appended (its keywords win): how add_node connects to
-- manage a node.
CREATE FUNCTION spock._admin_dsn(dsn text, admin_conninfo text) RETURNS text
CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(admin_conninfo, '') = '' THEN
        RETURN dsn;
    END IF;
    IF dsn ~* '^postgres(ql)?://' THEN
        RAISE EXCEPTION 'add_node: admin_conninfo cannot be added to a connection URI (%)', split_part(dsn, '@', 2)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Give the nodes key=value connection strings.';
    END IF;
    RETURN dsn || ' ' || admin_conninfo;
END;
$$;

-- The nodes the source subscribes to (but the new one), the DSN it reaches each
-- one with, and that DSN with admin_conninfo.
CREATE FUNCTION spock._add_node_peers(src_admin_dsn text, new_node_name text, admin_conninfo text,
    OUT peer text, OUT dsn text, OUT admin_dsn text)
RETURNS SETOF record CALLED ON NULL INPUT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT j->>'peer', j->>'dsn', spock._admin_dsn(j->>'dsn', admin_conninfo)
      FROM spock._remote_query(src_admin_dsn, format(
               'SELECT DISTINCT ON (n.node_name) pg_catalog.json_build_object(''peer'', n.node_name, ''dsn'', i.if_dsn)::text
                  FROM spock.subscription s
                  JOIN spock.node n ON n.node_id = s.sub_origin
                  JOIN spock.node_interface i ON i.if_id = s.sub_origin_if
                 WHERE n.node_name <> %L
                 ORDER BY n.node_name, s.sub_enabled DESC, s.sub_name', new_node_name)) q,
           LATERAL (SELECT q::jsonb AS j) x
     ORDER BY 1;
$$;

-- Step 2a: this node's disabled subscription from peer. Returns its slot name.
CREATE FUNCTION spock._add_node_peer_sub(new_node_name text, peer text, peer_dsn text, peer_admin_dsn text)
RETURNS name STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub name := ('sub_' || peer || '_' || new_node_name)::name;
    v_slot name;
    v_origin text;
BEGIN
    SELECT s.sub_slot_name, n.node_name::text INTO v_slot, v_origin
      FROM spock.subscription s JOIN spock.node n ON n.node_id = s.sub_origin WHERE s.sub_name = v_sub;
    IF v_slot IS NULL THEN
        PERFORM spock.sub_create(v_sub, peer_dsn, spock._remote_sets(peer_admin_dsn), false, false, '{}', '0', false,
                                 enabled := false);
        SELECT s.sub_slot_name INTO v_slot FROM spock.subscription s WHERE s.sub_name = v_sub;
    ELSIF v_origin <> peer THEN
        RAISE EXCEPTION 'subscription % exists already, from node % instead of %', v_sub, v_origin, peer
            USING ERRCODE = 'duplicate_object';
    END IF;
    RETURN v_slot;
END;
$$;

-- Step 2b: the slot of that subscription on peer, then a sync event of peer that
-- the source has applied: the copy from the source will hold every change of peer
-- that this slot does not. Skipped once the copy has started (the slot must
-- exist then). Returns the sync event's LSN (NULL when skipped).
CREATE FUNCTION spock._add_node_peer_slot(src_node_name text, src_admin_dsn text, new_node_name text, peer text,
    peer_admin_dsn text, slot name, timeout integer)
RETURNS pg_lsn STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_exists boolean;
    v_lsn pg_lsn;
    v_reached text;
BEGIN
    SELECT q::boolean INTO v_exists FROM spock._remote_query(peer_admin_dsn, format(
        'SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_replication_slots WHERE slot_name = %L', slot)) q;
    IF EXISTS (SELECT FROM spock.subscription s WHERE s.sub_name = 'sub_' || src_node_name || '_' || new_node_name) THEN
        IF NOT v_exists THEN
            RAISE EXCEPTION 'slot % on node % is gone, but the copy from % has started: changes of % may be missing here',
                            slot, peer, src_node_name, peer
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RETURN NULL;
    END IF;
    IF NOT v_exists THEN
        PERFORM spock._remote_query(peer_admin_dsn, format(
            'SELECT slot_name::text FROM pg_catalog.pg_create_logical_replication_slot(%L, ''spock_output'')', slot));
    END IF;
    SELECT q::pg_lsn INTO v_lsn FROM spock._remote_query(peer_admin_dsn, 'SELECT spock.sync_event()::text') q;
    SELECT q INTO v_reached FROM spock._remote_query(src_admin_dsn, format(
        'CALL spock.wait_for_sync_event(NULL, %L::name, %L::pg_lsn, %s)', peer, v_lsn, timeout)) q;
    IF v_reached IS DISTINCT FROM 't' AND v_reached IS DISTINCT FROM 'true' THEN
        RAISE EXCEPTION 'node % has not applied the changes of node % up to % within % s', src_node_name, peer, v_lsn, timeout
            USING ERRCODE = 'query_canceled';
    END IF;
    RETURN v_lsn;
END;
$$;

-- Step 3a: the subscription from the source with structure and data.
CREATE FUNCTION spock._add_node_source_sub(src_dsn text, src_admin_dsn text, src_node_name text, new_node_name text)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub name := ('sub_' || src_node_name || '_' || new_node_name)::name;
BEGIN
    IF EXISTS (SELECT FROM spock.subscription s WHERE s.sub_name = v_sub) THEN
        RETURN false;
    END IF;
    PERFORM spock.sub_create(v_sub, src_dsn, spock._remote_sets(src_admin_dsn), true, true);
    RETURN true;
END;
$$;

-- Step 3b: waits for the end of that copy (as sub_wait_for_sync). A copy that
-- keeps failing restarts the apply worker every few seconds: after four
-- attempts, gives up with what the worker's error says is in the log.
CREATE FUNCTION spock._add_node_wait_copy(src_node_name text, new_node_name text)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub spock.subscription;
    v_status "char";
    v_pids int[] := '{}';
    v_pid int;
BEGIN
    SELECT * INTO v_sub FROM spock.subscription s WHERE s.sub_name = 'sub_' || src_node_name || '_' || new_node_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % was dropped', 'sub_' || src_node_name || '_' || new_node_name
            USING ERRCODE = 'undefined_object';
    END IF;
    LOOP
        SELECT y.sync_status INTO v_status FROM spock.local_sync_status y
         WHERE y.sync_subid = v_sub.sub_id AND y.sync_nspname IS NULL;
        IF coalesce(v_status, 'r') = 'r' THEN
            SELECT t.sync_status INTO v_status FROM spock.local_sync_status t
             WHERE t.sync_subid = v_sub.sub_id AND t.sync_nspname IS NOT NULL AND t.sync_status <> 'r'
             ORDER BY t.sync_status = 'f' DESC LIMIT 1;
            EXIT WHEN NOT FOUND;
            IF v_status = 'f' THEN
                RAISE EXCEPTION 'the copy of a table failed; see spock.sub_show_table(%L, ...) and the server log', v_sub.sub_name
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        END IF;
        PERFORM pg_stat_clear_snapshot();
        FOR v_pid IN SELECT a.pid FROM pg_stat_activity a
                      WHERE a.backend_type = 'spock apply' AND a.application_name = v_sub.sub_slot_name LOOP
            IF v_pid <> ALL (v_pids) THEN
                v_pids := v_pids || v_pid;
            END IF;
        END LOOP;
        IF cardinality(v_pids) > 4 THEN
            RAISE EXCEPTION 'the copy from node % failed at least % times; the apply worker''s error (subscription %) is in this server''s log',
                            src_node_name, cardinality(v_pids) - 1, v_sub.sub_name
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM pg_sleep(0.2);
    END LOOP;
END;
$$;

-- Step 4a: enables this node's subscription from peer.
CREATE FUNCTION spock._add_node_enable(new_node_name text, peer text)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub name := ('sub_' || peer || '_' || new_node_name)::name;
BEGIN
    IF EXISTS (SELECT FROM spock.subscription s WHERE s.sub_name = v_sub AND NOT s.sub_enabled) THEN
        PERFORM spock.sub_enable(v_sub);
        RETURN true;
    END IF;
    RETURN false;
END;
$$;

-- Step 4b: this node's replication sets become the source's: the same sets with
-- the same actions, tables (columns, row filter) and sequences; what the source's
-- sets do not have leaves them here. Tables that are not here are reported.
CREATE FUNCTION spock._add_node_copy_sets(src_admin_dsn text)
RETURNS integer STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set jsonb;
    v_item jsonb;
    v_name name;
    v_rel regclass;
    v_changes integer := 0;
    v_cols text[];
BEGIN
    FOR v_set IN
        SELECT q::jsonb FROM spock._remote_query(src_admin_dsn, $q$
            SELECT pg_catalog.json_build_object(
                'name', s.set_name, 'ins', s.replicate_insert, 'upd', s.replicate_update,
                'del', s.replicate_delete, 'trunc', s.replicate_truncate,
                'tables', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                              'rel', pg_catalog.quote_ident(c.relnamespace::regnamespace::text) || '.' || pg_catalog.quote_ident(c.relname),
                              'cols', t.set_att_list,
                              'filter', pg_catalog.pg_get_expr(t.set_row_filter, t.set_reloid)))
                             FROM spock.replication_set_table t JOIN pg_catalog.pg_class c ON c.oid = t.set_reloid
                            WHERE t.set_id = s.set_id),
                'seqs', (SELECT pg_catalog.json_agg(pg_catalog.quote_ident(c.relnamespace::regnamespace::text) || '.' || pg_catalog.quote_ident(c.relname))
                           FROM spock.replication_set_seq q JOIN pg_catalog.pg_class c ON c.oid = q.set_seqoid
                          WHERE q.set_id = s.set_id))::text
              FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
             ORDER BY s.set_name $q$) q
    LOOP
        v_name := (v_set->>'name')::name;
        IF NOT EXISTS (SELECT FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
                        WHERE s.set_name = v_name) THEN
            PERFORM spock.repset_create(v_name, (v_set->>'ins')::boolean, (v_set->>'upd')::boolean,
                                        (v_set->>'del')::boolean, (v_set->>'trunc')::boolean);
            v_changes := v_changes + 1;
        ELSE
            PERFORM spock.repset_alter(v_name, (v_set->>'ins')::boolean, (v_set->>'upd')::boolean,
                                       (v_set->>'del')::boolean, (v_set->>'trunc')::boolean);
        END IF;
        FOR v_item IN SELECT jsonb_array_elements(CASE WHEN jsonb_typeof(v_set->'tables') = 'array' THEN v_set->'tables' ELSE '[]' END) LOOP
            v_rel := to_regclass(v_item->>'rel');
            IF v_rel IS NULL THEN
                RAISE WARNING 'add_node: table % of replication set % on the source is not here', v_item->>'rel', v_name
                    USING HINT = 'Create it and add it to the set (repset_add_table with synchronize_data).';
                CONTINUE;
            END IF;
            IF EXISTS (SELECT FROM spock.replication_set_table t JOIN spock.replication_set s ON s.set_id = t.set_id
                         JOIN spock.local_node l ON l.node_id = s.set_nodeid
                        WHERE s.set_name = v_name AND t.set_reloid = v_rel) THEN
                CONTINUE;
            END IF;
            v_cols := CASE WHEN jsonb_typeof(v_item->'cols') = 'array'
                           THEN ARRAY(SELECT jsonb_array_elements_text(v_item->'cols')) END;
            PERFORM spock.repset_add_table(v_name, v_rel, false, v_cols, v_item->>'filter', false);
            v_changes := v_changes + 1;
        END LOOP;
        FOR v_item IN SELECT jsonb_array_elements(CASE WHEN jsonb_typeof(v_set->'seqs') = 'array' THEN v_set->'seqs' ELSE '[]' END) LOOP
            v_rel := to_regclass(v_item #>> '{}');
            IF v_rel IS NULL THEN
                RAISE WARNING 'add_node: sequence % of replication set % on the source is not here', v_item #>> '{}', v_name;
                CONTINUE;
            END IF;
            IF NOT EXISTS (SELECT FROM spock.replication_set_seq q JOIN spock.replication_set s ON s.set_id = q.set_id
                             JOIN spock.local_node l ON l.node_id = s.set_nodeid
                            WHERE s.set_name = v_name AND q.set_seqoid = v_rel) THEN
                PERFORM spock.repset_add_seq(v_name, v_rel, false);
                v_changes := v_changes + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN v_changes;
END;
$$;

-- Step 5a: node (managed at node_admin_dsn) subscribes to the new node (at
-- new_node_dsn), unless it does already.
CREATE FUNCTION spock._add_node_subscribe(new_node_name text, new_node_dsn text, node text, node_admin_dsn text)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_have text;
BEGIN
    SELECT q INTO v_have FROM spock._remote_query(node_admin_dsn, format(
        'SELECT s.sub_name::text FROM spock.subscription s JOIN spock.node n ON n.node_id = s.sub_origin
          WHERE n.node_name = %L LIMIT 1', new_node_name)) q;
    IF v_have IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM spock._remote_query(node_admin_dsn, format(
        'SELECT spock.sub_create(%L, %L, %L::text[], false, false)::text',
        'sub_' || new_node_name || '_' || node, new_node_dsn,
        (SELECT array_agg(s.set_name::text ORDER BY s.set_name)
           FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid)));
    RETURN true;
END;
$$;

-- Step 5b: waits until node's subscription to the new node replicates (its slot
-- here exists: what this node commits from then on reaches node).
CREATE FUNCTION spock._add_node_wait_subscriber(new_node_name text, node text, node_admin_dsn text, timeout integer)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_status text;
BEGIN
    LOOP
        SELECT q INTO v_status FROM spock._remote_query(node_admin_dsn, format(
            'SELECT s.status FROM spock.sub_show_status() s WHERE s.provider_node = %L
              ORDER BY s.status = ''replicating'' DESC LIMIT 1', new_node_name)) q;
        EXIT WHEN v_status = 'replicating';
        IF clock_timestamp() - v_started > make_interval(secs => timeout) THEN
            RAISE EXCEPTION 'the subscription of node % to this node is % after % s', node, coalesce(v_status, 'missing'), timeout
                USING ERRCODE = 'query_canceled';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END;
$$;

CREATE PROCEDURE spock.add_node(src_node_name text, src_dsn text, new_node_name text, new_node_dsn text,
    verb boolean DEFAULT false, new_node_location text DEFAULT 'NY', new_node_country text DEFAULT 'USA',
    new_node_info jsonb DEFAULT '{}'::jsonb, timeout integer DEFAULT 600, admin_conninfo text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_src text := spock._admin_dsn(src_dsn, admin_conninfo);
    v_peer record;
    v_slot name;
    v_lsn pg_lsn;
    v_step text;
BEGIN
    -- Each step commits: fails here at once inside a transaction block.
    COMMIT;
    IF spock._add_node_check(src_node_name, v_src, new_node_name, new_node_dsn) THEN
        RAISE NOTICE 'add_node: node % exists: resuming', new_node_name;
    ELSE
        PERFORM spock.node_create(new_node_name::name, new_node_dsn, new_node_location, new_node_country, new_node_info);
        IF verb THEN
            RAISE NOTICE 'add_node: node % created', new_node_name;
        END IF;
    END IF;
    COMMIT;
    FOR v_peer IN SELECT p.* FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        BEGIN
            v_step := pg_catalog.format('subscription from node %s', v_peer.peer);
            v_slot := spock._add_node_peer_sub(new_node_name, v_peer.peer, v_peer.dsn, v_peer.admin_dsn);
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
        COMMIT;
        BEGIN
            v_step := pg_catalog.format('slot on node %s and its sync event on node %s', v_peer.peer, src_node_name);
            v_lsn := spock._add_node_peer_slot(src_node_name, v_src, new_node_name, v_peer.peer, v_peer.admin_dsn,
                                               v_slot, timeout);
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
        IF verb AND v_lsn IS NOT NULL THEN
            RAISE NOTICE 'add_node: slot % on node %; node % has applied node %''s changes up to %',
                         v_slot, v_peer.peer, src_node_name, v_peer.peer, v_lsn;
        END IF;
        COMMIT;
    END LOOP;
    BEGIN
        v_step := pg_catalog.format('subscription from the source node %s', src_node_name);
        IF spock._add_node_source_sub(src_dsn, v_src, src_node_name, new_node_name) AND verb THEN
            RAISE NOTICE 'add_node: copying structure and data from node %', src_node_name;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
    END;
    COMMIT;
    BEGIN
        v_step := pg_catalog.format('copy from node %s', src_node_name);
        PERFORM spock._add_node_wait_copy(src_node_name, new_node_name);
    EXCEPTION WHEN OTHERS THEN
        PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
    END;
    IF verb THEN
        RAISE NOTICE 'add_node: structure and data copied from node %', src_node_name;
    END IF;
    COMMIT;
    FOR v_peer IN SELECT p.peer FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        IF spock._add_node_enable(new_node_name, v_peer.peer) AND verb THEN
            RAISE NOTICE 'add_node: subscription from node % enabled', v_peer.peer;
        END IF;
    END LOOP;
    COMMIT;
    BEGIN
        v_step := pg_catalog.format('copy of the replication sets of node %s', src_node_name);
        PERFORM spock._add_node_copy_sets(v_src);
    EXCEPTION WHEN OTHERS THEN
        PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
    END;
    COMMIT;
    FOR v_peer IN SELECT src_node_name AS peer, v_src AS admin_dsn
                  UNION ALL SELECT p.peer, p.admin_dsn FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        BEGIN
            v_step := pg_catalog.format('subscription of node %s to this node', v_peer.peer);
            IF spock._add_node_subscribe(new_node_name, new_node_dsn, v_peer.peer, v_peer.admin_dsn) AND verb THEN
                RAISE NOTICE 'add_node: node % subscribes to node %', v_peer.peer, new_node_name;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
    END LOOP;
    COMMIT;
    FOR v_peer IN SELECT src_node_name AS peer, v_src AS admin_dsn
                  UNION ALL SELECT p.peer, p.admin_dsn FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        BEGIN
            v_step := pg_catalog.format('subscription of node %s to this node', v_peer.peer);
            PERFORM spock._add_node_wait_subscriber(new_node_name, v_peer.peer, v_peer.admin_dsn, timeout);
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
        COMMIT;
    END LOOP;
    RAISE NOTICE 'add_node: node % has joined: it replicates with node % and % other node(s)', new_node_name,
                 src_node_name, (SELECT pg_catalog.count(*) FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo));
END;
$$;

REVOKE ALL ON FUNCTION spock._add_node_failed(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._remote_sets(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_check(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._admin_dsn(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_peers(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_peer_sub(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_peer_slot(text, text, text, text, text, name, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_source_sub(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_wait_copy(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_enable(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_copy_sets(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_subscribe(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._add_node_wait_subscriber(text, text, text, integer) FROM PUBLIC;
REVOKE ALL ON PROCEDURE spock.add_node(text, text, text, text, boolean, text, text, jsonb, integer, text) FROM PUBLIC;

-- Recovering from a lost node (6.0.0).
-- recover_lost_node(lost_node_name): after a node is gone for good (its server
-- will not come back), makes the surviving nodes converge on every transaction of
-- it that any of them has, then removes it everywhere (docs/operations.md). Run on
-- any survivor; refuses while the lost node still answers at its DSN.
--   1. every survivor (this node and each node it has an interface for) disables
--      its subscriptions from the lost node and reports how far it applied the
--      lost node's stream: the replication origin of that subscription;
--   2. the survivor that applied most of it holds every transaction of the lost
--      node that any survivor has (each applies that stream in order); every other
--      survivor repairs each table of its replication sets from it (table_repair:
--      rows written with their commit timestamp and under the writer's origin, not
--      replicated), after a sync event each way;
--   3. every survivor drops its subscriptions from the lost node, the lost node's
--      slots on it (inactive spock_output slots named after the lost node's
--      subscriptions and used by no survivor) and the node row.
-- One row per step: node, action, detail. Superusers only (it connects to the
-- survivors; admin_conninfo as for add_node).
CREATE FUNCTION spock.recover_lost_node(lost_node_name text, admin_conninfo text DEFAULT NULL,
    recheck_timeout interval DEFAULT '10 seconds', OUT node text, OUT action text, OUT detail text)
RETURNS SETOF record CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_local text;
    v_lost_dsn text;
    v_answers boolean;
    v_survivors jsonb := '[]';
    v_s jsonb;
    v_lsn pg_lsn;
    v_best text;
    v_best_lsn pg_lsn;
    v_rel text;
    v_used text[] := '{}';
    v_word text := '(^|_)' || regexp_replace(lost_node_name, '([.*+?^${}()|\[\]\\])', '\\\1', 'g') || '(_|$)';
BEGIN
    IF lost_node_name IS NULL THEN
        RAISE EXCEPTION 'lost_node_name is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT n.node_name::text INTO v_local FROM spock.local_node l JOIN spock.node n ON n.node_id = l.node_id;
    IF v_local IS NULL THEN
        RAISE EXCEPTION 'this database is not a spock node' USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF v_local = lost_node_name THEN
        RAISE EXCEPTION 'node % cannot recover from losing itself: run recover_lost_node on a surviving node', v_local
            USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF NOT EXISTS (SELECT FROM spock.node n WHERE n.node_name = lost_node_name) THEN
        RAISE EXCEPTION 'node % not found', lost_node_name USING ERRCODE = 'undefined_object';
    END IF;
    -- A node that answers is not lost: its transactions would go on arriving.
    FOR v_lost_dsn IN SELECT i.if_dsn FROM spock.node_interface i JOIN spock.node n ON n.node_id = i.if_nodeid
                       WHERE n.node_name = lost_node_name LOOP
        BEGIN
            PERFORM spock._remote_query(spock._admin_dsn(v_lost_dsn, admin_conninfo), 'SELECT 1');
            v_answers := true;
        EXCEPTION WHEN OTHERS THEN
            v_answers := false;
        END;
        IF v_answers THEN
            RAISE EXCEPTION 'node % still answers at its DSN: it is not lost', lost_node_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'To take a running node out of the mesh, CALL spock.remove_node() on it.';
        END IF;
    END LOOP;

    -- 1. The survivors and how far each applied the lost node's stream.
    FOR v_s IN
        SELECT jsonb_build_object('name', d.name, 'dsn', spock._admin_dsn(d.dsn, admin_conninfo))
          FROM (SELECT n.node_name::text AS name,
                       coalesce((SELECT x.if_dsn FROM spock.local_node l
                                   JOIN spock.node_interface x ON x.if_id = l.node_local_interface
                                  WHERE l.node_id = n.node_id),
                                (SELECT x.if_dsn FROM spock.node_interface x WHERE x.if_nodeid = n.node_id
                                  ORDER BY (x.if_name = n.node_name) DESC, x.if_id LIMIT 1)) AS dsn
                  FROM spock.node n WHERE n.node_name <> lost_node_name) d
         WHERE d.dsn IS NOT NULL
         ORDER BY d.name
    LOOP
        PERFORM spock._remote_query(v_s->>'dsn', format(
            'SELECT spock.sub_disable(s.sub_name, true)::text FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L AND s.sub_enabled', lost_node_name));
        SELECT q::pg_lsn INTO v_lsn FROM spock._remote_query(v_s->>'dsn', format(
            'SELECT pg_catalog.max(spock._subscription_progress(s.sub_slot_name))::text FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L', lost_node_name)) q;
        v_survivors := v_survivors || jsonb_build_array(v_s || jsonb_build_object('lsn', v_lsn::text));
        node := v_s->>'name';
        action := 'applied';
        detail := format('node %s''s changes up to %s', lost_node_name, coalesce(v_lsn::text, 'none (no subscription from it)'));
        RETURN NEXT;
        IF v_lsn IS NOT NULL AND (v_best_lsn IS NULL OR v_lsn > v_best_lsn) THEN
            v_best := v_s->>'name';
            v_best_lsn := v_lsn;
        END IF;
        SELECT v_used || coalesce(array_agg(x), '{}') INTO v_used FROM spock._remote_query(v_s->>'dsn',
            'SELECT n.node_name || '' '' || s.sub_slot_name FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin') x;
    END LOOP;

    -- 2. Every survivor behind the most advanced one is repaired from it.
    IF v_best IS NOT NULL THEN
        FOR v_s IN SELECT e FROM jsonb_array_elements(v_survivors) e
                    WHERE e->>'name' <> v_best AND (e->>'lsn' IS NULL OR (e->>'lsn')::pg_lsn < v_best_lsn) LOOP
            FOR v_rel IN SELECT q FROM spock._remote_query(v_s->>'dsn',
                'SELECT DISTINCT pg_catalog.quote_ident(c.relnamespace::regnamespace::text) || ''.'' || pg_catalog.quote_ident(c.relname)
                   FROM spock.replication_set_table t
                   JOIN spock.replication_set s ON s.set_id = t.set_id
                   JOIN spock.local_node l ON l.node_id = s.set_nodeid
                   JOIN pg_catalog.pg_class c ON c.oid = t.set_reloid ORDER BY 1') q LOOP
                node := v_s->>'name';
                action := 'repaired';
                SELECT format('%s: %s rows from node %s', v_rel, q, v_best) INTO detail
                  FROM spock._remote_query(v_s->>'dsn', format(
                      'SELECT pg_catalog.count(*)::text FROM spock.table_repair(%L::regclass, %L, %L::interval)',
                      v_rel, v_best, recheck_timeout)) q;
                RETURN NEXT;
            END LOOP;
        END LOOP;
    END IF;

    -- 3. The lost node goes, everywhere.
    FOR v_s IN SELECT e FROM jsonb_array_elements(v_survivors) e LOOP
        node := v_s->>'name';
        action := 'removed';
        SELECT format('subscriptions from node %s: %s', lost_node_name, coalesce(string_agg(q, ', '), 'none')) INTO detail
          FROM spock._remote_query(v_s->>'dsn', format(
              'SELECT s.sub_name::text || pg_catalog.left(spock.sub_drop(s.sub_name)::text, 0) FROM spock.subscription s
                 JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L', lost_node_name)) q;
        RETURN NEXT;
        SELECT format('its slots here: %s', coalesce(string_agg(q, ', '), 'none')) INTO detail
          FROM spock._remote_query(v_s->>'dsn', format(
              'SELECT r.slot_name::text || pg_catalog.left(pg_catalog.pg_drop_replication_slot(r.slot_name)::text, 0)
                 FROM pg_catalog.pg_replication_slots r
                WHERE r.plugin = ''spock_output'' AND NOT r.active AND r.database = pg_catalog.current_database()
                  AND r.slot_name ~ %L AND r.slot_name <> ALL (%L::text[])',
              v_word,
              (SELECT coalesce(array_agg(split_part(u, ' ', 2)), '{}') FROM unnest(v_used) u
                WHERE split_part(u, ' ', 1) = v_s->>'name'))) q;
        RETURN NEXT;
        PERFORM spock._remote_query(v_s->>'dsn', format('SELECT spock.node_drop(%L, true)::text', lost_node_name));
        detail := format('node %s forgotten', lost_node_name);
        RETURN NEXT;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION spock.recover_lost_node(text, text, interval) FROM PUBLIC;

-- Global sequences (6.0.0): spock.convert_sequence_to_global.
CREATE TABLE spock.global_sequence (
    seqoid oid NOT NULL PRIMARY KEY,
    node_id integer NOT NULL,
    converted_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON spock.global_sequence TO PUBLIC;
CREATE FUNCTION spock._global_sequence_first(floor bigint, node_id integer) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'global_sequence_first_wrapper';
ALTER FUNCTION spock._global_sequence_first(bigint, integer) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._global_sequence_first(bigint, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION spock._repset_add_seq(p_set_id oid, p_set_name name, p_seq regclass, p_sync boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF spock._is_global_sequence(p_seq) THEN
        RAISE EXCEPTION 'sequence % is global: every node hands out its own ids, its value is not replicated', p_seq
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM spock.sequence_state WHERE seqoid = p_seq) THEN
        INSERT INTO spock.sequence_state (seqoid, cache_size, last_value)
        VALUES (p_seq, spock._sequence_sync_margin(), spock._sequence_last_value(p_seq));
    END IF;
    INSERT INTO spock.replication_set_seq (set_id, set_seqoid) VALUES (p_set_id, p_seq);
    IF p_sync THEN
        PERFORM spock._queue_sequence(ARRAY[p_set_name::text], p_seq, spock._sequence_last_value(p_seq));
    END IF;
END;
$$;

CREATE FUNCTION spock._is_global_sequence(p_seq oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM spock.global_sequence g JOIN pg_catalog.pg_sequence s ON s.seqrelid = g.seqoid
                    WHERE g.seqoid = p_seq AND s.seqincrement = 65536);
$$;

CREATE FUNCTION spock._sequence_to_global(p_seq regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET spock.enable_ddl_replication = off AS $$
DECLARE
    v_node integer := spock._local_node_id()::int8::integer;
    v_type regtype;
    v_next bigint;
BEGIN
    PERFORM spock._check_sequence(p_seq);
    SELECT s.seqtypid::regtype INTO v_type FROM pg_catalog.pg_sequence s WHERE s.seqrelid = p_seq;
    IF v_type <> 'bigint'::regtype THEN
        RAISE EXCEPTION 'sequence % is %, global ids need bigint', p_seq, v_type
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'ALTER SEQUENCE ... AS bigint, and make the columns it fills bigint too.';
    END IF;
    IF EXISTS (SELECT FROM spock.global_sequence g WHERE g.seqoid = p_seq AND g.node_id = v_node)
       AND spock._is_global_sequence(p_seq) THEN
        RETURN NULL;
    END IF;
    IF EXISTS (SELECT FROM spock.replication_set_seq q WHERE q.set_seqoid = p_seq) THEN
        DELETE FROM spock.replication_set_seq q WHERE q.set_seqoid = p_seq;
        DELETE FROM spock.sequence_state q WHERE q.seqoid = p_seq;
        RAISE NOTICE 'sequence % left its replication sets: a global sequence is not replicated', p_seq;
    END IF;
    v_next := spock._global_sequence_first(spock._sequence_last_value(p_seq), v_node);
    EXECUTE format('ALTER SEQUENCE %s INCREMENT BY 65536 MINVALUE 1 MAXVALUE 9223372036854775807 NO CYCLE RESTART WITH %s',
                   p_seq, v_next);
    INSERT INTO spock.global_sequence (seqoid, node_id) VALUES (p_seq, v_node)
        ON CONFLICT (seqoid) DO UPDATE SET node_id = EXCLUDED.node_id, converted_at = now();
    RETURN v_next;
END;
$$;

CREATE FUNCTION spock.convert_sequence_to_global(relation regclass, replicate boolean DEFAULT true)
RETURNS bigint STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name text;
    v_next bigint;
BEGIN
    v_next := spock._sequence_to_global(relation);
    IF replicate THEN
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) INTO v_name
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
        IF EXISTS (SELECT FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
                    WHERE s.set_name = 'ddl_sql') THEN
            PERFORM spock._queue_message(ARRAY['ddl_sql'], current_user, 'Q',
                to_json(format('SELECT spock._sequence_to_global(%L::regclass)', v_name))::text);
        ELSE
            RAISE NOTICE 'no ddl_sql replication set here: convert % on the other nodes too', v_name;
        END IF;
    END IF;
    RETURN v_next;
END;
$$;

REVOKE ALL ON FUNCTION spock._is_global_sequence(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock._sequence_to_global(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.convert_sequence_to_global(regclass, boolean) FROM PUBLIC;

-- Delta apply (6.0.0).
-- spock.delta_apply(old, new, local): what a delta-apply column becomes when an
-- UPDATE from another node changed it from old to new while this node has local:
-- local + (new - old). Spock's name and types; a NULL gives new.
CREATE FUNCTION spock.delta_apply(old smallint, new smallint, local smallint) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old integer, new integer, local integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old bigint, new bigint, local bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old real, new real, local real) RETURNS real
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old double precision, new double precision, local double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old numeric, new numeric, local numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old money, new money, local money) RETURNS money
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';

-- set_delta_apply(relation, column_name, enable): marks (or unmarks) a column for
-- delta apply, with the security label delta_apply of provider spock, here and,
-- with replicate (through replicate_ddl and the ddl_sql set), on the nodes that
-- subscribe to this one. The table needs REPLICA IDENTITY FULL (so that
-- PostgreSQL logs the old value of the column with each UPDATE) and a primary key
-- (by which rows are found: with REPLICA IDENTITY FULL alone every column, the
-- counter included, would have to match).
CREATE FUNCTION spock.set_delta_apply(relation regclass, column_name name, enable boolean DEFAULT true,
    replicate boolean DEFAULT true)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_type regtype;
    v_table text;
    v_sql text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = relation AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION 'relation with OID % does not exist or is not a table', relation::oid USING ERRCODE = 'undefined_table';
    END IF;
    SELECT a.atttypid::regtype INTO v_type FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = relation AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', column_name, relation USING ERRCODE = 'undefined_column';
    END IF;
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) INTO v_table
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
    IF enable THEN
        IF to_regprocedure(format('spock.delta_apply(%s,%s,%s)', v_type, v_type, v_type)) IS NULL THEN
            RAISE EXCEPTION 'delta apply adds smallint, integer, bigint, real, double precision, numeric and money, not %', v_type
                USING ERRCODE = 'datatype_mismatch';
        END IF;
        IF (SELECT c.relreplident FROM pg_catalog.pg_class c WHERE c.oid = relation) <> 'f' THEN
            RAISE EXCEPTION 'table % needs REPLICA IDENTITY FULL for delta apply', v_table
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The other nodes need the old value of the column with each UPDATE.',
                      HINT = format('ALTER TABLE %s REPLICA IDENTITY FULL', v_table);
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = relation AND i.indisprimary) THEN
            RAISE EXCEPTION 'table % needs a primary key for delta apply', v_table
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'Rows are found by their key: with REPLICA IDENTITY FULL alone the counter would have to match too.';
        END IF;
    END IF;
    v_sql := format('SECURITY LABEL FOR spock ON COLUMN %s.%s IS %s', v_table, quote_ident(column_name),
                    CASE WHEN enable THEN quote_literal('delta_apply') ELSE 'NULL' END);
    IF replicate AND EXISTS (SELECT FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
                              WHERE s.set_name = 'ddl_sql') THEN
        PERFORM spock.replicate_ddl(v_sql);
    ELSE
        EXECUTE v_sql;
    END IF;
    RETURN true;
END;
$$;

REVOKE ALL ON FUNCTION spock.delta_apply(smallint, smallint, smallint) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.delta_apply(integer, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.delta_apply(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.delta_apply(real, real, real) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.delta_apply(double precision, double precision, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.delta_apply(numeric, numeric, numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.delta_apply(money, money, money) FROM PUBLIC;
REVOKE ALL ON FUNCTION spock.set_delta_apply(regclass, name, boolean, boolean) FROM PUBLIC;

CREATE FUNCTION spock.sub_resync(subscription_name name) RETURNS boolean
STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
BEGIN
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    DELETE FROM spock.local_sync_status WHERE sync_subid = v.sub_id AND sync_nspname IS NULL;
    INSERT INTO spock.local_sync_status (sync_kind, sync_subid, sync_nspname, sync_relname, sync_status, sync_statuslsn)
    -- data ('d'), status 'm': merged, not copied (apply/sync.rs hands it to resync.rs)
    VALUES ('d', v.sub_id, NULL, NULL, 'm', '0/0');
    UPDATE spock.subscription SET sub_enabled = true WHERE sub_id = v.sub_id;
    UPDATE spock.subscription_error SET disabled = false, next_attempt_at = NULL WHERE sub_id = v.sub_id;
    PERFORM spock._wake_workers();
    RETURN true;
END;
$$;

REVOKE ALL ON FUNCTION spock.sub_resync(name) FROM PUBLIC;
