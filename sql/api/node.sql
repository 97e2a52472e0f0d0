-- spock-rs SQL API, nodes: node_create/node_drop, interfaces, node_info, and the
-- lookups of the local node (spock._local_node_id) and of a node by name
-- (spock._node_id). Rust side (spock-pgext/src/sql_api/node.rs):
-- spock._node_id_for_name, spock._node_default_sets.
--
-- Conventions of every file in sql/api/ (loaded in the order declared in
-- spock-pgext/src/sql_api/mod.rs, after the catalog and before privileges.sql):
-- Spock 6.0's names, argument names, types and defaults; errors carry SQLSTATEs:
--   55000 object_not_in_prerequisite_state  no local node / still in use
--   42704 undefined_object                  unknown node, interface, set or subscription
--   42710 duplicate_object                  duplicate name, node-id collision
--   42P17 invalid_object_definition         table cannot join the set
--   22023 invalid_parameter_value           bad argument
--   22004 null_value_not_allowed            NULL where a name is needed
--   42P01 undefined_table                   no relation with the given oid
-- Every function pins search_path (procedures, which COMMIT, qualify every name
-- instead) and names spock's objects spock.x. Internal helpers are named spock._x;
-- those written in Rust are #[pg_extern]s in spock-pgext/src/sql_api/. Internal
-- helpers and the functions that change anything are not executable by PUBLIC
-- (privileges.sql).

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
    v_id := spock._node_id_for_name(v_name);
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
    PERFORM spock._create_repset(v_id, d.set_name, d.replicate_insert, d.replicate_update,
                                 d.replicate_delete, d.replicate_truncate)
       FROM spock._node_default_sets() d;
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

CREATE FUNCTION spock.node_add_interface(node_name name, interface_name name, dsn text)
RETURNS oid STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id oid := spock._node_id(node_add_interface.node_name);
    v_if oid;
BEGIN
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
    v_id oid := spock._node_id(node_drop_interface.node_name);
    v_if oid;
    v_sub name;
BEGIN
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
