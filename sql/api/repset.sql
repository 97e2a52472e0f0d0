-- spock-rs SQL API, replication sets and their tables: repset_create/alter/drop,
-- repset_add_table/add_all_tables/remove_table/show_table, the checks a table
-- must pass to join a set, and the event trigger that forgets dropped relations.
-- Rust side (spock-pgext/src/sql_api/repset.rs): spock._scoped_id,
-- spock._invalidate_relcache, spock._invalidate_all, spock._parse_row_filter,
-- spock._row_filter_old_values_logged,
-- spock._set_needs_replica_identity.

CREATE FUNCTION spock._repset(p_set_name name, OUT set_id oid, OUT replicate_update boolean,
                              OUT replicate_delete boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT s.set_id, s.replicate_update, s.replicate_delete
      INTO set_id, replicate_update, replicate_delete
      FROM spock.replication_set s
     WHERE s.set_nodeid = spock._local_node_id() AND s.set_name = p_set_name;
    IF set_id IS NULL THEN
        RAISE EXCEPTION 'replication set % not found', p_set_name
            USING ERRCODE = 'undefined_object';
    END IF;
END;
$$;

CREATE FUNCTION spock._create_repset(p_node_id oid, p_name name, p_ins boolean, p_upd boolean,
                                     p_del boolean, p_trunc boolean) RETURNS oid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid := spock._scoped_id(p_node_id, p_name);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM spock.node WHERE node_id = p_node_id) THEN
        RAISE EXCEPTION 'node with id % not found', p_node_id USING ERRCODE = 'undefined_object';
    END IF;
    IF p_name = '' THEN
        RAISE EXCEPTION 'replication set name cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.replication_set WHERE set_nodeid = p_node_id AND set_name = p_name) THEN
        RAISE EXCEPTION 'replication set % already exists', p_name USING ERRCODE = 'duplicate_object';
    END IF;
    INSERT INTO spock.replication_set (set_id, set_nodeid, set_name, replicate_insert,
                                       replicate_update, replicate_delete, replicate_truncate)
    VALUES (v_id, p_node_id, p_name, p_ins, p_upd, p_del, p_trunc);
    RETURN v_id;
END;
$$;

-- Whether a table can be in a set that replicates UPDATE/DELETE: it needs a
-- replica identity (primary key, REPLICA IDENTITY USING INDEX, or FULL).
CREATE FUNCTION spock._has_replica_identity(p_rel regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE c.relreplident
             WHEN 'f' THEN true
             WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
             -- PostgreSQL logs no old key for a DEFERRABLE primary key.
             WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary
                                                           AND i.indimmediate)
             ELSE false
           END
      FROM pg_class c WHERE c.oid = p_rel;
$$;

CREATE FUNCTION spock.repset_create(set_name name, replicate_insert boolean = true,
    replicate_update boolean = true, replicate_delete boolean = true, replicate_truncate boolean = true)
RETURNS oid STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN spock._create_repset(spock._local_node_id(), set_name, replicate_insert,
                                replicate_update, replicate_delete, replicate_truncate);
END;
$$;

CREATE FUNCTION spock.repset_alter(set_name name,
    replicate_insert boolean DEFAULT NULL, replicate_update boolean DEFAULT NULL,
    replicate_delete boolean DEFAULT NULL, replicate_truncate boolean DEFAULT NULL)
RETURNS oid CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
    v_bad regclass;
BEGIN
    IF set_name IS NULL THEN
        RAISE EXCEPTION 'set_name cannot be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_set FROM spock._repset(set_name);
    IF spock._set_needs_replica_identity(coalesce(replicate_update, v_set.replicate_update),
                                         coalesce(replicate_delete, v_set.replicate_delete)) THEN
        SELECT t.set_reloid INTO v_bad FROM spock.replication_set_table t
         WHERE t.set_id = v_set.set_id AND NOT spock._has_replica_identity(t.set_reloid) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'replication set % cannot be altered to replicate UPDATEs or DELETEs because it contains tables without PRIMARY KEY', set_name
                USING ERRCODE = 'invalid_object_definition',
                      DETAIL = format('Table %s has no replica identity.', v_bad);
        END IF;
    END IF;
    UPDATE spock.replication_set s
       SET replicate_insert = coalesce(repset_alter.replicate_insert, s.replicate_insert),
           replicate_update = coalesce(repset_alter.replicate_update, s.replicate_update),
           replicate_delete = coalesce(repset_alter.replicate_delete, s.replicate_delete),
           replicate_truncate = coalesce(repset_alter.replicate_truncate, s.replicate_truncate)
     WHERE s.set_id = v_set.set_id;
    PERFORM spock._invalidate_all();
    RETURN v_set.set_id;
END;
$$;

