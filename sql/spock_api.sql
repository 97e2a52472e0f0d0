-- spock-rs SQL API for nodes and replication sets: Spock 6.0's names, argument
-- names, types and defaults. Errors carry SQLSTATEs:
--   55000 object_not_in_prerequisite_state  no local node / still in use
--   42704 undefined_object                  unknown node, interface or set
--   42710 duplicate_object                  duplicate name, node-id collision
--   42P17 invalid_object_definition         table cannot join the set
--   22023 invalid_parameter_value           bad argument
--   22004 null_value_not_allowed            NULL where a name is needed
--   42P01 undefined_table                   no relation with the given oid
-- Helpers written in Rust: spock._scoped_id, spock._invalidate_relcache,
-- spock._invalidate_all, spock._parse_row_filter.
-- Every function pins search_path (procedures, which COMMIT, qualify every name
-- instead) and names spock's objects spock.x; internal
-- helpers (spock._*) and the functions that change anything are not executable by
-- PUBLIC (see the end of this file).

CREATE FUNCTION spock._parse_row_filter(relation regclass, row_filter text) RETURNS pg_node_tree
    STRICT VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'parse_row_filter_wrapper';

CREATE FUNCTION spock._local_node_id() RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid;
BEGIN
    SELECT node_id INTO v_id FROM spock.local_node;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'current database is not configured as spock node'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'create a spock node first with spock.node_create()';
    END IF;
    RETURN v_id;
END;
$$;

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
             WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
             ELSE false
           END
      FROM pg_class c WHERE c.oid = p_rel;
$$;

CREATE FUNCTION spock.node_create(node_name name, dsn text,
    location text DEFAULT NULL, country text DEFAULT NULL, info jsonb DEFAULT NULL)
RETURNS oid CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name name := node_create.node_name;
    v_id oid;
    v_if oid;
    v_other name;
BEGIN
    IF v_name IS NULL OR node_create.dsn IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_name = '' THEN
        RAISE EXCEPTION 'node name cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.node n WHERE n.node_name = v_name) THEN
        RAISE EXCEPTION 'node % already exists', v_name USING ERRCODE = 'duplicate_object';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.local_node) THEN
        RAISE EXCEPTION 'current database is already configured as spock node'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('The local node is %s.', (SELECT n.node_name FROM spock.node n JOIN spock.local_node l USING (node_id)));
    END IF;
    v_id := (hashtext(v_name::text)::bigint & 65535)::oid;
    SELECT n.node_name INTO v_other FROM spock.node n WHERE n.node_id = v_id;
    IF FOUND THEN
        RAISE EXCEPTION 'node id % (computed from name "%") collides with existing node "%"', v_id, v_name, v_other
            USING ERRCODE = 'duplicate_object', HINT = 'Rename this node to resolve the collision.';
    END IF;
    INSERT INTO spock.node (node_id, node_name, location, country, info)
    VALUES (v_id, v_name, node_create.location, node_create.country, node_create.info);
    v_if := spock._scoped_id(v_id, v_name);
    INSERT INTO spock.node_interface (if_id, if_name, if_nodeid, if_dsn)
    VALUES (v_if, v_name, v_id, node_create.dsn);
    PERFORM spock._create_repset(v_id, 'default', true, true, true, true);
    PERFORM spock._create_repset(v_id, 'default_insert_only', true, false, false, true);
    PERFORM spock._create_repset(v_id, 'ddl_sql', true, false, false, false);
    INSERT INTO spock.local_node (node_id, node_local_interface) VALUES (v_id, v_if);
    RETURN v_id;
END;
$$;

CREATE FUNCTION spock.node_drop(node_name name, ifexists boolean DEFAULT false)
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
            RAISE EXCEPTION 'cannot drop node "%" because replication slot "%" is still active',
                            node_drop.node_name, v_slot.slot_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
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

CREATE FUNCTION spock.node_add_interface(node_name name, interface_name name, dsn text)
RETURNS oid STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid;
    v_if oid;
BEGIN
    SELECT n.node_id INTO v_id FROM spock.node n WHERE n.node_name = node_add_interface.node_name;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'node "%" not found', node_add_interface.node_name USING ERRCODE = 'undefined_object';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.node_interface WHERE if_nodeid = v_id AND if_name = interface_name) THEN
        RAISE EXCEPTION 'node "%" already has interface named "%"', node_add_interface.node_name, interface_name
            USING ERRCODE = 'duplicate_object';
    END IF;
    v_if := spock._scoped_id(v_id, interface_name);
    INSERT INTO spock.node_interface (if_id, if_name, if_nodeid, if_dsn) VALUES (v_if, interface_name, v_id, dsn);
    RETURN v_if;
END;
$$;

CREATE FUNCTION spock.node_drop_interface(node_name name, interface_name name)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid;
    v_if oid;
    v_sub name;
BEGIN
    SELECT n.node_id INTO v_id FROM spock.node n WHERE n.node_name = node_drop_interface.node_name;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'node "%" not found', node_drop_interface.node_name USING ERRCODE = 'undefined_object';
    END IF;
    SELECT if_id INTO v_if FROM spock.node_interface WHERE if_nodeid = v_id AND if_name = interface_name;
    IF v_if IS NULL THEN
        RAISE EXCEPTION 'interface "%" for node "%" not found', interface_name, node_drop_interface.node_name
            USING ERRCODE = 'undefined_object';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.local_node WHERE node_local_interface = v_if) THEN
        RAISE EXCEPTION 'cannot drop interface "%" of node "%" because it is the local node''s interface',
                        interface_name, node_drop_interface.node_name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT sub_name INTO v_sub FROM spock.subscription WHERE sub_origin_if = v_if OR sub_target_if = v_if LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot drop interface "%" for node "%" because subscription "%" is using it',
                        interface_name, node_drop_interface.node_name, v_sub
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'change the subscription interface first';
    END IF;
    DELETE FROM spock.node_interface WHERE if_id = v_if;
    RETURN true;
