-- spock-rs SQL API, subscriptions: sub_create/drop/enable/disable, their sets,
-- options, interface and skip LSN, sub_show_status. Rust side
-- (spock-pgext/src/sql_api/subscription.rs, workers/mod.rs): spock._provider_info,
-- spock._drop_provider_slot, spock._is_subscription_origin, spock._wake_workers,
-- spock._hold_subscription.

CREATE FUNCTION spock._subscription(p_name name) RETURNS spock.subscription
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

-- The slot name of a subscription (Spock's signature: name arguments and result);
-- spock._gen_slot_name (Rust) makes it.
CREATE FUNCTION spock.spock_gen_slot_name(dbname name, provider_node name, subscription name) RETURNS name
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT spock._gen_slot_name(dbname::text, provider_node::text, subscription::text)::name;
$$;

-- Fails unless every set of p_sets is one of the provider's p_provider_sets.
-- Fails unless p_forward is what Spock supports: empty, or 'all'.
CREATE FUNCTION spock._check_forward_origins(p_forward text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_forward) f WHERE f IS DISTINCT FROM 'all') THEN
        RAISE EXCEPTION 'only "all" is allowed in forward_origins' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- Fails unless p_delay is a finite interval that is not negative.
CREATE FUNCTION spock._check_apply_delay(p_delay interval) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_delay IS NULL OR NOT isfinite(p_delay) OR p_delay < interval '0' THEN
        RAISE EXCEPTION 'apply_delay must be a finite interval that is not negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END;
$$;

-- The strings of the JSON array p_options->p_key; 22023 with p_error when it is
-- not an array.
CREATE FUNCTION spock._option_text_array(p_options jsonb, p_key text, p_error text) RETURNS text[]
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

-- The default replication_sets are spock_core::ddl::NODE_DEFAULT_SETS (a literal in
-- the signature, as \df shows it; tests/tests/core_rules.rs keeps them equal).
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

CREATE FUNCTION spock.sub_enable(subscription_name name, immediate boolean DEFAULT false)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM spock._subscription(subscription_name);
    UPDATE spock.subscription s SET sub_enabled = true WHERE s.sub_name = sub_enable.subscription_name;
    PERFORM spock._wake_workers();
    RETURN true;
END;
$$;

-- (spock-rs) sub_resync(subscription_name): the way back after the provider lost
-- the subscription's slot (docs/operations.md "Falling behind"): its apply worker
-- drops what is left of the slot, creates it again, merges the provider's rows as
-- of the new slot's snapshot into this node's (rows written here stay; a provider
-- row replaces an older version here by last-update-wins; a row the provider
-- deleted meanwhile goes: spock-pgext/src/apply/resync.rs) and then streams from
-- the new slot. Enables the subscription; sub_wait_for_sync waits for the end.
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

CREATE FUNCTION spock.sub_alter_options(subscription_name name, options jsonb)
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