CREATE FUNCTION spock.repset_drop(set_name name, ifexists boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid;
BEGIN
    SELECT s.set_id INTO v_id FROM spock.replication_set s
     WHERE s.set_nodeid = spock._local_node_id() AND s.set_name = repset_drop.set_name;
    IF v_id IS NULL THEN
        IF ifexists THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'replication set % not found', set_name USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM spock.replication_set_table WHERE set_id = v_id;
    DELETE FROM spock.replication_set_seq WHERE set_id = v_id;
    DELETE FROM spock.replication_set WHERE set_id = v_id;
    PERFORM spock._invalidate_all();
    RETURN true;
END;
$$;

-- The extension a relation belongs to, if any.
CREATE FUNCTION spock._extension_of(p_rel oid) RETURNS name
STABLE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
     WHERE d.classid = 'pg_class'::regclass AND d.objid = p_rel AND d.objsubid = 0
       AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
     LIMIT 1
$$;

-- Refuses a relation whose schema or extension spock.reserved_object keeps out
-- of replication sets (Spock's wording).
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

-- Adds one relation to a set, checking what Spock checks. p_skip: return false
-- with a WARNING instead of failing when the table cannot be replicated.
CREATE FUNCTION spock._repset_add_relation(p_set_name name, p_rel regclass, p_columns text[],
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

CREATE FUNCTION spock.repset_add_table(set_name name, relation regclass,
    synchronize_data boolean DEFAULT false, columns text[] DEFAULT NULL,
    row_filter text DEFAULT NULL, include_partitions boolean DEFAULT true)
RETURNS boolean CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_part regclass;
BEGIN
    IF set_name IS NULL THEN
        RAISE EXCEPTION 'set_name cannot be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF relation IS NULL THEN
        RAISE EXCEPTION 'relation cannot be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF synchronize_data IS NULL THEN
        RAISE EXCEPTION 'synchronize_data cannot be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM spock._repset_add_relation(set_name, relation, columns, row_filter, false);
    IF synchronize_data THEN
        PERFORM spock._queue_table_sync(set_name, relation);
    END IF;
    IF coalesce(include_partitions, true) THEN
        FOR v_part IN SELECT relid FROM pg_partition_tree(relation) WHERE relid <> relation AND isleaf LOOP
            PERFORM spock._repset_add_relation(set_name, v_part, columns, row_filter, false);
            IF synchronize_data THEN
                PERFORM spock._queue_table_sync(set_name, v_part);
            END IF;
        END LOOP;
    END IF;
    RETURN true;
END;
$$;

-- The schemas of a list that spock.reserved_object does not keep out of
-- replication sets; each one it does is passed over with a WARNING (Spock's).
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

-- Whether a relation belongs to an extension whose relations stay out of
-- replication sets; passed over with a WARNING (Spock's) when it does.
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

-- Checks the schema_names of repset_add_all_tables/_seqs: they exist and are not
-- system schemas (as CREATE PUBLICATION ... FOR TABLES IN SCHEMA).
CREATE FUNCTION spock._check_schemas(p_schemas text[]) RETURNS void
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

CREATE FUNCTION spock.repset_add_all_tables(set_name name, schema_names text[],
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

CREATE FUNCTION spock.repset_remove_table(set_name name, relation regclass, include_partitions boolean DEFAULT true)
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

CREATE FUNCTION spock.repset_show_table(relation regclass, repsets text[], OUT relid oid, OUT nspname text,
    OUT relname text, OUT att_list text[], OUT has_row_filter boolean, OUT relkind "char",
    OUT relispartition boolean)
RETURNS record STRICT STABLE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_node oid;
    v_set text;
    v_all_columns boolean;
    v_lists text[];
BEGIN
    -- Read-only and callable by every role: no internal helper.
    SELECT l.node_id INTO v_node FROM spock.local_node l;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'current database is not configured as spock node'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'create a spock node first with spock.node_create()';
    END IF;
    SELECT r INTO v_set FROM unnest(repsets) r
     WHERE NOT EXISTS (SELECT 1 FROM spock.replication_set s WHERE s.set_nodeid = v_node AND s.set_name = r)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'replication set % not found', v_set USING ERRCODE = 'undefined_object';
    END IF;
    SELECT c.oid, n.nspname::text, c.relname::text, c.relkind, c.relispartition
      INTO relid, nspname, relname, relkind, relispartition
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', relation::oid USING ERRCODE = 'undefined_table';
    END IF;
    SELECT bool_or(t.set_att_list IS NULL), bool_or(t.set_row_filter IS NOT NULL),
           array_agg(DISTINCT a) FILTER (WHERE a IS NOT NULL)
      INTO v_all_columns, has_row_filter, v_lists
      FROM spock.replication_set_table t
      JOIN spock.replication_set s ON s.set_id = t.set_id
      LEFT JOIN LATERAL unnest(t.set_att_list) a ON true
     WHERE t.set_reloid = relation AND s.set_name = ANY (repsets) AND s.set_nodeid = v_node;
    has_row_filter := coalesce(has_row_filter, false);
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO att_list
      FROM pg_attribute a
     WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
       AND (v_all_columns IS NOT FALSE OR a.attname = ANY (v_lists));
END;
$$;

-- The replication sets whose membership depends on relation p_rel (p_attnum 0) or
-- on its column p_attnum (the memberships whose row filter reads it), with the
-- kind of member ('table', 'sequence'); Spock's spock.depend holds the same.
-- Called by the ProcessUtility hook before a RESTRICT drop
-- (spock-pgext/src/ddl/membership.rs), which words the error.
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

-- A dropped table or sequence leaves its replication sets, its table-sync state
-- and its sequence state,
-- a dropped column the sets whose row filter reads it (Spock tracks this in
-- spock.depend), each with a NOTICE as PostgreSQL gives for what a drop cascades
-- to (a RESTRICT drop of a member never gets here: see _dependent_memberships).
-- ENABLE ALWAYS: also when the apply worker (session_replication_role = replica)
-- drops it. SECURITY DEFINER: any role that may drop a table may drop a replicated
-- one.
CREATE FUNCTION spock._forget_dropped_relations() RETURNS event_trigger
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

CREATE EVENT TRIGGER spock_forget_dropped_relations ON sql_drop
    EXECUTE FUNCTION spock._forget_dropped_relations();
ALTER EVENT TRIGGER spock_forget_dropped_relations ENABLE ALWAYS;