END;
$$;

CREATE FUNCTION spock.node_info(OUT node_id oid, OUT node_name text, OUT sysid text, OUT dbname text,
    OUT replication_sets text, OUT location text, OUT country text, OUT info jsonb)
RETURNS record STABLE STRICT LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- No internal helper here: roles without EXECUTE on them (a replication role
    -- connecting for spock.sub_create()) call this function.
    SELECT n.node_id, n.node_name::text, n.location, n.country, n.info
      INTO node_id, node_name, location, country, info
      FROM spock.node n JOIN spock.local_node l ON l.node_id = n.node_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'current database is not configured as spock node'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'create a spock node first with spock.node_create()';
    END IF;
    sysid := (SELECT s.system_identifier::text FROM pg_catalog.pg_control_system() s);
    dbname := current_database();
    replication_sets := (SELECT string_agg(quote_ident(s.set_name), ',' ORDER BY s.set_name)
                           FROM spock.replication_set s WHERE s.set_nodeid = node_info.node_id);
END;
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
    IF coalesce(replicate_update, v_set.replicate_update) OR coalesce(replicate_delete, v_set.replicate_delete) THEN
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
    SELECT c.relkind, c.relpersistence, n.nspname INTO v_class
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
    IF v_class.nspname = 'spock' THEN
        RAISE EXCEPTION 'table % belongs to spock itself and cannot be added to a replication set', p_rel
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (v_set.replicate_update OR v_set.replicate_delete) AND NOT spock._has_replica_identity(p_rel) THEN
        IF p_skip THEN
            RAISE WARNING 'skipping table % for replication set %: it has no PRIMARY KEY or replica identity', p_rel, p_set_name;
            RETURN false;
        END IF;
        RAISE EXCEPTION 'table % cannot be added to replication set %', p_rel, p_set_name
            USING ERRCODE = 'invalid_object_definition',
                  DETAIL = 'table does not have PRIMARY KEY and given replication set is configured to replicate UPDATEs and/or DELETEs',
                  HINT = 'Add a PRIMARY KEY (or REPLICA IDENTITY FULL) to the table, or use an insert-only set.';
    END IF;
    IF EXISTS (SELECT 1 FROM spock.replication_set_table WHERE set_id = v_set.set_id AND set_reloid = p_rel) THEN
        RAISE EXCEPTION 'table % is already in replication set %', p_rel, p_set_name USING ERRCODE = 'duplicate_object';
    END IF;
    IF p_columns IS NOT NULL THEN
        FOREACH v_col IN ARRAY p_columns LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = p_rel AND attname = v_col
                                                         AND attnum > 0 AND NOT attisdropped) THEN
                RAISE EXCEPTION 'table % does not have column %', p_rel, v_col USING ERRCODE = 'undefined_column';
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
            RAISE EXCEPTION 'REPLICA IDENTITY columns must be replicated'
                USING ERRCODE = 'invalid_column_reference', DETAIL = format('Missing: %s.', v_missing);
        END IF;
    END IF;
    IF p_row_filter IS NOT NULL THEN
        v_filter := spock._parse_row_filter(p_rel, p_row_filter);
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
        IF v_schema IN ('pg_catalog', 'information_schema', 'pg_toast', 'spock') THEN
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
BEGIN
    PERFORM spock._repset(set_name);
    PERFORM spock._check_schemas(schema_names);
    FOR v_rel IN
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (schema_names) AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
           AND c.oid >= 16384 AND n.nspname <> 'spock'
           AND NOT c.relispartition
           AND NOT EXISTS (SELECT 1 FROM spock.replication_set_table t JOIN spock.replication_set s USING (set_id)
                            WHERE t.set_reloid = c.oid AND s.set_name = repset_add_all_tables.set_name
                              AND s.set_nodeid = spock._local_node_id())
         ORDER BY n.nspname, c.relname
    LOOP
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
        RAISE EXCEPTION 'table % is not in replication set %', relation, set_name USING ERRCODE = 'undefined_object';
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

-- ---------------------------------------------------------------------------
-- Subscriptions

CREATE FUNCTION spock._subscription(p_name name) RETURNS spock.subscription
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription;
BEGIN
    SELECT * INTO v FROM spock.subscription WHERE sub_name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % not found', p_name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN v;
END;
$$;

-- Whether replication origin p_origin belongs to the subscription with slot p_slot:
-- the slot's own name (the provider's transactions) or <slot>_<4 hex digits> (those
-- it forwards from another node); spock_core::names::forwarded_origin_name.
CREATE FUNCTION spock._is_subscription_origin(p_slot name, p_origin name) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p_origin = p_slot
        OR (left(p_origin, length(p_slot) + 1) = p_slot || '_' AND length(p_origin) = length(p_slot) + 5);
$$;

-- How far the subscription with slot p_slot has applied: the furthest progress of
-- its origins ('0/0' before anything was applied).
CREATE FUNCTION spock._subscription_progress(p_slot name) RETURNS pg_lsn
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(max(pg_catalog.pg_replication_origin_progress(roname, false)), '0/0')
      FROM pg_catalog.pg_replication_origin
     WHERE spock._is_subscription_origin(p_slot, roname);
