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

-- Whether p_seq is a global sequence here (its row and its step agree: an oid of
-- a dropped global sequence used again is not).
CREATE FUNCTION spock._is_global_sequence(p_seq oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM spock.global_sequence g JOIN pg_catalog.pg_sequence s ON s.seqrelid = g.seqoid
                    WHERE g.seqoid = p_seq AND s.seqincrement = 65536);
$$;

-- Makes p_seq global on this node (docs/multimaster.md): from now on it hands out
-- the ids above its current value whose low 16 bits are this node's id, stepping
-- 65536 (spock_core::global_ids). Out of the replication sets (each node has its
-- own). Returns the next id. Not replicated itself (convert_sequence_to_global
-- queues it); the ALTER SEQUENCE it runs is not queued by AutoDDL either.
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

-- convert_sequence_to_global(relation): makes a sequence global on this node and,
-- with replicate, queues the same for every node that subscribes to this one (set
-- ddl_sql): each node then hands out its own ids, which never meet another node's.
-- Returns the next id here (NULL: it was global already).
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

-- Adds one sequence to a set (and starts tracking its state); p_sync queues its
-- current value for the set's subscribers.
CREATE FUNCTION spock._repset_add_seq(p_set_id oid, p_set_name name, p_seq regclass, p_sync boolean)
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
           AND NOT spock._is_global_sequence(c.oid)
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
