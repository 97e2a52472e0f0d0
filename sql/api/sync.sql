-- spock-rs SQL API, synchronisation: per-table sync state (sub_show_table,
-- sub_resync_table, sub_alter_sync), waiting for it (sub_wait_for_sync,
-- table_wait_for_sync), and sync events (sync_event, wait_for_sync_event,
-- wait_slot_confirm_lsn). Rust side: spock-pgext/src/sql_api/sync.rs.

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

CREATE FUNCTION spock.sub_wait_for_sync(subscription_name name)
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

CREATE FUNCTION spock.table_wait_for_sync(subscription_name name, relation regclass)
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

-- A marker in the provider's WAL; subscribers have passed it once
-- wait_for_sync_event() returns true there. The payload is Spock's (its message
-- type and this node's id in native byte order, a zeroed name), so Spock
-- subscribers read it too; a non-transactional event is flushed at once, as
-- Spock's is (a transactional one with its commit). 55000 without a local node.
CREATE FUNCTION spock.sync_event(transactional boolean DEFAULT false)
RETURNS pg_lsn STRICT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_logical_emit_message(transactional, 'Spock',
                                              spock._sync_event_payload(spock._local_node_id()), true);
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

-- The id of node p_name for wait_for_sync_event (Spock's error when unknown).
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

-- Whether p_timeout seconds (0: never) have passed since p_started.
CREATE FUNCTION spock._timed_out(p_started timestamptz, p_timeout int) RETURNS boolean
VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT p_timeout > 0 AND clock_timestamp() - p_started >= make_interval(secs => p_timeout);
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
    CALL spock.wait_for_sync_event(result, spock._sync_origin_id(origin), lsn, timeout, wait_if_disabled);
END;
$$;

-- Repair mode (Spock's spock.repair_mode): from here to repair_mode(false) or the
-- end of the transaction, this transaction's changes stay on this node. A
-- transactional 'Spock' message in the WAL tells the output plugin, which sends
-- none of the changes after it (sync events still go); the setting
-- spock.replication_repair_mode, on until the transaction ends, keeps AutoDDL from
-- queueing DDL or adding tables to sets. Returns the message's LSN.
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