$$;

-- Stops the apply worker of a subscription now; no new one starts before the
-- calling transaction ends (then the manager starts one at once if the subscription
-- is still enabled).
CREATE FUNCTION spock._stop_apply_worker(p_slot name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_pid int;
BEGIN
    PERFORM spock._hold_subscription(s.sub_id) FROM spock.subscription s WHERE s.sub_slot_name = p_slot;
    FOR v_pid IN SELECT pid FROM pg_catalog.pg_stat_activity
                  WHERE backend_type = 'spock apply' AND application_name = p_slot AND datname = current_database()
    LOOP
        PERFORM pg_catalog.pg_terminate_backend(v_pid, 10000);
    END LOOP;
END;
$$;

-- Fails unless every set of p_sets is one of the provider's p_provider_sets.
CREATE FUNCTION spock._check_provider_sets(p_sets text[], p_provider_sets text[], p_provider text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_missing text;
BEGIN
    SELECT string_agg(r, ', ') INTO v_missing FROM unnest(p_sets) r WHERE r <> ALL (p_provider_sets);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'replication set(s) % not found on provider %', v_missing, p_provider
            USING ERRCODE = 'undefined_object',
                  HINT = format('The provider has: %s.', array_to_string(p_provider_sets, ', '));
    END IF;
END;
$$;

CREATE FUNCTION spock.sub_create(
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
    v_slot name;
    v_id oid;
    v_other name;
BEGIN
    IF subscription_name = '' THEN
        RAISE EXCEPTION 'subscription name cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT isfinite(apply_delay) OR apply_delay < interval '0' THEN
        RAISE EXCEPTION 'apply_delay must be a finite interval that is not negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(replication_sets, NULL) IS NOT NULL OR array_position(forward_origins, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'replication_sets and forward_origins cannot contain NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(replication_sets) = 0 THEN
        RAISE EXCEPTION 'replication_sets cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(forward_origins) f WHERE f <> 'all') THEN
        RAISE EXCEPTION 'only "all" is allowed in forward_origins' USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
        v_if := spock._scoped_id(v_provider.node_id, (v_provider.node_name || '_' || subscription_name)::name);
        INSERT INTO spock.node_interface (if_id, if_name, if_nodeid, if_dsn)
        VALUES (v_if, (v_provider.node_name || '_' || subscription_name)::name, v_provider.node_id, provider_dsn);
    END IF;
    SELECT node_local_interface INTO v_local_if FROM spock.local_node;
    v_slot := spock.spock_gen_slot_name(current_database()::name, v_provider.node_name::name, subscription_name);
    v_id := nextval('spock.sub_id_generator')::oid;
    INSERT INTO spock.subscription (sub_id, sub_name, sub_origin, sub_target, sub_origin_if, sub_target_if,
        sub_enabled, sub_slot_name, sub_replication_sets, sub_forward_origins, sub_apply_delay,
        sub_force_text_transfer, sub_skip_lsn, sub_skip_schema, sub_created_at)
    VALUES (v_id, subscription_name, v_provider.node_id, v_local, v_if, v_local_if, enabled, v_slot,
        replication_sets, forward_origins, apply_delay, force_text_transfer, '0/0', skip_schema, now());
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

CREATE FUNCTION spock.sub_drop(subscription_name name, ifexists boolean DEFAULT false)
RETURNS oid STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription;
    v_dsn text;
    v_origin text;
BEGIN
    SELECT * INTO v FROM spock.subscription s WHERE s.sub_name = sub_drop.subscription_name;
    IF NOT FOUND THEN
        IF ifexists THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'subscription % not found', subscription_name USING ERRCODE = 'undefined_object';
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
    DELETE FROM spock.subscription WHERE sub_id = v.sub_id;
    PERFORM spock._wake_workers();
    RETURN v.sub_id;
END;
$$;

CREATE FUNCTION spock.sub_enable(subscription_name name, immediate boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM spock._subscription(subscription_name);
    UPDATE spock.subscription s SET sub_enabled = true WHERE s.sub_name = sub_enable.subscription_name;
    PERFORM spock._wake_workers();
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_disable(subscription_name name, immediate boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
BEGIN
    UPDATE spock.subscription SET sub_enabled = false WHERE sub_id = v.sub_id;
    IF immediate THEN
        PERFORM spock._stop_apply_worker(v.sub_slot_name);
    END IF;
    PERFORM spock._wake_workers();
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_add_repset(subscription_name name, replication_set name)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
    v_provider record;
BEGIN
    IF replication_set = ANY (v.sub_replication_sets) THEN
        RAISE EXCEPTION 'subscription % already replicates set %', subscription_name, replication_set
            USING ERRCODE = 'duplicate_object';
    END IF;
    SELECT * INTO v_provider FROM spock._provider_info((SELECT if_dsn FROM spock.node_interface WHERE if_id = v.sub_origin_if));
    PERFORM spock._check_provider_sets(ARRAY[replication_set::text], v_provider.replication_sets, v_provider.node_name);
    UPDATE spock.subscription SET sub_replication_sets = array_append(sub_replication_sets, replication_set::text)
     WHERE sub_id = v.sub_id;
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_remove_repset(subscription_name name, replication_set name)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
BEGIN
    IF NOT (replication_set = ANY (v.sub_replication_sets)) THEN
        RAISE EXCEPTION 'subscription % does not replicate set %', subscription_name, replication_set
            USING ERRCODE = 'undefined_object';
    END IF;
    UPDATE spock.subscription SET sub_replication_sets = array_remove(sub_replication_sets, replication_set::text)
     WHERE sub_id = v.sub_id;
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_show_status(subscription_name name DEFAULT NULL,
    OUT subscription_name text, OUT status text, OUT provider_node text, OUT provider_dsn text,
    OUT slot_name text, OUT replication_sets text[], OUT forward_origins text[])
RETURNS SETOF record STABLE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.sub_name::text,
           CASE
             WHEN NOT s.sub_enabled THEN 'disabled'
             WHEN coalesce(y.sync_status, 'r') <> 'r' THEN 'initializing'
             WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                           WHERE a.backend_type = 'spock apply' AND a.application_name = s.sub_slot_name
                             AND a.query = 'replicating') THEN 'replicating'
             ELSE 'down'
           END,
           n.node_name::text, i.if_dsn, s.sub_slot_name::text, s.sub_replication_sets, s.sub_forward_origins
      FROM spock.subscription s
      JOIN spock.node n ON n.node_id = s.sub_origin
      JOIN spock.node_interface i ON i.if_id = s.sub_origin_if
      LEFT JOIN spock.local_sync_status y ON y.sync_subid = s.sub_id AND y.sync_nspname IS NULL
     WHERE $1 IS NULL OR s.sub_name = $1
     ORDER BY s.sub_name;
$$;

CREATE FUNCTION spock.sub_alter_options(subscription_name name, options jsonb)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
    v_key text;
    v_forward text[];
    v_delay interval;
    v_skip text[];
BEGIN
    IF jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF options = '{}'::jsonb THEN
        RETURN false;
    END IF;
    FOR v_key IN SELECT jsonb_object_keys(options) LOOP
        IF v_key NOT IN ('forward_origins', 'apply_delay', 'skip_schema') THEN
            RAISE EXCEPTION 'unknown subscription option "%"', v_key
                USING ERRCODE = 'invalid_parameter_value', HINT = 'Known options: forward_origins, apply_delay, skip_schema.';
        END IF;
    END LOOP;
    IF options ? 'forward_origins' THEN
        IF jsonb_typeof(options->'forward_origins') <> 'array' THEN
            RAISE EXCEPTION 'forward_origins must be an array: ["all"] or []' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT coalesce(array_agg(x), '{}') INTO v_forward FROM jsonb_array_elements_text(options->'forward_origins') x;
        IF EXISTS (SELECT 1 FROM unnest(v_forward) f WHERE f <> 'all') THEN
            RAISE EXCEPTION 'only "all" is allowed in forward_origins' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        UPDATE spock.subscription SET sub_forward_origins = v_forward WHERE sub_id = v.sub_id;
    END IF;
    IF options ? 'apply_delay' THEN
        BEGIN
            v_delay := (options->>'apply_delay')::interval;
        EXCEPTION WHEN invalid_datetime_format OR invalid_parameter_value OR datetime_field_overflow THEN
            RAISE EXCEPTION 'apply_delay "%" is not an interval', options->>'apply_delay' USING ERRCODE = 'invalid_parameter_value';
        END;
        IF v_delay IS NULL OR NOT isfinite(v_delay) OR v_delay < interval '0' THEN
            RAISE EXCEPTION 'apply_delay must be a finite interval that is not negative' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        UPDATE spock.subscription SET sub_apply_delay = v_delay WHERE sub_id = v.sub_id;
    END IF;
    IF options ? 'skip_schema' THEN
        IF jsonb_typeof(options->'skip_schema') <> 'array' THEN
            RAISE EXCEPTION 'skip_schema must be an array of schema names' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT coalesce(array_agg(x), '{}') INTO v_skip FROM jsonb_array_elements_text(options->'skip_schema') x;
        UPDATE spock.subscription SET sub_skip_schema = v_skip WHERE sub_id = v.sub_id;
    END IF;
    -- The worker reads its options when it starts.
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    PERFORM spock._wake_workers();
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_show_table(subscription_name name, relation regclass,
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
        RAISE EXCEPTION 'subscription % not found', subscription_name USING ERRCODE = 'undefined_object';
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
        WHEN 'y' THEN 'synchronized' WHEN 'r' THEN 'replicating' WHEN 'f' THEN 'sync_failed' ELSE 'unknown' END;
END;
$$;

CREATE FUNCTION spock.sub_wait_for_sync(subscription_name name)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription;
    v_status "char";
BEGIN
    SELECT * INTO v FROM spock.subscription s WHERE s.sub_name = sub_wait_for_sync.subscription_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % not found', subscription_name USING ERRCODE = 'undefined_object';
    END IF;
    LOOP
        SELECT y.sync_status INTO v_status FROM spock.local_sync_status y
         WHERE y.sync_subid = v.sub_id AND y.sync_nspname IS NULL;
        EXIT WHEN v_status IS NULL OR v_status = 'r';
        IF NOT EXISTS (SELECT 1 FROM spock.subscription WHERE sub_id = v.sub_id AND sub_enabled) THEN
            RAISE EXCEPTION 'subscription % is disabled; its synchronisation cannot finish', subscription_name
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.2);
    END LOOP;
END;
$$;

CREATE FUNCTION spock.table_wait_for_sync(subscription_name name, relation regclass)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription;
BEGIN
    SELECT * INTO v FROM spock.subscription s WHERE s.sub_name = table_wait_for_sync.subscription_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % not found', subscription_name USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM spock.sub_show_table(subscription_name, relation);  -- 42P01 for a missing relation
    LOOP
        EXIT WHEN (SELECT t.status IN ('replicating', 'synchronized') FROM spock.sub_show_table(subscription_name, relation) t);
        IF (SELECT t.status = 'sync_failed' FROM spock.sub_show_table(subscription_name, relation) t) THEN
            RAISE EXCEPTION 'synchronisation of table % for subscription % failed; see the server log', relation, subscription_name
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM spock.subscription WHERE sub_id = v.sub_id AND sub_enabled) THEN
            RAISE EXCEPTION 'subscription % is disabled; table % cannot finish synchronising', subscription_name, relation
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.2);
    END LOOP;
END;
$$;

-- Table-level sync: a row with status 'i' per table (sync_kind 'f': empty the local
-- table first, 'd': merge into it); the apply worker copies it within a second.
CREATE FUNCTION spock.sub_resync_table(subscription_name name, relation regclass, truncate boolean DEFAULT true)
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
    INSERT INTO spock.local_sync_status (sync_kind, sync_subid, sync_nspname, sync_relname, sync_status, sync_statuslsn)
    VALUES (CASE WHEN truncate THEN 'f' ELSE 'd' END, v.sub_id, v_nsp, v_rel, 'i', '0/0')
    ON CONFLICT (sync_subid, sync_nspname, sync_relname)
    DO UPDATE SET sync_kind = EXCLUDED.sync_kind, sync_status = 'i', sync_statuslsn = '0/0';
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_alter_sync(subscription_name name, truncate boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
    v_dsn text;
    v_count int;
BEGIN
    SELECT if_dsn INTO v_dsn FROM spock.node_interface WHERE if_id = v.sub_origin_if;
    INSERT INTO spock.local_sync_status (sync_kind, sync_subid, sync_nspname, sync_relname, sync_status, sync_statuslsn)
    SELECT CASE WHEN truncate THEN 'f' ELSE 'd' END, v.sub_id, p.nspname, p.relname, 'i', '0/0'
      FROM spock._provider_tables(v_dsn, v.sub_replication_sets) p
     WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', p.nspname, p.relname)) IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM spock.local_sync_status y
                        WHERE y.sync_subid = v.sub_id AND y.sync_nspname = p.nspname AND y.sync_relname = p.relname);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_alter_interface(subscription_name name, interface_name name)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
    v_if oid;
BEGIN
    SELECT if_id INTO v_if FROM spock.node_interface WHERE if_nodeid = v.sub_origin AND if_name = interface_name;
    IF v_if IS NULL THEN
        RAISE EXCEPTION 'interface "%" of the provider of subscription % not found', interface_name, subscription_name
            USING ERRCODE = 'undefined_object';
    END IF;
    UPDATE spock.subscription SET sub_origin_if = v_if WHERE sub_id = v.sub_id;
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    RETURN true;
END;
$$;

CREATE FUNCTION spock.sub_alter_skiplsn(subscription_name name, lsn pg_lsn)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v spock.subscription := spock._subscription(subscription_name);
BEGIN
    UPDATE spock.subscription SET sub_skip_lsn = lsn WHERE sub_id = v.sub_id;
    PERFORM spock._stop_apply_worker(v.sub_slot_name);
    RETURN true;
END;
$$;

CREATE FUNCTION spock.apply_group_progress(OUT dbid oid, OUT node_id oid, OUT remote_node_id oid,
    OUT remote_commit_ts timestamptz, OUT prev_remote_ts timestamptz, OUT remote_commit_lsn pg_lsn,
    OUT remote_insert_lsn pg_lsn, OUT received_lsn pg_lsn, OUT last_updated_ts timestamptz,
    OUT updated_by_decode bool)
RETURNS SETOF record VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'apply_group_progress_wrapper';

CREATE VIEW spock.progress AS
    SELECT * FROM spock.apply_group_progress()
     WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());

CREATE VIEW spock.lag_tracker AS
    SELECT o.node_name AS origin_name,
           r.node_name AS receiver_name,
           max(p.remote_commit_ts) AS commit_timestamp,
           max(p.remote_commit_lsn) AS commit_lsn,
           max(p.remote_insert_lsn) AS remote_insert_lsn,
           max(p.received_lsn) AS received_lsn,
           max(pg_catalog.pg_wal_lsn_diff(p.remote_insert_lsn, p.remote_commit_lsn)) AS replication_lag_bytes,
           max(p.last_updated_ts - p.remote_commit_ts) AS replication_lag
      FROM spock.progress p
      LEFT JOIN spock.node o ON o.node_id = p.remote_node_id
      LEFT JOIN spock.node r ON r.node_id = p.node_id
     GROUP BY o.node_name, r.node_name;
-- Monitoring: progress is no secret (apply_group_progress() is executable by PUBLIC).
GRANT SELECT ON spock.progress, spock.lag_tracker TO PUBLIC;

-- A marker in the provider's WAL; subscribers have passed it once
-- wait_for_sync_event() returns true there.
CREATE FUNCTION spock.sync_event(transactional boolean DEFAULT false)
RETURNS pg_lsn STRICT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_logical_emit_message(transactional, 'Spock',
        (SELECT int4send(3) || int4send(node_id::int4) || convert_to(node_name, 'UTF8')
                || decode(repeat('00', 64 - octet_length(node_name)), 'hex')
           FROM spock.node_info()));
$$;

-- Waits until the named slot (NULL: every spock slot of this database) has
-- confirmed target (NULL: the current WAL flush position).
CREATE FUNCTION spock.wait_slot_confirm_lsn(slotname name, target pg_lsn)
RETURNS void CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_target pg_lsn := coalesce(target, pg_catalog.pg_current_wal_flush_lsn());
BEGIN
    LOOP
        EXIT WHEN NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_replication_slots
             WHERE (slot_name = slotname OR (slotname IS NULL AND plugin = 'spock_output' AND database = current_database()))
               AND coalesce(confirmed_flush_lsn, '0/0') < v_target);
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
END;
$$;

