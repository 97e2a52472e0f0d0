-- spock-rs SQL API, DDL replication through spock.queue (message layouts:
-- spock_core::ddl): queueing a message, the text[] overload of spock.replicate_ddl
-- (the text one and spock._queue_table_sync are Rust: spock-pgext/src/sql_api/ddl.rs),
-- and the set changes of AutoDDL (spock-pgext/src/ddl/autoddl.rs). The subscriber
-- side is apply/queue.rs.

-- Adds a row to spock.queue; the output plugin sends it to subscribers of p_sets
-- (NULL: every subscriber).
CREATE FUNCTION spock._queue_message(p_sets text[], p_role name, p_type "char", p_message text)
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO spock.queue (queued_at, role, replication_sets, message_type, message)
    VALUES (pg_catalog.clock_timestamp(), p_role, p_sets, p_type, p_message::json);
$$;

-- The default set is spock_core::ddl::REPLICATE_DDL_DEFAULT_SET (a literal, as \df
-- shows it; tests/tests/core_rules.rs keeps both overloads equal to it).
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
