-- spock-rs SQL API, sequences: repset_add_seq/add_all_seqs/remove_seq and sync_seq,
-- which queue 'S' messages (spock_core::ddl::QueuedMessage::Sequence) for the
-- subscribers of the sequence's sets. Rust side (spock-pgext/src/sql_api/sequence.rs):
-- spock._sequence_sync_margin, spock._sequence_sync_target, spock._queue_sequence.

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
    PERFORM spock._check_not_reserved(p_rel);
END;
$$;

-- Adds one sequence to a set (and starts tracking its state); p_sync queues its
-- current value for the set's subscribers.
CREATE FUNCTION spock._repset_add_seq(p_set_id oid, p_set_name name, p_seq regclass, p_sync boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
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

CREATE FUNCTION spock.repset_add_seq(set_name name, relation regclass, synchronize_data boolean DEFAULT false)
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

CREATE FUNCTION spock.repset_add_all_seqs(set_name name, schema_names text[], synchronize_data boolean DEFAULT false)
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
    LOOP
        -- (here, not in the query: the WARNING is for the listed schemas only)
        CONTINUE WHEN spock._reserved_extension_member(v_seq);
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

-- Queues the sequence's value plus its cache_size (spock._sequence_sync_margin()
-- unless changed) for the subscribers of its
-- sets, so that their sequence is ahead of what this node hands out meanwhile.
CREATE FUNCTION spock.sync_seq(relation regclass)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_node oid := spock._local_node_id();
    v_cache int;
    v_current bigint;
    v_last bigint;
    v_sets text[];
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
    SELECT spock._sequence_sync_target(v_current, q.seqincrement, q.seqmin, q.seqmax, v_cache) INTO v_last
      FROM pg_catalog.pg_sequence q WHERE q.seqrelid = relation;
    UPDATE spock.sequence_state SET last_value = v_last WHERE seqoid = relation;
    PERFORM spock._queue_sequence(v_sets, relation, v_last);
    RETURN true;
END;
$$;