-- One round of wait_for_sync_event(): whether the subscription from node p_origin
-- has passed p_lsn (errors for a missing or disabled one unless p_wait_if_disabled).
CREATE FUNCTION spock._sync_event_reached(p_origin oid, p_lsn pg_lsn, p_wait_if_disabled boolean)
RETURNS boolean VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub record;
BEGIN
    IF p_origin IS NULL THEN
        RAISE EXCEPTION 'origin_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT s.sub_enabled, s.sub_slot_name INTO v_sub
      FROM spock.subscription s JOIN spock.local_node l ON l.node_id = s.sub_target
     WHERE s.sub_origin = p_origin;
    IF NOT FOUND AND NOT p_wait_if_disabled THEN
        RAISE EXCEPTION 'no subscription from node % on this node', p_origin USING ERRCODE = 'undefined_object';
    ELSIF FOUND AND NOT v_sub.sub_enabled AND NOT p_wait_if_disabled THEN
        RAISE EXCEPTION 'the subscription from node % is disabled', p_origin USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF FOUND AND v_sub.sub_enabled THEN
        RETURN spock._subscription_progress(v_sub.sub_slot_name) >= p_lsn;
    END IF;
    RETURN false;
END;
$$;

-- Whether p_timeout seconds (0: never) have passed since p_started.
CREATE FUNCTION spock._timed_out(p_started timestamptz, p_timeout int) RETURNS boolean
VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT p_timeout > 0 AND clock_timestamp() - p_started >= make_interval(secs => p_timeout);
$$;

-- The id of node p_name (42704 when there is none).
CREATE FUNCTION spock._node_id(p_name name) RETURNS oid
STABLE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid;
BEGIN
    SELECT node_id INTO v_id FROM spock.node WHERE node_name = p_name;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'node "%" not found', p_name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN v_id;
END;
$$;

-- The two procedures COMMIT between rounds (so that no snapshot is held while
-- waiting), and a procedure with a SET clause cannot: they cannot pin search_path.
-- Instead every name in them is schema-qualified (types too) and the work is done
-- by the pinned functions above; they use no operator.
CREATE PROCEDURE spock.wait_for_sync_event(OUT result bool, origin_id oid, lsn pg_lsn,
    timeout int DEFAULT 0, wait_if_disabled bool DEFAULT false)
LANGUAGE plpgsql AS $$
DECLARE
    v_started pg_catalog.timestamptz := pg_catalog.clock_timestamp();
BEGIN
    LOOP
        IF spock._sync_event_reached(origin_id, lsn, wait_if_disabled) THEN
            result := true;
            RETURN;
        END IF;
        IF spock._timed_out(v_started, timeout) THEN
            result := false;
            RETURN;
        END IF;
        COMMIT;
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
END;
$$;

CREATE PROCEDURE spock.wait_for_sync_event(OUT result bool, origin name, lsn pg_lsn,
    timeout int DEFAULT 0, wait_if_disabled bool DEFAULT false)
LANGUAGE plpgsql AS $$
BEGIN
    CALL spock.wait_for_sync_event(result, spock._node_id(origin), lsn, timeout, wait_if_disabled);
END;
$$;

-- ---------------------------------------------------------------------------
-- DDL replication and sequences (spock.queue). Message layouts: spock_core::ddl.
-- Rust: spock.replicate_ddl (sql_api/ddl.rs), AutoDDL (ddl/autoddl.rs), the
-- subscriber side (apply/queue.rs).

-- Adds a row to spock.queue; the output plugin sends it to subscribers of p_sets
-- (NULL: every subscriber).
CREATE FUNCTION spock._queue_message(p_sets text[], p_role name, p_type "char", p_message text)
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO spock.queue (queued_at, role, replication_sets, message_type, message)
    VALUES (pg_catalog.clock_timestamp(), p_role, p_sets, p_type, p_message::json);
$$;

-- 'A': subscribers of the set copy the table (Spock's message layout).
CREATE FUNCTION spock._queue_table_sync(p_set name, p_rel regclass) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT spock._queue_message(ARRAY[p_set::text], current_user, 'A',
               pg_catalog.format('{"schema_name": %s,"table_name": %s}', to_json(n.nspname::text), to_json(c.relname::text)))
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = p_rel;
$$;

CREATE FUNCTION spock.replicate_ddl(command text,
    replication_sets text[] DEFAULT '{ddl_sql}',
    search_path text DEFAULT current_setting('search_path'),
    role text DEFAULT CURRENT_USER)
RETURNS boolean STRICT VOLATILE LANGUAGE c SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'replicate_ddl_wrapper';

CREATE FUNCTION spock.replicate_ddl(command text[],
    replication_sets text[] DEFAULT '{ddl_sql}',
    search_path text DEFAULT current_setting('search_path'),
    role text DEFAULT CURRENT_USER)
RETURNS SETOF boolean STRICT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS
    'SELECT spock.replicate_ddl(cmd, $2, $3, $4) FROM (SELECT unnest(command) cmd)';

-- AutoDDL with spock.include_ddl_repset: leave or join a set of the local node.
CREATE FUNCTION spock._autoddl_leave_set(p_rel regclass, p_set_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM spock.replication_set_table t USING spock.replication_set s
     WHERE t.set_id = s.set_id AND s.set_nodeid = spock._local_node_id()
       AND s.set_name = p_set_name AND t.set_reloid = p_rel;
    PERFORM spock._invalidate_relcache(p_rel);
END;
$$;

CREATE FUNCTION spock._autoddl_join_set(p_rel regclass, p_set_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
BEGIN
    SELECT * INTO v_set FROM spock._repset(p_set_name);
    IF NOT EXISTS (SELECT 1 FROM spock.replication_set_table WHERE set_id = v_set.set_id AND set_reloid = p_rel) THEN
        INSERT INTO spock.replication_set_table (set_id, set_reloid) VALUES (v_set.set_id, p_rel);
        PERFORM spock._invalidate_relcache(p_rel);
        RAISE LOG 'table ''%'' was added to ''%'' replication set.',
            (SELECT relname FROM pg_catalog.pg_class WHERE oid = p_rel), p_set_name;
    END IF;
END;
$$;

-- The last_value stored in a sequence (what Spock's sequence_get_last_value reads).
CREATE FUNCTION spock._sequence_last_value(p_seq regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v bigint;
BEGIN
    PERFORM spock._check_sequence(p_seq);
    EXECUTE format('SELECT last_value FROM %s', p_seq) INTO v;
    RETURN v;
END;
$$;

-- An 'S' message, byte for byte as Spock writes it.
CREATE FUNCTION spock._sequence_message(p_seq regclass, p_last_value bigint) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('{"schema_name": %s,"sequence_name": %s,"last_value": "%s"}',
                  to_json(n.nspname::text), to_json(c.relname::text), p_last_value)
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = p_seq;
$$;

-- Checks that p_rel is a sequence that can be replicated.
CREATE FUNCTION spock._check_sequence(p_rel regclass) RETURNS void
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
END;
$$;

-- Adds one sequence to a set (and starts tracking its state); p_sync queues its
-- current value for the set's subscribers.
CREATE FUNCTION spock._repset_add_seq(p_set_id oid, p_set_name name, p_seq regclass, p_sync boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM spock.sequence_state WHERE seqoid = p_seq) THEN
        INSERT INTO spock.sequence_state (seqoid, cache_size, last_value)
        VALUES (p_seq, 1000, spock._sequence_last_value(p_seq));
    END IF;
    INSERT INTO spock.replication_set_seq (set_id, set_seqoid) VALUES (p_set_id, p_seq);
    IF p_sync THEN
        PERFORM spock._queue_message(ARRAY[p_set_name::text], current_user, 'S',
                                     spock._sequence_message(p_seq, spock._sequence_last_value(p_seq)));
    END IF;
END;
$$;

CREATE FUNCTION spock.repset_add_seq(set_name name, relation regclass, synchronize_data boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
BEGIN
    SELECT * INTO v_set FROM spock._repset(set_name);
    PERFORM spock._check_sequence(relation);
    IF EXISTS (SELECT 1 FROM spock.replication_set_seq WHERE set_id = v_set.set_id AND set_seqoid = relation) THEN
        RAISE EXCEPTION 'sequence % is already in replication set %', relation, set_name USING ERRCODE = 'duplicate_object';
    END IF;
    PERFORM spock._repset_add_seq(v_set.set_id, set_name, relation, synchronize_data);
    RETURN true;
END;
$$;

CREATE FUNCTION spock.repset_add_all_seqs(set_name name, schema_names text[], synchronize_data boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
    v_seq regclass;
BEGIN
    SELECT * INTO v_set FROM spock._repset(set_name);
    PERFORM spock._check_schemas(schema_names);
    FOR v_seq IN
        SELECT DISTINCT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (schema_names) AND c.relkind = 'S' AND c.relpersistence = 'p'
           AND c.oid >= 16384 AND n.nspname <> 'spock'
           AND NOT EXISTS (SELECT 1 FROM spock.replication_set_seq q WHERE q.set_id = v_set.set_id AND q.set_seqoid = c.oid)
    LOOP
        PERFORM spock._repset_add_seq(v_set.set_id, set_name, v_seq, synchronize_data);
    END LOOP;
    RETURN true;
END;
$$;

CREATE FUNCTION spock.repset_remove_seq(set_name name, relation regclass)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set record;
BEGIN
    SELECT * INTO v_set FROM spock._repset(set_name);
    DELETE FROM spock.replication_set_seq WHERE set_id = v_set.set_id AND set_seqoid = relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sequence % is not in replication set %', relation, set_name USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM spock.replication_set_seq WHERE set_seqoid = relation) THEN
        DELETE FROM spock.sequence_state WHERE seqoid = relation;
    END IF;
    RETURN true;
END;
$$;

-- Queues the sequence's value plus its cache_size (1000) for the subscribers of its
-- sets, so that their sequence is ahead of what this node hands out meanwhile.
CREATE FUNCTION spock.sync_seq(relation regclass)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_node oid := spock._local_node_id();
    v_cache int;
    v_current bigint;
    v_last bigint;
    v_sets text[];
    v_seq record;
BEGIN
    PERFORM spock._check_sequence(relation);
    SELECT cache_size INTO v_cache FROM spock.sequence_state WHERE seqoid = relation;
    SELECT array_agg(s.set_name::text ORDER BY s.set_name) INTO v_sets
      FROM spock.replication_set_seq q JOIN spock.replication_set s ON s.set_id = q.set_id
     WHERE q.set_seqoid = relation AND s.set_nodeid = v_node;
    IF v_cache IS NULL OR v_sets IS NULL THEN
        RAISE EXCEPTION '"%" is not a replicated sequence', (SELECT relname FROM pg_catalog.pg_class WHERE oid = relation)
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    v_current := spock._sequence_last_value(relation);
    -- cache_size values further in the sequence's direction, within its bounds
    -- (numeric: no overflow near the ends of bigint, negative values included).
    SELECT q.seqincrement, q.seqmin, q.seqmax INTO v_seq FROM pg_catalog.pg_sequence q WHERE q.seqrelid = relation;
    v_last := CASE WHEN v_seq.seqincrement > 0 THEN least(v_current::numeric + v_cache, v_seq.seqmax)
                   ELSE greatest(v_current::numeric - v_cache, v_seq.seqmin) END;
    UPDATE spock.sequence_state SET last_value = v_last WHERE seqoid = relation;
    PERFORM spock._queue_message(v_sets, current_user, 'S', spock._sequence_message(relation, v_last));
    RETURN true;
END;
$$;

-- A dropped table or sequence leaves its replication sets and its sequence state
-- (Spock tracks this in spock.depend). ENABLE ALWAYS: also when the apply worker
-- (session_replication_role = replica) drops it. SECURITY DEFINER: any role that may
-- drop a table may drop a replicated one.
CREATE FUNCTION spock._forget_dropped_relations() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_oids oid[];
BEGIN
    IF to_regclass('spock.replication_set_table') IS NULL THEN
        RETURN;  -- spock itself is being dropped
    END IF;
    SELECT array_agg(d.objid) INTO v_oids FROM pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
       AND d.object_type IN ('table', 'sequence');
    IF v_oids IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM spock.replication_set_table WHERE set_reloid::oid = ANY (v_oids);
    DELETE FROM spock.replication_set_seq WHERE set_seqoid::oid = ANY (v_oids);
    DELETE FROM spock.sequence_state WHERE seqoid = ANY (v_oids);
END;
$$;

CREATE EVENT TRIGGER spock_forget_dropped_relations ON sql_drop
    EXECUTE FUNCTION spock._forget_dropped_relations();
ALTER EVENT TRIGGER spock_forget_dropped_relations ENABLE ALWAYS;

-- ---------------------------------------------------------------------------
-- Least privilege. This file comes last in the extension script, after the
-- functions pgrx generates from the Rust code, so both blocks below also cover
-- every function added later, in SQL or in Rust.
--
-- 1. No function of schema spock resolves names through its caller's search_path:
-- a role that may create objects in a schema on that path could otherwise plant a
-- function or operator (say public.quote_ident(name), a better match than the
-- built-in quote_ident(text)) that a superuser would then run through spock. The
-- functions above pin search_path where they are declared; this gives the same pin
-- to those declared elsewhere (procedures are not pgrx's; see wait_for_sync_event). spock.replicate_ddl still runs the user's DDL under
-- its search_path argument (the caller's by default: defaults are evaluated before
-- the pin takes effect).
DO $pin$
DECLARE
    v_proc record;
BEGIN
    FOR v_proc IN
        SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'spock'::pg_catalog.regnamespace
           AND p.prokind OPERATOR(pg_catalog.=) 'f'
           AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) c
                            WHERE c OPERATOR(pg_catalog.~~) 'search\_path=%')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION spock.%I(%s) SET search_path = pg_catalog, pg_temp',
                                  v_proc.proname, v_proc.args);
    END LOOP;
END
$pin$;

-- 2. Only what reads is callable by every role (PostgreSQL's model: managing
-- replication is for superusers and the roles they grant it to). Everything else,
-- internal helpers (spock._*) and functions added later included, loses EXECUTE for
-- PUBLIC. The read-only functions call no internal helper; what they read is
-- protected by the catalogs' own privileges (spock.node_interface and
-- spock.subscription, which hold DSNs, are not readable by PUBLIC). node_info() must
-- stay callable: spock.sub_create() calls it on the provider as the role of the
-- provider DSN, possibly a replication role that is not superuser.
-- spock.replicate_ddl() runs DDL on every subscriber: it is management too. A role
-- a management function is granted to also needs EXECUTE on the helpers it calls
-- (for replicate_ddl: spock._repset, spock._local_node_id, spock._queue_message) and
-- the privileges on the catalogs it changes (INSERT on spock.queue).
DO $revoke$
DECLARE
    v_proc record;
BEGIN
    FOR v_proc IN
        SELECT p.proname, p.prokind, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'spock'::pg_catalog.regnamespace
           AND p.prokind OPERATOR(pg_catalog.=) ANY (ARRAY['f', 'p']::"char"[])
           AND p.proname OPERATOR(pg_catalog.<>) ALL (ARRAY[
                   'node_info', 'repset_show_table', 'sub_show_status', 'sub_show_table',
                   'sub_wait_for_sync', 'table_wait_for_sync', 'wait_slot_confirm_lsn',
                   'spock_version', 'spock_version_num', 'spock_rs_version', 'spock_max_proto_version',
                   'spock_min_proto_version', 'spock_gen_slot_name', 'apply_group_progress'
               ]::pg_catalog.name[])
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON %s spock.%I(%s) FROM PUBLIC',
            CASE v_proc.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, v_proc.proname, v_proc.args);
    END LOOP;
END
$revoke$;
